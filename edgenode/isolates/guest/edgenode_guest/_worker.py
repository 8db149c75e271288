"""Glue between the worker world's ``handle`` export and a Python handler."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from componentize_py_types import Err
from wit_world.imports.types import GuestError, HttpResponse

from edgenode_guest._http import Request, to_response


def _error(code: str, message: str) -> Err[Any]:
    return Err(GuestError(code, message))


def handle_with(handler: Callable[[Request], Any], req: Any) -> Any:
    """Call ``handler`` with the request; map its result or exception onto the WIT types."""
    try:
        request = Request(req.method, req.path, dict(req.query), dict(req.headers), req.body)
        response = to_response(handler(request))
        headers = [(k, v) for k, v in response.headers.items()]
        return HttpResponse(response.status, headers, response.body)
    except MemoryError:
        raise _error("out_of_memory", "MemoryError: the isolate ran out of memory") from None
    except Exception as exc:
        tb = traceback.format_exc(limit=20)
        raise _error("exception", f"{type(exc).__name__}: {exc}\n{tb}") from None

