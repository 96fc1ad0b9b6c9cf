"""``python -m services.lb``: one replica of the lb service."""

from __future__ import annotations

import argparse

from services.common.runner import service_main
from services.lb.service import LbService


def _factory(_args: argparse.Namespace) -> LbService:
    return LbService()


if __name__ == "__main__":
    service_main("lb", _factory)
