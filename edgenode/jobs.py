"""Jobs: long work (an import, a build) run in the background and followed by its caller.

A route that may take more than a second starts a job and answers ``202`` at once with the
job and ``Location: /v1/jobs/{id}``; the caller follows ``GET /v1/jobs/{id}?wait=S``, which
answers as soon as the job finishes or ``S`` seconds pass. Jobs live in the node's memory (a
restart forgets them, as it stops the work), belong to a tenant, and are kept for
``keep_s`` after they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from edgenode.errors import EdgenodeError, Internal, JobNotFound

#: Job statuses; the last two are final.
STATUSES = ("running", "succeeded", "failed")


@dataclass
class Job:
    """One piece of background work: its status, progress while it runs, then a result or an error."""

    id: str
    tenant: str
    kind: str
    created_at: float
    status: str = "running"
    #: What the work reports as it goes (``{"bytes": n}``, ``{"phase": "..."}``); None until it does.
    progress: dict[str, Any] | None = None
    #: The JSON the synchronous route would have answered, once succeeded.
    result: Any = None
    #: ``{"code", "message", ...}`` of the failure, once failed.
    error: dict[str, Any] | None = None
    #: The HTTP status the synchronous route would have answered (201, 400, ...).
    result_status: int | None = None
    finished_at: float | None = None
    _done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def finished(self) -> bool:
        """Whether the job has succeeded or failed."""
        return self.status != "running"

    def report(self, **progress: Any) -> None:
        """Merge ``progress`` into what the job shows while it runs (thread-safe enough: one dict update)."""
        self.progress = {**(self.progress or {}), **progress}

    def wire(self) -> dict[str, Any]:
        """The job as JSON."""
        return {"id": self.id, "kind": self.kind, "status": self.status, "progress": self.progress,
                "result": self.result, "error": self.error, "result_status": self.result_status,
                "created_at": self.created_at, "finished_at": self.finished_at,
                "url": f"/v1/jobs/{self.id}"}


class Jobs:
    """The node's jobs, by id; ``start`` one, ``get`` or ``wait`` for it as its tenant."""

    def __init__(self, *, keep_s: float = 3600.0, now: Callable[[], float] = time.time) -> None:
        self.keep_s = keep_s
        self._now = now
        self._jobs: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[None]] = {}

    def start(self, tenant: str, kind: str, work: Callable[[Job], Awaitable[tuple[int, Any]]]) -> Job:
        """Run ``work(job)`` in the background; it returns ``(status, json)`` or raises an EdgenodeError."""
        self._forget_old()
        job = Job(id="job_" + secrets.token_hex(8), tenant=tenant, kind=kind, created_at=self._now())
        self._jobs[job.id] = job
        task = asyncio.create_task(self._run(job, work), name=f"job-{kind}-{job.id}")
        self._tasks.add(task)
        self._running[job.id] = task
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _task: self._running.pop(job.id, None))
        return job

    async def _run(self, job: Job, work: Callable[[Job], Awaitable[tuple[int, Any]]]) -> None:
        try:
            job.result_status, job.result = await work(job)
            job.status = "succeeded"
        except EdgenodeError as exc:
            job.status, job.result_status = "failed", exc.status
            job.error = {"code": exc.code, "message": exc.message, **exc.details}
        except asyncio.CancelledError:
            job.status, job.result_status = "failed", 503
            job.error = {"code": "unavailable", "message": "the node stopped before the job finished"}
            raise
        except Exception:  # noqa: BLE001 (a job's failure is its caller's answer, never the loop's)
            internal = Internal("the job failed unexpectedly")
            job.status, job.result_status = "failed", internal.status
            job.error = {"code": internal.code, "message": internal.message}
        finally:
            job.finished_at = self._now()
            job._done.set()

    def get(self, tenant: str, job_id: str) -> Job:
        """The job ``job_id`` of ``tenant``; ``JobNotFound`` for another tenant's or a forgotten one."""
        job = self._jobs.get(job_id)
        if job is None or job.tenant != tenant:
            raise JobNotFound(f"no job {job_id!r}", job=job_id)
        return job

    async def wait(self, job: Job, timeout_s: float) -> Job:
        """``job`` once it has finished, or as it is after ``timeout_s`` seconds."""
        if timeout_s > 0 and not job.finished:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job._done.wait(), timeout_s)
        return job

    async def stop(self) -> None:
        """Cancel the jobs still running (the node is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def purge_tenant(self, tenant: str) -> None:
        """Cancel the tenant's running jobs and forget all of its jobs (the tenant is being deleted)."""
        running = [task for job_id, task in self._running.items() if self._jobs[job_id].tenant == tenant]
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for job_id in [j.id for j in self._jobs.values() if j.tenant == tenant]:
            del self._jobs[job_id]

    def _forget_old(self) -> None:
        cutoff = self._now() - self.keep_s
        for job_id in [j.id for j in self._jobs.values() if j.finished_at is not None and j.finished_at < cutoff]:
            del self._jobs[job_id]


__all__ = ["STATUSES", "Job", "Jobs"]
