"""Grant one group search access to a directory through a POSIX ACL, leaving its mode alone.

bwrap resolves every bind source with ``realpath`` as the user it runs as, so the
sandbox's own uid must be able to walk down to its workspace, while the node's
data directory stays ``0700``. A single ACL entry lets the sandboxes' group search
(``--x``, never list or read) the directories on the way; nothing else changes.
The ACL is written as the kernel's ``system.posix_acl_access`` xattr, so no
``setfacl`` binary or library is needed.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

_XATTR = "system.posix_acl_access"
_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
_SEARCH = 0x1


def _read(path: Path) -> dict[tuple[int, int], int]:
    try:
        raw = os.getxattr(path, _XATTR)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
            raise
        raw = b""
    if len(raw) >= 4 and struct.unpack_from("<I", raw)[0] == _VERSION:
        entries = {}
        for offset in range(4, len(raw) - 7, 8):
            tag, perm, ident = struct.unpack_from("<HHI", raw, offset)
            entries[(tag, ident)] = perm
        return entries
    mode = os.stat(path).st_mode
    return {
        (_USER_OBJ, _UNDEFINED_ID): (mode >> 6) & 7,
        (_GROUP_OBJ, _UNDEFINED_ID): (mode >> 3) & 7,
        (_OTHER, _UNDEFINED_ID): mode & 7,
    }


def has_group_search(path: Path, gid: int) -> bool:
    """Whether ``gid`` has an effective ACL grant of search on ``path`` (its entry and the mask allow it)."""
    entries = _read(path)
    mask = entries.get((_MASK, _UNDEFINED_ID), 7)
    return bool(entries.get((_GROUP, gid), 0) & mask & _SEARCH)


def grant_group_search(path: Path, gid: int) -> None:
    """Add ``group:gid:--x`` to ``path``'s access ACL (OSError where ACLs are unsupported)."""
    entries = _read(path)
    key = (_GROUP, gid)
    entries[key] = entries.get(key, 0) | _SEARCH
    # The mask bounds named entries and the owning group; it must cover every one of them.
    mask = 0
    for (tag, _), perm in entries.items():
        if tag in (_USER, _GROUP, _GROUP_OBJ):
            mask |= perm
    entries[(_MASK, _UNDEFINED_ID)] = mask
    data = struct.pack("<I", _VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for (tag, ident), perm in sorted(entries.items())
    )
    os.setxattr(path, _XATTR, data)


__all__ = ["grant_group_search", "has_group_search"]
