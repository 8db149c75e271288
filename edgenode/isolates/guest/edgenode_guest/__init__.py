"""The guest side of edgenode: what Python code running in an isolate imports.

A worker's ``main.py`` defines ``handle(request)`` and uses the host bindings::

    from edgenode_guest import Response, kv, log

    def handle(request):
        n = int(kv.get("hits") or 0) + 1
        kv.put("hits", str(n))
        log(f"{request.method} {request.path}")
        return Response.json({"path": request.path, "hits": n})

This package is bundled into every Python worker; it runs inside WebAssembly,
not in the node, and only reaches the host through the imports of the
``edgenode:guest`` WIT package.
"""

from edgenode_guest._bindings import HostError, env, fetch, kv, log, sql
from edgenode_guest._http import Request, Response

__all__ = ["HostError", "Request", "Response", "env", "fetch", "kv", "log", "sql"]
