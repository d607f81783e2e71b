"""The local-file storage backend: images are files, a VM's disks are qcow2 files beside them.

For a one-box cloud (or hosts without Ceph). Images live in ``settings.image_dir`` as
``<name>.raw`` or ``<name>.qcow2``; a VM's boot disk is a copy-on-write qcow2 overlay
over its image (created in milliseconds, growing only with what the guest writes),
sized to ``specs.hdd``; an ``ssd`` disk is an empty qcow2. Disks live under
``<state_dir>/disks/<vm id>/``, so they are local to this host (``shared = False``): a
VM on them cannot be started on another host.

Every operation is idempotent (the vm daemon's reconcile loop may repeat one): creating
a disk that exists returns it, deleting what is gone is fine. Files are created under a
temporary name and renamed into place, so a crash never leaves a half-made disk that
looks complete. ``qemu-img`` is run with argument lists, never a shell.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from ..config import Settings
from . import Disk, ImageNotFound, ProgressFn, StorageError

IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")  # the API's image pattern
VM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
IMAGE_FORMATS = ("qcow2", "raw")  # looked up in this order
ROLES = ("boot", "ssd")
QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"
COPY_CHUNK = 4 * 1024 * 1024


def check_image_name(image: str) -> str:
    if not isinstance(image, str) or not IMAGE_NAME.match(image):
        raise StorageError(f"invalid image name {image!r}")
    return image


def check_vm_id(vm_id: str) -> str:
    if not isinstance(vm_id, str) or not VM_ID.match(vm_id):
        raise StorageError(f"invalid VM id {vm_id!r}")
    return vm_id


def qemu_img(*args: str, timeout: float = 120.0) -> str:
    """Run ``qemu-img args...``; its stdout, or StorageError with its stderr."""
    try:
        done = subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StorageError(f"qemu-img {args[0]} failed: {exc}") from None
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise StorageError(f"qemu-img {args[0]} failed: {message}")
    return done.stdout


def image_info(path: str | Path) -> dict:
    """``qemu-img info`` of ``path`` as a dict (``format``, ``virtual-size``, ...)."""
    return json.loads(qemu_img("info", "--output=json", str(path)))


class FileBackend:
    """Images and disks as files on this host (see the module docstring)."""

    name = "file"
    shared = False

    def __init__(self, settings: Settings) -> None:
        self.image_dir = Path(settings.image_dir)
        self.disk_dir = Path(settings.state_dir) / "disks"

    # -- images -------------------------------------------------------------------------

    def image_path(self, image: str) -> Path | None:
        """The file holding ``image``, or None."""
        check_image_name(image)
        for fmt in IMAGE_FORMATS:
            path = self.image_dir / f"{image}.{fmt}"
            if path.is_file():
                return path
        return None

    def has_image(self, image: str) -> bool:
        return self.image_path(image) is not None

    def images(self) -> list[str]:
        """Names of every stored image."""
        if not self.image_dir.is_dir():
            return []
        return sorted({p.name.rsplit(".", 1)[0] for p in self.image_dir.iterdir()
                       if p.is_file() and p.suffix.lstrip(".") in IMAGE_FORMATS
                       and not p.name.startswith(".")})

    def import_image(self, image: str, path: str, progress: ProgressFn | None = None) -> None:
        """Copy the raw or qcow2 file at ``path`` in as ``image``; an existing image is kept."""
        check_image_name(image)
        if self.has_image(image):
            return
        source = Path(path)
        if not source.is_file():
            raise StorageError(f"image file {path} does not exist")
        fmt = image_info(source).get("format")
        if fmt not in IMAGE_FORMATS:
            raise StorageError(f"image file {path} is {fmt}, not raw or qcow2")
        if fmt == "qcow2" and image_info(source).get("backing-filename"):
            raise StorageError(f"image file {path} has a backing file; flatten it first")
        self.image_dir.mkdir(parents=True, exist_ok=True)
        target = self.image_dir / f"{image}.{fmt}"
        tmp = self.image_dir / f".{image}.{fmt}.{os.getpid()}.tmp"
        total = source.stat().st_size
        done = 0
        try:
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(COPY_CHUNK):
                    dst.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
                dst.flush()
                os.fsync(dst.fileno())
            os.chmod(tmp, 0o444)  # overlays point at it: it must never change
            os.rename(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def delete_image(self, image: str) -> None:
        """Remove ``image`` (disks made from it keep working only while it exists: callers check)."""
        path = self.image_path(image)
        if path is not None:
            path.unlink(missing_ok=True)

    # -- disks --------------------------------------------------------------------------

    def _disk_path(self, vm_id: str, role: str) -> Path:
        check_vm_id(vm_id)
        if role not in ROLES:
            raise StorageError(f"unknown disk role {role!r} (boot or ssd)")
        return self.disk_dir / vm_id / f"{role}.qcow2"

    def create_disk(self, vm_id: str, role: str, size: int, image: str | None) -> Disk:
        """The boot disk: a qcow2 overlay over ``image``, ``size`` bytes; an ssd disk: empty qcow2."""
        path = self._disk_path(vm_id, role)
        if path.exists():
            return self._disk(vm_id, role, path)
        if size <= 0:
            raise StorageError(f"{role} disk of VM {vm_id} needs a size above zero")
        args = ["create", "-q", "-f", "qcow2"]
        if role == "boot":
            if not image:
                raise StorageError(f"boot disk of VM {vm_id} needs an image")
            source = self.image_path(image)
            if source is None:
                raise ImageNotFound(f"image {image!r} not found in {self.image_dir}")
            info = image_info(source)
            if size < int(info["virtual-size"]):
                raise StorageError(f"disk size {size} bytes is smaller than image {image!r} "
                                   f"({info['virtual-size']} bytes)")
            args += ["-b", str(source.resolve()), "-F", info["format"]]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        qemu_img(*args, str(tmp), str(size))
        os.rename(tmp, path)
        return self._disk(vm_id, role, path)

    def _disk(self, vm_id: str, role: str, path: Path) -> Disk:
        size = int(image_info(path)["virtual-size"])
        return Disk(vm_id=vm_id, role=role, size=size, drive=str(path), format="qcow2")

    def disks(self, vm_id: str) -> list[Disk]:
        found = []
        for role in ROLES:
            path = self._disk_path(vm_id, role)
            if path.exists():
                found.append(self._disk(vm_id, role, path))
        return found

    def delete_disks(self, vm_id: str) -> None:
        directory = self.disk_dir / check_vm_id(vm_id)
        shutil.rmtree(directory, ignore_errors=True)
        if directory.exists():
            raise StorageError(f"cannot remove {directory}")

    def vm_ids(self) -> list[str]:
        """Every VM that has disks here (for garbage collection of deleted VMs)."""
        if not self.disk_dir.is_dir():
            return []
        return sorted(p.name for p in self.disk_dir.iterdir() if p.is_dir() and VM_ID.match(p.name))
