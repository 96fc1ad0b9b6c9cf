"""YAML read safely: limits checked on the event stream before any object is built.

PyYAML builds an alias as a reference to its anchor's object, so a few lines of anchors that
refer to each other (the "billion laughs") load as a small graph that explodes when walked
(validated, copied, encoded); and each level of nesting costs the composer stack frames.
:func:`check_limits` walks the parser's events (no objects) and counts, per document, the
nesting depth and the number of nodes once every alias is expanded; :func:`load_all` then
builds the documents with Kubernetes' reading of YAML (timestamps stay strings, as they do
when YAML becomes JSON).
"""

from __future__ import annotations

from typing import Any

import yaml

from services.common.contract.objects import MAX_DEPTH
from services.common.errors import CiliaError

MAX_EXPANDED_NODES = 200_000   # nodes in one document once aliases are expanded


class YamlLimitError(CiliaError, ValueError):
    """A document exceeds a limit; ``index`` is its position in the file."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


def check_limits(text: str, max_depth: int = MAX_DEPTH,
                 max_nodes: int = MAX_EXPANDED_NODES) -> int:
    """Check every document's nesting and alias expansion; returns the number of documents.

    Raises:
        YamlLimitError: naming the document and the line.
        yaml.YAMLError: the text is not YAML.
    """
    index = -1
    anchors: dict[str, int] = {}
    stack: list[list[Any]] = []     # open collections: [anchor, nodes so far]

    def add(nodes: int, event: yaml.Event) -> None:
        if stack:
            stack[-1][1] += nodes
            if stack[-1][1] > max_nodes:
                raise YamlLimitError(index, f"aliases expand to more than {max_nodes} nodes "
                                            f"({_line(event)})")

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.DocumentStartEvent):
            index += 1
            anchors = {}
        elif isinstance(event, yaml.CollectionStartEvent):
            stack.append([event.anchor, 1])
            if len(stack) > max_depth:
                raise YamlLimitError(index, f"nested deeper than {max_depth} levels "
                                            f"({_line(event)})")
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, nodes = stack.pop()
            if anchor is not None:
                anchors[anchor] = nodes
            add(nodes, event)
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                anchors[event.anchor] = 1
            add(1, event)
        elif isinstance(event, yaml.AliasEvent):
            nodes = anchors.get(event.anchor or "")
            if nodes is None:   # undefined, or an anchor still open (a recursive alias)
                raise YamlLimitError(index, f"alias *{event.anchor} refers to no complete "
                                            f"anchor ({_line(event)})")
            add(nodes, event)
    return index + 1


def _line(event: yaml.Event) -> str:
    mark = event.start_mark
    return f"line {mark.line + 1}" if mark is not None else "unknown line"


class _Loader(yaml.SafeLoader):
    """SafeLoader with Kubernetes' reading of YAML: timestamps are strings."""


def _timestamp_as_text(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    assert isinstance(node, yaml.ScalarNode)
    return str(loader.construct_scalar(node))


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


def load_all(text: str) -> list[Any]:
    """Every document of ``text`` (check :func:`check_limits` first)."""
    return list(yaml.load_all(text, Loader=_Loader))
