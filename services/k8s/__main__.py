"""``python -m services.k8s``: run one replica of the Kubernetes watcher."""

from __future__ import annotations

import argparse
import asyncio

from services.common.runner import service_main
from services.k8s.client import load_configuration
from services.k8s.errors import ConfigError
from services.k8s.reflector import WATCH_TIMEOUT_S
from services.k8s.service import K8sWatcher


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=None,
                        help="kubeconfig file (default: in-cluster credentials, else "
                             "$KUBECONFIG, else ~/.kube/config)")
    parser.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=False,
                        help="publish only while holding the leader Lease (default: off)")
    parser.add_argument("--watch-timeout", type=int, default=WATCH_TIMEOUT_S,
                        help=f"seconds each watch asks of the server (default {WATCH_TIMEOUT_S})")


def _factory(args: argparse.Namespace) -> K8sWatcher:
    if args.leader_elect:
        raise ConfigError("--leader-elect: leader election is not part of this build yet "
                          "(run one replica with --no-leader-elect)")
    config = asyncio.run(load_configuration(args.kubeconfig))
    return K8sWatcher(config, watch_timeout_s=args.watch_timeout)


if __name__ == "__main__":
    service_main("k8s", _factory, extra_args=_args)
