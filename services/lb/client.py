"""Reading the lb service's state from the bus (for the CLI and tests)."""

from __future__ import annotations

import asyncio

from services.common.bus import Bus, Delivery
from services.common.contract import LB_VIEW
from services.lb.events import LbView

READ_TIMEOUT_S = 10.0


async def read_view(bus: Bus, timeout: float = READ_TIMEOUT_S) -> LbView:
    """Fold the whole ``cilia.lb.>`` history into an :class:`LbView`."""
    view = LbView()

    async def fold(d: Delivery) -> None:
        view.apply(d.event.payload)

    sub = await bus.consume(LB_VIEW, fold, report=False)
    try:
        await asyncio.wait_for(sub.caught_up.wait(), timeout)
    finally:
        await sub.stop()
    return view
