"""Where VM disks live: the storage backend interface, and the factory that picks one.

A backend turns "VM x needs a boot disk from image y of size z" into something QEMU can
open, and removes it again. ``file`` keeps qcow2 overlays under the host's state dir
(local: a VM on it cannot move to another host); ``rbd`` keeps RBD clones in Ceph
(shared: any host can open them). Every operation is idempotent, because the vm
daemon's reconcile loop may run it twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from ..config import Settings


class StorageError(Exception):
    """A disk or image operation failed; the message is fit for a VM's ``reason``."""


class ImageNotFound(StorageError):
    """The image a VM asks for is not in the store."""


class DiskBusy(StorageError):
    """A disk is still open by some client. Right after its QEMU was killed this is
    transient (a dead RBD client's watch lingers until the OSD times it out, ~30 s), so a
    caller deleting the disk retries instead of giving up."""


@dataclass(frozen=True)
class Disk:
    """One disk of a VM as QEMU should open it."""

    vm_id: str
    role: str  # "boot" (clone of the image, sized to specs.hdd), or "ssd" (an empty data disk)
    size: int  # bytes
    drive: str  # QEMU -drive file=... value, e.g. "/var/lib/ucloud/vms/x/boot.qcow2" or "rbd:pool/img:conf=..."
    format: str  # QEMU format: "qcow2" or "raw"


class StorageBackend(Protocol):
    """What the vm daemon needs from a place that holds disks."""

    name: str  # "file" or "rbd": written to the VM record's ``storage`` field
    shared: bool  # True if every host can open the disks (a VM may be re-placed elsewhere)

    def has_image(self, image: str) -> bool: ...

    def import_image(self, image: str, path: str, progress: "Callable[[int, int], None] | None" = None) -> None:
        """Store the raw or qcow2 file at ``path`` as ``image`` (replacing nothing that exists)."""

    def create_disk(self, vm_id: str, role: str, size: int, image: str | None) -> Disk:
        """Create (or find, if it exists) the disk; ``image`` is the source for a boot disk."""

    def delete_disks(self, vm_id: str) -> None:
        """Remove every disk of ``vm_id``; nothing to remove is fine."""

    def disks(self, vm_id: str) -> list[Disk]:
        """The disks ``vm_id`` has now."""


ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total)


def open_backend(settings: Settings) -> StorageBackend:
    """The backend named by ``settings.storage_backend``."""
    if settings.storage_backend == "rbd":
        from .rbd import RbdBackend

        return RbdBackend(settings)
    from .file import FileBackend

    return FileBackend(settings)
