"""``GET /v1/jobs/{id}``: follow background work that a route answered ``202`` for."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgenode.api.common import json, node_of, principal
from edgenode.api.parsing import query_int
from edgenode.jobs import Job

#: The longest ``?wait=`` a follower may ask for, in seconds.
MAX_WAIT_S = 30

#: The request header that asks a route to answer with a job (RFC 7240).
PREFER_ASYNC = "respond-async"


def wants_job(request: Request) -> bool:
    """Whether the caller sent ``Prefer: respond-async`` (then long routes answer 202 with a job)."""
    return PREFER_ASYNC in request.headers.get("prefer", "").lower()


def accepted(job: Job) -> Response:
    """The ``202`` answer for a started job, with its URL in ``Location``."""
    return json(job.wire(), status=202, headers={"location": f"/v1/jobs/{job.id}"})


async def get_job(request: Request) -> Response:
    """A job: status (running, succeeded, failed), progress, and the result or error once finished.

    ``?wait=S`` (at most 30) answers as soon as the job finishes, or after S seconds.
    """
    jobs = node_of(request).jobs
    job = jobs.get(principal(request).tenant, request.path_params["id"])
    wait = query_int(request, "wait", 0, lo=0, hi=MAX_WAIT_S)
    body: dict[str, Any] = (await jobs.wait(job, wait)).wire()
    return json(body)


routes = [Route("/v1/jobs/{id}", get_job, methods=["GET"])]

__all__ = ["accepted", "routes", "wants_job"]
