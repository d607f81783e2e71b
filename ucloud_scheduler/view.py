"""What one scheduler knows of the cluster: parsed hosts, liveness, allocations, VMs and
fellow schedulers, kept current by the reconcile loop's list + watch.

The reconcile loop hands every entry it sees to :meth:`ClusterView.apply`: hosts,
liveness and allocations are all kept, VMs only when this scheduler owns them. The
scheduler's own successful writes are recorded too (:meth:`record`), so the next
batch is planned against them without waiting for the watch to echo them back. A
record is replaced only by a newer ``mod_revision``: a watch event or a re-list that
arrives late never undoes a newer write. The view may still lag behind etcd; that
only costs a failed compare-and-swap, after which the scheduler re-reads.

The planning snapshot (:meth:`snapshot`) copies host states *and* the allocation
records they were computed from under one lock, so a plan's compares and its
capacity checks always refer to the same revisions.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from ucloud_common.keys import ALIVE_PREFIX, ALLOC_PREFIX, HOST_PREFIX, SCHEDULER_PREFIX, VM_PREFIX
from ucloud_common.models import Allocation, Host, ModelError, Specs, VM, VMStatus
from ucloud_common.store import Entry

from .filters import HostState
from .placement import HostTable, Overcommit
from .shard import owner

log = logging.getLogger(__name__)

CAPACITY = "capacity"  # a change that may let a waiting VM fit (or change why it does not)
MEMBERS = "members"  # the set of live schedulers changed: ownership moved


@dataclass(frozen=True)
class Snapshot:
    """One consistent view to plan a batch against."""

    table: HostTable
    allocs: Mapping[str, Allocation]  # host name -> allocation record (absent: none yet)
    states: Mapping[str, HostState]


class ClusterView:
    def __init__(self, overcommit: Overcommit, me: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.overcommit = overcommit
        self.me = me
        self.clock = clock
        self._lock = threading.RLock()
        self.hosts: dict[str, Host] = {}
        self.alive: dict[str, int] = {}  # host name -> revision of its liveness key
        self.allocs: dict[str, Allocation] = {}
        self.vms: dict[str, VM] = {}
        self.members: dict[str, int] = {}  # scheduler id -> revision
        self.waiting: set[str] = set()  # VM ids this scheduler could not place (re-tried on capacity)
        self._states: dict[str, HostState] = {}
        self._gone_since: dict[str, float] = {}  # host name -> when its liveness key was first seen absent
        self._on_host: dict[str, set[str]] = {}  # host name -> ids of VMs whose hostname points there
        self._alloc_of: dict[str, str] = {}  # VM id -> host whose allocation lists it
        self._first_seen: dict[str, float] = {}  # VM id -> when it was first seen needing a host
        self._member_order: tuple[str, ...] = (me,)
        self._split: tuple[list[str], list[str]] | None = None  # (preferred, other) host names
        self._expected: dict[str, bytes] = {}  # key -> value this scheduler is writing right now

    # -- applying what etcd says ----------------------------------------------------------

    def apply(self, key: str, entry: Entry | None) -> str | None:
        """Take in ``key`` as read (``None``: deleted). Returns CAPACITY or MEMBERS when the
        change matters beyond its own key, else None."""
        try:
            if key.startswith(VM_PREFIX):
                return self._apply_vm(key[len(VM_PREFIX):], entry)
            if key.startswith(ALLOC_PREFIX):
                return self._apply_alloc(key[len(ALLOC_PREFIX):], entry)
            if key.startswith(HOST_PREFIX):
                return self._apply_host(key[len(HOST_PREFIX):], entry)
            if key.startswith(ALIVE_PREFIX):
                return self._apply_alive(key[len(ALIVE_PREFIX):], entry)
            if key.startswith(SCHEDULER_PREFIX):
                return self._apply_member(key[len(SCHEDULER_PREFIX):], entry)
        except ModelError as exc:
            log.warning("ignoring malformed record %s: %s", key, exc)
        return None

    def take_in(self, key: str, entry: Entry) -> None:
        """Take in a VM record even if another scheduler owns it (the VMs of a dead host
        this scheduler looks after; they stay until their next change)."""
        try:
            self._apply_vm(key[len(VM_PREFIX):], entry, force=True)
        except ModelError as exc:
            log.warning("ignoring malformed record %s: %s", key, exc)

    def _apply_vm(self, vm_id: str, entry: Entry | None, force: bool = False) -> str | None:
        with self._lock:
            known = self.vms.get(vm_id)
            if entry is None:
                if known:
                    self._set_vm(vm_id, None)
                return None
            if known and entry.mod_revision <= known.mod_revision:
                return None
            if self._expected.get(VM_PREFIX + vm_id) == entry.value:
                return None  # the echo of our own write: record() takes it in without parsing
            if not force and not self.owns(VM_PREFIX + vm_id):
                # Another scheduler's VM: not parsed (with 3 schedulers, 2/3 of all VM events).
                # If it becomes ours, the scheduler takes it in from the reconciler's cache.
                if known:
                    self._set_vm(vm_id, None)
                return None
        vm = VM.from_json(vm_id, entry.value, entry.mod_revision)
        with self._lock:
            known = self.vms.get(vm_id)
            if known is None or vm.mod_revision > known.mod_revision:
                self._set_vm(vm_id, vm)
        return None

    def _set_vm(self, vm_id: str, vm: VM | None) -> None:
        old = self.vms.pop(vm_id, None)
        if old and old.hostname:
            self._on_host.get(host_of(old), set()).discard(vm_id)
        if vm is None:
            self.waiting.discard(vm_id)
            self._first_seen.pop(vm_id, None)
            return
        self.vms[vm_id] = vm
        if vm.hostname:
            self._on_host.setdefault(host_of(vm), set()).add(vm_id)
        if vm.status is VMStatus.REQUESTED_NEW:
            self._first_seen.setdefault(vm_id, self.clock())
        else:
            self.waiting.discard(vm_id)
            self._first_seen.pop(vm_id, None)

    def _apply_alloc(self, name: str, entry: Entry | None) -> str | None:
        with self._lock:
            known = self.allocs.get(name)
            if entry is None:
                if known is None:
                    return None
                self._set_alloc(name, None)
                return CAPACITY
            if known and entry.mod_revision <= known.mod_revision:
                return None
            if self._expected.get(ALLOC_PREFIX + name) == entry.value:
                return None  # our own write (it only adds, or the writer woke the waiting VMs)
        alloc = Allocation.from_json(name, entry.value, entry.mod_revision)
        with self._lock:
            known = self.allocs.get(name)
            if known and alloc.mod_revision <= known.mod_revision:
                return None
            self._set_alloc(name, alloc)
        before = total(known) if known else Specs()
        after = total(alloc)
        freed = after.cpu < before.cpu or after.ram < before.ram or after.hdd < before.hdd or after.ssd < before.ssd
        return CAPACITY if freed else None

    def _set_alloc(self, name: str, alloc: Allocation | None) -> None:
        old = self.allocs.pop(name, None)
        if old:
            for vm_id in old.vms:
                if self._alloc_of.get(vm_id) == name:
                    del self._alloc_of[vm_id]
        if alloc is not None:
            self.allocs[name] = alloc
            for vm_id in alloc.vms:
                self._alloc_of[vm_id] = name
        self._refresh_state(name)

    def _apply_host(self, name: str, entry: Entry | None) -> str | None:
        with self._lock:
            known = self.hosts.get(name)
            if entry is None:
                if known is None:
                    return None
                self.hosts.pop(name)
                self._refresh_state(name)
                self._split = None
                return CAPACITY
            if known and entry.mod_revision <= known.mod_revision:
                return None
        host = Host.from_json(name, entry.value, entry.mod_revision)
        with self._lock:
            known = self.hosts.get(name)
            if known and host.mod_revision <= known.mod_revision:
                return None
            self._put_host(host)
            if known is None:
                self._split = None
        return CAPACITY

    def _put_host(self, host: Host) -> None:
        self.hosts[host.name] = host
        self._refresh_state(host.name)

    def _apply_alive(self, name: str, entry: Entry | None) -> str | None:
        with self._lock:
            if entry is None:
                if self.alive.pop(name, None) is None:
                    return None
                self._gone_since[name] = self.clock()
            else:
                was = self.alive.get(name)
                self.alive[name] = entry.mod_revision
                self._gone_since.pop(name, None)
                if was is not None:
                    return None
            self._refresh_state(name)
        return CAPACITY

    def _apply_member(self, member: str, entry: Entry | None) -> str | None:
        with self._lock:
            if entry is None:
                if self.members.pop(member, None) is None:
                    return None
            else:
                if member in self.members:
                    self.members[member] = entry.mod_revision
                    return None
                self.members[member] = entry.mod_revision
            self._member_order = tuple(sorted(set(self.members) | {self.me}))
            self._split = None
        return MEMBERS

    def _refresh_state(self, name: str) -> None:
        host = self.hosts.get(name)
        if host is None:
            self._states.pop(name, None)
            return
        alloc = self.allocs.get(name)
        self._states[name] = HostState(
            name=name, status=host.status, alive=name in self.alive, capacity=host.capacity,
            limit=self.overcommit.limit(host.capacity), used=total(alloc) if alloc else Specs())

    # -- the scheduler's own writes ----------------------------------------------------------

    def expect(self, writes: Mapping[str, bytes]) -> None:
        """Values about to be written by this scheduler: their watch echo, which may arrive
        before the transaction returns, is then not parsed (``record`` takes them in)."""
        with self._lock:
            self._expected.update(writes)

    def forget(self, keys: Iterable[str]) -> None:
        """The write of ``keys`` is over (recorded, or failed)."""
        with self._lock:
            for key in keys:
                self._expected.pop(key, None)

    def record(self, vms: Iterable[VM] = (), allocs: Iterable[Allocation] = (), hosts: Iterable[Host] = ()) -> None:
        """Take in records this scheduler has just written (carrying their new revision)."""
        with self._lock:
            for vm in vms:
                known = self.vms.get(vm.id)
                if known is None or vm.mod_revision > known.mod_revision:
                    self._set_vm(vm.id, vm)
            for alloc in allocs:
                known = self.allocs.get(alloc.host)
                if known is None or alloc.mod_revision > known.mod_revision:
                    self._set_alloc(alloc.host, alloc)
            for host in hosts:
                known = self.hosts.get(host.name)
                if known is None or host.mod_revision > known.mod_revision:
                    self._put_host(host)

    # -- questions ---------------------------------------------------------------------------

    def owns(self, key: str) -> bool:
        """Is this scheduler the one that looks after ``key``?"""
        members = self._member_order
        return len(members) == 1 or owner(key, members) == self.me

    def member_count(self) -> int:
        return len(self._member_order)

    def is_alive(self, name: str) -> bool:
        return name in self.alive

    def gone_since(self, name: str) -> float:
        """When this scheduler first saw ``name`` without a liveness key (now, if just now)."""
        with self._lock:
            return self._gone_since.setdefault(name, self.clock())

    def vms_on(self, name: str) -> list[str]:
        with self._lock:
            return list(self._on_host.get(name, ()))

    def alloc_of(self, vm_id: str) -> str | None:
        return self._alloc_of.get(vm_id)

    def first_seen(self, vm_id: str) -> float | None:
        return self._first_seen.get(vm_id)

    def listed_vm_ids(self) -> set[str]:
        """Every VM id an allocation lists (deleted VMs included)."""
        with self._lock:
            return set(self._alloc_of)

    def snapshot(self) -> Snapshot:
        """Host states (this scheduler's share first) and the allocations they were computed from."""
        with self._lock:
            if self._split is None:
                preferred: list[str] = []
                others: list[str] = []
                for name in sorted(self.hosts):
                    (preferred if owner(HOST_PREFIX + name, self._member_order) == self.me else others).append(name)
                self._split = (preferred, others)
            preferred, others = self._split
            states = dict(self._states)
            allocs = dict(self.allocs)
        table = HostTable([states[n] for n in preferred if n in states],
                          [states[n] for n in others if n in states])
        return Snapshot(table, allocs, states)


def total(alloc: Allocation) -> Specs:
    """``alloc.used``, summed field by field (it runs on every allocation change)."""
    specs = alloc.vms.values()
    return Specs(sum(s.cpu for s in specs), sum(s.ram for s in specs),
                 sum(s.hdd for s in specs), sum(s.ssd for s in specs))


def host_of(vm: VM) -> str:
    """The bare host name a VM is placed on ("" if none); tolerant of a bare name in ``hostname``."""
    return vm.hostname[len(HOST_PREFIX):] if vm.hostname.startswith(HOST_PREFIX) else vm.hostname
