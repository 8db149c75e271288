"""The client's exception for every code the node reports, read from the node's own error bodies."""

from __future__ import annotations

import json

import httpx
import pytest

from edgenode import errors as node_errors
from edgenode.api.errors import error_body
from edgenode.client import EdgenodeClientError, Overloaded, errors
from edgenode.client.errors import raise_for_error


def _node_classes(cls: type[node_errors.EdgenodeError]) -> list[type[node_errors.EdgenodeError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _node_classes(sub))]


def _raised(response: httpx.Response) -> EdgenodeClientError:
    with pytest.raises(EdgenodeClientError) as raised:
        raise_for_error(response)
    return raised.value


@pytest.mark.parametrize("node_class", _node_classes(node_errors.EdgenodeError)[1:], ids=lambda c: c.__name__)
def test_every_node_error_has_a_twin_with_its_code_status_and_parents(
        node_class: type[node_errors.EdgenodeError]) -> None:
    body = {"error": {"code": node_class.code, "message": "it failed", "id": "req1", "field": "x"}}
    exc = _raised(httpx.Response(node_class.status, json=body))
    twin = getattr(errors, node_class.__name__)
    if errors.BY_CODE[node_class.code] is twin:  # codes shared with a parent map to the parent's class
        assert type(exc) is twin
    assert (exc.code, exc.status, exc.message, exc.request_id) == (node_class.code, node_class.status,
                                                                    "it failed", "req1")
    assert exc.field == "x"
    for ancestor in node_class.__mro__:
        if issubclass(ancestor, node_errors.EdgenodeError) and ancestor is not node_errors.EdgenodeError:
            assert issubclass(twin, getattr(errors, ancestor.__name__))


def test_overloaded_carries_retry_after_from_the_body_or_the_header() -> None:
    exc = node_errors.Overloaded("busy", retry_after=7)
    response = httpx.Response(503, content=error_body(exc, "req2"), headers=exc.headers())
    raised = _raised(response)
    assert isinstance(raised, Overloaded) and raised.retry_after == 7
    bare = {"error": {"code": "overloaded", "message": "busy", "id": "req3"}}
    assert _raised(httpx.Response(503, json=bare, headers={"retry-after": "4"})).retry_after == 4
    assert isinstance(_raised(httpx.Response(503, json={"error": {**bare["error"], "code": "shutting_down"}})),
                      Overloaded)


def test_unknown_codes_and_foreign_bodies_fall_back_on_the_status() -> None:
    newer = _raised(httpx.Response(404, json={"error": {"code": "gadget_not_found", "message": "m", "id": "r"}}))
    assert type(newer) is errors.NotFound and newer.code == "gadget_not_found"
    proxy = _raised(httpx.Response(502, text="<html>bad gateway</html>", headers={"x-request-id": "r9"}))
    assert proxy.http_status == 502 and "bad gateway" in proxy.message and proxy.request_id == "r9"
    odd = _raised(httpx.Response(418, content=json.dumps({"error": "nope"}).encode()))
    assert type(odd) is EdgenodeClientError and odd.http_status == 418
    with pytest.raises(AttributeError):
        _ = odd.no_such_detail
    raise_for_error(httpx.Response(200, json={"error": {"code": "x", "message": "not an error"}}))
