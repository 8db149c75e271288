"""Sandbox checkpoints as control records: ``checkpoint.<tenant>.<sandbox id>`` names the latest manifest.

The manifest and the files' pieces are blobs in the fleet's blob bucket, written before the
record (``edgenode.sandboxes.checkpoint``); the record is small and replicated to every node, so
any node can restore the sandbox. The key carries the tenant and a node only ever looks records
up under the caller's tenant, so one tenant's checkpoint is never another's to restore. A record
of a deleted tenant is not applied (a late one cannot bring it back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgenode.fleet.control import Record
from edgenode.sandboxes.checkpoint import KIND

if TYPE_CHECKING:
    from edgenode.fleet.control import ControlPlane
    from edgenode.sandboxes.checkpoint import Checkpoints


class SandboxCheckpoints:
    """The latest checkpoint of every sandbox of the fleet."""

    name = KIND

    def __init__(self, checkpoints: Checkpoints) -> None:
        self.checkpoints = checkpoints
        self.control: ControlPlane | None = None

    def bind(self, control: ControlPlane) -> None:
        """Learn of the control plane (to know deleted tenants)."""
        self.control = control

    async def snapshot(self, parts: tuple[str, ...]) -> Record | None:
        tenant, sandbox_id = parts
        return await self.checkpoints.snapshot(tenant, sandbox_id)

    async def apply(self, parts: tuple[str, ...], record: Record | None) -> None:
        tenant, sandbox_id = parts
        if record is not None and self.control is not None and await self.control.deleted(f"tenant.{tenant}"):
            return  # its tenant is gone
        await self.checkpoints.apply(tenant, sandbox_id, record)

    async def keys(self) -> list[tuple[str, ...]]:
        return await self.checkpoints.keys()

    def merge(self, current: Record | None, new: Record | None) -> Record | None:
        return new


__all__ = ["SandboxCheckpoints"]
