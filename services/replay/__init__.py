"""Event replay and trace viewing: what the control plane and each node held at any moment of
the history stream, what changed between two moments and which event did it, why a connection
was allowed or dropped then; and a trace's spans as a waterfall.

Everything is folded with the reducers the services and the node agents run (see
:mod:`services.replay.fold`); nothing here re-implements their logic.
"""

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
from .source import History, from_bus, from_file, read_stream
from .timeline import Change, Tracker, diff

__all__ = [
    "Change", "ExplainError", "History", "HistoryFileError", "HistoryHeader", "Moment",
    "MomentError", "Record", "Replay", "ReplayError", "TraceFileError", "Tracker",
    "all_maps", "cluster_maps", "cut", "decode_history", "diff", "encode_history", "explain",
    "from_bus", "from_file", "moment_of", "node_maps", "parse_moment", "parse_time",
    "read_history", "read_stream", "replay_to", "write_history",
]
