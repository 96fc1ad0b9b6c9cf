"""Every ctypes twin matches its C struct: gcc compiles the real headers and reports layout.

The twins are the registry's (each map module's, plus the BPF stack's), and every map the
headers pin is in the registry with the same type, key, value and capacity.
"""

from __future__ import annotations

import ctypes as ct
import re
import subprocess
from pathlib import Path

from services.nodeagent.datapath.constants import BPF_SRC_DIR
from services.nodeagent.datapath.maps import registry

ALL_TWINS = registry.all_twins()
# BPF_TABLE_PINNED("type", key, value, name, max_entries, CILIA_PIN_DIR "/pin"[, flags])
PINNED_TABLE = re.compile(r'BPF_TABLE_PINNED\(\s*"(\w+)",\s*(struct \w+|u32),\s*struct (\w+),'
                          r'\s*\w+,\s*(\w+),\s*CILIA_PIN_DIR "/(\w+)"')
PINNED_RINGBUF = re.compile(r'"maps/ringbuf:" CILIA_PIN_DIR "/(\w+)"')
NUMERIC_DEFINE = re.compile(r"^#define\s+(\w+)\s+(\d+)\s*$", re.M)


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


def test_every_pinned_map_of_the_headers_is_in_the_registry_as_declared() -> None:
    declared: dict[str, tuple[str, str, str, str, str]] = {}
    defines: dict[str, int] = {}     # the headers' own numeric macros
    for header in (BPF_SRC_DIR / "lib").glob("*.h"):
        text = header.read_text()
        defines.update((name, int(value)) for name, value in NUMERIC_DEFINE.findall(text))
        for mtype, key, value, max_entries, pin in PINNED_TABLE.findall(text):
            declared[pin] = (header.name, mtype, key.removeprefix("struct "), value,
                             max_entries)
        for pin in PINNED_RINGBUF.findall(text):
            declared[pin] = (header.name, "ringbuf", "", "", "")
    assert set(declared) == set(registry.ALL_MAPS)
    for spec in registry.REGISTRY:
        header, mtype, key, value, max_entries = declared[spec.name]
        assert (header, mtype) == (spec.header, spec.map_type), spec.name
        if spec.key is None:
            continue
        assert key == (spec.key.C_STRUCT or "u32"), spec.name
        assert value == spec.value.C_STRUCT, spec.name
        if max_entries.isdigit():
            assert int(max_entries) == spec.max_entries, spec.name
        else:   # a macro: the registry's -D flag, or the header's own #define
            size = spec.cflags.get(max_entries, defines.get(max_entries))
            assert size == spec.max_entries, (spec.name, max_entries)
