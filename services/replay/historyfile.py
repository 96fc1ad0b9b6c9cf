"""The history file: the stream's messages for a bug report, replayable with no cluster.

Layout (msgpack objects back to back):

1. header map: ``{"format": "cilia-history", "version": 1, "stream", "exported_at",
   "since", "first_seq", "last_seq", "count", "schema_version"}``;
2. ``count`` records, each ``[seq, time_ns, subject, headers, payload]`` (payload: the raw
   bytes the stream stored);
3. trailer map: ``{"end": "cilia-history", "count": N, "sha256": hex}`` where the digest
   covers every byte before the trailer.

Reading checks everything (format, version, shapes, count, digest, nothing after the trailer)
before returning anything, so a corrupt or truncated file is an error and never half a
history. Writing goes to a temporary file renamed into place, so a failed export leaves no
file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from services.common.schemas import SCHEMA_VERSION

from .errors import HistoryFileError
from .record import Record

FORMAT = "cilia-history"
FORMAT_VERSION = 1
RECORD_FIELDS = 5


@dataclass(frozen=True)
class HistoryHeader:
    """What a history file says about itself."""

    stream: str
    exported_at: str
    since: str = ""
    first_seq: int = 0
    last_seq: int = 0
    count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "schema_version": SCHEMA_VERSION,
                "stream": self.stream, "exported_at": self.exported_at, "since": self.since,
                "first_seq": self.first_seq, "last_seq": self.last_seq, "count": self.count,
                **self.extra}


def encode_history(header: HistoryHeader, records: Iterable[Record]) -> bytes:
    """The file's bytes (pure)."""
    recs = list(records)
    head = HistoryHeader(header.stream, header.exported_at, header.since,
                         recs[0].seq if recs else 0, recs[-1].seq if recs else 0, len(recs),
                         header.extra)
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack(head.to_dict())]
    parts += [packer.pack([r.seq, r.time_ns, r.subject, r.headers, r.payload]) for r in recs]
    body = b"".join(parts)
    trailer = packer.pack({"end": FORMAT, "count": len(recs),
                           "sha256": hashlib.sha256(body).hexdigest()})
    return body + trailer


def write_history(path: Path, header: HistoryHeader, records: Iterable[Record]) -> int:
    """Write a history file atomically; returns the number of records.

    Raises:
        HistoryFileError: the file cannot be written (nothing is left behind).
    """
    recs = list(records)
    data = encode_history(header, recs)
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    except OSError as exc:
        raise HistoryFileError(f"cannot write history file {target}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise HistoryFileError(f"cannot write history file {target}: {exc}") from exc
    return len(recs)


def read_history(path: Path) -> tuple[HistoryHeader, list[Record]]:
    """Read and verify a history file.

    Raises:
        HistoryFileError: unreadable, not a history file, another version, corrupt or
            truncated; the message names the file and what is wrong.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise HistoryFileError(f"cannot read history file {path}: {exc}") from exc
    return decode_history(data, str(path))


def decode_history(data: bytes, name: str = "<history>") -> tuple[HistoryHeader, list[Record]]:
    """Verify and decode a history file's bytes (pure); see :func:`read_history`."""
    def fail(what: str) -> HistoryFileError:
        return HistoryFileError(f"history file {name} {what}; nothing was replayed")

    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=0)
    unpacker.feed(data)
    try:
        head = next(unpacker)
    except StopIteration:
        raise fail("is empty or truncated before its header") from None
    except Exception as exc:  # msgpack raises several unrelated types
        raise fail(f"is not a cilia history file ({exc})") from exc
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise fail("is not a cilia history file (no cilia-history header)")
    if head.get("version") != FORMAT_VERSION:
        raise fail(f"has format version {head.get('version')!r}; this build reads "
                   f"{FORMAT_VERSION}")
    records: list[Record] = []
    trailer: dict[str, Any] | None = None
    body_end = 0
    while True:
        pos = unpacker.tell()
        try:
            obj = next(unpacker)
        except StopIteration:
            break
        except Exception as exc:
            raise fail(f"is corrupt at byte {pos} ({exc})") from exc
        if isinstance(obj, dict):
            trailer, body_end = obj, pos
            break
        records.append(_record(obj, len(records), fail))
    if trailer is None:
        raise fail(f"is truncated: it ends after {len(records)} records without its trailer")
    if unpacker.tell() != len(data):
        raise fail(f"is corrupt: {len(data) - unpacker.tell()} bytes follow its trailer")
    if trailer.get("end") != FORMAT or not isinstance(trailer.get("sha256"), str):
        raise fail("is corrupt: its trailer is not a cilia-history trailer")
    if hashlib.sha256(data[:body_end]).hexdigest() != trailer["sha256"]:
        raise fail("is corrupt: its SHA-256 does not match the trailer's")
    if trailer.get("count") != len(records) or head.get("count") != len(records):
        raise fail(f"is corrupt: it holds {len(records)} records, its trailer says "
                   f"{trailer.get('count')!r}")
    header = HistoryHeader(str(head.get("stream", "")), str(head.get("exported_at", "")),
                           str(head.get("since") or ""), int(head.get("first_seq") or 0),
                           int(head.get("last_seq") or 0), len(records))
    return header, records


def _record(obj: Any, index: int, fail: Any) -> Record:
    ok = (isinstance(obj, list) and len(obj) == RECORD_FIELDS and isinstance(obj[0], int)
          and isinstance(obj[1], int) and isinstance(obj[2], str) and isinstance(obj[3], dict)
          and isinstance(obj[4], bytes))
    if not ok:
        raise fail(f"is corrupt: record {index} is not [seq, time_ns, subject, headers, "
                   f"payload]")
    return Record(obj[0], obj[1], obj[2], {str(k): str(v) for k, v in obj[3].items()}, obj[4])
