"""Worker and agent deployments as control records, their code content-addressed in a blob bucket.

A deployment record names the current version (its number, kind, settings) and the SHA-256 of
its code; the code itself (a Python deployment's files as canonical JSON, a component's bytes) is
a blob of that name in the fleet's blob bucket, written before the record, so any node can
install the version without a build: Python source compiles to bytecode in the shared runtime at
its first request. A record whose code has not arrived yet is retried. Environment values (which
may hold secrets) travel sealed.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from edgenode.errors import WorkerNotFound
from edgenode.fleet.buckets import BlobStore
from edgenode.fleet.control import ApplyPending, Record
from edgenode.fleet.secrets import SecretBox
from edgenode.isolates.registry import Version
from edgenode.threads import FILES

if TYPE_CHECKING:
    from edgenode.agents import Agents
    from edgenode.isolates import Workers


def canonical(value: Any) -> bytes:
    """The one byte form of a JSON value that its content hash is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class WorkerDeployments:
    """The current version of each worker, replicated with its code."""

    name = "worker"

    def __init__(self, workers: Workers, blobs: BlobStore, box: SecretBox) -> None:
        self.workers = workers
        self.blobs = blobs
        self.box = box

    async def snapshot(self, parts: tuple[str, ...]) -> Record | None:
        tenant, name = parts
        try:
            version = await self.workers.registry.current(tenant, name)
        except WorkerNotFound:
            return None
        if version.kind == "python":
            code = canonical(version.source)
        else:
            code = await FILES.run(self.workers.component_path(version).read_bytes)
        settings = dict(version.settings)
        env = settings.pop("env", {})
        settings["env_sealed"] = self.box.seal(json.dumps(env), f"worker.{tenant}.{name}")
        return {"tenant": tenant, "name": name, "version": version.version, "kind": version.kind,
                "hash": version.hash, "settings": settings, "code": await self.blobs.put(code),
                "created_at": version.created_at}

    async def apply(self, parts: tuple[str, ...], record: Record | None) -> None:
        tenant, name = parts
        if record is None:
            await self.workers.forget(tenant, name)
            return
        settings = dict(record["settings"])
        settings["env"] = json.loads(self.box.open(settings.pop("env_sealed"), f"worker.{tenant}.{name}"))
        code = await _code(self.blobs, record)
        kind = str(record["kind"])
        source = json.loads(code) if kind == "python" else None
        version = Version(tenant, name, int(record["version"]), kind, str(record["hash"]), settings,
                          float(record["created_at"]), source)
        await self.workers.install(version, None if kind == "python" else code)

    async def keys(self) -> list[tuple[str, ...]]:
        return list(await self.workers.registry.names())

    def merge(self, current: Record | None, new: Record | None) -> Record | None:
        return new


class AgentDeployments:
    """The current version of each agent, replicated with its code."""

    name = "agent"

    def __init__(self, agents: Agents, blobs: BlobStore) -> None:
        self.agents = agents
        self.blobs = blobs

    async def snapshot(self, parts: tuple[str, ...]) -> Record | None:
        tenant, name = parts
        row = await self.agents.db.read(lambda c: c.execute(
            "SELECT v.version, v.hash, v.files, v.config, v.created_at FROM agents a JOIN agent_versions v"
            " ON v.tenant = a.tenant AND v.name = a.name AND v.version = a.current_version"
            " WHERE a.tenant = ? AND a.name = ?", (tenant, name)).fetchone())
        if row is None:
            return None
        code = await self.blobs.put(canonical(json.loads(row["files"])))
        return {"tenant": tenant, "name": name, "version": row["version"], "hash": row["hash"],
                "config": json.loads(row["config"]), "code": code, "created_at": row["created_at"]}

    async def apply(self, parts: tuple[str, ...], record: Record | None) -> None:
        tenant, name = parts
        if record is None:
            def remove(c: Any) -> None:
                c.execute("DELETE FROM agents WHERE tenant = ? AND name = ?", (tenant, name))
                c.execute("DELETE FROM agent_versions WHERE tenant = ? AND name = ?", (tenant, name))

            await self.agents.db.write(remove)
            return
        files = json.loads(await _code(self.blobs, record))
        await self.agents.install_version(tenant, name, int(record["version"]), hash=str(record["hash"]),
                                          files=files, config=dict(record["config"]),
                                          created_at=float(record["created_at"]))

    async def keys(self) -> list[tuple[str, ...]]:
        return await self.agents.db.read(lambda c: [(r[0], r[1]) for r in c.execute(
            "SELECT tenant, name FROM agents")])

    def merge(self, current: Record | None, new: Record | None) -> Record | None:
        return new


async def _code(blobs: BlobStore, record: Record) -> bytes:
    data = await blobs.get(str(record["code"]))
    if data is None:
        raise ApplyPending(f"the code {record['code']} has not arrived yet")
    return data


__all__ = ["AgentDeployments", "WorkerDeployments", "canonical"]
