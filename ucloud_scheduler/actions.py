"""What the scheduler decided, and the one etcd transaction that makes it so.

Each decision about a VM is an action: place it (perhaps moving it off a dead host),
send it back to waiting, note why it cannot be placed, declare it lost with its host,
or release what a deleted VM was promised. :class:`TxnBuilder` turns a batch of
actions into a single transaction in which *every* record written is compared at the
revision it was decided from — each VM at its ``mod_revision`` (a released VM: absent),
each allocation at its ``mod_revision`` (0 when the host has none yet) — and a VM moved
off (or lost with) a dead host only while that host's liveness key is still absent. Several
placements on one host share that host's one compare, so a batch is exactly as safe as
the same placements one by one: if anything changed, nothing is written.

Pure: no etcd here; the daemon runs the transaction and records the new revision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Mapping, Union

from ucloud_common.keys import alive_key, alloc_key, host_key, vm_key
from ucloud_common.models import Allocation, VM, VMStatus
from ucloud_common.store import Compare, Delete, Op, Put

MAX_COMPARES = 120  # etcd's default --max-txn-ops is 128
MAX_BYTES = 1_000_000  # etcd's default request limit is 1.5 MiB
_ALLOC_BYTES_PER_VM = 96  # a generous estimate of one VM's share of an allocation record


@dataclass(frozen=True)
class Place:
    """Put ``vm`` on ``host`` (SCHEDULED_DEPLOY); ``source``: the host it leaves, if any;
    ``from_dead``: that host is dead, which the transaction checks (its liveness key absent)."""

    vm: VM
    host: str
    source: str = ""
    message: str = ""
    from_dead: bool = False
    status: VMStatus = VMStatus.SCHEDULED_DEPLOY  # REQUESTED_DELETE: a live host deletes its shared disk


@dataclass(frozen=True)
class Unplace:
    """Take ``vm`` off the dead host ``source`` (checked dead at commit) and let it wait
    (REQUESTED_NEW) for room."""

    vm: VM
    source: str
    reason: str


@dataclass(frozen=True)
class SetReason:
    """Record why ``vm`` cannot be placed (written only when the reason changes)."""

    vm: VM
    reason: str


@dataclass(frozen=True)
class MarkLost:
    """``vm``'s host died with its disk (checked dead at commit): HOST_LOST, keeping its host
    and its promise."""

    vm: VM
    reason: str


@dataclass(frozen=True)
class Forget:
    """``vm`` is to be deleted but its host ``source`` died (checked dead at commit) and no
    other host can reach its disk (local to the dead host, or never made): remove the record
    and its promise. A host that comes back finds the record gone and removes what is left."""

    vm: VM
    source: str


@dataclass(frozen=True)
class Release:
    """``vm_id`` was deleted: drop it from ``host``'s allocation."""

    vm_id: str
    host: str


Action = Union[Place, Unplace, SetReason, MarkLost, Forget, Release]


def placed_vm(action: Place, now: float) -> VM:
    message = action.message or f"placed on {action.host}"
    return action.vm.with_event(message, now, hostname=host_key(action.host), status=action.status, reason="")


class TxnBuilder:
    """Collects actions into one transaction while it stays within etcd's limits."""

    def __init__(self, allocs: Mapping[str, Allocation], now: float,
                 max_compares: int = MAX_COMPARES, max_bytes: int = MAX_BYTES) -> None:
        self._base = allocs
        self._now = now
        self._max_compares = max_compares
        self._max_bytes = max_bytes
        self._vms: dict[str, tuple[VM, bytes] | None] = {}  # VM id -> new record (None: compared absent)
        self._vm_compare: dict[str, int] = {}
        self._allocs: dict[str, Allocation] = {}  # host -> new allocation
        self._dead: set[str] = set()  # hosts whose liveness key must still be absent at commit
        self._deleted: set[str] = set()  # VM records this transaction removes
        self._bytes = 0
        self.actions: list[Action] = []

    def __len__(self) -> int:
        return len(self.actions)

    def _alloc(self, host: str) -> Allocation:
        if host in self._allocs:
            return self._allocs[host]
        return self._base.get(host) or Allocation(host)

    def _vm_after(self, action: Action) -> VM | None:
        if isinstance(action, Place):
            return placed_vm(action, self._now)
        if isinstance(action, Unplace):
            return action.vm.with_event(f"host {action.source} is dead; waiting for room elsewhere",
                                        self._now, hostname="", status=VMStatus.REQUESTED_NEW,
                                        reason=action.reason)
        if isinstance(action, SetReason):
            return action.vm.with_event(f"not placed: {action.reason}", self._now, reason=action.reason)
        if isinstance(action, MarkLost):
            return action.vm.with_event(action.reason, self._now, status=VMStatus.HOST_LOST, reason=action.reason)
        return None

    def _alloc_changes(self, action: Action) -> dict[str, Allocation]:
        changes: dict[str, Allocation] = {}
        if isinstance(action, (Place, Unplace, Forget)) and action.source:
            old = self._alloc(action.source)
            if action.vm.id in old.vms:
                changes[action.source] = old.without_vm(action.vm.id)
        if isinstance(action, Place):
            new = changes.get(action.host) or self._alloc(action.host)
            changes[action.host] = new.with_vm(action.vm.id, action.vm.specs)
        if isinstance(action, Release):
            old = self._alloc(action.host)
            if action.vm_id in old.vms:
                changes[action.host] = old.without_vm(action.vm_id)
        return changes

    def add(self, action: Action) -> bool:
        """Add ``action`` if the transaction stays within limits; False: leave it for the next one."""
        vm_id = action.vm_id if isinstance(action, Release) else action.vm.id
        if vm_id in self._vms:
            return False  # one decision per VM per transaction
        vm = self._vm_after(action)
        raw = vm.to_json() if vm else b""
        changes = self._alloc_changes(action)
        if isinstance(action, Release) and not changes:
            return True  # nothing to release: already done
        dead = _dead_host(action)
        new_keys = 1 + sum(1 for h in changes if h not in self._allocs) + (dead not in self._dead if dead else 0)
        size = len(raw) + sum(
            64 + _ALLOC_BYTES_PER_VM * len(a.vms) for h, a in changes.items() if h not in self._allocs)
        if self.actions and (self.compare_count() + new_keys > self._max_compares
                             or self._bytes + size > self._max_bytes):
            return False
        self._vms[vm_id] = (vm, raw) if vm else None
        self._vm_compare[vm_id] = 0 if isinstance(action, Release) else action.vm.mod_revision
        if isinstance(action, Forget):
            self._deleted.add(vm_id)
        self._allocs.update(changes)
        if dead:
            self._dead.add(dead)
        self._bytes += size
        self.actions.append(action)
        return True

    def compare_count(self) -> int:
        return len(self._vm_compare) + len(self._allocs) + len(self._dead)

    def allocations(self) -> dict[str, Allocation]:
        """The allocation records this transaction writes, by host."""
        return dict(self._allocs)

    def build(self) -> tuple[list[Compare], list[Op]]:
        compares: list[Compare] = []
        ops: list[Op] = []
        for vm_id, revision in self._vm_compare.items():
            compares.append(Compare(vm_key(vm_id), revision))
            written = self._vms[vm_id]
            if written is not None:
                ops.append(Put(vm_key(vm_id), written[1]))
            elif vm_id in self._deleted:
                ops.append(Delete(vm_key(vm_id)))
        for host, alloc in self._allocs.items():
            base = self._base.get(host)
            compares.append(Compare(alloc_key(host), base.mod_revision if base else 0))
            ops.append(Put(alloc_key(host), alloc.to_json()))
        for host in sorted(self._dead):
            # A view that lags could think a live host dead: the move is then refused.
            compares.append(Compare(alive_key(host), 0))
        return compares, ops

    def records(self, revision: int) -> tuple[list[VM], list[Allocation]]:
        """The written records as they are now in etcd (at ``revision``)."""
        vms = [replace(w[0], mod_revision=revision) for w in self._vms.values() if w is not None]
        allocs = [replace(a, mod_revision=revision) for a in self._allocs.values()]
        return vms, allocs


def _dead_host(action: Action) -> str:
    """The host this action takes for dead ("" if none)."""
    if isinstance(action, Place):
        return action.source if action.from_dead else ""
    if isinstance(action, (Unplace, Forget)):
        return action.source
    if isinstance(action, MarkLost):
        return action.vm.host_name
    return ""


def describe(actions: list[Action]) -> str:
    """A short summary for logs: counts of each kind of action."""
    counts: dict[str, int] = {}
    for action in actions:
        counts[type(action).__name__] = counts.get(type(action).__name__, 0) + 1
    return json.dumps(counts, sort_keys=True)
