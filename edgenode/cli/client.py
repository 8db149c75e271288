"""The client side of the command line: the Python SDK's client, set up from the group's options.

Commands reach the node through ``ClientContext.sdk()`` (an ``edgenode.client.Client``), or
through ``ClientContext.request(method, path, ...)`` for a route the SDK has no method for;
both send through the same SDK client, so there is one client, one set of timeouts and one
error mapping. Failures raise the SDK's exceptions; the root command prints them (as JSON
under ``--json``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx

from edgenode.cli.output import echo_json, echo_table, emit, progress
from edgenode.client import Client
from edgenode.client import _calls as calls
from edgenode.client.errors import raise_for_error, transport_error

DEFAULT_URL = calls.DEFAULT_URL
#: How long an ordinary call may wait for the node's answer, in seconds (``--timeout`` overrides).
DEFAULT_TIMEOUT_S = 60.0
#: How long connecting to the node may take, in seconds.
CONNECT_TIMEOUT_S = 10.0
#: Every status, so a ``send`` hands back the node's errors instead of raising them.
_ANY_STATUS = frozenset(range(400, 600))


@dataclass
class ClientContext:
    """Where the node is and which token to send; built from the group's options."""

    url: str | None
    token: str | None
    data_dir: Path | None
    #: ``--timeout``: a bound on waiting for any answer, long calls included; None for the defaults.
    timeout_s: float | None = None
    _sdk: Client | None = field(default=None, repr=False)

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

    def sdk(self) -> Client:
        """The SDK client every command uses (made on first use, closed with the command)."""
        if self._sdk is None:
            url = self.base_url()
            headers = calls.auth_headers(self.bearer(), None)
            headers["user-agent"] = headers["user-agent"].replace("edgenode-client", "edgenode-cli")
            http = httpx.Client(base_url=url, headers=headers, timeout=self.timeout())
            self._sdk = Client(url, http=http)
        return self._sdk

    def client(self) -> httpx.Client:
        """The SDK client's httpx client (for a command that streams a route itself)."""
        return self.sdk().http

    def timeout(self, *, long: bool = False) -> httpx.Timeout:
        """Timeouts for a call; a ``long`` one (a build, a run, a model call, an exec stream) waits for as
        long as the node works on it, which the node bounds itself, unless ``--timeout`` is given."""
        read = self.timeout_s if self.timeout_s is not None else (None if long else DEFAULT_TIMEOUT_S)
        return httpx.Timeout(read, connect=min(CONNECT_TIMEOUT_S, read or CONNECT_TIMEOUT_S))

    @contextlib.contextmanager
    def reaching(self, what: str, timeout: httpx.Timeout) -> Iterator[None]:
        """Turn transport failures while doing ``what`` into the SDK's exceptions (unreachable, or no answer)."""
        try:
            yield
        except httpx.TransportError as exc:
            raise transport_error(self.base_url(), exc, what, timeout.read) from exc

    def close(self) -> None:
        """Close the HTTP client, if one was opened."""
        if self._sdk is not None:
            self._sdk.close()
            self._sdk = None

    def call(self, method: str, path: str, *, long: bool = False, accept: frozenset[int] = frozenset(),
             **kwargs: Any) -> calls.Call[httpx.Response]:
        """A request as the SDK's ``Call``: ``long`` ones are bounded by the node (unless ``--timeout``)."""
        return calls.Call(method, path, lambda r: r, json=kwargs.pop("json", None), content=kwargs.pop("content", None),
                          params=kwargs.pop("params", None), headers=dict(kwargs.pop("headers", None) or {}),
                          accept=accept, node_bounded=long and self.timeout_s is None)

    def request(self, method: str, path: str, *, long: bool = False, **kwargs: Any) -> Any:
        """Send a request; the parsed JSON (or text) reply; the node's error raised as the SDK's exception.

        ``long``: the node's work may take minutes (see :meth:`timeout`). A ``202`` job is followed to its
        end, with progress on a terminal, and its result returned.
        """
        reply = parse(self.sdk().send(self.call(method, path, long=long, **kwargs)))
        if calls.is_job(reply):
            return self.follow(reply, f"{method} {path}")
        return reply

    def send(self, method: str, path: str, *, long: bool = False, **kwargs: Any) -> httpx.Response:
        """Send a request and return the response as it is, errors included."""
        return self.sdk().send(self.call(method, path, long=long, accept=_ANY_STATUS, **kwargs))

    def follow(self, job: dict[str, Any], what: str) -> Any:
        """Follow a job the node answered ``202`` for, showing its progress; its result."""
        with progress(what) as show:
            def seen(info: dict[str, Any]) -> None:
                show(describe_progress(info.get("progress")))
            return self.sdk().jobs.wait(job, timeout=self.timeout_s, on_progress=seen)


def describe_progress(state: dict[str, Any] | None) -> str:
    """A job's progress in words ("1.2 MiB received")."""
    from edgenode.cli.output import byte_size

    if not state:
        return ""
    parts = [f"{byte_size(state['bytes_received'])} received"] if "bytes_received" in state else []
    parts += [f"{k} {v}" for k, v in state.items() if k != "bytes_received"]
    return ", ".join(parts)


def parse(response: httpx.Response) -> Any:
    """A successful response's JSON (or text); None when it has no body."""
    if response.status_code == 204 or not response.content:
        return None
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return response.text


def check(response: httpx.Response) -> Any:
    """The response's JSON (or text) if it succeeded; the node's error raised as the SDK's exception otherwise."""
    raise_for_error(response)
    return parse(response)


pass_client = click.make_pass_decorator(ClientContext)

__all__ = ["ClientContext", "check", "echo_json", "echo_table", "emit", "pass_client", "progress"]
