"""Reading and writing history through the API: commits of files, refs, log, trees, blobs, diffs.

Every function takes an open dulwich ``Repo``; callers hold the repository's lock around
writes. Writes never touch a working tree: blobs and trees are built in the object store
and the branch moves by compare-and-swap, so a parent that moved in between is a 409.
"""

from __future__ import annotations

import base64
import io
import posixpath
import re
import time
from dataclasses import dataclass
from typing import Any

from dulwich.diff_tree import tree_changes
from dulwich.file import FileLocked
from dulwich.objects import Blob, Commit, ObjectID, ShaFile, Tag, Tree
from dulwich.patch import write_tree_diff
from dulwich.refs import Ref
from dulwich.repo import Repo

from edgenode.errors import ArtifactNotFound, ParentMoved, ValidationFailed

ZERO = b"0" * 40
_HEX = re.compile(r"^[0-9a-f]{4,40}\Z")
_AUTHOR = re.compile(r"^[^<>\n]+ <[^<>\n]*>\Z")

FILE_MODE = 0o100644
EXEC_MODE = 0o100755
DIR_MODE = 0o040000
LINK_MODE = 0o120000
GITLINK_MODE = 0o160000


@dataclass(frozen=True)
class FileChange:
    """New content for one path (``None`` deletes it)."""

    path: str
    content: bytes | None
    executable: bool = False


def parse_files(files: Any, *, max_bytes: int) -> list[FileChange]:
    """Validate the ``files`` object of a commit request into changes."""
    if not isinstance(files, dict) or not files:
        raise ValidationFailed("files must be a non-empty object of path -> content", field="files")
    changes: list[FileChange] = []
    total = 0
    for path, value in files.items():
        clean = validate_path(path)
        executable = False
        if value is None:
            content = None
        elif isinstance(value, str):
            content = value.encode()
        elif isinstance(value, dict):
            executable = bool(value.get("executable", False))
            if isinstance(value.get("base64"), str):
                try:
                    content = base64.b64decode(value["base64"], validate=True)
                except ValueError as exc:
                    raise ValidationFailed(f"files[{path!r}].base64 is not valid base64", field="files") from exc
            elif isinstance(value.get("text"), str):
                content = value["text"].encode()
            else:
                raise ValidationFailed(f"files[{path!r}] needs 'text' or 'base64'", field="files")
        else:
            raise ValidationFailed(
                f"files[{path!r}] must be a string, null, or {{'text'|'base64': ...}}", field="files"
            )
        total += len(content or b"")
        changes.append(FileChange(clean, content, executable))
    if total > max_bytes:
        raise ValidationFailed(f"files add up to {total} bytes; the limit is {max_bytes}", field="files")
    return changes


#: Code points HFS+ ignores in names, so ``.g\u200cit`` is ``.git`` on a Mac (as git's fsck knows).
_HFS_IGNORED = dict.fromkeys([0x200C, 0x200D, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x206A, 0x2070),
                              0xFEFF])


def is_git_dir_alias(part: str) -> bool:
    """Whether a path component names ``.git`` on some checkout's file system (git's fsck refuses these).

    Case-insensitive file systems (``.GIT``), HFS+ (ignorable code points), NTFS (trailing dots and
    spaces, alternate data streams after ``:``, and the 8.3 short name ``GIT~1``).
    """
    name = part.translate(_HFS_IGNORED).lower()
    name = name.split(":", 1)[0].rstrip(" .")
    return name in (".git", "git~1")


def validate_path(path: Any) -> str:
    """A repository-relative file path: no empty, '.', '..' or '.git' components (nor any alias of it)."""
    if not isinstance(path, str) or not path or len(path) > 4096 or "\0" in path or "\\" in path:
        raise ValidationFailed(f"invalid path {path!r}", field="files")
    parts = path.strip("/").split("/")
    if any(p in ("", ".", "..") or is_git_dir_alias(p) for p in parts):
        raise ValidationFailed(f"invalid path {path!r}", field="files")
    return "/".join(parts)


def parse_author(author: Any, default: bytes) -> bytes:
    """``"Name <email>"`` or ``{"name", "email"}`` as Git identity bytes."""
    if author is None:
        return default
    if isinstance(author, dict):
        name, email = author.get("name"), author.get("email", "")
        if not isinstance(name, str) or not isinstance(email, str):
            raise ValidationFailed("author needs a string name and email", field="author")
        author = f"{name} <{email}>"
    if not isinstance(author, str) or not _AUTHOR.match(author) or len(author) > 300:
        raise ValidationFailed("author must look like 'Name <email>'", field="author")
    return author.encode()


# -- resolving revisions ------------------------------------------------------


def resolve(repo: Repo, rev: str) -> bytes:
    """The commit id a revision names: a full or short id, a branch, a tag, or a full ref."""
    if not isinstance(rev, str) or not rev or len(rev) > 300:
        raise ValidationFailed("a revision is required", field="ref")
    raw = rev.encode()
    candidates = [raw] if raw.startswith(b"refs/") or raw == b"HEAD" else [
        b"refs/heads/" + raw, b"refs/tags/" + raw, b"refs/" + raw
    ]
    for ref in candidates:
        try:
            return peel(repo, repo.refs[Ref(ref)])
        except KeyError:
            continue
    if _HEX.match(rev):
        if len(rev) == 40 and ObjectID(raw) in repo.object_store:
            return peel(repo, raw)
        matches = list(repo.object_store.iter_prefix(raw)) if len(rev) < 40 else []
        if len(matches) == 1:
            return peel(repo, matches[0])
    raise ArtifactNotFound(f"no revision {rev!r}", ref=rev)


def _commit(repo: Repo, sha: bytes) -> Commit:
    obj = repo[ObjectID(sha)]
    if not isinstance(obj, Commit):
        raise ArtifactNotFound(f"{sha.decode()} is not a commit")
    return obj


def peel(repo: Repo, sha: bytes) -> bytes:
    """Follow tags to the commit they name."""
    obj: ShaFile = repo[sha]
    while isinstance(obj, Tag):
        obj = repo[obj.object[1]]
    if not isinstance(obj, Commit):
        raise ArtifactNotFound(f"{sha.decode()} is not a commit")
    return obj.id


def refs(repo: Repo) -> dict[str, Any]:
    """Every ref and where HEAD points."""
    all_refs = {bytes(k): bytes(v) for k, v in repo.refs.as_dict().items()}
    head: str | None = None
    try:
        target = repo.refs.get_symrefs().get(Ref(b"HEAD"))
        head = target.decode() if target else None
    except KeyError:
        head = None
    return {"head": head, "refs": {k.decode(): v.decode() for k, v in sorted(all_refs.items()) if k != b"HEAD"}}


# -- writing ------------------------------------------------------------------


def commit_files(
    repo: Repo,
    *,
    branch: str,
    message: str,
    author: bytes,
    changes: list[FileChange],
    parent: str | None,
    now: float | None = None,
) -> tuple[bytes, bytes | None]:
    """Commit ``changes`` on ``branch``; returns (new commit, old head). 409 if the head moved."""
    ref = b"refs/heads/" + branch.encode()
    current: bytes | None = repo.refs.as_dict().get(Ref(ref))
    if parent is not None:
        expected = resolve(repo, parent) if parent else None
        if expected != current:
            raise ParentMoved(
                f"branch {branch!r} is at {_hex(current)}, not at the given parent {_hex(expected)}",
                expected=_hex(expected),
                actual=_hex(current),
            )
    base_tree = _commit(repo, current).tree if current is not None else None
    new_objects: list[ShaFile] = []
    tree_id = _apply(repo, base_tree, [(c.path.split("/"), c) for c in changes], new_objects)
    if tree_id is None:
        empty = Tree()
        new_objects.append(empty)
        tree_id = empty.id
    commit = Commit()
    commit.tree = tree_id
    commit.parents = [ObjectID(current)] if current is not None else []
    commit.author = commit.committer = author
    stamp = int(time.time() if now is None else now)
    commit.author_time = commit.commit_time = stamp
    commit.author_timezone = commit.commit_timezone = 0
    commit.encoding = b"UTF-8"
    commit.message = message.encode() if message.endswith("\n") else (message + "\n").encode()
    new_objects.append(commit)
    repo.object_store.add_objects([(o, None) for o in new_objects])
    try:
        moved = repo.refs.set_if_equals(Ref(ref), ObjectID(current or ZERO), commit.id)
    except FileLocked:  # another writer holds the ref's lock file right now
        moved = False
    if not moved:
        actual = repo.refs.as_dict().get(Ref(ref))
        raise ParentMoved(
            f"branch {branch!r} moved while committing", expected=_hex(current), actual=_hex(actual)
        )
    return commit.id, current


def _apply(
    repo: Repo, tree_id: bytes | None, changes: list[tuple[list[str], FileChange]], out: list[ShaFile]
) -> bytes | None:
    """Apply changes below one directory; returns the new tree id, or None if it ends up empty."""
    tree = Tree()
    if tree_id is not None:
        existing = repo[tree_id]
        assert isinstance(existing, Tree)
        for entry in existing.iteritems():
            tree.add(entry.path, entry.mode, entry.sha)
    by_dir: dict[str, list[tuple[list[str], FileChange]]] = {}
    for parts, change in changes:
        head = parts[0]
        if len(parts) == 1:
            name = head.encode()
            if change.content is None:
                if name in tree:
                    del tree[name]
                continue
            if name in tree and tree[name][0] == DIR_MODE:
                raise ValidationFailed(f"{change.path!r} is a directory", field="files")
            blob = Blob.from_string(change.content)
            out.append(blob)
            tree.add(name, EXEC_MODE if change.executable else FILE_MODE, ObjectID(blob.id))
        else:
            by_dir.setdefault(head, []).append((parts[1:], change))
    for head, sub in by_dir.items():
        name = head.encode()
        sub_id: bytes | None = None
        if name in tree:
            mode, sha = tree[name]
            if mode != DIR_MODE:
                if all(c.content is None for _, c in sub):
                    continue
                raise ValidationFailed(f"{head!r} is a file, not a directory", field="files")
            sub_id = sha
        new_id = _apply(repo, sub_id, sub, out)
        if new_id is None:
            if name in tree:
                del tree[name]
        else:
            tree.add(name, DIR_MODE, ObjectID(new_id))
    if not len(tree):
        return None
    if tree.id != tree_id:
        out.append(tree)
    return tree.id


# -- reading ------------------------------------------------------------------


def log(repo: Repo, rev: str, *, limit: int = 50, path: str | None = None) -> list[dict[str, Any]]:
    """Commits reachable from ``rev``, newest first."""
    head = resolve(repo, rev)
    paths = [validate_path(path).encode()] if path else None
    walker = repo.get_walker(include=[ObjectID(head)], max_entries=limit, paths=paths)
    return [commit_json(entry.commit) for entry in walker]


def commit_json(commit: Commit) -> dict[str, Any]:
    """A commit as JSON."""
    return {
        "commit": commit.id.decode(),
        "tree": commit.tree.decode(),
        "parents": [p.decode() for p in commit.parents],
        "author": commit.author.decode(errors="replace"),
        "committer": commit.committer.decode(errors="replace"),
        "time": commit.commit_time,
        "message": commit.message.decode(errors="replace"),
    }


def _walk_to(repo: Repo, rev: str, path: str) -> tuple[int, bytes]:
    commit = repo[resolve(repo, rev)]
    assert isinstance(commit, Commit)
    mode, sha = DIR_MODE, commit.tree
    if path.strip("/"):
        clean = validate_path(path)
        try:
            root = repo[commit.tree]
            assert isinstance(root, Tree)
            mode, sha = root.lookup_path(repo.object_store.__getitem__, clean.encode())
        except (KeyError, AttributeError) as exc:
            raise ArtifactNotFound(f"no path {clean!r} at {rev!r}", path=clean) from exc
    return mode, sha


def tree(repo: Repo, rev: str, path: str = "", *, max_inline_bytes: int = 1024 * 1024) -> dict[str, Any]:
    """A directory listing, or for a file its content inline (text, else base64)."""
    mode, sha = _walk_to(repo, rev, path)
    if mode == DIR_MODE:
        obj = repo[sha]
        assert isinstance(obj, Tree)
        entries = []
        for entry in obj.iteritems():
            kind = "tree" if entry.mode == DIR_MODE else "commit" if entry.mode == GITLINK_MODE else "blob"
            entries.append({"name": entry.path.decode(errors="replace"), "type": kind,
                            "mode": f"{entry.mode:06o}", "sha": entry.sha.decode()})
        return {"type": "tree", "path": path.strip("/"), "sha": sha.decode(), "entries": entries}
    if mode == GITLINK_MODE:
        return {"type": "commit", "path": path.strip("/"), "sha": sha.decode()}
    blob = repo[sha]
    assert isinstance(blob, Blob)
    data = blob.as_raw_string()
    out: dict[str, Any] = {"type": "blob", "path": path.strip("/"), "sha": sha.decode(), "mode": f"{mode:06o}",
                           "size": len(data)}
    if len(data) > max_inline_bytes:
        out["truncated"] = True
        return out
    try:
        out["text"] = data.decode()
    except UnicodeDecodeError:
        out["base64"] = base64.b64encode(data).decode()
    return out


def blob(repo: Repo, rev: str, path: str) -> bytes:
    """The raw bytes of the file at ``path`` in ``rev``."""
    mode, sha = _walk_to(repo, rev, path)
    if mode in (DIR_MODE, GITLINK_MODE):
        raise ArtifactNotFound(f"{path!r} is not a file", path=path)
    obj = repo[sha]
    assert isinstance(obj, Blob)
    return obj.as_raw_string()


def diff(repo: Repo, base: str, head: str, *, max_patch_bytes: int = 1024 * 1024) -> dict[str, Any]:
    """Changed paths between two revisions and a unified patch (cut at ``max_patch_bytes``)."""
    a = repo[resolve(repo, base)]
    b = repo[resolve(repo, head)]
    assert isinstance(a, Commit) and isinstance(b, Commit)
    changes = []
    for change in tree_changes(repo.object_store, a.tree, b.tree):
        old, new = change.old, change.new
        changes.append({
            "change": change.type,
            "old_path": old.path.decode(errors="replace") if old and old.path else None,
            "new_path": new.path.decode(errors="replace") if new and new.path else None,
            "old_sha": old.sha.decode() if old and old.sha else None,
            "new_sha": new.sha.decode() if new and new.sha else None,
        })
    buf = io.BytesIO()
    write_tree_diff(buf, repo.object_store, a.tree, b.tree)
    patch = buf.getvalue()
    truncated = len(patch) > max_patch_bytes
    return {
        "from": a.id.decode(),
        "to": b.id.decode(),
        "changes": changes,
        "patch": patch[:max_patch_bytes].decode(errors="replace"),
        "truncated": truncated,
    }


def is_ancestor(store: Any, ancestor: bytes, descendant: bytes, *, limit: int = 1_000_000) -> bool:
    """Whether ``ancestor`` is reachable from ``descendant`` in object store ``store``."""
    if ancestor == descendant:
        return True
    seen: set[bytes] = set()
    todo = [descendant]
    while todo:
        sha = todo.pop()
        if sha in seen:
            continue
        seen.add(sha)
        if len(seen) > limit:
            return False
        try:
            obj = store[sha]
        except KeyError:
            continue
        if not isinstance(obj, Commit):
            continue
        for parent in obj.parents:
            if parent == ancestor:
                return True
            todo.append(parent)
    return False


def _hex(sha: bytes | None) -> str | None:
    return sha.decode() if sha else None


def normalise_dir(path: str) -> str:
    """A path with no leading or trailing slash (``""`` for the root)."""
    return posixpath.normpath("/" + path).lstrip("/") if path.strip("/") else ""
