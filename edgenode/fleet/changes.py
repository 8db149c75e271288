"""A capability's feed of changed records: the one hook the fleet control plane listens on.

A capability calls :meth:`ChangeFeed.emit` after a local change has committed, naming the record
(``"token", token_id``). It never says what changed: whoever listens reads the record's current
state back, so a repeated or late notice is harmless. Changes a node applies on behalf of the
fleet run inside :meth:`ChangeFeed.quiet`, so applying a remote change is not announced again.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterator

log = logging.getLogger(__name__)

Listener = Callable[[str, tuple[str, ...]], Awaitable[None]]

_quiet: contextvars.ContextVar[bool] = contextvars.ContextVar("edgenode_changes_quiet", default=False)


class ChangeFeed:
    """Listeners told which record changed; emitting with none is free."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(kind, parts)`` after every change from now on."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        """Stop calling ``listener``."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def emit(self, kind: str, *parts: str) -> None:
        """Tell every listener that record ``kind/parts`` changed; a failing listener is logged, never raised."""
        if _quiet.get():
            return
        for listener in list(self._listeners):
            try:
                await listener(kind, parts)
            except Exception:
                log.exception("a change listener failed", extra={"kind": kind})

    @staticmethod
    @contextlib.contextmanager
    def quiet() -> Iterator[None]:
        """Within this block (and the tasks it awaits) changes are not emitted: they came from the fleet."""
        token = _quiet.set(True)
        try:
            yield
        finally:
            _quiet.reset(token)
