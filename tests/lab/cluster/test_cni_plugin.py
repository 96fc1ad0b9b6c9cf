"""The cilia-cni executable, driven exactly as a runtime drives it: env vars + stdin JSON."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from services.common.netns import open_iproute
from services.lab import LabState
from services.lab.state import cni_conf_path, node_state_dir
from services.nodeagent.endpoints import host_ifname
from tests.lab.cluster.conftest import CNI_PLUGIN, cni_env, sandbox_netns

CID = "0123456789abcdef0123456789abcdef"
ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=cnitest"
GOOD_CONF = {"cniVersion": "1.0.0", "name": "cilia", "type": "cilia-cni",
             "socketPath": "/nonexistent/cni.sock"}


def run_plugin(env: dict[str, str], conf: Any) -> tuple[int, dict[str, Any] | None]:
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    proc = subprocess.run([CNI_PLUGIN], env=env, input=data, capture_output=True, timeout=30,
                          check=False)
    out = proc.stdout.decode().strip()
    return proc.returncode, (json.loads(out) if out else None)


def assert_error(rc: int, out: dict[str, Any] | None, code: int, text: str) -> None:
    assert rc == 1
    assert out is not None and out["cniVersion"] == "1.0.0"
    assert out["code"] == code, out
    assert text in out["msg"], out


def test_version() -> None:
    rc, out = run_plugin(cni_env("VERSION"), {"cniVersion": "1.0.0"})
    assert (rc, out) == (0, {"cniVersion": "1.0.0", "supportedVersions": ["1.0.0"]})


@pytest.mark.parametrize(("env", "code", "text"), [
    ({"PATH": "/usr/bin"}, 4, "CNI_COMMAND is not set"),
    (cni_env("FROB"), 4, "CNI_COMMAND"),
    (cni_env("ADD", CID, ifname="eth0"), 4, "CNI_NETNS is not set"),
    (cni_env("ADD", netns="/run/netns/x"), 4, "CNI_CONTAINERID is not set"),
    (cni_env("ADD", "-bad", "/run/netns/x"), 4, "CNI_CONTAINERID"),
    (cni_env("ADD", CID, "/run/netns/x", ifname="a-very-long-ifname"), 4, "CNI_IFNAME"),
    (cni_env("ADD", CID, "/run/netns/x", args="K8S_POD_NAME"), 4, "CNI_ARGS"),
])
def test_environment_errors(env: dict[str, str], code: int, text: str) -> None:
    assert_error(*run_plugin(env, GOOD_CONF), code, text)


@pytest.mark.parametrize(("conf", "code", "text"), [
    (b"{not json", 6, "not valid JSON"),
    (b"[1]", 6, "not a JSON object"),
    ({"name": "cilia", "type": "cilia-cni"}, 7, "cniVersion is missing"),
    ({**GOOD_CONF, "cniVersion": "0.2.0"}, 1, "cniVersion '0.2.0' is not supported"),
    ({"cniVersion": "1.0.0", "type": "cilia-cni", "socketPath": "/x"}, 7, "name is missing"),
    ({"cniVersion": "1.0.0", "name": "cilia", "type": "cilia-cni"}, 7,
     "socketPath is missing"),
    (GOOD_CONF, 11, "agent not reachable"),
])
def test_config_errors(conf: Any, code: int, text: str) -> None:
    env = cni_env("ADD", CID, "/run/netns/x", args=ARGS)
    assert_error(*run_plugin(env, conf), code, text)


@pytest.fixture(scope="module")
def node1(lab2: LabState) -> dict[str, Any]:
    node = lab2.plan.nodes[0]
    return {"plan": node, "conf": json.loads(cni_conf_path(lab2.name, node.name).read_text())}


@pytest.fixture
def sandbox(lab2: LabState) -> Iterator[str]:
    with sandbox_netns(f"{lab2.plan.prefix}default_cnitest") as [path]:
        yield path


def test_add_check_del_through_the_executable(node1: dict[str, Any], sandbox: str) -> None:
    plan, conf = node1["plan"], node1["conf"]
    add_env = cni_env("ADD", CID, sandbox, args=ARGS)
    rc, result = run_plugin(add_env, conf)
    assert rc == 0 and result is not None, result
    assert result["cniVersion"] == "1.0.0"
    ip = result["ips"][0]["address"]
    assert ip.endswith("/32") and ip.split("/")[0] in {str(h) for h in plan.pod_cidr.hosts()}
    assert result["ips"][0]["gateway"] == str(plan.gateway)
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": str(plan.gateway)}]
    host, pod = result["interfaces"]
    assert host["name"] == host_ifname(CID) and "sandbox" not in host
    assert pod == {"name": "eth0", "mac": pod["mac"], "sandbox": sandbox}

    # the kernel holds what the result says
    with open_iproute(sandbox) as ipr:
        idx = ipr.link_lookup(ifname="eth0")[0]
        assert ip.split("/")[0] in {a.get("address") for a in ipr.get_addr(index=idx)}
        assert ipr.get_default_routes(table=254)
    with open_iproute(plan.netns) as ipr:
        hidx = ipr.link_lookup(ifname=host["name"])[0]
        assert any(r.get("oif") == hidx
                   for r in ipr.get_routes(dst=ip.split("/")[0], dst_len=32, table=254))

    assert run_plugin(add_env, conf) == (0, result)           # ADD again: the same endpoint
    check = {**conf, "prevResult": result}
    assert run_plugin(cni_env("CHECK", CID, sandbox, args=ARGS), check) == (0, None)
    wrong = {**conf, "prevResult": {**result, "ips": [{"address": "10.9.9.9/32"}]}}
    assert_error(*run_plugin(cni_env("CHECK", CID, sandbox, args=ARGS), wrong), 102,
                 "prevResult.ips")
    with open_iproute(sandbox) as ipr:
        ipr.route("del", dst="0.0.0.0/0", gateway=str(plan.gateway))
    assert_error(*run_plugin(cni_env("CHECK", CID, sandbox, args=ARGS), check), 102,
                 "default route")

    del_env = cni_env("DEL", CID, sandbox, args=ARGS)
    assert run_plugin(del_env, check) == (0, None)
    with open_iproute(plan.netns) as ipr:
        assert not ipr.link_lookup(ifname=host["name"])
    with open_iproute(sandbox) as ipr:
        assert not ipr.link_lookup(ifname="eth0")
    ipam = json.loads((node_state_dir(plan.name) / "ipam.json").read_text())
    assert CID not in ipam["allocations"]
    assert run_plugin(del_env, conf) == (0, None)              # DEL is idempotent
    assert run_plugin(cni_env("DEL", CID, args=ARGS), conf) == (0, None)  # even without netns
    assert_error(*run_plugin(cni_env("CHECK", CID, sandbox, args=ARGS), check), 3,
                 "no endpoint")


def test_add_into_missing_netns_is_container_unknown(node1: dict[str, Any]) -> None:
    env = cni_env("ADD", CID, "/run/netns/cilia-does-not-exist", args=ARGS)
    assert_error(*run_plugin(env, node1["conf"]), 3, "does not exist")
    ipam_file = node_state_dir(node1["plan"].name) / "ipam.json"
    if ipam_file.exists():
        assert CID not in json.loads(ipam_file.read_text())["allocations"]


@pytest.fixture
def sandboxes(lab2: LabState) -> Iterator[list[str]]:
    with sandbox_netns(*(f"{lab2.plan.prefix}default_reuse{i}" for i in range(3))) as paths:
        yield paths


def test_released_address_is_reused(node1: dict[str, Any], sandboxes: list[str]) -> None:
    conf = node1["conf"]
    results = {}
    for cid, sandbox in zip(("c1", "c2"), sandboxes, strict=False):
        rc, out = run_plugin(cni_env("ADD", cid, sandbox, args=ARGS), conf)
        assert rc == 0 and out is not None, out
        results[cid] = out["ips"][0]["address"]
    assert results["c1"] != results["c2"]
    assert run_plugin(cni_env("DEL", "c1", sandboxes[0]), conf) == (0, None)
    rc, third = run_plugin(cni_env("ADD", "c3", sandboxes[2], args=ARGS), conf)
    assert rc == 0 and third is not None
    assert third["ips"][0]["address"] == results["c1"]
    for cid, sandbox in (("c2", sandboxes[1]), ("c3", sandboxes[2])):
        assert run_plugin(cni_env("DEL", cid, sandbox), conf) == (0, None)
