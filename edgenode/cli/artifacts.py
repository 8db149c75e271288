"""``edgenode repo``: create, list and read Git repositories, and print clone URLs."""

from __future__ import annotations

import click

from edgenode.cli.client import ClientContext, echo_json, echo_table, pass_client


@click.group("repo")
def repo() -> None:
    """Git repositories for agent output (clone and push them with plain git)."""


@repo.command("create")
@click.argument("name")
@click.option("--default-branch", default="main", show_default=True, help="Branch HEAD points at.")
@click.option("--import", "import_url", help="Import the branches and tags of this Git URL.")
@click.option("--fork", "fork_of", help="Fork this repository of yours instead (shares its objects).")
@click.option("--json", "as_json", is_flag=True, help="Print raw JSON.")
@pass_client
def repo_create(client: ClientContext, name: str, default_branch: str, import_url: str | None,
                fork_of: str | None, as_json: bool) -> None:
    """Create repository NAME (empty, imported, or a fork)."""
    if fork_of:
        data = client.request("POST", f"/v1/repos/{fork_of}/fork", json={"name": name})
    elif import_url:
        data = client.request("POST", "/v1/repos", json={"name": name, "import": {"url": import_url}}, long=True)
    else:
        data = client.request("POST", "/v1/repos", json={"name": name, "default_branch": default_branch})
    if as_json:
        echo_json(data)
    else:
        click.echo(f"created {data['tenant']}/{data['name']} ({len(data['refs'])} refs)")


@repo.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print raw JSON.")
@pass_client
def repo_ls(client: ClientContext, as_json: bool) -> None:
    """List your repositories."""
    data = client.request("GET", "/v1/repos")
    if as_json:
        echo_json(data)
    else:
        echo_table(data["repos"], ["name", "default_branch", "fork_of", "created_at"])


@repo.command("log")
@click.argument("name")
@click.option("--ref", help="Branch, tag or commit (default: the default branch).")
@click.option("-n", "--limit", default=20, show_default=True, help="Commits to show.")
@click.option("--json", "as_json", is_flag=True, help="Print raw JSON.")
@pass_client
def repo_log(client: ClientContext, name: str, ref: str | None, limit: int, as_json: bool) -> None:
    """Show the history of repository NAME, newest first."""
    params: dict[str, str | int] = {"limit": limit}
    if ref:
        params["ref"] = ref
    data = client.request("GET", f"/v1/repos/{name}/log", params=params)
    if as_json:
        echo_json(data)
        return
    for c in data["commits"]:
        subject = c["message"].splitlines()[0] if c["message"] else ""
        click.echo(f"{c['commit'][:12]}  {c['author']}  {subject}")


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
    click.echo(f"{base}/git/{tenant}/{name}.git")


__all__ = ["repo"]
