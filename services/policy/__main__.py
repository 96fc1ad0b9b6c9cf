"""``python -m services.policy``: run one policy-service replica."""

from __future__ import annotations

import argparse

from services.common.runner import service_main
from services.policy.service import PolicyService


def _factory(args: argparse.Namespace) -> PolicyService:
    return PolicyService()


if __name__ == "__main__":
    service_main("policy", _factory)
