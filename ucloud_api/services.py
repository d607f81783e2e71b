"""What the API does, as plain functions over a :class:`Store` — no Flask in here.

Every write is a compare-and-swap (DESIGN.md §3): a record is read with its
``mod_revision`` and written back only if unchanged; on :class:`Conflict` the function
re-reads and decides again (the scheduler or a vm daemon may have moved the VM in
between). A user only ever sees their own VMs: another user's VM raises the same
:class:`NotFound` as a missing one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import replace
from typing import Any, Callable

import grpc

from ucloud_common.config import Settings
from ucloud_common.keys import (ALIVE_PREFIX, ALLOC_PREFIX, HOST_PREFIX, IDEMPOTENCY_PREFIX, VM_PREFIX,
                                name_from_key, vm_key)
from ucloud_common.models import RESOURCES, VM, Allocation, Host, ModelError, Specs, VMStatus
from ucloud_common.store import Compare, Conflict, Delete, Put, Store, Unavailable

log = logging.getLogger(__name__)

MIN_RAM = 16 * 2**20  # 16 MiB: less cannot boot anything
MAX_RAM = 2**44  # 16 TiB
MAX_DISK = 2**50  # 1 PiB per disk kind
CAS_ATTEMPTS = 8
IDEMPOTENCY_TTL = 24 * 3600  # a retry within a day gets the same VM
_VM_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


class ServiceError(Exception):
    field: str | None = None

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(ServiceError):
    """No such VM — or not yours, which looks exactly the same."""


class InvalidState(ServiceError):
    """The request does not fit the record's current state (409)."""


# -- specs ---------------------------------------------------------------------------


def check_specs(data: dict[str, Any]) -> Specs:
    """Parse ``data`` with ``Specs.from_dict`` and refuse what no VM can be: raises ModelError."""
    specs = Specs.from_dict(data)
    if specs.cpu < 1 or specs.cpu > 1024:
        raise ModelError("specs.cpu", "must be between 1 and 1024 vCPUs")
    if specs.ram < MIN_RAM:
        raise ModelError("specs.ram", "must be at least 16MiB")
    if specs.ram > MAX_RAM:
        raise ModelError("specs.ram", "must be at most 16TiB")
    for disk in ("hdd", "ssd"):
        if getattr(specs, disk) > MAX_DISK:
            raise ModelError(f"specs.{disk}", "must be at most 1PiB")
    if specs.hdd == 0 and specs.ssd == 0:
        raise ModelError("specs.hdd", "a VM needs a disk: hdd and ssd cannot both be 0")
    return specs


# -- reading one's own VM ----------------------------------------------------------------


def _not_found(vm_id: str, field: str) -> NotFound:
    return NotFound(f"no VM {vm_id!r}", field)


def get_vm(store: Store, owner: str, vm_id: str, field: str = "id") -> VM:
    """The VM ``vm_id`` if it exists and belongs to ``owner``; else :class:`NotFound`."""
    if not _VM_ID_RE.fullmatch(vm_id):
        raise _not_found(vm_id, field)
    entry = store.get(vm_key(vm_id))
    if entry is None:
        raise _not_found(vm_id, field)
    try:
        vm = VM.from_json(vm_id, entry.value, entry.mod_revision)
    except ModelError as exc:  # a damaged record is our fault, not the caller's
        raise RuntimeError(f"VM record {vm_id} is damaged: {exc}") from None
    if vm.owner != owner:
        raise _not_found(vm_id, field)
    return vm


def list_vms(store: Store, owner: str) -> list[VM]:
    """The owner's VMs, oldest first. (Reads the whole prefix: fine at this cloud's size.)"""
    entries, _ = store.list(VM_PREFIX)
    vms = []
    for entry in entries:
        vm_id = name_from_key(entry.key, VM_PREFIX)
        try:
            vm = VM.from_json(vm_id, entry.value, entry.mod_revision)
        except ModelError as exc:
            log.warning("skipping damaged VM record %s: %s", entry.key, exc)
            continue
        if vm.owner == owner:
            vms.append(vm)
    return sorted(vms, key=lambda v: (v.created, v.id))


def vm_view(vm: VM) -> dict[str, Any]:
    """What a user sees of a VM (``schemas.VMOut``)."""
    return {
        "id": vm.id, "vm_name": vm.name, "owner": vm.owner, "status": vm.status.value,
        "hostname": vm.hostname, "specs": vm.specs.to_dict(), "image": vm.image, "reason": vm.reason,
        "events": [e.to_dict() for e in vm.events], "created": vm.created,
        "networks": [nic.to_dict() for nic in vm.networks],
    }


# -- create ------------------------------------------------------------------------------


class _LeasePool:
    """One etcd lease per process, reused for an hour, that idempotency records hang on.

    A lease per request would cost an extra etcd round trip per create; sharing one
    granted for ``IDEMPOTENCY_TTL`` + 1 h and used for an hour keeps every record for
    24-25 h at no per-request cost.
    """

    REUSE = 3600.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lease = 0
        self._granted = 0.0

    def get(self, store: Store) -> int:
        with self._lock:
            if not self._lease or time.monotonic() - self._granted > self.REUSE:
                self._lease = store.grant_lease(IDEMPOTENCY_TTL + int(self.REUSE))
                self._granted = time.monotonic()
            return self._lease

    def forget(self) -> None:
        with self._lock:
            self._lease = 0


_leases = _LeasePool()


def idempotency_key(owner: str, key: str) -> str:
    digest = hashlib.sha256
    return f"{IDEMPOTENCY_PREFIX}{digest(owner.encode()).hexdigest()[:32]}/{digest(key.encode()).hexdigest()[:32]}"


def _replay(store: Store, key: str, fingerprint: str) -> str | None:
    """The VM id an earlier create with this Idempotency-Key made, if any."""
    entry = store.get(key)
    if entry is None:
        return None
    record = json.loads(entry.value)
    if record.get("fingerprint") != fingerprint:
        raise InvalidState("this Idempotency-Key was already used for a different request",
                           "Idempotency-Key")
    return str(record["vm"])


def create_vm(store: Store, owner: str, specs: Specs, *, image: str, vm_name: str = "",
              idempotency: str | None = None, now: Callable[[], float] = time.time) -> tuple[str, bool]:
    """Write a new ``REQUESTED_NEW`` VM for the scheduler; return ``(id, created)``.

    With an ``idempotency`` key the VM and a record of the key are written in one
    transaction; a retry with the same key and the same request returns the first VM
    (``created`` False), the same key with a different request is a 409.
    """
    fingerprint = hashlib.sha256(json.dumps(
        [specs.to_dict(), image, vm_name], sort_keys=True).encode()).hexdigest()
    idem_key = idempotency_key(owner, idempotency) if idempotency else None
    if idem_key:
        earlier = _replay(store, idem_key, fingerprint)
        if earlier:
            return earlier, False
    created = round(now(), 3)
    vm = VM(id=str(uuid.uuid4()), owner=owner, specs=specs, image=image, name=vm_name,
            created=created).with_event("created", now=created)
    compares = [Compare(vm_key(vm.id), 0)]
    ops = [Put(vm_key(vm.id), vm.to_json())]
    for attempt in (1, 2):
        if idem_key:
            record = json.dumps({"vm": vm.id, "fingerprint": fingerprint, "created": created}).encode()
            compares[1:] = [Compare(idem_key, 0)]
            ops[1:] = [Put(idem_key, record, _leases.get(store))]
        try:
            store.txn(compares, ops)
            return vm.id, True
        except Conflict:
            if not idem_key:
                raise
            earlier = _replay(store, idem_key, fingerprint)  # a concurrent retry won the race
            if earlier:
                return earlier, False
            raise
        except grpc.RpcError as exc:  # our lease is gone (etcd data wiped): take a new one once
            if exc.code() != grpc.StatusCode.NOT_FOUND or attempt == 2:
                raise
            _leases.forget()
    raise AssertionError("unreachable")  # pragma: no cover


# -- delete and actions ------------------------------------------------------------------


def _cas(store: Store, owner: str, vm_id: str, field: str,
         decide: Callable[[VM], VM | None]) -> VM:
    """Read the VM, let ``decide`` return its new version (None: nothing to do), write it
    back with a compare-and-swap; on a conflict re-read and decide again."""
    for _ in range(CAS_ATTEMPTS):
        vm = get_vm(store, owner, vm_id, field)
        new = decide(vm)
        if new is None:
            return vm
        try:
            revision = store.update(vm_key(vm_id), new.to_json(), vm.mod_revision)
            return replace(new, mod_revision=revision)
        except Conflict:
            continue
    raise Unavailable(f"VM {vm_id} kept changing during {CAS_ATTEMPTS} attempts")


def delete_vm(store: Store, owner: str, vm_id: str) -> str:
    """Ask for the VM to go; returns ``"DELETED"`` or ``"REQUESTED_DELETE"``.

    A VM never placed (``hostname`` empty) has nothing running anywhere: it is removed
    at once, by a compare-and-swap delete (if the scheduler placed it meanwhile, the
    compare fails and we decide again), which also frees its MACs and drops it from its
    networks. Otherwise its host's vm daemon owns the delete.
    """
    from .networks import release_vm_ops  # networks builds on this module

    for _ in range(CAS_ATTEMPTS):
        vm = get_vm(store, owner, vm_id, "vmid")
        if not vm.hostname:
            compares = [Compare(vm_key(vm_id), vm.mod_revision)]
            ops = [Delete(vm_key(vm_id)), *release_vm_ops(store, vm, compares)]
            try:
                store.txn(compares, ops)
                return "DELETED"
            except Conflict:
                continue
        if vm.status is VMStatus.REQUESTED_DELETE:
            return vm.status.value
        new = vm.with_event("delete requested", status=VMStatus.REQUESTED_DELETE)
        try:
            store.update(vm_key(vm_id), new.to_json(), vm.mod_revision)
            return VMStatus.REQUESTED_DELETE.value
        except Conflict:
            continue
    raise Unavailable(f"VM {vm_id} kept changing during {CAS_ATTEMPTS} attempts")


# action -> (the statuses it may start from, the status it asks for)
ACTIONS: dict[str, tuple[frozenset[VMStatus], VMStatus]] = {
    # ERROR (a crash loop, a storage outage) is left for a person: "start" retries it, "stop" parks it.
    "start": (frozenset({VMStatus.STOPPED, VMStatus.ERROR}), VMStatus.REQUESTED_START),
    "stop": (frozenset({VMStatus.RUNNING, VMStatus.KILLED, VMStatus.REQUESTED_REBOOT, VMStatus.ERROR}),
             VMStatus.REQUESTED_STOP),
    "reboot": (frozenset({VMStatus.RUNNING}), VMStatus.REQUESTED_REBOOT),
}


def decide_action(vm: VM, action: str) -> VM | None:
    """The VM with the status ``action`` asks for; None if it already asks for it; else
    :class:`InvalidState` saying why (pure: no etcd)."""
    allowed, target = ACTIONS[action]
    if vm.status is target:
        return None
    if vm.status not in allowed or not vm.hostname:
        can = ", ".join(sorted(s.value for s in allowed))
        raise InvalidState(f"cannot {action} a VM that is {vm.status.value} (only from {can})", "action")
    return vm.with_event(f"{action} requested", status=target)


def act_on_vm(store: Store, owner: str, vm_id: str, action: str) -> VM:
    return _cas(store, owner, vm_id, "vmid", lambda vm: decide_action(vm, action))


# -- hosts and health ----------------------------------------------------------------------


def _scaled(capacity: Specs, settings: Settings) -> Specs:
    factors = {r: getattr(settings, f"overcommit_{r}") for r in RESOURCES}
    return Specs(**{r: int(getattr(capacity, r) * factors[r]) for r in RESOURCES})


def list_hosts(store: Store, settings: Settings) -> list[dict[str, Any]]:
    """Every host with capacity, what is promised on it, what is free and whether it is alive."""
    hosts, _ = store.list(HOST_PREFIX)
    allocs = {name_from_key(e.key, ALLOC_PREFIX): e for e in store.list(ALLOC_PREFIX)[0]}
    alive = {name_from_key(e.key, ALIVE_PREFIX) for e in store.list(ALIVE_PREFIX)[0]}
    out = []
    for entry in hosts:
        name = name_from_key(entry.key, HOST_PREFIX)
        try:
            host = Host.from_json(name, entry.value, entry.mod_revision)
            alloc = (Allocation.from_json(name, allocs[name].value, allocs[name].mod_revision)
                     if name in allocs else Allocation(name))
        except ModelError as exc:
            log.warning("skipping damaged host record %s: %s", entry.key, exc)
            continue
        promised = alloc.used
        room = _scaled(host.capacity, settings)
        free = Specs(**{r: max(0, getattr(room, r) - getattr(promised, r)) for r in RESOURCES})
        out.append({
            "name": name, "status": host.status.value, "alive": name in alive, "address": host.address,
            "capacity": host.capacity.to_dict(), "promised": promised.to_dict(), "free": free.to_dict(),
            "vms": len(alloc.vms),
        })
    return out


def health(store: Store) -> dict[str, Any]:
    return {"status": "ok", "etcd": "ok", "revision": store.revision()}
