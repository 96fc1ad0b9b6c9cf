"""Selectors: parsing, canonical form, stable ids, matching with label sources."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.common.labels import Labels
from services.policy import EndpointSelector, SelectorError, parse_selector


def sel(doc: dict) -> EndpointSelector:  # type: ignore[type-arg]
    return parse_selector(doc, "sel")


def test_match_labels_and_expressions_are_one_canonical_selector() -> None:
    a = sel({"matchLabels": {"app": "web", "tier": "x"}})
    b = sel({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["x"]},
                                  {"key": "app", "operator": "In", "values": ["web"]}]})
    assert a == b and a.id == b.id and a.canonical == b.canonical
    assert a.canonical == "{any:app In (web), any:tier In (x)}"
    assert sel({"matchLabels": {"app": "db"}}).id != a.id


def test_selector_id_is_stable_across_processes() -> None:
    code = ("from services.policy import parse_selector as p;"
            "print(p({'matchLabels': {'app': 'web'}}, 's').id)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123"}).stdout.strip()
    assert out == sel({"matchLabels": {"app": "web"}}).id
    assert len(out) == 16 and int(out, 16) >= 0


@pytest.mark.parametrize(("doc", "labels", "expected"), [
    ({"matchLabels": {"app": "web"}}, ["k8s:app=web"], True),
    ({"matchLabels": {"app": "web"}}, ["container:app=web"], True),       # any: matches all
    ({"matchLabels": {"k8s:app": "web"}}, ["container:app=web"], False),  # k8s: only k8s
    ({"matchLabels": {"k8s:app": "web"}}, ["k8s:app=web"], True),
    ({"matchLabels": {"reserved:host": ""}}, ["reserved:host"], True),
    ({"matchLabels": {"reserved:host": ""}}, ["k8s:host="], False),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]},
     ["k8s:app=b"], True),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]},
     ["k8s:app=b"], True),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]},
     ["k8s:app=a"], False),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]},
     ["k8s:x=y"], True),                                                   # absent key
    ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, ["k8s:app=z"], True),
    ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, ["k8s:x=z"], False),
    ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, ["k8s:x=z"], True),
    ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, ["k8s:app=z"],
     False),
    ({}, ["reserved:world"], True),
])
def test_matches(doc: dict, labels: list[str], expected: bool) -> None:  # type: ignore[type-arg]
    assert sel(doc).matches(Labels.parse(labels)) is expected


@pytest.mark.parametrize(("doc", "path", "words"), [
    ({"matchExpressions": [{"key": "app", "operator": "Like", "values": ["a"]}]},
     "sel.matchExpressions[0].operator", "unknown operator 'Like'"),
    ({"matchExpressions": [{"key": "app", "operator": "In"}]},
     "sel.matchExpressions[0].values", "needs at least one value"),
    ({"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]},
     "sel.matchExpressions[0].values", "takes no values"),
    ({"matchLabels": {"foo:app": "x"}}, "sel.matchLabels.foo:app", "unknown label source"),
    ({"matchLabels": {"app": 3}}, "sel.matchLabels.app", "must be a string"),
    ({"matchLabels": {"app": "a b"}}, "sel.matchLabels.app", "invalid label value"),
    ({"matchFields": {}}, "sel", "matchFields"),
])
def test_bad_selectors_name_the_field(doc: dict, path: str, words: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(SelectorError) as exc:
        sel(doc)
    assert exc.value.path == path
    assert words in exc.value.reason
