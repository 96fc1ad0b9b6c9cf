"""Only the bus contract spells the bus: no ``cilia.`` subject and no event type as a string
literal anywhere in ``services/`` outside ``services/common/contract/``.

What counts (string constants found with :mod:`ast`, so comments never count):

* a subject literal: a string that starts with ``cilia.`` and goes on with a wildcard or with
  a token and another dot (``"cilia.identity.>"``, ``"cilia.lb.backend.9"``, the head
  ``"cilia.policy.rules."`` of an f-string, ``"cilia.%s.%s"``), or is ``"cilia."`` itself as
  the head of an f-string or the left side of ``+`` or ``%`` (a subject built from parts).
  Names with one dot only (``"cilia.identity"`` as a tracer name, ``"cilia.node"`` as a span
  attribute, ``"cilia.io/underlay-mac"``) are not subjects, nor is ``"cilia."`` stripped off
  such a name;
* an event-type literal: a string equal to a value of one of the contract's event-type enums
  (``"policy.rules"``, ``"object.upsert"``, ``"flow"``...), wherever it stands (an argument, a
  ``case`` pattern, a comparison, a dict value).

Docstrings are documentation, not literals: a string that is a statement by itself (a module,
class or function docstring, or an attribute's docstring) may name subjects and event types,
and does. Everything else is code and must use the contract's builders, enums and subscriptions.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from services.common.contract import (
    CONSUMERS,
    EVENT_ENUMS,
    EVENTS,
    HISTORY_SUBJECTS,
    REPLAY,
    subject_matches,
)
from tests.support.procs import REPO

ROOT = REPO
SERVICES = ROOT / "services"
CONTRACT = SERVICES / "common" / "contract"
SUBJECT_PREFIX = "cilia."
# cilia.<wildcard> or cilia.<token>.<more>: a subject, a filter or a subject's head
_SUBJECT = re.compile(r"^cilia\.(?:[*>]|[^.\s/]+\.)")
EVENT_TYPES = frozenset(str(e) for enum in EVENT_ENUMS for e in enum)


def _documentation(tree: ast.AST) -> set[int]:
    """ids of the string constants that are statements by themselves (docstrings)."""
    return {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)}


def _heads(tree: ast.AST) -> set[int]:
    """ids of the constants that begin a string built from parts: an f-string's first part,
    the left side of ``+`` or ``%``."""
    heads = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and node.values:
            heads.add(id(node.values[0]))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
            heads.add(id(node.left))
    return heads


def violations(source: str, filename: str = "<source>") -> list[str]:
    """Every subject or event-type literal in ``source``, as ``file:line: 'text' (what)``, in
    source order."""
    tree = ast.parse(source, filename)
    docs, heads = _documentation(tree), _heads(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) \
                or id(node) in docs:
            continue
        text = node.value
        if _SUBJECT.match(text) or (text == SUBJECT_PREFIX and id(node) in heads):
            found.append((node.lineno, node.col_offset, f"{text!r} (a subject)"))
        elif text in EVENT_TYPES:
            found.append((node.lineno, node.col_offset, f"{text!r} (an event type)"))
    return [f"{filename}:{line}: {what}" for line, _, what in sorted(found)]


def _service_files() -> list[Path]:
    return sorted(p for p in SERVICES.rglob("*.py") if CONTRACT not in p.parents)


def test_no_subject_or_event_type_literal_outside_the_contract() -> None:
    files = _service_files()
    assert len(files) > 50     # the walk found the services
    found = [v for p in files
             for v in violations(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert not found, ("spell subjects and event types through services.common.contract "
                       "(builders, event-type enums, subscriptions):\n" + "\n".join(found))


PLANTED = '''
"""A module that names cilia.policy.rules.<id> and "policy.rules" in its docstring."""
import logging
from opentelemetry import trace

log = logging.getLogger("cilia.lab")                 # a logger name, not a subject
_tracer = trace.get_tracer("cilia.identity")          # one dot: a tracer name
ATTRS = {"cilia.node": 1, "cilia.msg_id": 2}          # span attributes
MAC = "cilia.io/underlay-mac"                         # an annotation key
DOMAIN = "cilia.test"
# "cilia.identity.>" in a comment is no literal
FILTERS = ["cilia.identity.>"]                        # 1: a filter
def rules(n):
    """Subject ``cilia.policy.rules.<n>`` (docstring)."""
    return f"cilia.policy.rules.{n}"                  # 2: an f-string head
def anything(kind, n):
    return f"cilia.{kind}.{n}"                        # 3: "cilia." alone
def joined(node):
    return "cilia." + node                            # 4: concatenated
def attribute(key):
    return key.removeprefix("cilia.")                 # a span attribute's prefix
def fmt(kind, n):
    return "cilia.%s.%s" % (kind, n)                  # 5: %-formatted
def fold(event_type, data):
    match event_type:
        case "object.upsert":                         # 6: a case pattern
            return data
    if event_type == "ipcache.delete":                # 7: a comparison
        return None
    return publish("flow", data)                      # 8: an argument
'''


def test_the_check_finds_planted_literals_and_leaves_names_and_docstrings() -> None:
    found = violations(PLANTED)
    assert [v.split(": ", 1)[1] for v in found] == [
        "'cilia.identity.>' (a subject)", "'cilia.policy.rules.' (a subject)",
        "'cilia.' (a subject)", "'cilia.' (a subject)", "'cilia.%s.%s' (a subject)",
        "'object.upsert' (an event type)", "'ipcache.delete' (an event type)",
        "'flow' (an event type)"]


def test_event_type_enums_are_the_wire_strings_of_every_schema() -> None:
    values = [str(e) for enum in EVENT_ENUMS for e in enum]
    assert len(values) == len(set(values))             # no event type in two domains
    assert set(values) == set(EVENTS)
    assert all(isinstance(e, str) for enum in EVENT_ENUMS for e in enum)


@pytest.mark.parametrize("consumer", [c for c in CONSUMERS if c is not REPLAY],
                         ids=lambda c: c.name)
def test_every_subscription_reads_the_history_stream(consumer: object) -> None:
    """A filter outside the stream's subjects would read nothing: each one lies inside."""
    filters = consumer.filters    # type: ignore[attr-defined]
    for f in filters:
        probe = f.replace(">", "x").replace("*", "x")
        assert any(subject_matches(probe, h) for h in HISTORY_SUBJECTS), f
