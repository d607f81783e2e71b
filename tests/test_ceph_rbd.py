"""The RBD storage backend and the Ceph fencer against the session's real Ceph cluster:
images kept as protected snapshots, VM disks as clones of them (never copies), sized to
the spec and deleted without touching the image; a writer fenced by blocklisting; clear
errors, in bounded time, when a pool is missing or Ceph is gone, and recovery after."""

from __future__ import annotations

import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import rados
import rbd

from ucloud_common.ceph_process import CephCluster
from ucloud_common.config import Settings, replace
from ucloud_common.keys import host_key, vm_key
from ucloud_common.models import VM, Specs, VMStatus
from ucloud_common.storage import StorageError, open_backend
from ucloud_common.storage.rbd import SNAPSHOT, RbdBackend
from ucloud_common.storage.rbd_fence import RbdFencer
from ucloud_common.store import Store
from ucloud_scheduler.fencing import NoFencer, open_fencer

MIB = 1024 * 1024
MARK_AT = 5 * MIB  # where the test images carry data


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sparse_raw(path: Path, size: int, data: bytes) -> Path:
    """A sparse raw file of ``size`` bytes with ``data`` at ``MARK_AT``."""
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(MARK_AT)
        f.write(data)
    return path


@pytest.fixture
def backend(rbd_settings: Settings) -> Iterator[RbdBackend]:
    b = open_backend(rbd_settings)
    assert isinstance(b, RbdBackend)
    yield b
    b.close()


@pytest.fixture
def client(ceph: CephCluster) -> Iterator[Any]:
    """A second, independent Ceph client (another process's view)."""
    c = ceph.connect()
    yield c
    c.shutdown()


@pytest.fixture
def image(backend: RbdBackend, tmp_path: Path) -> str:
    """A freshly imported 16 MiB image carrying a marker."""
    name = unique("img")
    backend.import_image(name, str(sparse_raw(tmp_path / "i.raw", 16 * MIB, b"IMAGE-" + name.encode())))
    return name


def read(client: Any, pool: str, name: str, offset: int, length: int, snapshot: str | None = None) -> bytes:
    with client.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name, snapshot=snapshot, read_only=True) as img:
        return img.read(offset, length)


def test_backend_is_chosen_by_config_and_puts_disks_in_the_configured_pools(
        backend: RbdBackend, rbd_settings: Settings, image: str, client: Any) -> None:
    assert (backend.name, backend.shared) == ("rbd", True)
    vm_id = unique("vm")
    boot = backend.create_disk(vm_id, "boot", 32 * MIB, image)
    ssd = backend.create_disk(vm_id, "ssd", 8 * MIB, None)
    with client.open_ioctx(rbd_settings.rbd_hdd_pool) as hdd, client.open_ioctx(rbd_settings.rbd_ssd_pool) as sdd:
        assert f"{vm_id}-boot" in rbd.RBD().list(hdd) and f"{vm_id}-boot" not in rbd.RBD().list(sdd)
        assert f"{vm_id}-ssd" in rbd.RBD().list(sdd)
        with rbd.Image(sdd, f"{vm_id}-ssd", read_only=True) as img:
            assert img.size() == 8 * MIB and img.features() & rbd.RBD_FEATURE_EXCLUSIVE_LOCK
    assert boot.format == ssd.format == "raw"
    assert boot.drive.startswith(f"rbd:{rbd_settings.rbd_hdd_pool}/{vm_id}-boot:conf={rbd_settings.ceph_conf}")
    assert ssd.drive.startswith(f"rbd:{rbd_settings.rbd_ssd_pool}/{vm_id}-ssd:")
    assert {d.role: d.size for d in backend.disks(vm_id)} == {"boot": 32 * MIB, "ssd": 8 * MIB}
    # the interface's promise: creating again returns what is there
    assert backend.create_disk(vm_id, "boot", 32 * MIB, image) == boot
    backend.delete_disks(vm_id)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_import_keeps_the_image_as_a_protected_snapshot(
        backend: RbdBackend, rbd_settings: Settings, client: Any, tmp_path: Path, fmt: str) -> None:
    name = unique(f"import-{fmt}")
    source = sparse_raw(tmp_path / "src.raw", 24 * MIB, b"DATA-" + name.encode())
    if fmt == "qcow2":
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(source), str(tmp_path / "src.qcow2")],
                       check=True)
        source = tmp_path / "src.qcow2"
    seen: list[tuple[int, int]] = []
    assert not backend.has_image(name)
    backend.import_image(name, str(source), progress=lambda done, total: seen.append((done, total)))

    assert backend.has_image(name) and name in backend.images()
    assert seen[-1] == (24 * MIB, 24 * MIB)
    with client.open_ioctx(rbd_settings.rbd_image_pool) as ioctx, rbd.Image(ioctx, name, read_only=True) as img:
        assert [s["name"] for s in img.list_snaps()] == [SNAPSHOT]
        assert img.is_protected_snap(SNAPSHOT)
    assert read(client, rbd_settings.rbd_image_pool, name, MARK_AT, 64, SNAPSHOT).rstrip(b"\0") == b"DATA-" + name.encode()
    assert backend.image_size(name) == 24 * MIB

    # an existing image is kept, not replaced
    backend.import_image(name, str(sparse_raw(tmp_path / "other.raw", 24 * MIB, b"OTHER")))
    assert read(client, rbd_settings.rbd_image_pool, name, MARK_AT, 5, SNAPSHOT) == b"DATA-"


def test_import_rejects_what_is_not_an_image(backend: RbdBackend, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist|No such file|Could not open"):
        backend.import_image(unique("missing"), str(tmp_path / "nope.raw"))
    with pytest.raises(StorageError, match="invalid image name"):
        backend.import_image("../etc", str(sparse_raw(tmp_path / "x.raw", MIB, b"x")))


def test_boot_disk_is_a_clone_of_the_image_sized_to_the_spec(
        backend: RbdBackend, rbd_settings: Settings, image: str, client: Any) -> None:
    vm_id = unique("vm")
    disk = backend.create_disk(vm_id, "boot", 64 * MIB, image)
    assert disk.size == 64 * MIB
    assert backend.parent_of(vm_id) == (rbd_settings.rbd_image_pool, image, SNAPSHOT)
    with client.open_ioctx(rbd_settings.rbd_hdd_pool) as ioctx, rbd.Image(ioctx, f"{vm_id}-boot") as img:
        assert img.size() == 64 * MIB
        assert img.parent_info() == (rbd_settings.rbd_image_pool, image, SNAPSHOT)
        assert img.read(MARK_AT, 6) == b"IMAGE-"  # the image's data, through the clone
        img.write(b"VM-WROTE", MARK_AT)
    # the VM's write stays in its clone; the image is untouched
    assert read(client, rbd_settings.rbd_image_pool, image, MARK_AT, 6, SNAPSHOT) == b"IMAGE-"
    with pytest.raises(StorageError, match="smaller than image"):
        backend.create_disk(unique("vm"), "boot", 8 * MIB, image)
    with pytest.raises(StorageError, match="not in Ceph pool"):
        backend.create_disk(unique("vm"), "boot", 64 * MIB, unique("no-such-image"))
    backend.delete_disks(vm_id)


def test_five_disks_from_one_image_are_clones_not_copies(
        backend: RbdBackend, rbd_settings: Settings, image: str, client: Any) -> None:
    vm_ids = [unique("five") for _ in range(5)]
    for vm_id in vm_ids:
        backend.create_disk(vm_id, "boot", 32 * MIB, image)
    with client.open_ioctx(rbd_settings.rbd_image_pool) as ioctx, \
            rbd.Image(ioctx, image, snapshot=SNAPSHOT, read_only=True) as img:
        children = sorted(img.list_children())
    assert children == sorted((rbd_settings.rbd_hdd_pool, f"{vm_id}-boot") for vm_id in vm_ids)
    with client.open_ioctx(rbd_settings.rbd_hdd_pool) as ioctx:
        for vm_id in vm_ids:
            with rbd.Image(ioctx, f"{vm_id}-boot", read_only=True) as img:
                assert img.parent_info() == (rbd_settings.rbd_image_pool, image, SNAPSHOT)
                own: list[tuple[int, int, bool]] = []
                img.diff_iterate(0, img.size(), None, lambda o, n, e: own.append((o, n, e)), include_parent=False)
                assert own == []  # not one byte of its own: every read goes to the image
                assert img.read(MARK_AT, 6) == b"IMAGE-"
    for vm_id in vm_ids:
        backend.delete_disks(vm_id)


def test_deleting_removes_the_clones_not_the_image(
        backend: RbdBackend, rbd_settings: Settings, image: str, client: Any) -> None:
    gone, kept = unique("gone"), unique("kept")
    backend.create_disk(gone, "boot", 32 * MIB, image)
    backend.create_disk(gone, "ssd", 4 * MIB, None)
    backend.create_disk(kept, "boot", 32 * MIB, image)
    backend.delete_disks(gone)
    backend.delete_disks(gone)  # nothing left to remove is fine

    assert backend.disks(gone) == [] and backend.parent_of(gone) is None
    assert backend.has_image(image)
    with client.open_ioctx(rbd_settings.rbd_image_pool) as ioctx, \
            rbd.Image(ioctx, image, snapshot=SNAPSHOT, read_only=True) as img:
        assert list(img.list_children()) == [(rbd_settings.rbd_hdd_pool, f"{kept}-boot")]
    assert read(client, rbd_settings.rbd_hdd_pool, f"{kept}-boot", MARK_AT, 6) == b"IMAGE-"
    backend.delete_disks(kept)


def test_a_disk_in_use_is_not_deleted(backend: RbdBackend, rbd_settings: Settings, image: str, client: Any) -> None:
    vm_id = unique("busy")
    backend.create_disk(vm_id, "boot", 32 * MIB, image)
    with client.open_ioctx(rbd_settings.rbd_hdd_pool) as ioctx, rbd.Image(ioctx, f"{vm_id}-boot") as img:
        img.write(b"in use", 0)  # as a running QEMU: it has the disk open
        with pytest.raises(StorageError, match="still open by a client"):
            backend.delete_disks(vm_id)
    backend.delete_disks(vm_id)
    assert backend.disks(vm_id) == []


def put_vm(store: Store, vm_id: str, host: str, storage: str = "rbd") -> None:
    vm = VM(id=vm_id, owner="alice", specs=Specs(cpu=1, ram=128 * MIB, hdd=32 * MIB), hostname=host_key(host),
            status=VMStatus.RUNNING, image="img", storage=storage)
    store.put(vm_key(vm_id), vm.to_json())


class Writer:
    """A client that opened a VM's disk and writes to it, as the QEMU of a host does."""

    def __init__(self, ceph: CephCluster, pool: str, name: str) -> None:
        self.cluster = ceph.connect(timeout=5)
        self.ioctx = self.cluster.open_ioctx(pool)
        self.image = rbd.Image(self.ioctx, name)
        self.address = self.cluster.get_addrs()

    def write(self, data: bytes, offset: int = 0) -> None:
        self.image.write(data, offset)
        self.image.flush()

    def close(self) -> None:
        for close in (self.image.close, self.ioctx.close, self.cluster.shutdown):
            try:
                close()
            except (rados.Error, rbd.Error):
                pass  # a blocklisted client cannot close cleanly


@pytest.mark.timeout(120)
def test_blocklisting_fences_the_writer_of_a_dead_hosts_disk(
        backend: RbdBackend, rbd_settings: Settings, image: str, store: Store, ceph: CephCluster) -> None:
    dead_vm, other_vm, local_vm = unique("dead"), unique("alive"), unique("local")
    for vm_id in (dead_vm, other_vm):
        backend.create_disk(vm_id, "boot", 32 * MIB, image)
    put_vm(store, dead_vm, "node-dead")
    put_vm(store, local_vm, "node-dead", storage="file")  # no disk in Ceph: nothing to fence
    put_vm(store, other_vm, "node-ok")
    pool = rbd_settings.rbd_hdd_pool
    old = Writer(ceph, pool, f"{dead_vm}-boot")  # the QEMU on the host declared dead
    bystander = Writer(ceph, pool, f"{other_vm}-boot")  # a QEMU on a healthy host
    new: Writer | None = None
    try:
        old.write(b"before the fence")
        bystander.write(b"bystander")
        with rbd.Image(backend._ioctx("boot"), f"{dead_vm}-boot") as img:
            assert [o["owner"] for o in img.lock_get_owners()] == [old.address]  # the exclusive lock is its

        fencer = RbdFencer(rbd_settings, store=store, backend=backend)
        assert fencer.vms_on("node-dead") == [dead_vm]  # the file-backed VM has nothing in Ceph
        fencer.fence("node-dead")

        assert old.address in ceph.blocklist()
        assert bystander.address not in ceph.blocklist()
        with pytest.raises(rbd.ConnectionShutdown):
            old.write(b"after the fence")  # the half-dead host can no longer write
        new = Writer(ceph, pool, f"{dead_vm}-boot")  # the VM's QEMU on its new host
        new.write(b"on the new host", 4096)
        assert new.image.read(0, 16) == b"before the fence"
        bystander.write(b"still writing", 8192)  # other hosts' VMs are untouched

        # The scheduler re-places the VM (its record now names the new host), then calls the
        # fencer again for the dead host's next VM: idempotent, and the moved VM is left alone.
        put_vm(store, dead_vm, "node-new")
        fencer.fence("node-dead")
        new.write(b"still on the new host", 4096)
        assert new.address not in ceph.blocklist()
    finally:
        for writer in (old, bystander, new):
            if writer is not None:
                writer.close()
        for vm_id in (dead_vm, other_vm):
            backend.delete_disks(vm_id)


def test_the_scheduler_picks_the_ceph_fencer_for_rbd(rbd_settings: Settings, settings: Settings) -> None:
    fencer = open_fencer(rbd_settings)
    assert isinstance(fencer, RbdFencer)
    fencer.close()
    assert isinstance(open_fencer(settings), NoFencer)  # file storage: VMs never move


def test_a_missing_pool_is_a_clear_error(rbd_settings: Settings, image: str) -> None:
    backend = open_backend(replace(rbd_settings, rbd_ssd_pool="no-such-pool"))
    try:
        vm_id = unique("vm")
        backend.create_disk(vm_id, "boot", 32 * MIB, image)  # the other pools are fine
        with pytest.raises(StorageError, match="Ceph pool 'no-such-pool' does not exist"):
            backend.create_disk(vm_id, "ssd", 8 * MIB, None)
        with pytest.raises(StorageError, match="'no-such-pool' does not exist"):
            backend.delete_disks(vm_id)
    finally:
        backend.close()
    open_backend(rbd_settings).delete_disks(vm_id)


def bounded(call: Callable[[], Any], limit: float) -> Any:
    """``call()``'s result or exception; fails the test if it has not returned after ``limit``
    seconds (a hang, not a slow answer: the limit is many times the configured timeout)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert outcome, f"still waiting for Ceph after {limit}s: the call hangs"
    return outcome[0]


@pytest.mark.timeout(240)
def test_ceph_stopped_gives_a_clear_error_without_hanging_and_recovers(
        settings: Settings, tmp_path: Path) -> None:
    """A private cluster, so the session's stays up for the other tests."""
    cluster = CephCluster(tmp_path / "ceph")
    backend: RbdBackend | None = None
    try:
        cluster.start()
        cluster.create_pools([settings.rbd_image_pool, settings.rbd_hdd_pool, settings.rbd_ssd_pool])
        config = replace(settings, storage_backend="rbd", ceph_conf=str(cluster.conf_path), ceph_timeout=2.0)
        backend = RbdBackend(config)
        backend.import_image("survivor", str(sparse_raw(tmp_path / "s.raw", 8 * MIB, b"SURVIVOR")))
        backend.create_disk("vm-before", "boot", 16 * MIB, "survivor")
        cluster.stop()  # cleanly: the memstore OSD saves its data

        limit = 30 * config.ceph_timeout
        for call in (lambda: backend.create_disk("vm-during", "boot", 16 * MIB, "survivor"),
                     lambda: backend.disks("vm-before"), lambda: backend.delete_disks("vm-before"),
                     lambda: RbdBackend(config).has_image("survivor")):  # a client that never got in
            error = bounded(call, limit)
            assert isinstance(error, StorageError), error
            assert "Ceph" in str(error) and ("did not answer" in str(error) or "unreachable" in str(error))

        cluster.start()
        assert bounded(lambda: backend.has_image("survivor"), limit) is True  # the same client, back in business
        disk = backend.create_disk("vm-after", "boot", 16 * MIB, "survivor")
        assert backend.parent_of("vm-after") == (config.rbd_image_pool, "survivor", SNAPSHOT)
        assert [d.role for d in backend.disks("vm-before")] == ["boot"]  # nothing was lost
        assert disk.size == 16 * MIB
    finally:
        if backend is not None:
            backend.close()
        cluster.stop()
