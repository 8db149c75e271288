"""``GET /v1/jobs/{id}``: follow background work that a route answered ``202`` for."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgenode.api.common import json, node_of, principal
from edgenode.api.parsing import PATH_MAX, query_int
from edgenode.api.schema import Json, Reply, operation
from edgenode.jobs import Job

#: The longest ``?wait=`` a follower may ask for, in seconds.
MAX_WAIT_S = 30

#: The request header that asks a route to answer with a job (RFC 7240).
PREFER_ASYNC = "respond-async"


class JobInfo(Reply):
    """A job: its status, progress while it runs, then the route's answer (``result_status``, ``result``) or error."""

    id: str
    kind: str
    status: Literal["running", "succeeded", "failed"]
    progress: dict[str, Json] | None
    result: Json = None
    error: dict[str, Json] | None
    result_status: int | None
    created_at: float
    finished_at: float | None
    url: str


#: The request header a route that may answer with a job declares (``headers=PREFER`` in its ``@operation``).
PREFER = {"Prefer": Annotated[str, Field(description="respond-async: answer 202 with a job at once "
                                                  "(its URL in Location); other preferences are ignored")] | None}


def wants_job(request: Request) -> bool:
    """Whether the caller sent ``Prefer: respond-async`` (then long routes answer 202 with a job)."""
    return PREFER_ASYNC in request.headers.get("prefer", "").lower()


def accepted(job: Job) -> Response:
    """The ``202`` answer for a started job, with its URL in ``Location``."""
    return json(job.wire(), status=202, headers={"location": f"/v1/jobs/{job.id}"})


@operation(responses={200: JobInfo}, errors=(400, 404),
           path={"id": Annotated[str, Field(min_length=1, max_length=PATH_MAX)]},
           query={"wait": Annotated[int, Field(ge=0, le=MAX_WAIT_S, description="Seconds to wait for the end")]
                  | None})
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

__all__ = ["PREFER", "JobInfo", "accepted", "routes", "wants_job"]
