from __future__ import annotations

import pytest

from edgenode.errors import ValidationFailed
from edgenode.isolates import AllowList


def test_plain_host_allows_both_schemes_on_default_ports_only() -> None:
    allow = AllowList.parse(["api.example.com"])
    assert allow.check("https://api.example.com/v1") is None
    assert allow.check("http://api.example.com/") is None
    assert allow.check("https://api.example.com:8443/") is not None
    assert allow.check("https://example.com/") is not None
    assert allow.check("https://evil-api.example.com/") is not None


def test_scheme_and_port_are_exact() -> None:
    allow = AllowList.parse(["https://api.example.com:8443", "http://127.0.0.1:9000"])
    assert allow.check("https://api.example.com:8443/x") is None
    assert allow.check("http://api.example.com:8443/x") is not None
    assert allow.check("http://127.0.0.1:9000/") is None
    assert allow.check("http://127.0.0.1:9001/") is not None


def test_wildcard_subdomains_exclude_the_apex() -> None:
    allow = AllowList.parse(["*.example.com"])
    assert allow.check("https://a.example.com/") is None
    assert allow.check("https://a.b.example.com/") is None
    assert allow.check("https://example.com/") is not None
    assert allow.check("https://badexample.com/") is not None


def test_any_port_and_any_host() -> None:
    assert AllowList.parse(["localhost:*"]).check("http://localhost:1234/") is None
    assert AllowList.parse(["*"]).check("https://anything.test/") is None


def test_empty_allows_nothing_and_odd_urls_are_refused() -> None:
    allow = AllowList.parse(["example.com"])
    assert AllowList().check("https://example.com/") is not None
    assert allow.check("ftp://example.com/") is not None
    assert allow.check("https://user:pw@example.com/") is not None
    assert allow.check("/relative") is not None


@pytest.mark.parametrize("entry", ["ftp://x.com", "exa mple.com", "x.com:0", "x.com:99999", "*.*.com", ""])
def test_malformed_entries_are_rejected(entry: str) -> None:
    with pytest.raises(ValidationFailed):
        AllowList.parse([entry])
