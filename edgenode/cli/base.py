"""The root command's machinery: ``--json`` on every command, and every failure printed one way.

A command only raises: the SDK's exceptions (the node's errors, an unreachable node, a node
that did not answer in time), ``click`` usage errors, or ``CliError``. ``Root`` turns each into
one line on stderr, or under ``--json`` into ``{"error": {"code", "message", "id", ...}}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any

import click

from edgenode.cli.output import set_json_mode
from edgenode.client.errors import EdgenodeClientError

JSON_HELP = 'Print JSON: the result on stdout; a failure as {"error": {...}} on stderr.'


class CliError(click.ClickException):
    """A failure with a stable ``code``: printed as a line, or as the JSON error object under ``--json``."""

    def __init__(self, code: str, message: str, *, status: int | None = None, request_id: str | None = None,
                 details: dict[str, Any] | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.code, self.status, self.request_id = code, status, request_id
        self.details = dict(details or {})
        self.status_code = exit_code

    @classmethod
    def from_client(cls, exc: EdgenodeClientError) -> CliError:
        """The CLI's form of an SDK exception (the node's error, or no answer)."""
        return cls(exc.code, exc.message, status=exc.http_status or None, request_id=exc.request_id,
                   details=exc.details)

    def wire(self) -> dict[str, Any]:
        """The JSON error object."""
        return {"error": {"code": self.code, "message": self.message, "id": self.request_id,
                          **({"status": self.status} if self.status else {}), **self.details}}

    def line(self) -> str:
        """The one-line form: ``401 unauthorized: message (request id)``."""
        head = f"{self.status} {self.code}: " if self.status else ""
        tail = f" (request {self.request_id})" if self.request_id else ""
        return f"{head}{self.message}{tail}"

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the error to stderr."""
        click.echo(f"edgenode: {self.line()}", err=True, file=file)


def as_cli_error(exc: click.ClickException) -> CliError:
    """Any click failure as a ``CliError`` (usage errors keep click's exit status 2)."""
    if isinstance(exc, CliError):
        return exc
    code = "usage" if isinstance(exc, click.UsageError) else "failed"
    message = exc.format_message()
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        message = f"{message} (see: {exc.ctx.command_path} --help)"
    return CliError(code, message, exit_code=exc.exit_code)


def wants_json(argv: Sequence[str]) -> bool:
    """Whether ``--json`` is among the options (before any ``--``)."""
    head = list(argv)
    if "--" in head:
        head = head[: head.index("--")]
    return "--json" in head


class Root(click.Group):
    """The ``edgenode`` group: SDK exceptions become ``CliError``; every error printed in one format."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        """The root context, kept so a failure can tell whether ``--json`` was given."""
        self._root_ctx: click.Context | None = None
        ctx = super().make_context(info_name, args, parent, **extra)
        self._root_ctx = ctx
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand, translating the SDK's exceptions."""
        try:
            return super().invoke(ctx)
        except EdgenodeClientError as exc:
            raise CliError.from_client(exc) from None
        except TimeoutError as exc:  # a run or job followed past --timeout
            raise CliError("client_timeout", str(exc)) from None

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        """Parse and run; with ``standalone_mode`` print failures (JSON under ``--json``) and exit."""
        add_json_options(self)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            if not standalone_mode:
                raise
            error = as_cli_error(exc)
            root = getattr(self, "_root_ctx", None)
            # --json as parsed; for a failure while parsing, as written (before any --).
            given = bool(root is not None and root.meta.get("edgenode.json"))
            if given or (isinstance(exc, click.UsageError) and wants_json(argv)):
                click.echo(json.dumps(error.wire()), err=True)
            else:
                error.show() if isinstance(exc, CliError) else exc.show()
            sys.exit(error.status_code)
        except click.Abort:
            if not standalone_mode:
                raise
            click.echo("Aborted!", err=True)
            sys.exit(1)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


def _commands(command: click.Command) -> Iterator[click.Command]:
    yield command
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            yield from _commands(sub)


def add_json_options(root: click.Group) -> None:
    """Give every command a ``--json`` flag that also switches errors to JSON (idempotent).

    A command that declares its own ``--json`` (``@click.option("--json", "as_json", is_flag=True)``)
    keeps it, and its flag switches errors to JSON as well.
    """
    for command in _commands(root):
        if command is root or (isinstance(command, click.Group) and not command.invoke_without_command):
            continue
        own = next((p for p in command.params if isinstance(p, click.Option) and "--json" in p.opts), None)
        if own is None:
            command.params.append(click.Option(["--json"], is_flag=True, expose_value=False, is_eager=True,
                                               callback=set_json_mode, help=JSON_HELP))
        elif own.callback is None:
            own.callback = set_json_mode




class TrailingCommand(click.Command):
    """A command whose last argument is a command line of its own, passed on untouched.

    Its own options may come before or between its positional arguments; the first word after
    them (or everything after ``--``) starts the trailing command line, so ``exec work ls -h`` and
    ``exec work grep -e root f`` keep ``-h`` and ``-e root`` for ``ls`` and ``grep``. Declare the
    trailing argument last, as ``@click.argument("command", nargs=-1, type=click.UNPROCESSED)``.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Split off the trailing command line, then parse the rest as usual."""
        own, rest = self.split(ctx, args)
        return super().parse_args(ctx, [*own, "--", *rest] if rest else own)

    def split(self, ctx: click.Context, args: list[str]) -> tuple[list[str], list[str]]:
        """``args`` as this command's own words and the trailing command line."""
        takes_value: dict[str, bool] = {}
        for param in self.get_params(ctx):
            if isinstance(param, click.Option):
                for name in (*param.opts, *param.secondary_opts):
                    takes_value[name] = not (param.is_flag or param.count)
        wanted = sum(1 for p in self.params if isinstance(p, click.Argument) and p.nargs >= 1)
        own: list[str] = []
        seen = 0
        i = 0
        while i < len(args):
            word = args[i]
            if word == "--":
                return own, args[i + 1:]
            if word.startswith("-") and len(word) > 1:
                name = word.split("=", 1)[0]
                if name not in takes_value and seen >= wanted:
                    return own, args[i:]
                own.append(word)
                if takes_value.get(name) and "=" not in word and i + 1 < len(args):
                    own.append(args[i + 1])
                    i += 1
            elif seen < wanted:
                own.append(word)
                seen += 1
            else:
                return own, args[i:]
            i += 1
        return own, []


__all__ = ["CliError", "JSON_HELP", "Root", "TrailingCommand", "add_json_options", "wants_json"]
