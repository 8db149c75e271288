"""One test worker with a route per behaviour, so the whole suite needs a single build."""

import sys

from edgenode_guest import HostError, Response, env, fetch, kv, log, sql
from helpers import shout  # a vendored module beside main.py


def handle(request):
    route = request.path.strip("/").split("/")[0]
    return ROUTES.get(route, not_found)(request)


def not_found(request):
    return Response.json({"error": "no such route", "path": request.path}, status=404)


def echo(request):
    log(f"echo {request.method} {request.path}")
    return {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "headers": {k: v for k, v in request.headers.items() if k.startswith("x-")},
        "body": request.text(),
    }


def text(request):
    return shout("hello")


def raw(request):
    return bytes(range(256))


def items(request):
    return [1, 2, 3]


def status(request):
    return Response("teapot", status=418, headers={"X-Guest": "yes"})


def header_names(request):
    return sorted(request.headers)


def page(request):
    # HTML that would act on the node's origin if it ran there: a script, a cookie, its own policy.
    return Response("<script>document.title = sessionStorage.getItem('token')</script>", headers={
        "content-type": "text/html", "set-cookie": "edgenode_session=stolen; Path=/",
        "content-security-policy": "default-src *", "x-guest": "yes"})


def env_route(request):
    return {"greeting": env.get("GREETING"), "keys": sorted(env)}


def counter(request):
    n = int(kv.get("hits") or 0) + 1
    kv.put("hits", str(n))
    return {"hits": n}


def kv_route(request):
    key = request.query.get("key", "k")
    if request.method == "PUT":
        kv.put(key, request.body)
        return {"stored": key}
    if request.method == "DELETE":
        kv.delete(key)
        return {"deleted": key}
    if "list" in request.query:
        return {"keys": kv.list(request.query.get("prefix", ""))}
    value = kv.get(key)
    return {"key": key, "value": None if value is None else value.decode()}


def sql_route(request):
    try:
        sql("CREATE TABLE IF NOT EXISTS notes (body TEXT)")  # no primary key: a table of this node only
        sql("INSERT INTO notes (body) VALUES (?)", [request.text() or "note"])
        return sql("SELECT body FROM notes ORDER BY rowid")
    except HostError as exc:
        return Response.json({"host_error": str(exc)}, status=500)


def fetch_route(request):
    url = request.query["url"]
    count = int(request.query.get("count", "1"))
    try:
        for _ in range(count):
            response = fetch(url, headers={"x-from": "guest"})
        return {"status": response.status, "body": response.text()}
    except HostError as exc:
        return Response.json({"host_error": str(exc)}, status=502)


def loop(request):
    n = 0
    while True:
        n += 1


def alloc(request):
    hoard = []
    while True:
        hoard.append(bytearray(1 << 20))


def recurse(request):
    sys.setrecursionlimit(10_000_000)

    def down(n):
        return down(n + 1) + 1

    return str(down(0))


def fail(request):
    return 1 / 0


def exit_route(request):
    import os

    os._exit(3)


def escape(request):
    """Try to reach the host's files and network without a binding."""
    tried = {}
    try:
        with open("/etc/hostname") as f:
            tried["file"] = f.read()
    except OSError as exc:
        tried["file"] = f"denied: {type(exc).__name__}"
    try:
        import socket

        socket.create_connection(("127.0.0.1", int(request.query.get("port", "80"))), timeout=1).close()
        tried["socket"] = "connected"
    except Exception as exc:
        tried["socket"] = f"denied: {type(exc).__name__}"
    return tried


def big(request):
    return b"x" * int(request.query.get("n", "1000"))


def bad_status(request):
    return Response("nope", status=1000)


ROUTES = {
    "page": page,
    "headers": header_names,
    "echo": echo,
    "text": text,
    "raw": raw,
    "items": items,
    "status": status,
    "env": env_route,
    "counter": counter,
    "kv": kv_route,
    "sql": sql_route,
    "fetch": fetch_route,
    "loop": loop,
    "alloc": alloc,
    "recurse": recurse,
    "fail": fail,
    "exit": exit_route,
    "big": big,
    "escape": escape,
    "bad-status": bad_status,
}
