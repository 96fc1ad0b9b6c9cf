"""Every ctypes twin matches its C struct: gcc compiles the real headers and reports layout."""

from __future__ import annotations

import ctypes as ct
import subprocess
from pathlib import Path

from services.nodeagent.datapath.constants import BPF_SRC_DIR
from services.nodeagent.datapath.twins import ALL_TWINS


def _layout_program() -> str:
    headers = sorted({t.C_HEADER for t in ALL_TWINS})
    lines = ["#define CILIA_STRUCTS_ONLY", "#include <stddef.h>", "#include <stdio.h>"]
    lines += [f'#include "lib/{h}"' for h in headers]
    lines.append("int main(void) {")
    for twin in ALL_TWINS:
        s = f"struct {twin.C_STRUCT}"
        lines.append(f'printf("{twin.C_STRUCT} sizeof %zu\\n", sizeof({s}));')
        for name, *_ in twin._fields_:
            lines.append(f'printf("{twin.C_STRUCT} {name} %zu\\n", offsetof({s}, {name}));')
    lines += ["return 0;", "}"]
    return "\n".join(lines)


def test_twins_match_c_layout(tmp_path: Path) -> None:
    src = tmp_path / "layout.c"
    exe = tmp_path / "layout"
    src.write_text(_layout_program())
    subprocess.run(["gcc", "-Wall", "-Werror", "-I", str(BPF_SRC_DIR), "-o", str(exe), str(src)],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    c_layout = {tuple(line.rsplit(" ", 1)[0].split(" ")): int(line.rsplit(" ", 1)[1])
                for line in out.splitlines()}
    py_layout: dict[tuple[str, ...], int] = {}
    for twin in ALL_TWINS:
        py_layout[(twin.C_STRUCT, "sizeof")] = ct.sizeof(twin)
        for name, *_ in twin._fields_:
            py_layout[(twin.C_STRUCT, name)] = getattr(twin, name).offset
    assert c_layout == py_layout


def test_every_struct_in_the_headers_has_a_twin() -> None:
    declared = set()
    for header in (BPF_SRC_DIR / "lib").glob("*.h"):
        for line in header.read_text().splitlines():
            if line.startswith("struct ") and line.rstrip().endswith("{"):
                declared.add(line.split()[1])
    declared.discard("cilia_events_table_t")   # bcc's table descriptor, not kernel data
    assert declared == {t.C_STRUCT for t in ALL_TWINS}
