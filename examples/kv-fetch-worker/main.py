"""Fetch a URL through an allow-list and cache the answer in kv.

GET /?url=URL      fetch URL (an allowed host) unless kv holds a fresh copy
GET /cache         list what is cached
DELETE /?url=URL   forget a cached URL
"""

import json
import time

from edgenode_guest import HostError, Response, env, fetch, kv


def handle(request):
    # Host bindings answer only while a request runs: module level runs at build time.
    ttl_s = int(env.get("CACHE_TTL_S", "30"))
    if request.path.rstrip("/") == "/cache":
        return {"cached": kv.list("url:")}
    url = request.query.get("url") or env.get("DEFAULT_URL")
    if not url:
        return Response.json({"error": "pass ?url="}, status=400)
    key = "url:" + url
    if request.method == "DELETE":
        kv.delete(key)
        return {"forgot": url}
    cached = kv.get_json(key)
    if cached and time.time() - cached["at"] < ttl_s:
        return {"url": url, "from_cache": True, **cached}
    try:
        response = fetch(url)
    except HostError as exc:  # not allowed, or the subrequest budget is spent
        return Response.json({"url": url, "error": str(exc)}, status=502)
    entry = {"status": response.status, "body": response.text()[:2000], "at": time.time()}
    kv.put(key, json.dumps(entry))
    return {"url": url, "from_cache": False, **entry}
