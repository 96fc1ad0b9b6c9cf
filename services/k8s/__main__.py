"""``python -m services.k8s``: run one replica of the Kubernetes watcher."""

from __future__ import annotations

import argparse
import asyncio
import os

from kubernetes_asyncio.client import ApiClient

from services.common.runner import service_main
from services.k8s.client import load_configuration
from services.k8s.election import ElectionConfigError, check_timings
from services.k8s.errors import ConfigError
from services.k8s.leader import LeaseElector
from services.k8s.reflector import WATCH_TIMEOUT_S
from services.k8s.service import K8sWatcher

LEASE_NAME = "cilia-k8s-watcher"
NAMESPACE_ENV = "POD_NAMESPACE"     # the downward API's namespace of the watcher's pod


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=None,
                        help="kubeconfig file (default: in-cluster credentials, else "
                             "$KUBECONFIG, else ~/.kube/config)")
    parser.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=False,
                        help="publish only while holding the leader Lease (default: off; on "
                             "with 2 replicas)")
    parser.add_argument("--lease-namespace", default=os.environ.get(NAMESPACE_ENV, "kube-system"),
                        help=f"namespace of the leader Lease (default ${NAMESPACE_ENV} or "
                             "kube-system)")
    parser.add_argument("--lease-name", default=LEASE_NAME)
    parser.add_argument("--lease-duration", type=float, default=15.0,
                        help="seconds a leader holds the Lease without renewing it")
    parser.add_argument("--feedback", action=argparse.BooleanOptionalAction, default=True,
                        help="write policy rejections back as Events and status conditions")
    parser.add_argument("--watch-timeout", type=int, default=WATCH_TIMEOUT_S,
                        help=f"seconds each watch asks of the server (default {WATCH_TIMEOUT_S})")


def _factory(args: argparse.Namespace) -> K8sWatcher:
    config = asyncio.run(load_configuration(args.kubeconfig))
    elector = None
    if args.leader_elect:
        duration = args.lease_duration
        try:    # client-go's proportions: renew within 2/3 of the lease, retry at 2/15 of it
            check_timings(duration, duration * 2 / 3, duration * 2 / 15)
        except ElectionConfigError as exc:
            raise ConfigError(f"--lease-duration: {exc}") from None

        def elector(client: ApiClient) -> LeaseElector:
            return LeaseElector(client, args.lease_namespace, args.lease_name,
                                lease_duration=duration, renew_deadline=duration * 2 / 3,
                                retry_period=duration * 2 / 15)
    return K8sWatcher(config, watch_timeout_s=args.watch_timeout, elector_factory=elector,
                      feedback=args.feedback)


if __name__ == "__main__":
    service_main("k8s", _factory, extra_args=_args)
