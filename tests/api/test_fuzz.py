"""API fuzzing: schemathesis drives a real node from the node's own ``/openapi.json``.

Every operation of the document is sent generated requests, valid and invalid by its schemas, with
the admin token (so admin routes are reached too), and every response is checked with every check
schemathesis has: no server error; a status, content type, headers and body the document declares;
invalid data refused; valid data accepted (for ``REFUSED_FOR_MEANING``, or refused with a 400 that
names the field); auth required where declared; undeclared methods refused with 405 and ``Allow``.

Bounded in time: ``MAX_EXAMPLES`` generated cases per operation (the generate phase only; the
coverage phase's boundary cases would triple the time), no example database; the module takes
about 45 s on a loaded 2-core machine.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import Case
from schemathesis.specs.openapi.checks import positive_data_acceptance

from edgenode import __version__
from edgenode.api.app import ROUTE_MODULES
from edgenode.api.openapi import openapi
from tests.support import ADMIN_TOKEN_ENV, NodeProcess

#: Examples per operation: about 120 operations share the module's time budget.
MAX_EXAMPLES = 6

#: The node's admin token, chosen here: schemathesis builds some cases (with their auth) at collection.
TOKEN = "fuzz-" + secrets.token_urlsafe(24)


#: The node under test keeps what fuzzing may create small: a few sandboxes and workers a tenant.
NODE_ENV = {
    ADMIN_TOKEN_ENV: TOKEN,
    "EDGENODE_SANDBOXES_MAX_PER_TENANT": "2",
    "EDGENODE_WORKERS_MAX_PER_TENANT": "3",
}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node process whose admin token is ``TOKEN``."""
    proc = NodeProcess(Path(tmp_path_factory.mktemp("fuzz")), env=NODE_ENV)
    proc.start()
    yield proc
    proc.stop()


#: The document the node serves, made from the same route table (checked equal to the served one below):
#: made at import, as pytest needs the operations before any node starts.
DOCUMENT = openapi([route for module in ROUTE_MODULES for route in module.routes], __version__)
schema = schemathesis.openapi.from_dict(DOCUMENT)
# Bodies of these types are bytes: sent as generated, as an application/octet-stream body is.
schemathesis.serializer.alias(["application/wasm", "application/x-git-upload-pack-request",
                               "application/x-git-receive-pack-request"], "application/octet-stream")


@schema.auth()
class AdminToken:
    """Every case carries the token, as an auth provider, so the auth checks know which header to drop."""

    def get(self, case: Case, ctx: Any) -> str:
        return TOKEN

    def set(self, case: Case, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def test_the_node_serves_the_document_fuzzed(fuzzed: NodeProcess) -> None:
    with fuzzed.client() as c:
        assert c.get("/openapi.json").json() == DOCUMENT


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.generate], suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_document(case: Case, fuzzed: NodeProcess) -> None:
    if f"{case.operation.method.upper()} {case.operation.path}" in REFUSED_FOR_MEANING:
        case.call_and_validate(base_url=fuzzed.url, timeout=60, excluded_checks=[positive_data_acceptance],
                               additional_checks=[valid_data_accepted_unless_meaningless])
    else:
        case.call_and_validate(base_url=fuzzed.url, timeout=60)


#: Operations whose schema-valid input the node may still refuse with 400 for what it means, which no
#: JSON Schema says: a program or query that does not compile, a limit above this node's configured
#: maximum, a file name longer than 255 bytes (the document counts characters), an address the egress
#: policy refuses. For these, valid data must be accepted or refused with a 400 naming the field.
REFUSED_FOR_MEANING = {
    "POST /v1/repos",  # the import URL must pass the egress policy
    "POST /v1/agents/schedules",  # a cron expression
    "POST /v1/agents/models/chat",  # a provider:model the gateway knows
    "PUT /v1/agents/{name}",  # Python that compiles
    "POST /v1/sandboxes",  # limits within the node's maxima
    "POST /v1/sandboxes/{id}/exec", "POST /v1/sandboxes/{id}/processes",  # stdin within the body limit
    "POST /v1/sandboxes/{id}/mkdir", "POST /v1/sandboxes/{id}/move",  # name components in bytes
    "GET /v1/kv/{namespace}/{key}", "PUT /v1/kv/{namespace}/{key}", "DELETE /v1/kv/{namespace}/{key}",
    "POST /v1/sql/{namespace}",  # SQL that parses
    "PUT /v1/workers/{name}", "POST /v1/run",  # Python that compiles
    "POST /v1/wasi/run",  # a WebAssembly module; limits within the node's maxima
    "POST /v1/repos/{name}/commits",  # file paths a Git tree takes
    "GET /v1/kv/{namespace}",  # a cursor is one a previous page gave
    "GET /v1/sandboxes/{id}/watch",  # name components in bytes
    "POST /v1/sandbox-images",  # a directory or tarball that is there on the node
}


@schemathesis.check
def valid_data_accepted_unless_meaningless(ctx: Any, response: Any, case: Case) -> bool | None:
    """Schema-valid data is accepted, or refused as the default check allows, or with a 400 naming a field."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if 200 <= status < 400 or status in (401, 403, 404, 409, 429) or status >= 500:
        return None  # the server-error check reports a 5xx
    # 400 for the input's meaning; 422 when the guest program itself failed (its own error, with its logs).
    error = response.json().get("error", {}) if status in (400, 422) else {}
    assert error.get("code") and (error.get("field") or error["code"] != "validation_failed"), \
        f"valid data refused with {status}: {response.text[:300]}"
    return None
