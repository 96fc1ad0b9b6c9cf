"""``python -m services.identity``: run one identity-service replica."""

from __future__ import annotations

import argparse

from services.common.runner import service_main
from services.identity.derive import LabelFilter
from services.identity.service import IdentityService


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grace", type=float, default=None,
                        help="seconds an unused identity is kept "
                        "(default $CILIA_IDENTITY_GRACE or 300)")
    parser.add_argument("--labels", default=None,
                        help="label filter like Cilium's --labels: 'pattern,!pattern'")


def _factory(args: argparse.Namespace) -> IdentityService:
    flt = LabelFilter.parse(args.labels) if args.labels else None
    return IdentityService(grace_s=args.grace, label_filter=flt, replica=args.replica)


if __name__ == "__main__":
    service_main("identity", _factory, extra_args=_args)
