"""The parsing layer: each rule on its own, then over HTTP (in process and on a real node)."""

from __future__ import annotations

import http.client
import json
import random
from typing import Any
from urllib.parse import urlsplit

import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

from edgenode.api.parsing import (
    INT_MAX,
    INT_MIN,
    MAX_DEPTH,
    check_depth,
    check_name,
    check_path,
    check_query,
    dumps,
    field,
    parse_json,
    query_bool,
    query_int,
    query_str,
)
from edgenode.errors import InvalidJson, ValidationFailed
from edgenode.node import Node
from tests.support import NodeProcess


def refused(raw: bytes | str) -> ValidationFailed | InvalidJson:
    with pytest.raises((ValidationFailed, InvalidJson)) as raised:
        parse_json(raw)
    assert isinstance(raised.value, (ValidationFailed, InvalidJson))
    return raised.value


# -- JSON ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "where"), [
    (b'{"ttl_s": NaN}', "ttl_s"),
    (b'{"ttl_s": Infinity}', "ttl_s"),
    (b'{"a": [1, {"b": -Infinity}]}', "a[1].b"),
    (b'{"ttl_s": 1e999}', "ttl_s"),
    (b'{"ttl_s": -1e999}', "ttl_s"),
    (b'{"ttl_s": 1E+999}', "ttl_s"),
    (b'{"ttl_s": -2.5e+0400}', "ttl_s"),
    (b'{"x": 1' + b"0" * 400 + b'.0}', "x"),
    (b'{"version": 18446744073709551616}', "version"),
    (b'{"version": 9223372036854775808}', "version"),
    (b'{"version": -9223372036854775809}', "version"),
    (b'{"v": ' + b"9" * 5000 + b"}", "v"),
    (b'{"name": "\\ud800"}', "name"),
    (b'{"name": "ok \\udfff"}', "name"),
    (b'{"list": ["a", "\\ud83d"]}', "list[1]"),
    (b'{"\\ud800": 1}', "\\ud800"),
    (b'NaN', "body"),
])
def test_values_the_node_does_not_take_are_refused_naming_the_field(raw: bytes, where: str) -> None:
    error = refused(raw)
    assert isinstance(error, ValidationFailed) and error.field == where, error.message


@pytest.mark.parametrize("raw", [
    b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b"\xff\xfe",
    b'{"name": "\xed\xa0\x80"}',  # a surrogate encoded in UTF-8 is not UTF-8
    b'{"name": "\xc0\xaf"}',  # an overlong encoding
    b'{"name": "a\x00b"}',  # a raw control character in a string
    b"\xef\xbb\xbf{}",
    "{}".encode("utf-16"),
    b"{} x",
    b"{",
    '"\ud800"',  # text (not bytes) holding a lone surrogate itself
])
def test_malformed_or_too_deep_json_is_invalid_json(raw: bytes | str) -> None:
    assert isinstance(refused(raw), InvalidJson)


@pytest.mark.parametrize(("raw", "value"), [
    (b'{"brackets": "' + b"[" * 1000 + b'"}', {"brackets": "[" * 1000}),  # brackets in strings do not nest
    (b'{"quote": "\\"[[[[", "n": [[[]]]}', {"quote": '"[[[[', "n": [[[]]]}),
    (b'{"pair": "\\ud83d\\ude00"}', {"pair": "\U0001f600"}),  # a surrogate pair is one character
    (b'{"nul": "a\\u0000b"}', {"nul": "a\x00b"}),  # NUL is JSON; names and paths refuse it later
    (b'{"max": 9223372036854775807, "min": -9223372036854775808}', {"max": INT_MAX, "min": INT_MIN}),
    (b'{"f": 1.5e308, "g": -0.0}', {"f": 1.5e308, "g": -0.0}),
    (b' {"a": 1} \n', {"a": 1}),
])
def test_good_json_passes(raw: bytes, value: Any) -> None:
    assert parse_json(raw) == value


def test_the_depth_limit_is_exact() -> None:
    deepest: Any = parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    for _ in range(MAX_DEPTH - 1):
        deepest = deepest[0]
    assert deepest == []
    assert isinstance(refused(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)), InvalidJson)
    assert isinstance(refused(b'{"a": "]]]]", "b": ' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}"),
                      InvalidJson)


# -- fields, names and paths -------------------------------------------------------------------


def test_field_bounds_numbers_and_lengths() -> None:
    data = {"version": 3, "ttl": 1.5, "name": "abc", "flag": True}
    assert field(data, "version", int, None, lo=1, hi=10) == 3
    with pytest.raises(ValidationFailed) as raised:
        field(data, "version", int, None, lo=4)
    assert raised.value.field == "version" and "at least 4" in raised.value.message
    with pytest.raises(ValidationFailed) as raised:
        field({"version": 0}, "version", int, None, lo=1)
    assert raised.value.field == "version"
    with pytest.raises(ValidationFailed):
        field({"ttl": float("nan")}, "ttl", (int, float), None)
    with pytest.raises(ValidationFailed):
        field({"ttl": float("inf")}, "ttl", (int, float), None)
    with pytest.raises(ValidationFailed):
        field(data, "name", str, max_len=2)
    with pytest.raises(ValidationFailed):
        field(data, "flag", int)  # a boolean is not an integer
    assert field(data, "missing", int, 7) == 7


def test_names_and_paths_fit_the_file_system() -> None:
    assert check_name("a" * 255, "name") == "a" * 255
    assert check_path("/".join(["a" * 255] * 15), "path")
    for bad in ("a" * 256, "\u00e9" * 128, "a\x00b", "a/b"):
        with pytest.raises(ValidationFailed) as raised:
            check_name(bad, "name")
        assert raised.value.field == "name"
    for bad in ("a/" * 2048, "ok/" + "b" * 256, "a\x00b", "x" * 100_000):
        with pytest.raises(ValidationFailed) as raised:
            check_path(bad, "path")
        assert raised.value.field == "path"


# -- query parameters --------------------------------------------------------------------------


def _request(query: bytes) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "query_string": query, "headers": []})


def test_query_integers_are_bounded() -> None:
    assert query_int(_request(b"offset=12"), "offset", 0, lo=0, hi=INT_MAX) == 12
    assert query_int(_request(b""), "offset", 5, lo=0, hi=INT_MAX) == 5
    assert query_int(_request(b"n=-3"), "n", 0, lo=-5, hi=5) == -3
    for bad in (b"offset=99999999999999999999", b"offset=-1", b"offset=1e3", b"offset=abc", b"offset=",
                b"offset=%D9%A1", b"offset=" + b"9" * 5000):
        with pytest.raises(ValidationFailed) as raised:
            query_int(_request(bad), "offset", 0, lo=0, hi=INT_MAX)
        assert raised.value.field == "offset"


def test_query_booleans_and_strings() -> None:
    assert query_bool(_request(b"follow=true"), "follow") is True
    assert query_bool(_request(b"follow=0"), "follow") is False
    assert query_bool(_request(b""), "follow", True) is True
    with pytest.raises(ValidationFailed):
        query_bool(_request(b"follow=maybe"), "follow")
    assert query_str(_request(b"ref=main"), "ref") == "main"
    assert query_str(_request(b"ref="), "ref", "dflt") == "dflt"
    with pytest.raises(ValidationFailed):
        query_str(_request(b"ref=" + b"x" * 5000), "ref")


@pytest.mark.parametrize(("query", "name"), [
    (b"a=%00", "a"), (b"a=%FF%FE", "a"), (b"a=%ED%A0%80", "a"), (b"%FF=1", "query parameter name"),
    (b"ok=1&b=x%00y", "b"),
])
def test_query_strings_are_strict_utf8_without_nul(query: bytes, name: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        check_query(query)
    assert raised.value.field == name
    check_query(b"a=%C3%A9&b=+x+&c")


# -- responses ---------------------------------------------------------------------------------


def test_responses_never_carry_nan_or_infinity() -> None:
    body = dumps({"a": float("nan"), "b": [float("inf"), -float("inf")], "c": "\ud800", "d": 1.5})
    assert json.loads(body, parse_constant=lambda c: pytest.fail(f"emitted {c}")) == {
        "a": None, "b": [None, None], "c": "\ufffd", "d": 1.5}
    assert dumps({"x": "é"}) == '{"x":"é"}'.encode()


# -- over HTTP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"18446744073709551616", b"0", b"-5",
                                 b"1e12"])
def test_a_token_ttl_must_be_finite_and_bounded(local: tuple[Node, TestClient], ttl: bytes) -> None:
    _, client = local
    r = client.post("/v1/tokens", content=b'{"tenant": "acme", "ttl_s": ' + ttl + b"}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "validation_failed" and r.json()["error"]["field"] == "ttl_s"
    assert client.get("/v1/tokens").json()["tokens"] == []


def test_a_stored_infinity_is_answered_as_valid_json(local: tuple[Node, TestClient]) -> None:
    node, client = local
    issued = client.post("/v1/tokens", json={"tenant": "acme", "ttl_s": 60}).json()
    # A row written before TTLs were checked.
    node.auth.db.write_sync(lambda c: c.execute("UPDATE tokens SET expires_at = ? WHERE id = ?",
                                                (float("inf"), issued["id"])))
    r = client.get("/v1/tokens")
    assert r.status_code == 200
    tokens = json.loads(r.content, parse_constant=lambda c: pytest.fail(f"emitted {c}"))["tokens"]
    assert [t["expires_at"] for t in tokens] == [None]


def test_path_and_query_parameters_are_checked_on_every_route(local: tuple[Node, TestClient]) -> None:
    _, client = local
    r = client.post("/v1/workers/w/rollback", json={"version": 0})
    assert r.status_code == 400 and r.json()["error"]["field"] == "version", r.text
    for url, where in [("/v1/tokens/a%00b", "id"), ("/v1/tenants/" + "a" * 256, "name"),
                       ("/v1/tokens?tenant=%FF", "tenant"), ("/v1/kv/ns/a%00", "key"),
                       ("/v1/kv/ns/" + "k/" * 2100, "key")]:
        method = "DELETE" if url.startswith(("/v1/tokens/", "/v1/tenants/")) else "GET"
        r = client.request(method, url)
        assert r.status_code == 400, (url, r.text)
        assert r.json()["error"] == {**r.json()["error"], "code": "validation_failed", "field": where}


def _raw(node: NodeProcess, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> None:
    """Send a request that is refused early, then reuse (or find cleanly closed) its connection."""
    url = urlsplit(node.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)
    conn.request(method, path, body=body, headers=headers)
    first = conn.getresponse()
    first.read()
    assert 400 <= first.status < 500
    if first.getheader("connection", "").lower() == "close":
        assert first.will_close
        conn.close()
        return
    sock = conn.sock
    conn.request("GET", "/healthz")
    again = conn.getresponse()
    again.read()
    assert again.status == 200 and conn.sock is sock
    conn.close()


def test_an_early_refusal_closes_the_connection_cleanly(node: NodeProcess) -> None:
    auth = {"authorization": f"Bearer {node.admin_token}", "content-type": "application/json"}
    # Git with an empty bearer and a body; an agent resume with a body that is not UTF-8.
    _raw(node, "POST", "/git/x.git/git-upload-pack", b"0000", {"authorization": "Bearer ",
                                                              "content-type": "application/x-git-upload-pack-request"})
    _raw(node, "GET", "/git/x.git/info/refs?service=git-upload-pack", b"{}", {"authorization": "Bearer "})
    _raw(node, "POST", "/v1/agents/runs/nope/resume", b"\xff\xfe" * 1000, auth)
    _raw(node, "POST", "/v1/tokens?x=%00", b'{"tenant": "acme"}', auth)
    _raw(node, "POST", "/v1/tokens", b'{"tenant": "acme"}', {"authorization": "Bearer nope"})
    with node.client() as c:
        assert c.get("/healthz").status_code == 200


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def test_the_depth_check_agrees_with_the_decoded_value_on_random_documents() -> None:
    """Strings full of brackets, quotes and backslashes never fool the (fast or slow) bracket count."""
    rng = random.Random(19)
    pieces = ["[", "]", "{", "}", '"', "\\", "a", "\n", '\\"', "\\\\", "\u00fc", "\\u005b"]

    def text() -> str:
        return "".join(rng.choice(pieces) for _ in range(rng.randrange(6)))

    def value(level: int) -> Any:
        roll = rng.random()
        if level > 70 or roll < 0.3:
            return text()
        if roll < 0.65:
            return [value(level + 1) for _ in range(rng.randrange(4))]
        return {text(): value(level + 1) for _ in range(rng.randrange(4))}

    for _ in range(3000):
        doc = value(0)
        raw = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()
        depth = _depth(doc)
        check_depth(raw, depth)
        if depth:
            with pytest.raises(InvalidJson):
                check_depth(raw, depth - 1)


def test_every_lone_surrogate_is_found_whatever_escapes_surround_it() -> None:
    """Escaped backslashes, pairs, case and neighbours never hide a lone surrogate (nor invent one)."""
    rng = random.Random(20)
    pieces = ["\\\\", "\\ud83d", "\\uDE00", "\\ude00", "\\uD800", "\\udbff", "\\udc00", "ud800", "a", "\\n", "\\u0041",
              "ab", "\\\\ud800", "\\\\udc00", "\\u00e9"]
    for _ in range(20_000):
        raw = ('{"k": "' + "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 7))) + '"}').encode()
        decoded = json.loads(raw)["k"]
        lone = any(0xD800 <= ord(c) <= 0xDFFF for c in decoded)
        if lone:
            error = refused(raw)
            assert isinstance(error, ValidationFailed) and error.field == "k", raw
        else:
            assert parse_json(raw) == {"k": decoded}, raw
