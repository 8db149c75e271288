"""Moving bodies between the event loop and dulwich's blocking handlers, with limits.

Request bodies are counted (and gunzipped) as they arrive, so a limit is enforced before
any Git code sees the bytes; responses written by a handler on a worker thread are
streamed back with back-pressure, and the thread stops if the client goes away.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO, Any

from edgenode.streams import limited_chunks


async def spool_body(body: AsyncIterator[bytes], out: IO[bytes], limit: int, *, gzipped: bool) -> int:
    """Copy the body into ``out``, gunzipping if asked; PayloadTooLarge past ``limit`` bytes."""
    size = 0
    async for chunk in limited_chunks(body, limit, gzipped=gzipped):
        size += len(chunk)
        out.write(chunk)
    return size


async def collect_body(body: AsyncIterator[bytes], limit: int, *, gzipped: bool) -> bytes:
    """The whole body in memory, gunzipped if asked; PayloadTooLarge past ``limit`` bytes."""
    return b"".join([chunk async for chunk in limited_chunks(body, limit, gzipped=gzipped)])


_END = object()


def stream_from_thread(run: Callable[[Callable[[bytes], None]], object], *, chunk: int = 256 * 1024,
                        depth: int = 8) -> AsyncIterator[bytes]:
    """Run ``run(write)`` on a thread and yield what it writes, with back-pressure."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=depth)
    abandoned = False
    buf = bytearray()

    def put(item: Any) -> None:
        while not abandoned:
            future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
            try:
                future.result(timeout=1.0)
                return
            except TimeoutError:
                future.cancel()

    def write(data: bytes) -> None:
        if abandoned:
            raise ConnectionAbortedError("client went away")
        buf.extend(data)
        if len(buf) >= chunk:
            put(bytes(buf))
            buf.clear()

    def worker() -> None:
        try:
            run(write)
            if buf:
                put(bytes(buf))
            put(_END)
        except BaseException as exc:  # handed to the reader, which raises it
            put(exc)

    future = loop.run_in_executor(None, worker)

    async def reader() -> AsyncIterator[bytes]:
        nonlocal abandoned
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            abandoned = True
            while not queue.empty():
                queue.get_nowait()
            await asyncio.wait([future], timeout=5)

    return reader()


class ClosingStream:
    """``inner``, whose ``cleanup`` runs once when the stream ends or is closed, even if it was
    never iterated: a plain async generator that never started skips its ``finally``, and
    a response whose client left before the first byte would leak what the cleanup frees."""

    def __init__(self, inner: AsyncIterator[bytes], cleanup: Callable[[], Awaitable[None]]) -> None:
        self._inner = inner
        self._cleanup = cleanup
        self._closed = False

    def __aiter__(self) -> ClosingStream:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        try:
            return await self._inner.__anext__()
        except BaseException:  # the end, an error or a cancellation: free what the stream holds
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close ``inner`` and run the cleanup (once)."""
        if self._closed:
            return
        self._closed = True
        try:
            closer = getattr(self._inner, "aclose", None)
            if closer is not None:
                await closer()
        finally:
            await self._cleanup()
