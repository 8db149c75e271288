"""What the command line prints: JSON or aligned tables, human times, progress of long work, errors.

Every command takes ``--json``. With it, a command prints exactly one JSON document on
stdout when it succeeds, and a failure prints ``{"error": {"code", "message", "id", ...}}``
on stderr (exit status 1, or 2 for a usage error), so stdout holds only results.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import click

#: Columns whose values are points in time (epoch seconds or ISO text) shown as "3 min ago".
_TIME_SUFFIXES = ("_at", "_since")
_TIME_COLUMNS = {"since", "last_seen", "created", "updated", "expires"}


def json_mode() -> bool:
    """Whether ``--json`` was given to the command being run."""
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.meta.get("edgenode.json"):
            return True
        ctx = ctx.parent
    return False


def set_json_mode(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """The ``--json`` option's callback: remember the mode for the whole invocation (errors too)."""
    if value:
        ctx.find_root().meta["edgenode.json"] = True
        ctx.meta["edgenode.json"] = True
    return value


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON."""
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def emit(data: Any, human: Callable[[Any], None] | None = None) -> None:
    """Print a command's result: ``data`` as JSON under ``--json``, else ``human(data)`` (JSON if none)."""
    if human is None or json_mode():
        echo_json(data)
    else:
        human(data)


def echo_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Print rows as an aligned table, times as "3 min ago" (to stderr "(none)" when empty).

    Under ``--json`` the rows are printed as a JSON list instead.
    """
    if json_mode():
        echo_json(rows)
        return
    if not rows:
        click.echo("(none)", err=True)
        return
    cells = [[cell(row.get(c), c) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def is_time_column(column: str) -> bool:
    """Whether a column holds points in time."""
    return column.endswith(_TIME_SUFFIXES) or column in _TIME_COLUMNS


def cell(value: Any, column: str = "") -> str:
    """One table cell: "-" for nothing, times relative to now, JSON for structures, else the text."""
    if value is None or value == "":
        return "-"
    if is_time_column(column):
        when = to_epoch(value)
        if when is not None:
            return ago(when)
    if column.endswith("_s") and isinstance(value, int | float) and not isinstance(value, bool):
        return duration(float(value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def to_epoch(value: Any) -> float | None:
    """Epoch seconds from a number or ISO-8601 text; None if it is neither."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if value > 1e8 else None
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.UTC)
        return parsed.timestamp()
    return None


def ago(when: float, now: float | None = None) -> str:
    """``when`` relative to ``now``: "just now", "42 s ago", "3 min ago", "in 2 h", "5 d ago"."""
    delta = (time.time() if now is None else now) - when
    if abs(delta) < 1:
        return "just now"
    text = duration(abs(delta), coarse=True)
    return f"{text} ago" if delta > 0 else f"in {text}"


def duration(seconds: float, *, coarse: bool = False) -> str:
    """A span of time for people: "0.4 s", "42 s", "3 min 5 s", "2 h 10 min", "5 d 3 h" (``coarse``: one unit)."""
    if seconds < 10 and not coarse:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    for size, unit, small, small_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "min"), (60, "min", 1, "s")):
        if whole >= size:
            big, rest = divmod(whole, size)
            return f"{big} {unit}" if coarse or rest < small else f"{big} {unit} {rest // small} {small_unit}"
    return f"{whole} s"


@contextlib.contextmanager
def progress(what: str, *, stream: Any = None, interval_s: float = 0.25) -> Iterator[Callable[[str], None]]:
    """Show ``what`` with the elapsed time on a terminal while the block runs; yields a setter for a detail.

    Off a terminal (or under ``--json``) nothing is drawn. The line is cleared at the end.
    """
    out = stream if stream is not None else sys.stderr
    detail = {"text": ""}
    if json_mode() or not getattr(out, "isatty", lambda: False)():
        yield lambda text: detail.update(text=text)
        return
    started = time.monotonic()
    stop = threading.Event()

    def draw() -> None:
        while not stop.wait(interval_s):
            extra = f" ({detail['text']})" if detail["text"] else ""
            out.write(f"\r\033[K{what}: {duration(time.monotonic() - started)}{extra}")
            out.flush()

    painter = threading.Thread(target=draw, name="cli-progress", daemon=True)
    painter.start()
    try:
        yield lambda text: detail.update(text=text)
    finally:
        stop.set()
        painter.join()
        out.write("\r\033[K")
        out.flush()


def byte_size(count: float) -> str:
    """A size for people: "512 B", "3.4 MiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


__all__ = ["ago", "byte_size", "cell", "duration", "echo_json", "echo_table", "emit", "json_mode", "progress",
           "set_json_mode"]
