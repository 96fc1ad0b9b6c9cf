"""The selector of a toFQDNs name or pattern: a pure function of its normalized text."""

from __future__ import annotations

import hashlib

from services.policy.fqdn import fqdn_selector


def test_one_text_one_selector_whatever_its_case_or_trailing_dot() -> None:
    sel = fqdn_selector("API.Example.com.")
    key = hashlib.sha256(b"api.example.com").hexdigest()[:16]
    assert sel.canonical == f"{{fqdn:{key} In ()}}"
    assert sel.id == fqdn_selector("api.example.com").id
    assert sel.id != fqdn_selector("*.example.com").id
    assert sel.to_dict()["matchExpressions"] == [
        {"key": f"fqdn:{key}", "operator": "In", "values": [""]}]
