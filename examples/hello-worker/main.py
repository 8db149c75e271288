"""The smallest useful worker: counts hits in kv and echoes the path."""

from edgenode_guest import Response, kv, log


def handle(request):
    n = int(kv.get("hits") or 0) + 1
    kv.put("hits", str(n))
    log(f"{request.method} {request.path}")
    return Response.json({"path": request.path, "hits": n, "hello": request.query.get("name", "world")})
