"""``edgenode repo``: create, list and read Git repositories, and print clone URLs."""

from __future__ import annotations

import click

from edgenode.cli.client import ClientContext, describe_progress, pass_client
from edgenode.cli.output import echo_table, emit, progress


@click.group("repo")
def repo() -> None:
    """Git repositories for agent output (clone and push them with plain git)."""


@repo.command("create")
@click.argument("name")
@click.option("--default-branch", default="main", show_default=True, help="Branch HEAD points at.")
@click.option("--import", "import_url", help="Import the branches and tags of this Git URL (followed as a job).")
@click.option("--fork", "fork_of", help="Fork this repository of yours instead (shares its objects).")
@pass_client
def repo_create(client: ClientContext, name: str, default_branch: str, import_url: str | None,
                fork_of: str | None) -> None:
    """Create repository NAME (empty, imported, or a fork)."""
    sdk = client.sdk()
    if fork_of:
        data = client.request("POST", f"/v1/repos/{fork_of}/fork", json={"name": name})
    elif import_url:
        with progress(f"importing {name}") as show:
            data = sdk.repos.import_url(name, import_url, timeout=client.timeout_s,
                                        on_progress=lambda job: show(describe_progress(job.get("progress"))))
    else:
        data = sdk.repos.create(name, default_branch=default_branch)
    emit(data, lambda d: click.echo(f"created {d['tenant']}/{d['name']} ({len(d['refs'])} refs)"))


@repo.command("ls")
@pass_client
def repo_ls(client: ClientContext) -> None:
    """List your repositories."""
    repos = client.sdk().repos.list()
    emit({"repos": repos}, lambda _: echo_table(repos, ["name", "default_branch", "fork_of", "created_at"]))


@repo.command("log")
@click.argument("name")
@click.option("--ref", help="Branch, tag or commit (default: the default branch).")
@click.option("-n", "--max-count", "limit", default=20, show_default=True, help="Commits to show.")
@pass_client
def repo_log(client: ClientContext, name: str, ref: str | None, limit: int) -> None:
    """Show the history of repository NAME, newest first."""
    commits = client.sdk().repos.log(name, ref=ref, limit=limit)
    rows = [{"commit": c["commit"][:12], "author": c["author"], "committed_at": c.get("time") or c.get("timestamp"),
             "subject": c["message"].splitlines()[0] if c["message"] else ""} for c in commits]
    emit({"commits": commits}, lambda _: echo_table(rows, ["commit", "author", "committed_at", "subject"]))


@repo.command("clone-url")
@click.argument("name")
@click.option("--access", type=click.Choice(["read", "write"]), default="write", show_default=True,
              help="What the embedded token may do.")
@click.option("--ttl", "ttl_s", type=float, default=3600, show_default=True, help="Token lifetime, seconds.")
@click.option("--no-token", is_flag=True, help="Print the URL without credentials.")
@pass_client
def repo_clone_url(client: ClientContext, name: str, access: str, ttl_s: float, no_token: bool) -> None:
    """Print a `git clone` URL for NAME, with a fresh repository token as the password."""
    tenant = client.request("GET", "/v1/whoami")["tenant"]
    client.request("GET", f"/v1/repos/{name}")
    base = client.base_url()
    if not no_token:
        token = client.request("POST", f"/v1/repos/{name}/tokens", json={"access": access, "ttl_s": ttl_s})["token"]
        scheme, _, rest = base.partition("://")
        base = f"{scheme}://git:{token}@{rest}"
    url = f"{base}/git/{tenant}/{name}.git"
    emit({"url": url}, lambda _: click.echo(url))


__all__ = ["repo"]
