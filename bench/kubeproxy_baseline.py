"""The kube-proxy (iptables mode) baseline: the nat rules kube-proxy would program for a set
of ClusterIP services, as ``iptables-restore`` input.

The chains follow kube-proxy's layout: ``KUBE-SERVICES`` (one match per service frontend,
walked in order for every new connection), ``KUBE-SVC-<hash>`` (one rule per endpoint, chosen
with ``-m statistic --mode random``), ``KUBE-SEP-<hash>`` (the DNAT), plus the masquerade
plumbing. Load it only inside a lab network namespace::

    ip netns exec <lab-node-ns> iptables-restore < rules.txt

Run: .venv/bin/python -m bench.kubeproxy_baseline --services 100 > rules.txt
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

POD_CIDR = "10.244.0.0/16"
MASQ_MARK = "0x4000/0x4000"


@dataclass(frozen=True)
class KpService:
    name: str                       # namespace/name:port
    vip: str
    port: int
    endpoints: tuple[tuple[str, int], ...]


def _chain(prefix: str, *parts: str) -> str:
    """kube-proxy's chain names: a prefix and 16 base32 characters of a SHA-256."""
    digest = hashlib.sha256("".join(parts).encode()).digest()
    return prefix + base64.b32encode(digest).decode()[:16]


def rules(services: Sequence[KpService]) -> str:
    """The ``iptables-restore`` text for ``services`` (nat table only)."""
    chains = [":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
              ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]",
              ":KUBE-POSTROUTING - [0:0]", ":KUBE-MARK-MASQ - [0:0]"]
    body = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" '
        '-j KUBE-POSTROUTING',
        f"-A KUBE-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}",
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK} -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    ]
    for svc in services:
        svc_chain = _chain("KUBE-SVC-", svc.name, "tcp")
        chains.append(f":{svc_chain} - [0:0]")
        comment = f'-m comment --comment "{svc.name} cluster IP"'
        body.append(f"-A KUBE-SERVICES -d {svc.vip}/32 -p tcp {comment} -m tcp "
                    f"--dport {svc.port} -j {svc_chain}")
        body.append(f"-A {svc_chain} ! -s {POD_CIDR} -d {svc.vip}/32 -p tcp {comment} -m tcp "
                    f"--dport {svc.port} -j KUBE-MARK-MASQ")
        n = len(svc.endpoints)
        for i, (ip, port) in enumerate(svc.endpoints):
            sep = _chain("KUBE-SEP-", svc.name, "tcp", f"{ip}:{port}")
            chains.append(f":{sep} - [0:0]")
            to = f'-m comment --comment "{svc.name} -> {ip}:{port}"'
            if i < n - 1:
                prob = 1.0 / (n - i)
                body.append(f"-A {svc_chain} {to} -m statistic --mode random "
                            f"--probability {prob:.11f} -j {sep}")
            else:
                body.append(f"-A {svc_chain} {to} -j {sep}")
            body.append(f"-A {sep} -s {ip}/32 {to} -j KUBE-MARK-MASQ")
            body.append(f"-A {sep} -p tcp {to} -m tcp -j DNAT --to-destination {ip}:{port}")
    body.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: '
                'this must be the last rule in this chain" -m addrtype --dst-type LOCAL '
                "-j KUBE-NODEPORTS")
    return "\n".join(["*nat", *chains, *body, "COMMIT", ""])


def synthetic(count: int, target: tuple[str, int], endpoints_per_service: int = 1,
              ) -> list[KpService]:
    """``count`` services; the last one (the worst case for a linear chain walk) sends to
    ``target``, the others to addresses nobody uses (10.250.0.0/16)."""
    out = []
    for i in range(count - 1):
        eps = tuple((f"10.250.{(i * endpoints_per_service + j) // 250 % 256}."
                     f"{(i * endpoints_per_service + j) % 250 + 1}", 8080)
                    for j in range(endpoints_per_service))
        out.append(KpService(f"bench/svc-{i}:http", vip_of(i), 80, eps))
    out.append(KpService("bench/target:http", vip_of(count - 1), 80, (target,)))
    return out


def vip_of(i: int) -> str:
    """The ClusterIP of synthetic service ``i`` (10.96.0.1 upwards)."""
    return f"10.96.{i // 250}.{i % 250 + 1}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--endpoints", type=int, default=1)
    parser.add_argument("--target", default="10.244.1.2:9090")
    args = parser.parse_args(argv)
    ip, port = args.target.split(":")
    sys.stdout.write(rules(synthetic(args.services, (ip, int(port)), args.endpoints)))


if __name__ == "__main__":
    main()
