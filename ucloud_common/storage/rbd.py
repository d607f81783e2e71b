"""The Ceph RBD storage backend: images and VM disks in a Ceph cluster every host can reach.

Layout (pools named in config):

* an image is an RBD image ``<name>`` in ``rbd_image_pool`` with a protected snapshot
  ``base``; it is written once, by :meth:`RbdBackend.import_image`, and never changes;
* a VM's boot disk is ``<vm id>-boot`` in ``rbd_hdd_pool``: a copy-on-write clone of
  ``<image>@base``, resized to ``specs.hdd``. Creating one costs the same for a 1 GiB
  and a 10 GiB image (only metadata is written) and it grows only with what the guest
  writes;
* an ssd disk (``specs.ssd > 0``) is an empty image ``<vm id>-ssd`` in ``rbd_ssd_pool``.

Disks carry RBD's exclusive-lock feature: one client writes at a time, and
:meth:`RbdBackend.fence_vms` takes a dead host's clients out of the game by
blocklisting every client that still has one of its VMs' disks open or locked,
then breaking the locks (see the README's "Ceph" section for the capabilities).

Every call is bounded: the connection, monitor commands and OSD operations use
``settings.ceph_timeout``; a pool is looked up through the monitor first, because
librados waits without limit for a pool it does not know while the monitor is
away. Everything Ceph raises becomes a :class:`StorageError` whose message is fit
for a VM's ``reason``. Operations are idempotent, like the interface asks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import subprocess
import threading
from typing import Any, Iterable, Iterator

import rados
import rbd

from ..config import Settings
from . import Disk, DiskBusy, ImageNotFound, ProgressFn, StorageError
from .file import check_image_name, check_vm_id, image_info

log = logging.getLogger(__name__)

SNAPSHOT = "base"  # the protected snapshot of an image that clones are made from
FEATURES = (rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK | rbd.RBD_FEATURE_OBJECT_MAP
            | rbd.RBD_FEATURE_FAST_DIFF | rbd.RBD_FEATURE_DEEP_FLATTEN)
IMPORT_SUFFIX = ".importing"  # an image being imported; renamed to its name once complete
FENCE_EXPIRE_SECONDS = 7 * 24 * 3600  # a blocklisted client address (pid + nonce) never comes back
QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"
ROLES = ("boot", "ssd")
SECTOR = 512
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def qemu_rbd_spec(pool: str, name: str, conf: str, client: str, options: dict[str, str] | None = None) -> str:
    """The ``rbd:`` filename QEMU and qemu-img open (``rbd:POOL/IMAGE:conf=...:id=...``).

    Colons and backslashes in values are escaped, so a path cannot add options.
    """
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")
    parts = [f"rbd:{esc(pool)}/{esc(name)}", f"conf={esc(conf)}", f"id={esc(client)}"]
    parts += [f"{key}={esc(value)}" for key, value in (options or {}).items()]
    return ":".join(parts)


def _round_up(size: int, unit: int = SECTOR) -> int:
    return -(-size // unit) * unit


class RbdBackend:
    """Images and disks in Ceph RBD (see the module docstring)."""

    name = "rbd"
    shared = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.conf = settings.ceph_conf
        self.client = settings.ceph_client
        self.timeout = max(1, int(round(settings.ceph_timeout)))
        self.pools = {"image": settings.rbd_image_pool, "boot": settings.rbd_hdd_pool, "ssd": settings.rbd_ssd_pool}
        self._lock = threading.Lock()
        self._cluster: Any = None
        self._ioctxs: dict[str, Any] = {}

    # -- connection ---------------------------------------------------------------------

    def _ceph_options(self) -> dict[str, str]:
        seconds = str(self.timeout)
        return {"client_mount_timeout": seconds, "rados_mon_op_timeout": seconds, "rados_osd_op_timeout": seconds}

    def _connected(self) -> Any:
        """The cluster handle, connecting (bounded by the timeout) if there is none yet."""
        with self._lock:
            if self._cluster is None:
                cluster = rados.Rados(conffile=self.conf, rados_id=self.client, conf=self._ceph_options())
                try:
                    cluster.connect(timeout=self.timeout)
                except rados.TimedOut:
                    cluster.shutdown()
                    raise StorageError(f"Ceph is unreachable: no monitor answered within {self.timeout}s "
                                       f"(conf {self.conf})") from None
                except rados.Error as exc:
                    cluster.shutdown()
                    raise StorageError(f"cannot connect to Ceph as client.{self.client} "
                                       f"(conf {self.conf}): {exc}") from None
                self._cluster = cluster
            return self._cluster

    def _reset(self) -> None:
        """Drop the handle (e.g. after it was blocklisted); the next call connects afresh."""
        with self._lock:
            cluster, self._cluster = self._cluster, None
            ioctxs, self._ioctxs = self._ioctxs, {}
        for ioctx in ioctxs.values():
            with contextlib.suppress(Exception):
                ioctx.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.shutdown()

    def close(self) -> None:
        self._reset()

    def mon_command(self, cmd: dict[str, Any]) -> str:
        """One monitor command, bounded by the timeout; its output, or StorageError."""
        with self._errors(f"running '{cmd['prefix']}'"):
            ret, out, err = self._connected().mon_command(json.dumps(cmd), b"", timeout=self.timeout)
        if ret == -110:  # ETIMEDOUT: the monitor is gone
            raise StorageError(f"Ceph is unreachable: the monitor did not answer within {self.timeout}s "
                               f"(conf {self.conf})")
        if ret != 0:
            raise StorageError(f"Ceph refused '{cmd['prefix']}': {err or ret}")
        return out.decode()

    def _ioctx(self, role: str) -> Any:
        """An I/O context of the pool for ``role`` (image, boot, ssd); StorageError if it is missing."""
        pool = self.pools[role]
        with self._lock:
            ioctx = self._ioctxs.get(pool)
        if ioctx is not None:
            return ioctx
        # librados waits without limit for a pool it does not know while the monitor is away:
        # ask the monitor (bounded) first.
        if pool not in json.loads(self.mon_command({"prefix": "osd pool ls", "format": "json"}) or "[]"):
            raise StorageError(f"Ceph pool {pool!r} does not exist (create it: ceph osd pool create {pool}; "
                               f"rbd pool init {pool})")
        with self._errors(f"opening pool {pool!r}"):
            ioctx = self._connected().open_ioctx(pool)
        with self._lock:
            self._ioctxs.setdefault(pool, ioctx)
            return self._ioctxs[pool]

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn what Ceph raises while doing ``what`` into a StorageError fit for a VM's reason."""
        try:
            yield
        except StorageError:
            raise
        except (rados.TimedOut, rbd.Timeout):
            raise StorageError(f"Ceph did not answer within {self.timeout}s while {what}") from None
        except (rados.ConnectionShutdown, rbd.ConnectionShutdown):
            self._reset()  # this client was blocklisted or shut down: a new one is needed
            raise StorageError(f"Ceph cut this client off while {what} (blocklisted?)") from None
        except (rados.PermissionError, rbd.PermissionError, rados.PermissionDeniedError):
            raise StorageError(f"Ceph denied client.{self.client} while {what}: check its capabilities") from None
        except (rados.Error, rbd.Error) as exc:
            raise StorageError(f"Ceph failed while {what}: {exc}") from None

    def client_address(self) -> str:
        """This process's Ceph client address (``ip:0/nonce``), as the blocklist names it."""
        with self._errors("reading the client address"):
            return self._connected().get_addrs()

    # -- images -------------------------------------------------------------------------

    def has_image(self, image: str) -> bool:
        """True when ``image`` is completely imported (it has its protected snapshot)."""
        check_image_name(image)
        with self._errors(f"looking up image {image!r}"):
            try:
                with rbd.Image(self._ioctx("image"), image, read_only=True) as img:
                    return any(s["name"] == SNAPSHOT for s in img.list_snaps()) and img.is_protected_snap(SNAPSHOT)
            except rbd.ImageNotFound:
                return False

    def images(self) -> list[str]:
        """Names of every completely imported image."""
        with self._errors("listing images"):
            names = rbd.RBD().list(self._ioctx("image"))
        return sorted(n for n in names if not n.endswith(IMPORT_SUFFIX) and self.has_image(n))

    def image_size(self, image: str) -> int:
        with self._errors(f"reading image {image!r}"):
            try:
                with rbd.Image(self._ioctx("image"), check_image_name(image), snapshot=SNAPSHOT,
                               read_only=True) as img:
                    return img.size()
            except rbd.ImageNotFound:
                raise ImageNotFound(f"image {image!r} is not in Ceph pool {self.pools['image']!r}") from None

    def import_image(self, image: str, path: str, progress: ProgressFn | None = None) -> None:
        """Write the raw or qcow2 file at ``path`` into ``image`` and snapshot it; an existing
        image is kept. Holes and zeroes are skipped, so a sparse image stays sparse.

        The data is written under ``<image>.importing`` (by ``qemu-img convert``, which
        reads qcow2 and raw alike) and renamed once its snapshot is protected, so an
        interrupted import never looks like an image.
        """
        check_image_name(image)
        if self.has_image(image):
            return
        info = image_info(path)
        fmt, size = info.get("format"), int(info.get("virtual-size", 0))
        if fmt not in ("raw", "qcow2"):
            raise StorageError(f"image file {path} is {fmt}, not raw or qcow2")
        if info.get("backing-filename"):
            raise StorageError(f"image file {path} has a backing file; flatten it first")
        temp = image + IMPORT_SUFFIX
        ioctx = self._ioctx("image")
        with self._errors(f"importing image {image!r}"):
            self._remove_stale_import(ioctx, temp)
            rbd.RBD().create(ioctx, temp, size, old_format=False, features=FEATURES)
        try:
            self._convert(path, fmt, temp, size, progress)
            with self._errors(f"snapshotting image {image!r}"):
                with rbd.Image(ioctx, temp) as img:
                    img.create_snap(SNAPSHOT)
                    img.protect_snap(SNAPSHOT)
                rbd.RBD().rename(ioctx, temp, image)
        except BaseException:
            with contextlib.suppress(Exception):
                self._remove_image(ioctx, temp)
            raise

    def _remove_stale_import(self, ioctx: Any, temp: str) -> None:
        try:
            with rbd.Image(ioctx, temp, read_only=True) as img:
                if len(list(img.watchers_list())) > 1:  # someone besides us: an import is running
                    raise StorageError(f"image {temp[:-len(IMPORT_SUFFIX)]!r} is being imported right now")
        except rbd.ImageNotFound:
            return
        self._remove_image(ioctx, temp)

    @staticmethod
    def _remove_image(ioctx: Any, name: str) -> None:
        try:
            with rbd.Image(ioctx, name) as img:
                for snap in list(img.list_snaps()):
                    if img.is_protected_snap(snap["name"]):
                        img.unprotect_snap(snap["name"])
                    img.remove_snap(snap["name"])
            rbd.RBD().remove(ioctx, name)
        except rbd.ImageNotFound:
            pass

    def _convert(self, path: str, fmt: str, target: str, size: int, progress: ProgressFn | None) -> None:
        """``qemu-img convert`` ``path`` into the (new, all-zero) RBD image ``target``."""
        spec = qemu_rbd_spec(self.pools["image"], target, self.conf, self.client, self._ceph_options())
        argv = [QEMU_IMG, "convert", "-p", "-n", "--target-is-zero", "-W", "-f", fmt, "-O", "raw", path, spec]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None and proc.stderr is not None
        stderr = bytearray()
        reader = threading.Thread(target=lambda: stderr.extend(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reported = -1

        def report(done: int) -> None:
            nonlocal reported
            if progress and done != reported:
                reported = done
                progress(done, size)

        report(0)
        buffer = b""
        while chunk := proc.stdout.read1(4096):
            buffer += chunk
            matches = _PROGRESS.findall(buffer)
            if matches:
                report(min(size, int(float(matches[-1]) * size / 100)))
                buffer = buffer[-64:]
        proc.wait()
        reader.join(5)
        if proc.returncode != 0:
            message = (stderr.decode(errors="replace").strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise StorageError(f"importing {path} into Ceph failed: {message}")
        report(size)

    # -- disks --------------------------------------------------------------------------

    def _disk_name(self, vm_id: str, role: str) -> str:
        check_vm_id(vm_id)
        if role not in ROLES:
            raise StorageError(f"unknown disk role {role!r} (boot or ssd)")
        return f"{vm_id}-{role}"

    def _disk(self, vm_id: str, role: str, size: int) -> Disk:
        drive = qemu_rbd_spec(self.pools[role], self._disk_name(vm_id, role), self.conf, self.client)
        return Disk(vm_id=vm_id, role=role, size=size, drive=drive, format="raw")

    def create_disk(self, vm_id: str, role: str, size: int, image: str | None) -> Disk:
        """The boot disk: a clone of ``image@base`` resized to ``size`` (0: the image's size);
        an ssd disk: an empty image of ``size``. An existing disk is returned (grown if smaller)."""
        name = self._disk_name(vm_id, role)
        size = _round_up(size)
        with self._errors(f"creating the {role} disk of VM {vm_id}"):
            ioctx = self._ioctx(role)
            try:
                with rbd.Image(ioctx, name) as img:  # made before (the loop runs twice, or we crashed)
                    if img.size() < size:
                        img.resize(size)
                    return self._disk(vm_id, role, img.size())
            except rbd.ImageNotFound:
                pass
            if role == "boot":
                if not image:
                    raise StorageError(f"boot disk of VM {vm_id} needs an image")
                image_size = self.image_size(image)
                if size and size < image_size:
                    raise StorageError(f"disk size {size} bytes is smaller than image {image!r} ({image_size} bytes)")
                try:
                    rbd.RBD().clone(self._ioctx("image"), image, SNAPSHOT, ioctx, name, features=FEATURES)
                except rbd.ImageExists:
                    pass  # made at the same moment by another run of this loop
            else:
                if size <= 0:
                    raise StorageError(f"{role} disk of VM {vm_id} needs a size above zero")
                try:
                    rbd.RBD().create(ioctx, name, size, old_format=False, features=FEATURES)
                except rbd.ImageExists:
                    pass
            with rbd.Image(ioctx, name) as img:
                if img.size() < size:
                    img.resize(size)
                return self._disk(vm_id, role, img.size())

    def disks(self, vm_id: str) -> list[Disk]:
        found = []
        for role in ROLES:
            name = self._disk_name(vm_id, role)
            with self._errors(f"looking up the disks of VM {vm_id}"):
                try:
                    with rbd.Image(self._ioctx(role), name, read_only=True) as img:
                        found.append(self._disk(vm_id, role, img.size()))
                except rbd.ImageNotFound:
                    pass
        return found

    def delete_disks(self, vm_id: str) -> None:
        """Remove the VM's clone and ssd disk (never the image they came from)."""
        for role in ROLES:
            name = self._disk_name(vm_id, role)
            with self._errors(f"deleting the {role} disk of VM {vm_id}"):
                try:
                    rbd.RBD().remove(self._ioctx(role), name)
                except rbd.ImageNotFound:
                    pass
                except rbd.ImageBusy:
                    raise DiskBusy(f"the {role} disk of VM {vm_id} is still open by a client "
                                   f"(is its QEMU still running?)") from None

    def parent_of(self, vm_id: str) -> tuple[str, str, str] | None:
        """``(pool, image, snapshot)`` the VM's boot disk is a clone of, or None."""
        with self._errors(f"reading the boot disk of VM {vm_id}"):
            try:
                with rbd.Image(self._ioctx("boot"), self._disk_name(vm_id, "boot"), read_only=True) as img:
                    return tuple(img.parent_info())  # type: ignore[return-value]
            except rbd.ImageNotFound:
                return None

    # -- fencing ------------------------------------------------------------------------

    def disk_clients(self, vm_id: str) -> set[str]:
        """Addresses of every client that has a disk of ``vm_id`` open or holds its lock
        (this process excluded).

        The exclusive lock's owner counts even when it no longer watches the image (a
        host cut off from Ceph loses its watch after a while but still believes it holds
        the lock). Listing lock owners needs a read-write open, which takes no lock.
        """
        own = self.client_address()
        found: set[str] = set()
        for role in ROLES:
            with self._errors(f"listing the clients of VM {vm_id}'s {role} disk"):
                try:
                    with rbd.Image(self._ioctx(role), self._disk_name(vm_id, role)) as img:
                        found.update(w["addr"] for w in img.watchers_list())
                        found.update(owner["owner"] for owner in img.lock_get_owners())  # exclusive lock
                        lockers = img.list_lockers()  # advisory locks: [] or {"lockers": [(client, cookie, addr)]}
                        found.update(address for _, _, address in (lockers or {}).get("lockers", []))
                except rbd.ImageNotFound:
                    continue
        found.discard(own)
        return found

    def blocklist(self, addresses: Iterable[str], expire: float = FENCE_EXPIRE_SECONDS) -> None:
        """``ceph osd blocklist add`` each address (through the monitor API), then wait until
        this client has the OSD map that carries them."""
        addresses = sorted(set(addresses))
        for address in addresses:
            self.mon_command({"prefix": "osd blocklist", "blocklistop": "add", "addr": address,
                              "expire": float(expire)})
        if addresses:
            with self._errors("waiting for the OSD map with the blocklist"):
                self._connected().wait_for_latest_osdmap()

    def break_locks(self, vm_id: str) -> None:
        """Break every lock on the VM's disks (their owners are blocklisted first by Ceph)."""
        for role in ROLES:
            with self._errors(f"breaking the lock of VM {vm_id}'s {role} disk"):
                try:
                    with rbd.Image(self._ioctx(role), self._disk_name(vm_id, role)) as img:
                        for owner in img.lock_get_owners():
                            img.lock_break(owner["mode"], owner["owner"])
                except rbd.ImageNotFound:
                    continue

    def fence_vms(self, vm_ids: Iterable[str], extra_addresses: Iterable[str] = ()) -> list[str]:
        """Make sure no client that had these VMs' disks can write to them again.

        Every client with a disk open (an RBD watcher: the QEMU) or holding its
        exclusive lock is blocklisted, plus ``extra_addresses``; then the locks are
        broken, so the VM's next QEMU takes the lock at once. Idempotent. Returns the
        addresses blocklisted.
        """
        vm_ids = list(vm_ids)
        addresses = set(extra_addresses)
        for vm_id in vm_ids:
            addresses |= self.disk_clients(vm_id)
        self.blocklist(addresses)
        for vm_id in vm_ids:
            self.break_locks(vm_id)
        if addresses:
            log.warning("fenced Ceph clients %s (disks of VMs %s)", ", ".join(sorted(addresses)), ", ".join(vm_ids))
        return sorted(addresses)

