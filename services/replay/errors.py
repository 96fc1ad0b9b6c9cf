"""Errors of the replay tools: one hierarchy, messages that name the file, moment or object."""

from __future__ import annotations

from services.common.errors import CiliaError


class ReplayError(CiliaError):
    """Base of every replay error."""


class HistoryFileError(ReplayError):
    """A history file is not ours, of another version, corrupt or truncated."""


class MomentError(ReplayError):
    """A moment (time or sequence) cannot be parsed or lies outside the history."""


class ExplainError(ReplayError):
    """An explain question names a pod or port the history does not know at that moment."""


class TraceFileError(ReplayError):
    """Span files cannot be read, or hold no span of the asked trace."""
