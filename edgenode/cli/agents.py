"""``edgenode agent ...``: deploy durable agents, start and watch runs, answer approvals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgenode.cli.client import ClientContext, pass_client
from edgenode.cli.output import ago, echo_table, emit, progress

RUN_COLUMNS = ["id", "agent", "version", "status", "activations", "created_at", "finished_at"]


def _json_arg(value: str | None, what: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"{what} must be JSON: {exc}") from exc


def _files(path: Path) -> dict[str, str]:
    if path.is_file():
        return {"main.py": path.read_text()}
    files = {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*.py"))
             if "__pycache__" not in p.parts}
    if "main.py" not in files:
        raise click.BadParameter(f"{path} has no main.py")
    return files


@click.group("agent")
def agent() -> None:
    """Durable agents: deploy, run, send events, approve, pause, cancel, schedule."""


@agent.command("deploy")
@click.argument("name")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--allow", "allowed_hosts", multiple=True,
              help="Host the agent may fetch (scheme://host:port, *.domain); repeat for several.")
@click.option("--mcp-server", "mcp_servers", multiple=True, metavar="NAME=URL",
              help="An MCP server the agent may call as ctx.mcp(NAME); repeatable.")
@pass_client
def deploy(client: ClientContext, name: str, source: Path, allowed_hosts: tuple[str, ...],
           mcp_servers: tuple[str, ...]) -> None:
    """Deploy SOURCE (main.py, or a folder holding it) as agent NAME; prints the new version."""
    body: dict[str, Any] = {"files": _files(source), "allowed_hosts": list(allowed_hosts)}
    if mcp_servers:
        pairs = [item.partition("=") for item in mcp_servers]
        if any(not sep or not key or not url for key, sep, url in pairs):
            raise click.BadParameter("each --mcp-server is NAME=URL", param_hint="--mcp-server")
        body["mcp_servers"] = {key: url for key, _, url in pairs}
    with progress(f"deploying agent {name}"):
        result = client.request("PUT", f"/v1/agents/{name}", json=body, long=True)
    emit(result, lambda r: click.echo(f"{r['name']} version {r['version']}" + ("" if r["created"] else " (unchanged)")))


@agent.command("list")
@pass_client
def list_agents(client: ClientContext) -> None:
    """List deployed agents."""
    data = client.request("GET", "/v1/agents")
    emit(data, lambda d: echo_table(d["agents"], ["name", "version", "updated_at"]))


@agent.command("show")
@click.argument("name")
@pass_client
def show(client: ClientContext, name: str) -> None:
    """Show an agent: versions and state."""
    emit(client.request("GET", f"/v1/agents/{name}"))


@agent.command("start")
@click.argument("name")
@click.option("--input", "input_json", help="The run's input, as JSON.")
@click.option("--id", "run_id", help="Run id; starting twice with one id starts one run.")
@click.option("--version", type=int, help="Run this version instead of the current one.")
@click.option("--wait", is_flag=True,
              help="Wait until the run finishes or waits for an approval, showing its status; print the run.")
@pass_client
def start(client: ClientContext, name: str, input_json: str | None, run_id: str | None, version: int | None,
          wait: bool) -> None:
    """Start a run of agent NAME; prints its id (with --wait: how it ended)."""
    run = client.sdk().agents.start(name, _json_arg(input_json, "--input"), id=run_id, version=version)
    if not wait:
        emit(run.info, lambda info: click.echo(info["id"]))
        return
    with progress(f"run {run.id}") as show:
        def settled(current: Any) -> bool:
            show(current.status)
            return bool(current.finished or current.awaiting_approval)
        run.wait(client.timeout_s if client.timeout_s is not None else float("inf"), until=settled)
    emit(run.info, _print_run)
    if run.status in ("failed", "cancelled", "terminated"):
        raise SystemExit(1)


def _print_run(info: dict[str, Any]) -> None:
    """A run for people: id and status, then its output, error or what it waits for."""
    started = f"  started {ago(info['created_at'])}" if info.get("created_at") else ""
    click.echo(f"{info['id']}  {info['status']}{started}")
    if info.get("status") == "completed":
        click.echo(json.dumps(info.get("output"), indent=2, default=str))
    elif info.get("error"):
        click.echo(f"error: {json.dumps(info['error'], default=str)}", err=True)
    waiting = info.get("waiting") or {}
    if waiting:
        what = waiting.get("prompt") or waiting.get("type") or waiting.get("kind")
        click.echo(f"waiting for {waiting.get('kind')}: {what}")


@agent.command("runs")
@click.option("--agent", "agent_name", help="Only runs of this agent.")
@click.option("--status", help="Only runs in this status.")
@pass_client
def runs(client: ClientContext, agent_name: str | None, status: str | None) -> None:
    """List runs, newest first."""
    params = {k: v for k, v in {"agent": agent_name, "status": status}.items() if v}
    data = client.request("GET", "/v1/agents/runs", params=params)
    emit(data, lambda d: echo_table(d["runs"], RUN_COLUMNS))


@agent.command("status")
@click.argument("run_id")
@pass_client
def status(client: ClientContext, run_id: str) -> None:
    """Show a run: status, output or error, what it waits for."""
    emit(client.request("GET", f"/v1/agents/runs/{run_id}"), _print_run)


@agent.command("history")
@click.argument("run_id")
@pass_client
def history(client: ClientContext, run_id: str) -> None:
    """Show a run's journal, one line per journaled call."""
    data = client.request("GET", f"/v1/agents/runs/{run_id}/history")
    rows = [{"position": e["position"], "status": e["status"], "kind": e["kind"], "name": e["name"][:40],
             "result": json.dumps(e["result"], default=str)[:80]} for e in data["journal"]]
    emit(data, lambda _: echo_table(rows, ["position", "status", "kind", "name", "result"]))


@agent.command("event")
@click.argument("run_id")
@click.argument("event_type")
@click.option("--payload", help="The event's payload, as JSON.")
@pass_client
def event(client: ClientContext, run_id: str, event_type: str, payload: str | None) -> None:
    """Send an event of EVENT_TYPE to a run."""
    result = client.request("POST", f"/v1/agents/runs/{run_id}/events",
                            json={"type": event_type, "payload": _json_arg(payload, "--payload")})
    emit(result, lambda r: click.echo("delivered" if r["delivered"] else "queued until the run waits for it"))


@agent.command("approvals")
@pass_client
def approvals(client: ClientContext) -> None:
    """List runs waiting for a human decision."""
    data = client.request("GET", "/v1/agents/approvals")
    emit(data, lambda d: echo_table(d["approvals"], ["run", "agent", "prompt", "since"]))


def _decide(client: ClientContext, run_id: str, verdict: str, comment: str) -> None:
    run = client.request("POST", f"/v1/agents/runs/{run_id}/{verdict}", json={"comment": comment})
    emit(run, lambda _: click.echo(f"{verdict}d {run_id}"))


@agent.command("approve")
@click.argument("run_id")
@click.option("--comment", default="", help="A note the agent receives.")
@pass_client
def approve(client: ClientContext, run_id: str, comment: str) -> None:
    """Approve what RUN_ID waits for."""
    _decide(client, run_id, "approve", comment)


@agent.command("reject")
@click.argument("run_id")
@click.option("--comment", default="", help="A note the agent receives.")
@pass_client
def reject(client: ClientContext, run_id: str, comment: str) -> None:
    """Reject what RUN_ID waits for."""
    _decide(client, run_id, "reject", comment)


def _control(action: str, doc: str) -> click.Command:
    @click.argument("run_id")
    @pass_client
    def command(client: ClientContext, run_id: str) -> None:
        run = client.request("POST", f"/v1/agents/runs/{run_id}/{action}")
        emit(run, lambda r: click.echo(f"{r['id']} {r['status']}"))

    command.__doc__ = doc
    return click.command(action)(command)


for _action, _doc in (("pause", "Pause a run (an executing one stops at its next call)."),
                      ("resume", "Resume a paused or blocked run."),
                      ("cancel", "Cancel a run at its next call."),
                      ("terminate", "Terminate a run now, killing its activation.")):
    agent.add_command(_control(_action, _doc))


@agent.command("move")
@click.argument("run_id")
@click.argument("version", type=int)
@pass_client
def move(client: ClientContext, run_id: str, version: int) -> None:
    """Move a run to VERSION of its agent (it replays its journal against that code)."""
    run = client.request("POST", f"/v1/agents/runs/{run_id}/move", json={"version": version})
    emit(run, lambda r: click.echo(f"{r['id']} now on version {r['version']} ({r['status']})"))


@agent.command("restart")
@click.argument("run_id")
@click.option("--from-step", "from_step", type=click.IntRange(min=0), required=True,
              help="Journal position to run again from (see 'agent history'); earlier entries are replayed.")
@click.option("--id", "new_id", help="Id of the new run.")
@click.option("--version", type=int, help="Run this version instead of the current one.")
@pass_client
def restart(client: ClientContext, run_id: str, from_step: int, new_id: str | None, version: int | None) -> None:
    """Restart finished run RUN_ID from a journal position as a new run; prints the new run's id."""
    body: dict[str, Any] = {"from_step": from_step}
    if new_id:
        body["id"] = new_id
    if version is not None:
        body["version"] = version
    run = client.request("POST", f"/v1/agents/runs/{run_id}/restart", json=body)
    emit(run, lambda r: click.echo(r["id"]))


@agent.command("follow")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON line.")
@pass_client
def follow(client: ClientContext, run_id: str, as_json: bool) -> None:
    """Follow a run as it happens: journal entries, status changes and model text, until it finishes."""
    from edgenode.client import Client

    with Client(client.base_url(), client.bearer(), timeout=client.timeout_s or 30.0) as sdk:
        for event in sdk.agents.run(run_id).events():
            if as_json:
                click.echo(json.dumps({"id": event.id, "event": event.kind, "data": event.data}, default=str))
            elif event.kind == "delta":
                click.echo(event.data["text"], nl=False)
            elif event.kind == "journal":
                e = event.data
                click.echo(f"\n{e['position']:>4}  {e['status']:<8} {e['kind']:<12} {e['name'][:40]:<40} "
                           f"{json.dumps(e['result'], default=str)[:80]}")
            elif event.kind == "status":
                click.echo(f"\nstatus {event.data['status']}")
            else:
                run = event.data["run"]
                click.echo(f"\n{run['id']} {run['status']}: "
                           f"{json.dumps(run.get('output') if run['status'] == 'completed' else run.get('error'))}")


@agent.group("schedule")
def schedule() -> None:
    """Cron schedules that start runs."""


@schedule.command("add")
@click.argument("name")
@click.argument("agent_name")
@click.argument("cron")
@click.option("--input", "input_json", help="Each run's input, as JSON.")
@pass_client
def schedule_add(client: ClientContext, name: str, agent_name: str, cron: str, input_json: str | None) -> None:
    """Start AGENT_NAME on CRON (five fields, UTC) under schedule NAME."""
    result = client.request("POST", "/v1/agents/schedules", json={
        "name": name, "agent": agent_name, "cron": cron, "input": _json_arg(input_json, "--input")})
    emit(result, lambda r: click.echo(f"{r['name']} next {ago(r['next_at'])}" if isinstance(r["next_at"], float | int)
                                      else f"{r['name']} next at {r['next_at']}"))


@schedule.command("list")
@pass_client
def schedule_list(client: ClientContext) -> None:
    """List schedules."""
    data = client.request("GET", "/v1/agents/schedules")
    emit(data, lambda d: echo_table(d["schedules"], ["name", "agent", "cron", "next_at", "last_run_id"]))


@schedule.command("rm")
@click.argument("name")
@pass_client
def schedule_rm(client: ClientContext, name: str) -> None:
    """Delete a schedule."""
    client.request("DELETE", f"/v1/agents/schedules/{name}")
    emit({"deleted": name}, lambda _: click.echo(f"deleted {name}"))


@agent.command("chat")
@click.argument("model")
@click.argument("message")
@pass_client
def chat(client: ClientContext, model: str, message: str) -> None:
    """Send MESSAGE to MODEL (provider:model) through the node's gateway."""
    with progress(f"asking {model}"):
        reply = client.request("POST", "/v1/agents/models/chat",
                               json={"model": model, "messages": [{"role": "user", "content": message}]}, long=True)

    def human(r: dict[str, Any]) -> None:
        click.echo(r["text"])
        for call in r["tool_calls"]:
            click.echo(f"tool call: {call['name']}({json.dumps(call['arguments'])})")
    emit(reply, human)


@agent.command("usage")
@pass_client
def usage(client: ClientContext) -> None:
    """Model calls and tokens of this tenant."""
    data = client.request("GET", "/v1/agents/usage")
    emit(data, lambda d: echo_table(d["usage"], ["provider", "model", "calls", "input_tokens", "output_tokens"]))


@agent.command("secret")
@click.argument("name")
@click.option("--value", prompt=True, hide_input=True, help="The secret's value (prompted if left out).")
@pass_client
def secret(client: ClientContext, name: str, value: str) -> None:
    """Set a tenant secret such as OPENAI_API_KEY (used by the model gateway)."""
    client.request("PUT", f"/v1/agents/secrets/{name}", json={"value": value})
    emit({"set": name}, lambda _: click.echo(f"set {name}"))


__all__ = ["agent"]
