"""Event replay and trace viewing: what the control plane and each node held at any moment of
the history stream, what changed between two moments and which event did it, why a connection
was allowed or dropped then; and a trace's spans as a waterfall.

Everything is folded with the reducers the services and the node agents run (see
:mod:`services.replay.fold`); nothing here re-implements their logic. Folding, rendering and
history files are pure; reading a history from the bus (:mod:`.source`, NATS) is imported
when one of its names is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ExplainError,
    HistoryFileError,
    MomentError,
    ReplayError,
    TraceFileError,
)
from .explain import explain
from .fold import Replay, replay_to
from .historyfile import HistoryHeader, decode_history, encode_history, read_history, write_history
from .maps import all_maps, cluster_maps, node_maps
from .record import Moment, Record, cut, moment_of, parse_moment, parse_time
from .timeline import Change, Tracker, diff

if TYPE_CHECKING:
    from .source import History, from_bus, from_file, read_stream

_SOURCE_NAMES = frozenset({"History", "from_bus", "from_file", "read_stream"})


def __getattr__(name: str) -> Any:
    if name in _SOURCE_NAMES:     # the bus reader (nats), loaded on first use
        return getattr(importlib.import_module(".source", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Change", "ExplainError", "History", "HistoryFileError", "HistoryHeader", "Moment",
    "MomentError", "Record", "Replay", "ReplayError", "TraceFileError", "Tracker",
    "all_maps", "cluster_maps", "cut", "decode_history", "diff", "encode_history", "explain",
    "from_bus", "from_file", "moment_of", "node_maps", "parse_moment", "parse_time",
    "read_history", "read_stream", "replay_to", "write_history",
]
