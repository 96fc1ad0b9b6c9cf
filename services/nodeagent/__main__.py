"""``python -m services.nodeagent --node-config FILE``: run the agent of one node."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.common.runner import service_main
from services.nodeagent.agent import NodeAgent
from services.nodeagent.endpoints import NodeConfig


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node-config", type=Path, required=True,
                        help="the node's JSON config (name, node_ip, pod_cidr, netns, paths)")


def _factory(args: argparse.Namespace) -> NodeAgent:
    cfg = NodeConfig.load(args.node_config)
    args.node = cfg.name
    return NodeAgent(cfg)


if __name__ == "__main__":
    service_main("nodeagent", _factory, extra_args=_args)
