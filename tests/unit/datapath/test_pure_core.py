"""The pure core loads without the kernel libraries: reducers, the policy compiler and selector
cache, Maglev, the lb view, replay's fold and the map modules import with bcc and pyroute2
blocked (and, but for replay's bus reader, without nats); ``cilia --help`` works without bcc;
a pod's DNS lookup loads neither nats nor the DNS server.

Each check runs in a fresh interpreter whose ``sys.modules`` marks the blocked libraries as
missing, so an import of one of them anywhere on the way fails the check.
"""

from __future__ import annotations

import subprocess
import sys

from tests.support.procs import REPO

BLOCK_KERNEL = "import sys; sys.modules['bcc'] = None; sys.modules['pyroute2'] = None; "
# Modules of the core that import without nats as well (replay's bus reader, services.replay
# .source, is the only replay module that needs it, and nothing of the core imports it).
NATS_FREE = ("services.nodeagent.state", "services.nodeagent.lbstate",
             "services.nodeagent.patchplan", "services.policy.compiler",
             "services.policy.selectorcache", "services.policy.reducer", "services.lb.maglev",
             "services.lb.events", "services.replay", "services.replay.fold",
             "services.replay.maps", "services.nodeagent.datapath",
             "services.nodeagent.datapath.maps.registry", "services.nodeagent.datapath.lb",
             "services.nodeagent.datapath.nodemaps")
KERNEL_LIBRARIES = ("bcc", "pyroute2", "nats")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_the_core_imports_without_nats_and_loads_no_kernel_library() -> None:
    """The issue's check (``state`` and ``replay`` with bcc blocked) and more: every core
    module, with bcc, pyroute2 and nats blocked."""
    code = (BLOCK_KERNEL + "sys.modules['nats'] = None; import importlib; "
            f"[importlib.import_module(m) for m in {NATS_FREE!r}]; "
            f"loaded = [m for m in sys.modules if m.split('.')[0] in {KERNEL_LIBRARIES!r} "
            "and sys.modules[m] is not None]; "
            "kernel = 'services.nodeagent.datapath.kernel' in sys.modules; "
            "assert not loaded and not kernel, (loaded, kernel)")
    res = _python(code)
    assert res.returncode == 0, res.stderr


def test_cilia_help_works_with_bcc_blocked() -> None:
    code = ("import sys; sys.modules['bcc'] = None; sys.argv = ['cilia', '--help']; "
            "from services.cli.main import main; main()")
    res = _python(code)
    assert res.returncode == 0, res.stderr
    assert "Usage:" in res.stdout
    assert "bpf" in res.stdout


def test_a_pods_dns_lookup_loads_neither_the_bus_nor_the_server() -> None:
    """``python -m services.dns lookup`` runs in every pod that resolves a name; only
    ``serve`` needs nats and the server."""
    code = ("import sys; sys.modules['nats'] = None; sys.modules['bcc'] = None; "
            "import services.dns.__main__; "
            "assert 'services.dns.server' not in sys.modules")
    res = _python(code)
    assert res.returncode == 0, res.stderr
