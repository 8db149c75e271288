"""``edgenode selftest``: prove a running node works end to end (the rollout gate runs it on each host)."""

from __future__ import annotations

import time
from typing import Any

import click

from edgenode.cli.base import CliError
from edgenode.cli.client import ClientContext, pass_client
from edgenode.cli.output import duration, emit
from edgenode.client import EdgenodeClientError

#: The canary worker: deployed, invoked once, deleted.
CANARY_NAME = "edgenode-selftest"
CANARY = "def handle(request):\n    return {'ok': True, 'path': request.path}\n"


@click.command("selftest")
@click.option("--expect-version", metavar="VERSION", help="Fail unless /healthz reports this version.")
@click.option("--health-timeout", "wait_s", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds to wait for the node to answer /healthz with status ok (it may be restarting).")
@click.option("--no-sandbox", is_flag=True, help="Skip the sandbox command (for a node without sandboxes).")
@pass_client
def selftest(client: ClientContext, expect_version: str | None, wait_s: float, no_sandbox: bool) -> None:
    """Check a node: healthy (on --expect-version), a canary worker deployed and invoked, a sandbox command run.

    Needs a token that may deploy workers and create sandboxes (with --data DIR: the local
    node's admin token and URL). Exits 1 naming the first check that failed.
    """
    checks: list[dict[str, Any]] = []

    def check(name: str, detail: str, started: float) -> None:
        checks.append({"check": name, "ok": True, "detail": detail, "seconds": round(time.monotonic() - started, 3)})

    def fail(name: str, detail: str) -> CliError:
        checks.append({"check": name, "ok": False, "detail": detail})
        return CliError("selftest_failed", f"{name}: {detail}", details={"checks": checks})

    started = time.monotonic()
    health = _wait_healthy(client, expect_version, started + wait_s)
    if isinstance(health, str):
        raise fail("health", health)
    check("health", f"ok, version {health.get('version')}", started)

    sdk = client.sdk()
    started = time.monotonic()
    try:
        sdk.workers.deploy(CANARY_NAME, {"main.py": CANARY})
        answer = sdk.workers.invoke(CANARY_NAME, "/canary")
        body = answer.json() if answer.status_code == 200 else None
    except (EdgenodeClientError, ValueError) as exc:
        raise fail("worker", str(exc)) from None
    finally:
        _quietly(lambda: sdk.workers.delete(CANARY_NAME))
    if body != {"ok": True, "path": "/canary"}:
        raise fail("worker", f"the canary answered {answer.status_code} {answer.text[:200]!r}")
    check("worker", "deployed, invoked and deleted the canary worker", started)

    if not no_sandbox:
        started = time.monotonic()
        try:
            box = sdk.sandboxes.create()
        except EdgenodeClientError as exc:
            raise fail("sandbox", str(exc)) from None
        try:
            result = box.exec(["echo", "canary"])
        except EdgenodeClientError as exc:
            raise fail("sandbox", str(exc)) from None
        finally:
            _quietly(box.delete)
        if result.exit_code != 0 or result.stdout != "canary\n":
            raise fail("sandbox", f"echo exited {result.exit_code}: {(result.stdout + result.stderr)[:200]!r}")
        check("sandbox", "ran `echo canary` in a fresh sandbox", started)

    def human(report: dict[str, Any]) -> None:
        for item in report["checks"]:
            click.echo(f"ok  {item['check']:<8} {item['detail']} ({duration(item['seconds'])})")
    emit({"ok": True, "checks": checks}, human)


def _wait_healthy(client: ClientContext, version: str | None, deadline: float) -> dict[str, Any] | str:
    """``/healthz`` once it says ok (and ``version``), or why it did not by ``deadline``."""
    last = "no answer"
    while True:
        try:
            health = client.request("GET", "/healthz")
            if isinstance(health, dict) and health.get("status") == "ok" and version in (None, health.get("version")):
                return health
            last = f"status {health.get('status')!r}, version {health.get('version')!r}" \
                if isinstance(health, dict) else repr(health)[:80]
        except EdgenodeClientError as exc:
            last = str(exc)
            client.close()  # a restarting node may come back on another address (--data: its url file)
        if time.monotonic() >= deadline:
            return f"not healthy in time (last: {last})"
        time.sleep(0.25)


def _quietly(action: Any) -> None:
    try:
        action()
    except EdgenodeClientError:
        pass


__all__ = ["selftest"]
