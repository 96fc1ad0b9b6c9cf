"""Clear errors: verifier rejection with its log, compile errors, full and mismatched maps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from bcc import BPF

from services.nodeagent.datapath import (
    MapError,
    MapFullError,
    PinnedMapBackend,
    Programs,
    Reconciler,
    VerifierError,
)
from services.nodeagent.datapath.errors import ProgramLoadError
from services.nodeagent.datapath.kernel.programs import expand_includes

pytestmark = pytest.mark.datapath

UNCHECKED_ACCESS = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
int cil_from_pod(struct __sk_buff *skb)
{
    unsigned char *data = (void *)(long)skb->data;
    return data[40] ? TC_ACT_OK : TC_ACT_SHOT;   /* no bounds check: the verifier refuses */
}
int cil_to_pod(struct __sk_buff *skb) { return TC_ACT_OK; }
"""


def test_verifier_rejection_carries_the_log(node_name: str, tmp_path: Path) -> None:
    src = tmp_path / "bad.c"
    src.write_text(UNCHECKED_ACCESS)
    with pytest.raises(VerifierError) as info:
        Programs(node_name, source=src)
    assert info.value.program == "cil_from_pod"
    assert "invalid access to packet" in info.value.log
    assert "invalid access to packet" in str(info.value)


def test_compile_error_carries_the_compiler_output(node_name: str, tmp_path: Path) -> None:
    src = tmp_path / "broken.c"
    src.write_text("int cil_from_pod(struct __sk_buff *skb) { return undefined_name; }\n")
    with pytest.raises(ProgramLoadError) as info:
        Programs(node_name, source=src)
    assert "undefined_name" in info.value.log


def test_expand_includes_inlines_each_header_once(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.h").write_text('#include "b.h"\nint a;\n')
    (tmp_path / "lib" / "b.h").write_text("int b;\n")
    (tmp_path / "main.c").write_text('#include "lib/a.h"\n#include "lib/b.h"\nint m;\n')
    assert expand_includes(tmp_path / "main.c").split() == ["int", "b;", "int", "a;", "int",
                                                            "m;"]


@pytest.fixture
def tiny_maps(node_name: str) -> Iterator[Path]:
    """4-entry hash and LPM maps, and a 512-entry hash, pinned in the node's directory."""
    from services.nodeagent.datapath.constants import pin_dir
    d = pin_dir(node_name)
    d.mkdir(parents=True)
    text = f"""
    struct lk {{ u32 prefixlen; u32 addr; }};
    BPF_TABLE_PINNED("hash", u32, u32, tiny_hash, 4, "{d}/tiny_hash");
    BPF_TABLE_PINNED("lpm_trie", struct lk, u32, tiny_lpm, 4, "{d}/tiny_lpm",
                     BPF_F_NO_PREALLOC);
    BPF_TABLE_PINNED("hash", u32, u64, batch_hash, 512, "{d}/batch_hash");
    int use(void *ctx) {{
        u32 k = 0; struct lk l = {{32, 0}};
        tiny_hash.lookup(&k); tiny_lpm.lookup(&l); batch_hash.lookup(&k); return 0;
    }}
    """
    b = BPF(text=text.encode())
    b.close()
    yield d


def test_full_maps_raise_map_full(tiny_maps: Path) -> None:
    with PinnedMapBackend(tiny_maps / "tiny_hash", 4, 4) as be:
        r = Reconciler(be)
        r.reconcile({i.to_bytes(4, "little"): b"\0" * 4 for i in range(4)})
        with pytest.raises(MapFullError, match="tiny_hash"):
            r.reconcile({i.to_bytes(4, "little"): b"\0" * 4 for i in range(5)})
        # Replacing all entries fits once the deletes go first.
        res = r.reconcile({i.to_bytes(4, "little"): b"\1" * 4 for i in range(10, 14)})
        assert res.added == 4 and res.deleted == 4
        assert len(be.read_all()) == 4
    with PinnedMapBackend(tiny_maps / "tiny_lpm", 8, 4) as be:
        keys = {(32).to_bytes(4, "little") + bytes([10, 0, 0, i]): b"\0" * 4 for i in range(5)}
        with pytest.raises(MapFullError, match="tiny_lpm"):
            Reconciler(be).reconcile(keys)


def test_open_errors_name_the_map(tiny_maps: Path) -> None:
    with pytest.raises(MapError, match=r"tiny_hash.*sizes 4/4"):
        PinnedMapBackend(tiny_maps / "tiny_hash", 8, 4)
    with pytest.raises(MapError, match="nothing_here"):
        PinnedMapBackend(tiny_maps / "nothing_here", 4, 4)


def test_batched_updates_and_deletes(tiny_maps: Path) -> None:
    with PinnedMapBackend(tiny_maps / "batch_hash", 4, 8) as be:
        r = Reconciler(be, chunk=64)
        want = {i.to_bytes(4, "little"): (i * 3).to_bytes(8, "little") for i in range(300)}
        assert r.reconcile(want).added == 300
        assert be.read_all() == want
        half = {k: v for k, v in want.items() if int.from_bytes(k, "little") % 2}
        assert r.reconcile(half).deleted == 150
        assert be.read_all() == half
        # A batch delete that meets an absent key falls back to element-wise deletes.
        be.delete([(0).to_bytes(4, "little"), *list(half)[:20]])
        assert len(be.read_all()) == 130
