"""Reading a streamed body without letting it grow past a limit."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterable, AsyncIterator

from edgenode.errors import BadRequest, PayloadTooLarge


async def limited_chunks(
    body: AsyncIterable[bytes], limit: int, *, gzipped: bool = False, what: str = "request body"
) -> AsyncIterator[bytes]:
    """The body's chunks, gunzipped if asked; PayloadTooLarge once more than ``limit`` bytes come out.

    The limit counts decoded bytes, so a small gzip bomb is stopped as early as a large plain body.
    """
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
    size = 0
    async for chunk in body:
        if inflater is not None:
            try:
                chunk = inflater.decompress(chunk, limit + 1 - size)
            except zlib.error as exc:
                raise BadRequest(f"bad gzip body: {exc}") from exc
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{what} exceeds the limit of {limit} bytes", limit=limit)
        yield chunk


async def read_limited(body: AsyncIterable[bytes], limit: int, what: str = "request body") -> bytes:
    """Join ``body``, raising PayloadTooLarge as soon as it passes ``limit`` bytes."""
    return b"".join([chunk async for chunk in limited_chunks(body, limit, what=what)])
