"""The node's DNS cache: what a lookup teaches, when it is published, when addresses expire."""

from __future__ import annotations

import ipaddress

from services.nodeagent.dnsmsg import Learned
from services.nodeagent.fqdncache import FqdnCache


def learned(name: str, *ips: str, ttl: int = 5) -> Learned:
    return Learned(name, tuple(ipaddress.IPv4Address(i) for i in ips), ttl)


def test_a_lookup_is_published_with_its_addresses_expiry_and_pod() -> None:
    cache = FqdnCache("n1", grace=0)
    [ev] = cache.learn([learned("api.example.com", "203.0.113.20")], "default/a", now=100.0)
    assert (ev.node, ev.name, ev.endpoints) == ("n1", "api.example.com", ["default/a"])
    assert [(a.ip, a.ttl, a.expires) for a in ev.addresses] == [("203.0.113.20", 5, 105.0)]


def test_a_repeated_lookup_is_published_only_when_something_changed() -> None:
    cache = FqdnCache("n1", grace=0)
    cache.learn([learned("api.example.com", "203.0.113.20")], "default/a", now=100.0)
    assert cache.learn([learned("api.example.com", "203.0.113.20")], "default/a", 100.5) == []
    # another pod, a later expiry, a new address: each is news
    assert cache.learn([learned("api.example.com", "203.0.113.20")], "default/b", 100.6)
    assert cache.learn([learned("api.example.com", "203.0.113.20")], "default/b", 103.0)
    [ev] = cache.learn([learned("api.example.com", "203.0.113.21")], "default/b", 103.1)
    assert [a.ip for a in ev.addresses] == ["203.0.113.20", "203.0.113.21"]


def test_addresses_expire_after_ttl_and_grace_unless_a_connection_is_live() -> None:
    cache = FqdnCache("n1", grace=2)
    cache.learn([learned("moving.example.org", "203.0.113.11", ttl=2)], "default/m", 0.0)
    cache.learn([learned("moving.example.org", "203.0.113.12", ttl=2)], "default/m", 1.0)
    assert cache.due(3.9) == set()
    assert cache.due(4.0) == {"203.0.113.11"}
    assert cache.expire(4.0, live={"203.0.113.11"}) == []       # a live connection keeps it
    [ev] = cache.expire(4.5)
    assert [a.ip for a in ev.addresses] == ["203.0.113.12"]
    [ev] = cache.expire(5.0)
    assert ev.addresses == [] and cache.names() == []            # forgotten, and said so


def test_a_restarted_agent_restores_what_it_published() -> None:
    before = FqdnCache("n1", grace=0)
    [ev] = before.learn([learned("api.example.com", "203.0.113.20")], "default/a", 100.0)
    after = FqdnCache("n1", grace=0)
    after.restore(ev)
    assert after.addresses("api.example.com") == before.addresses("api.example.com")
    assert after.learn([learned("api.example.com", "203.0.113.20")], "default/a", 100.2) == []
    [gone] = after.expire(106.0)
    assert gone.addresses == []
