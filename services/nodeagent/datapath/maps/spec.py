"""What every map module declares: the twin base class, the map's spec and its renderers.

A map module (``services/nodeagent/datapath/maps/<map>.py``) holds, for one pinned BPF map:

- its ctypes twins, each naming the C struct it mirrors (checked against the C side by
  ``tests/kernel/datapath/test_dp_twins.py``, which walks the registry);
- its entry type (the domain type the agent reasons in) and pure encode/decode between
  entries and the raw key/value bytes;
- its typed view: the class the agent reconciles through, over a
  :class:`~services.nodeagent.datapath.backend.MapBackend` (the kernel only behind that seam);
- its renderers: rows for ``cilia bpf <command> list`` and the flat form ``cilia replay``
  shows;
- a :class:`MapSpec` tying these together, listed once in :mod:`.registry`.

Nothing here touches the kernel.
"""

from __future__ import annotations

import ctypes as ct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from services.nodeagent.datapath.backend import MapBackend

u8 = ct.c_uint8
u16 = ct.c_uint16
u32 = ct.c_uint32
u64 = ct.c_uint64

V = TypeVar("V")

FlatMap = dict[str, Any]      # replay's rendering: string keys, JSON values
Row = dict[str, Any]          # one row of ``cilia bpf <command> list -o json``

# Groups of maps opened together (NodeMaps, LbMaps); maps in no group are opened on demand.
GROUP_NODE = "node"
GROUP_LB = "lb"


class Twin(ct.Structure):
    """Base of the twins: construction from and conversion to raw map bytes.

    ``C_STRUCT`` names the C struct (``""``: a plain integer key such as an array index),
    ``C_HEADER`` the header under ``bpf/lib`` that declares it.
    """

    C_STRUCT = ""
    C_HEADER = ""

    @classmethod
    def from_bytes(cls, raw: bytes) -> Twin:
        if len(raw) != ct.sizeof(cls):
            raise ValueError(f"{cls.__name__}: {len(raw)} bytes, expected {ct.sizeof(cls)}")
        return cls.from_buffer_copy(raw)

    def to_bytes(self) -> bytes:
        return bytes(self)


class U32Key(Twin):
    """The ``u32`` index of an array map (no C struct of its own)."""

    _fields_ = (("index", u32),)


@dataclass(frozen=True)
class FlatContext:
    """What a replay rendering may need beyond the entries."""

    pods: Mapping[str, str] = field(default_factory=dict)   # pod IP -> namespace/name


@dataclass(frozen=True)
class Renderer(Generic[V]):
    """``cilia bpf <command> list``: rows read through the map's view, and their table.

    ``rows`` gives what ``-o json`` prints (the CLI puts ``"node"`` first in each row);
    ``cells`` turns one such row (with its node) into the table's cells under ``headers``.
    """

    command: str
    help: str                             # the command group's help
    list_help: str                        # the list command's help
    rows: Callable[[V], list[Row]]
    headers: tuple[str, ...]
    cells: Callable[[Row], list[Any]]
    numparse: bool = True                 # let tabulate align numbers


@dataclass(frozen=True)
class MapSpec(Generic[V]):
    """One pinned map: where it lives, what it holds, how to open, write and show it.

    Attributes:
        name: the pin file under the node's pin directory (``CILIA_PIN_DIR "/<name>"`` in
            the header).
        header: the header under ``bpf/lib`` that declares the map.
        map_type: the map type the header declares (``BPF_TABLE_PINNED``'s first argument).
        key: the key twin (None: a ring buffer has no key).
        value: the value twin (a ring buffer: the record it carries).
        max_entries: capacity (entries; a ring buffer: bytes).
        cflags: the ``-D`` defines the header needs from Python (its capacity first).
        view: the typed view over a backend (None: no view, e.g. the ring buffer's reader
            lives with the kernel access).
        group: which map set opens it (:data:`GROUP_NODE`, :data:`GROUP_LB`, or ``""``).
        part: the agent's health part whose writes the map holds (``""``: the agent does
            not write it); maps with a part are drift-checked and repaired.
        renderer: ``cilia bpf <command> list``, if the map has one.
        flat: replay's rendering of the map's desired entries, if replay shows the map.
        twins: further C structs the module mirrors (e.g. a ring buffer record's parts).
    """

    name: str
    header: str
    map_type: str
    key: type[Twin] | None
    value: type[Twin]
    max_entries: int
    cflags: Mapping[str, int]
    view: Callable[[MapBackend], V] | None = None
    group: str = ""
    part: str = ""
    renderer: Renderer[V] | None = None
    flat: Callable[[Any, FlatContext], FlatMap] | None = None
    twins: tuple[type[Twin], ...] = ()

    @property
    def key_size(self) -> int:
        return ct.sizeof(self.key) if self.key is not None else 0

    @property
    def value_size(self) -> int:
        return ct.sizeof(self.value)

    def all_twins(self) -> tuple[type[Twin], ...]:
        """Every twin of a C struct this map's module declares (for the layout test)."""
        mine = [t for t in (self.key, self.value, *self.twins) if t is not None]
        return tuple(t for t in mine if t.C_STRUCT)

    def open(self, backend: MapBackend) -> V:
        """The typed view over ``backend``.

        Raises:
            TypeError: the map has no view.
        """
        if self.view is None:
            raise TypeError(f"map {self.name!r} has no typed view")
        return self.view(backend)
