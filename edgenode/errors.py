"""Every failure edgenode reports, with a stable code and an HTTP status.

Capabilities raise these; only ``edgenode.api`` turns them into responses, as
``{"error": {"code", "message", "id"}}`` plus any structured ``details``.
Subclass per domain, with a one-line docstring and structured fields.
"""

from __future__ import annotations

from typing import Any, ClassVar


class EdgenodeError(Exception):
    """Base of every error edgenode reports to a client."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def headers(self) -> dict[str, str]:
        """Extra response headers (``Retry-After`` and the like)."""
        return {}


# -- generic client errors -------------------------------------------------


class BadRequest(EdgenodeError):
    """The request is malformed or names something invalid."""

    code = "bad_request"
    status = 400


class InvalidJson(BadRequest):
    """The body is not valid JSON, or not the JSON shape the route takes."""

    code = "invalid_json"


class ValidationFailed(BadRequest):
    """A field of the request has the wrong type or value."""

    code = "validation_failed"

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message, field=field, **details)
        self.field = field


class Unauthorized(EdgenodeError):
    """No credentials, or credentials that match no live token."""

    code = "unauthorized"
    status = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="edgenode"'}


class Forbidden(EdgenodeError):
    """The token is valid but does not grant this action."""

    code = "forbidden"
    status = 403


class NotFound(EdgenodeError):
    """The resource does not exist, or is not the caller's to see."""

    code = "not_found"
    status = 404


class JobNotFound(NotFound):
    """No background job by that id for this tenant (or it ended long ago and was forgotten)."""

    code = "job_not_found"


class MethodNotAllowed(EdgenodeError):
    """The route exists but not with this method."""

    code = "method_not_allowed"
    status = 405


class Conflict(EdgenodeError):
    """The resource changed or already exists."""

    code = "conflict"
    status = 409


class PayloadTooLarge(EdgenodeError):
    """A request body, value or upload is larger than its limit."""

    code = "payload_too_large"
    status = 413

    def __init__(self, message: str, *, limit: int, **details: Any) -> None:
        super().__init__(message, limit=limit, **details)
        self.limit = limit

    def headers(self) -> dict[str, str]:
        # The rest of the body may still be in flight; a connection kept alive would read it
        # as the next request, so close it after this response.
        return {"Connection": "close"}


class UnsupportedMediaType(EdgenodeError):
    """The body's content type is not one this route takes."""

    code = "unsupported_media_type"
    status = 415


class TooManyRequests(EdgenodeError):
    """The caller sent more than its rate allows."""

    code = "too_many_requests"
    status = 429


class TenantOverShare(TooManyRequests):
    """A tenant holds its share of a node resource (isolate threads, activations); retry after ``retry_after`` s."""

    code = "tenant_over_share"

    def __init__(self, message: str, *, retry_after: int = 1, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class TenantQuotaExceeded(TenantOverShare):
    """A tenant has as many sandboxes, workers or repositories as the node allows one tenant."""

    code = "tenant_quota_exceeded"


class Overloaded(EdgenodeError):
    """The node is at capacity; try again after ``retry_after`` seconds."""

    code = "overloaded"
    status = 503

    def __init__(self, message: str, *, retry_after: int = 1, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Unavailable(EdgenodeError):
    """A capability this request needs is not available on this node."""

    code = "unavailable"
    status = 503


class ShuttingDown(Overloaded):
    """The node is draining and takes no new work."""

    code = "shutting_down"


class EgressError(EdgenodeError):
    """An outbound request (fetch, import, proxy) failed or was refused."""

    code = "egress_error"
    status = 502


class EgressDenied(EgressError):
    """The destination is not allowed: not in the allow-list, or resolves to a refused address."""

    code = "fetch_denied"
    status = 403


class EgressTimeout(EgressError):
    """An outbound exchange did not finish before its deadline."""

    code = "fetch_timeout"
    status = 504


class EgressFailed(EgressError):
    """The destination could not be reached or broke the exchange."""

    code = "fetch_failed"


class EgressTooLarge(EgressError):
    """An outbound response is larger than the caller accepts."""

    code = "fetch_too_large"


class Internal(EdgenodeError):
    """A bug: something failed that should not have."""

    code = "internal"
    status = 500


# -- store -----------------------------------------------------------------


class StoreError(EdgenodeError):
    """The local database failed to carry out a read or write."""

    code = "store_error"
    status = 500


class MigrationFailed(StoreError):
    """A named migration raised while being applied."""

    code = "migration_failed"

    def __init__(self, message: str, *, migration: str) -> None:
        super().__init__(message, migration=migration)
        self.migration = migration


class InsufficientStorage(StoreError):
    """The disk holding this data is full (or below the node's reserve): nothing was written."""

    code = "insufficient_storage"
    status = 507

    def __init__(self, message: str, *, purpose: str, free_bytes: int, **details: Any) -> None:
        super().__init__(message, purpose=purpose, free_bytes=free_bytes, **details)
        self.purpose = purpose
        self.free_bytes = free_bytes


class StorageIOFailed(StoreError):
    """The disk answered a read or write with an I/O error; retrying may help."""

    code = "storage_io_error"
    status = 503

    def __init__(self, message: str, *, purpose: str, retry_after: int = 5, **details: Any) -> None:
        super().__init__(message, purpose=purpose, retry_after=retry_after, **details)
        self.purpose = purpose
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class StoreTimeout(StoreError):
    """A database did not finish a read or write within its bound; ``started`` says if it may still land."""

    code = "store_timeout"
    status = 503

    def __init__(self, message: str, *, database: str, started: bool, retry_after: int = 5) -> None:
        super().__init__(message, database=database, started=started, retry_after=retry_after)
        self.database = database
        self.started = started
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class DatabaseDamaged(StoreError):
    """A database file failed its integrity check (or lost its log): it refuses writes until restored."""

    code = "database_damaged"
    status = 503

    def __init__(self, message: str, *, database: str, reason: str, **details: Any) -> None:
        super().__init__(message, database=database, reason=reason, **details)
        self.database = database
        self.reason = reason


class NamespaceDamaged(DatabaseDamaged):
    """A namespace's database failed its check; the namespace refuses writes, the node serves the others."""

    code = "namespace_damaged"


class DatabaseRefused(StoreError):
    """At start-up, a database the node created is missing, empty or damaged; the node will not start."""

    code = "database_refused"

    def __init__(self, message: str, *, path: str, reason: str) -> None:
        super().__init__(message, path=path, reason=reason)
        self.path = path
        self.reason = reason


class BackupFailed(StoreError):
    """A backup or restore could not be made (bad source or target, or a copy that failed); nothing was replaced."""

    code = "backup_failed"

    def __init__(self, message: str, *, path: str, **details: Any) -> None:
        super().__init__(message, path=path, **details)
        self.path = path


# -- auth ------------------------------------------------------------------


class TokenExpired(Unauthorized):
    """The token existed but its time to live has passed."""

    code = "token_expired"


class TokenRevoked(Unauthorized):
    """The token existed but has been revoked."""

    code = "token_revoked"


class PeerAuthFailed(Unauthorized):
    """A peer request carried no valid fleet signature."""

    code = "peer_auth_failed"


# -- artifacts -------------------------------------------------------------


class ArtifactNotFound(NotFound):
    """No repository, ref, path or object by that name in this tenant."""

    code = "artifact_not_found"


class RepoExists(Conflict):
    """A repository with that name already exists in this tenant."""

    code = "repo_exists"


class ParentMoved(Conflict):
    """The branch head is no longer the parent the commit was built on."""

    code = "parent_moved"

    def __init__(self, message: str, *, expected: str | None, actual: str | None) -> None:
        super().__init__(message, expected=expected, actual=actual)
        self.expected = expected
        self.actual = actual


class ImportFailed(BadRequest):
    """Importing a repository from a Git URL failed (unreachable, refused or not Git)."""

    code = "import_failed"


class PackTooLarge(PayloadTooLarge):
    """A pushed pack is larger than the node's limit; nothing of it was kept."""

    code = "pack_too_large"


class GitAuthRequired(Unauthorized):
    """A Git request carried no valid repository credentials (HTTP basic auth)."""

    code = "git_auth_required"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="edgenode git"'}


class ReadOnlyToken(Forbidden):
    """A read-only repository token was used to push."""

    code = "read_only_token"


class AnnouncementRejected(Unauthorized):
    """A ref announcement's fleet signature is missing, forged or stale."""

    code = "announcement_rejected"


# -- state and cluster -----------------------------------------------------


class VersionMismatch(EdgenodeError):
    """A compare-and-set write named a version that is not the key's current one."""

    code = "version_mismatch"
    status = 412

    def __init__(self, message: str, *, expected: str | None, current: str | None) -> None:
        super().__init__(message, expected=expected, current=current)
        self.expected = expected
        self.current = current


class SqlError(BadRequest):
    """SQLite rejected a statement (syntax, constraint, missing table, ...)."""

    code = "sql_error"


class SqlRefused(Forbidden):
    """A statement would escape its namespace or break replication (ATTACH, PRAGMA, DROP, ...)."""

    code = "sql_refused"


class SqlTimeLimit(BadRequest):
    """A statement ran longer than the namespace's time limit and was interrupted."""

    code = "sql_time_limit_exceeded"

    def __init__(self, message: str, *, limit_ms: int) -> None:
        super().__init__(message, limit_ms=limit_ms)
        self.limit_ms = limit_ms


class SqlResultTooLarge(PayloadTooLarge):
    """A statement's result is larger than the result size limit."""

    code = "sql_result_too_large"


class MalformedChanges(BadRequest):
    """A peer sent replication data that does not check out; none of it was applied."""

    code = "malformed_changes"


class SqlNotReplicable(BadRequest):
    """A statement would let rows of a replicated table collide unseen across nodes (UNIQUE, auto-assigned keys)."""

    code = "sql_not_replicable"

    def __init__(self, message: str, *, table: str, column: str) -> None:
        super().__init__(message, table=table, column=column)
        self.table = table
        self.column = column


class ClockOffsetExceeded(MalformedChanges):
    """A peer's changes are stamped further ahead of this node's clock than ``cluster.max_clock_offset_ms``."""

    code = "clock_offset_exceeded"

    def __init__(self, message: str, *, ahead_ms: int, max_offset_ms: int) -> None:
        super().__init__(message, ahead_ms=ahead_ms, max_offset_ms=max_offset_ms)
        self.ahead_ms = ahead_ms
        self.max_offset_ms = max_offset_ms


# -- agents ----------------------------------------------------------------


class AgentNotFound(NotFound):
    """No agent of this name is deployed for the tenant."""

    code = "agent_not_found"


class RunNotFound(NotFound):
    """No agent run has this id."""

    code = "run_not_found"


class RunFinished(Conflict):
    """The run has already finished; it takes no more events, decisions or controls."""

    code = "run_finished"


class RunStateConflict(Conflict):
    """The run is not in a state that allows this (e.g. no approval is pending)."""

    code = "run_state_conflict"


class RunFenced(Conflict):
    """This node no longer owns the fleet run: another node holds its lease, so its journal refused the append."""

    code = "run_fenced"


class ReplayMismatch(Conflict):
    """On replay, the code made a different call than the journal holds at that position."""

    code = "replay_mismatch"

    def __init__(self, message: str, *, position: int, expected: Any, actual: Any) -> None:
        super().__init__(message, position=position, expected=expected, actual=actual)
        self.position = position
        self.expected = expected
        self.actual = actual


class BadModel(ValidationFailed):
    """A model string is not ``provider:model`` with a known, configured provider."""

    code = "bad_model"


class ModelError(EdgenodeError):
    """The model provider failed or answered with something unusable."""

    code = "model_error"
    status = 502


# -- sandboxes -------------------------------------------------------------


class SandboxNotFound(NotFound):
    """No sandbox with this id belongs to the caller's tenant."""

    code = "sandbox_not_found"


class SandboxProcessNotFound(NotFound):
    """No background process with this id in the sandbox."""

    code = "process_not_found"


class SandboxPathRefused(BadRequest):
    """A workspace path is absolute, uses '..', or leads outside through a symlink (``reason``)."""

    code = "path_refused"

    def __init__(self, message: str, *, path: str, reason: str) -> None:
        super().__init__(message, path=path, reason=reason)
        self.path = path
        self.reason = reason


class SandboxQuotaExceeded(EdgenodeError):
    """A write would take the workspace past its disk quota."""

    code = "disk_quota_exceeded"
    status = 413

    def __init__(self, message: str, *, limit: int, used: int) -> None:
        super().__init__(message, limit=limit, used=used)
        self.limit = limit
        self.used = used

    def headers(self) -> dict[str, str]:
        # The body may be only partly read: never reuse the connection after this answer.
        return {"Connection": "close"}


class SandboxPortNotExposed(NotFound):
    """The sandbox's owner has not exposed this port (or not publicly, for a public URL)."""

    code = "port_not_exposed"


class SandboxPortUnreachable(EdgenodeError):
    """Nothing answers on an exposed port inside the sandbox, or its processes are not running."""

    code = "port_unreachable"
    status = 502


class SandboxCheckoutFailed(EdgenodeError):
    """``git clone`` in the sandbox failed; ``stderr`` says what git said."""

    code = "checkout_failed"
    status = 422


class SandboxUnavailable(Unavailable):
    """The sandbox runtime (bwrap, the in-sandbox supervisor) could not be started."""

    code = "sandbox_unavailable"


class CheckpointNotFound(NotFound):
    """The fleet holds no checkpoint of a sandbox with this id or name for the caller's tenant."""

    code = "checkpoint_not_found"


class FleetRequired(Conflict):
    """The action keeps its data in the fleet, and this node is not part of one."""

    code = "fleet_required"


class CheckpointInvalid(EdgenodeError):
    """A checkpoint's manifest is malformed or would write outside the workspace (``reason``); nothing was restored."""

    code = "checkpoint_invalid"
    status = 422

    def __init__(self, message: str, *, reason: str, **details: Any) -> None:
        super().__init__(message, reason=reason, **details)
        self.reason = reason


# -- workers (isolates) ----------------------------------------------------


class BuildFailed(BadRequest):
    """A Python worker did not build; ``output`` is the compiler's message."""

    code = "build_failed"

    def __init__(self, message: str, *, output: str, **details: Any) -> None:
        super().__init__(message, output=output, **details)
        self.output = output


class InvalidComponent(BadRequest):
    """The uploaded WebAssembly is corrupt or does not match the world it must implement."""

    code = "invalid_component"


class WorkerNotFound(NotFound):
    """No worker (or version) of that name for this tenant."""

    code = "worker_not_found"


class IsolateError(EdgenodeError):
    """Guest code failed; the node itself is fine.

    A failure of code the caller brought or called (a worker, ``/v1/run``, a WASI command) is
    the request's fault, not the node's: every guest failure answers 422 with its own code
    (see the README's "Errors" section). 5xx stays for failures of the node and its services.
    """

    code = "isolate_error"
    status = 422


class CpuLimitExceeded(IsolateError):
    """The guest used more CPU time than its limit."""

    code = "cpu_limit"

    def __init__(self, message: str, *, limit_ms: int, **details: Any) -> None:
        super().__init__(message, limit_ms=limit_ms, **details)
        self.limit_ms = limit_ms


class WallLimitExceeded(IsolateError):
    """The request took longer than its wall-time limit."""

    code = "wall_limit"

    def __init__(self, message: str, *, limit_ms: int, **details: Any) -> None:
        super().__init__(message, limit_ms=limit_ms, **details)
        self.limit_ms = limit_ms


class MemoryLimitExceeded(IsolateError):
    """The guest needed more linear memory than its limit."""

    code = "memory_limit"

    def __init__(self, message: str, *, limit_mb: int, **details: Any) -> None:
        super().__init__(message, limit_mb=limit_mb, **details)
        self.limit_mb = limit_mb


class DiskLimitExceeded(IsolateError):
    """The guest wrote more to its scratch directory than it may keep."""

    code = "disk_limit"

    def __init__(self, message: str, *, limit_mb: int, **details: Any) -> None:
        super().__init__(message, limit_mb=limit_mb, **details)
        self.limit_mb = limit_mb


class IsolateTrap(IsolateError):
    """The guest trapped (unreachable, stack overflow, bad memory access, ...)."""

    code = "trap"

    def __init__(self, message: str, *, reason: str, **details: Any) -> None:
        super().__init__(message, reason=reason, **details)
        self.reason = reason


class GuestException(IsolateError):
    """The guest's handler raised; ``message`` names the exception."""

    code = "guest_exception"


class InvalidGuestResponse(IsolateError):
    """The guest returned something that is not a valid HTTP response."""

    code = "invalid_response"


class ResponseTooLarge(InvalidGuestResponse):
    """The guest's response body is larger than the node allows."""

    code = "response_too_large"

    def __init__(self, message: str, *, limit: int, **details: Any) -> None:
        super().__init__(message, limit=limit, **details)
        self.limit = limit
