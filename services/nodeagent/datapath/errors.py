"""The datapath's exception hierarchy."""

from __future__ import annotations

from services.common.errors import CiliaError


class DatapathError(CiliaError):
    """Base of every datapath error."""


class MapError(DatapathError):
    """A map operation failed; names the map and the operation."""

    def __init__(self, map_name: str, op: str, detail: str) -> None:
        super().__init__(f"map {map_name!r}: {op} failed: {detail}")
        self.map_name = map_name
        self.op = op


class MapFullError(MapError):
    """The map has no room for another entry (E2BIG / ENOSPC / ENOMEM)."""


class EncodeError(DatapathError, ValueError):
    """A desired entry is malformed; the message names the entry and the field."""


class ProgramLoadError(DatapathError):
    """Compiling or loading a BPF program failed; ``log`` holds the compiler/verifier output."""

    def __init__(self, program: str, detail: str, log: str = "") -> None:
        msg = f"program {program!r}: {detail}"
        if log:
            msg += "\n" + log
        super().__init__(msg)
        self.program = program
        self.log = log


class VerifierError(ProgramLoadError):
    """The kernel verifier rejected the program; ``log`` is the verifier log."""


class AttachError(DatapathError):
    """Attaching or detaching a program on an interface failed."""
