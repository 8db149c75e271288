"""The client side of the command line: an HTTP client for a running node."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx

DEFAULT_URL = "http://127.0.0.1:8787"
#: How long an ordinary call may wait for the node's answer, in seconds (``--timeout`` overrides).
DEFAULT_TIMEOUT_S = 60.0
#: How long connecting to the node may take, in seconds.
CONNECT_TIMEOUT_S = 10.0


@dataclass
class ClientContext:
    """Where the node is and which token to send; built from the group's options."""

    url: str | None
    token: str | None
    data_dir: Path | None
    #: ``--timeout``: a bound on waiting for any answer, long calls included; None for the defaults.
    timeout_s: float | None = None
    _client: httpx.Client | None = field(default=None, repr=False)

    def base_url(self) -> str:
        """The node's URL: ``--url``, else the URL a local node in ``--data`` wrote, else the default."""
        if self.url:
            return self.url.rstrip("/")
        if self.data_dir is not None:
            url_file = self.data_dir / "url"
            if url_file.exists():
                return url_file.read_text().strip()
        return DEFAULT_URL

    def bearer(self) -> str | None:
        """``--token``, else the admin token of a local node in ``--data``."""
        if self.token:
            return self.token
        if self.data_dir is not None:
            token_file = self.data_dir / "admin-token"
            if token_file.exists():
                return token_file.read_text().strip()
        return None

    def client(self) -> httpx.Client:
        """A shared httpx client with the base URL and bearer token set."""
        if self._client is None:
            headers = {"user-agent": "edgenode-cli"}
            token = self.bearer()
            if token:
                headers["authorization"] = f"Bearer {token}"
            self._client = httpx.Client(base_url=self.base_url(), headers=headers, timeout=self.timeout())
        return self._client

    def timeout(self, *, long: bool = False) -> httpx.Timeout:
        """Timeouts for a call; a ``long`` one (a build, a run, an import, a model call, an exec stream)
        waits for as long as the node works on it, which the node bounds itself, unless ``--timeout``."""
        read = self.timeout_s if self.timeout_s is not None else (None if long else DEFAULT_TIMEOUT_S)
        return httpx.Timeout(read, connect=min(CONNECT_TIMEOUT_S, read or CONNECT_TIMEOUT_S))

    @contextlib.contextmanager
    def reaching(self, what: str, timeout: httpx.Timeout) -> Iterator[None]:
        """Turn transport failures while doing ``what`` into a message: unreachable, or no answer in time."""
        try:
            yield
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                raise click.ClickException(f"cannot reach the node at {self.base_url()}: {exc}") from exc
            raise click.ClickException(
                f"the node at {self.base_url()} did not answer {what} within {timeout.read:g} s; it may still be "
                "working on it (give more time with --timeout)") from exc
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach the node at {self.base_url()}: {exc}") from exc

    def close(self) -> None:
        """Close the HTTP client, if one was opened."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def request(self, method: str, path: str, *, long: bool = False, **kwargs: Any) -> Any:
        """Send a request; print the node's JSON error and exit 1 on failure; return parsed JSON.

        ``long``: the node's work may take minutes (see :meth:`timeout`).
        """
        return check(self.send(method, path, long=long, **kwargs))

    def send(self, method: str, path: str, *, long: bool = False, **kwargs: Any) -> httpx.Response:
        """Send a request and return the response as it is, errors included."""
        timeout = self.timeout(long=long)
        with self.reaching(f"{method} {path}", timeout):
            return self.client().request(method, path, timeout=timeout, **kwargs)


def check(response: httpx.Response) -> Any:
    """The response's JSON (or text) if it succeeded; a ClickException naming the error otherwise."""
    if response.is_error:
        try:
            error = response.json()["error"]
            message = f"{response.status_code} {error['code']}: {error['message']} (request {error['id']})"
        except (ValueError, KeyError, TypeError):
            message = f"{response.status_code}: {response.text[:500]}"
        raise click.ClickException(message)
    if response.status_code == 204 or not response.content:
        return None
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return response.text


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON."""
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def echo_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Print rows as a plain aligned table (nothing when empty, to stderr a note)."""
    if not rows:
        click.echo("(none)", err=True)
        return
    widths = {c: max(len(c), *(len(_cell(r.get(c))) for r in rows)) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(_cell(row.get(c)).ljust(widths[c]) for c in columns).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value > 1e9:  # a timestamp
        import datetime

        return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


pass_client = click.make_pass_decorator(ClientContext)

__all__ = ["ClientContext", "check", "echo_json", "echo_table", "pass_client"]
