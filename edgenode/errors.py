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


class UnsupportedMediaType(EdgenodeError):
    """The body's content type is not one this route takes."""

    code = "unsupported_media_type"
    status = 415


class TooManyRequests(EdgenodeError):
    """The caller sent more than its rate allows."""

    code = "too_many_requests"
    status = 429


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


class RepoInUse(Conflict):
    """The repository cannot be changed that way now (a fork depends on it, or it is busy)."""

    code = "repo_in_use"


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
