"""Reading a streamed body without letting it grow past a limit."""

from __future__ import annotations

from collections.abc import AsyncIterable

from edgenode.errors import PayloadTooLarge


async def read_limited(chunks: AsyncIterable[bytes], limit: int, what: str = "request body") -> bytes:
    """Join ``chunks``, raising PayloadTooLarge as soon as they pass ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{what} exceeds the limit of {limit} bytes", limit=limit)
        parts.append(chunk)
    return b"".join(parts)
