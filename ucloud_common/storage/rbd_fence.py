"""Fencing a dead host on Ceph: before its VMs start elsewhere, its Ceph clients are blocklisted.

The scheduler calls :meth:`RbdFencer.fence` (``ucloud_scheduler.fencing.Fencer``) right
before it re-places a VM of a host whose lease ran out. Self-fencing (the host kills its
QEMUs when it cannot renew its lease) is the first guard; this is the second, for a
host that is half dead: frozen, partitioned from etcd but not from Ceph, or whose
QEMUs outlived their daemon. RBD's exclusive lock alone does not stop such a QEMU: the
lock is cooperative and a new QEMU asking for it would simply get it handed over,
after which both write. A blocklisted client, though, is refused by every OSD.

How the host's clients are found: not from anything the host says about itself (a
half-dead host may not have said it), but from Ceph. Every VM placed on the host (per
its etcd record, file-backed ones excluded) has its disks' watchers (each QEMU that
has a disk open) and exclusive-lock owners (the QEMU that last wrote, even if its
watch has lapsed) blocklisted by address (``ip:0/nonce``: one librados instance, so
nothing else on the host is affected), then the locks are broken
(:meth:`~ucloud_common.storage.rbd.RbdBackend.fence_vms`). Idempotent: a second call
finds nothing left to blocklist. Any failure (Ceph or etcd unreachable) raises, and
the scheduler keeps the VM where it is and tries again.

Ceph capabilities of the fencing client (``ceph_client``): ``mon 'allow r, allow
command "osd blocklist"'`` and ``osd 'allow rwx pool=<hdd pool>, allow rwx
pool=<ssd pool>'`` (``profile rbd`` on the mon includes the blocklist command).
"""

from __future__ import annotations

import logging

from ..config import Settings
from ..keys import VM_PREFIX, name_from_key
from ..models import VM, ModelError
from ..store import Store
from . import StorageError
from .rbd import RbdBackend

log = logging.getLogger(__name__)


class RbdFencer:
    """Blocklists the Ceph clients of a dead host's VM disks (see the module docstring)."""

    def __init__(self, settings: Settings, store: Store | None = None, backend: RbdBackend | None = None) -> None:
        self.settings = settings
        self._store = store
        self._own_store = store is None
        self.backend = backend or RbdBackend(settings)

    @property
    def store(self) -> Store:
        if self._store is None:
            s = self.settings
            self._store = Store(s.etcd_endpoints, timeout=s.etcd_timeout, retry_for=s.etcd_retry_for)
        return self._store

    def vms_on(self, host_name: str) -> list[str]:
        """Ids of the VMs whose record places them on ``host_name`` and whose disks may be in Ceph."""
        entries, _ = self.store.list(VM_PREFIX)
        found = []
        for entry in entries:
            vm_id = name_from_key(entry.key, VM_PREFIX)
            try:
                vm = VM.from_json(vm_id, entry.value, entry.mod_revision)
            except (ModelError, ValueError):
                continue  # not ours to judge; the API and daemons report broken records
            if vm.host_name == host_name and vm.storage != "file":
                found.append(vm_id)
        return sorted(found)

    def fence(self, host_name: str) -> None:
        """Blocklist every Ceph client of ``host_name``'s VM disks and break their locks; raise
        :class:`StorageError` if that could not be done (the VMs must then stay put)."""
        vm_ids = self.vms_on(host_name)
        if not vm_ids:
            return
        try:
            fenced = self.backend.fence_vms(vm_ids)
        except StorageError as exc:
            raise StorageError(f"cannot fence host {host_name} on Ceph: {exc}") from None
        log.info("host %s fenced on Ceph: %d VM(s), clients blocklisted: %s", host_name, len(vm_ids),
                 ", ".join(fenced) or "none had a disk open")

    def close(self) -> None:
        self.backend.close()
        if self._own_store and self._store is not None:
            self._store.close()
            self._store = None
