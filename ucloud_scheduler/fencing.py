"""Fencing: make sure a dead host can no longer write to a VM's disk before the VM
is started somewhere else (DESIGN.md §3.5, "never run a VM twice").

The first guard is the host's own: a vm daemon that cannot renew its lease stops its
VMs before the lease can expire, and the scheduler waits a further lease TTL after the
liveness key vanished. A :class:`Fencer` is the second guard, called right before a
VM of a dead host is re-placed: for Ceph it blocklists the dead host's clients so
that RBD refuses their writes even if they still run. It is called once per death of a
host, by the one scheduler that owns the host, before any of the host's VMs moves (so
it never comes late and cuts off a VM already started elsewhere), with the host's name:
the VMs still placed there are the ones to fence. It must be idempotent (a scheduler
that takes over a dead colleague's hosts calls it again) and raise when it could not
fence; the scheduler then keeps the VMs where they are and tries again later.
"""

from __future__ import annotations

from typing import Protocol

from ucloud_common.config import Settings


class FencingError(Exception):
    """The host could not be fenced; its VMs must not be started elsewhere yet."""


class Fencer(Protocol):
    def fence(self, host_name: str) -> None:
        """Cut ``host_name`` off from shared storage, or raise."""


class NoFencer:
    """Relies on self-fencing alone (enough for file storage, whose VMs never move)."""

    def fence(self, host_name: str) -> None:
        return None


def open_fencer(settings: Settings) -> Fencer:
    """The fencer for ``settings.storage_backend``: with ``rbd``, the Ceph blocklisting
    fencer (``ucloud_common.storage.rbd_fence``); otherwise none."""
    if settings.storage_backend == "rbd":
        from ucloud_common.storage.rbd_fence import RbdFencer

        return RbdFencer(settings)
    return NoFencer()
