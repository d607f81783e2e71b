"""RBD disks under the real daemons: VMs created through the API, placed by ``ucloud-scheduler``,
run by two ``ucloud-vm`` hosts with ``storage_backend=rbd`` on a private Ceph cluster (private,
because one test stops it).

* a VM boots from an RBD clone of the image; a host that is frozen (daemon and watchdog
  stopped, its QEMU still running: half dead) is declared dead, its Ceph client is
  blocklisted by the scheduler's fencer, the VM is re-placed and boots on the other host
  from the same disk, and the old QEMU can no longer write to it; deleting the VM removes
  its clone, not the image;
* Ceph stopped: a VM that needs a disk meanwhile gets ERROR with the reason, the daemon
  keeps serving; once Ceph is back the running VM's guest writes again, the ERROR VM
  starts when the user retries it, and both are deleted cleanly.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import rbd

from ucloud_common.ceph_process import CephCluster
from ucloud_common.config import Settings, load_settings, replace
from ucloud_common.keys import alive_key, host_key
from ucloud_common.models import VMStatus
from ucloud_common.storage.rbd import SNAPSHOT, RbdBackend
from ucloud_common.store import Store
from ucloud_vm import process, watchdog
from ucloud_vm.paths import VmPaths

from vm_harness import BIN, BOOT_TIMEOUT, Api, Proc, marker_count, qemu_pid, record, short_dir, start_vm_daemon, \
    stop_host_vms, wait_for, wait_status

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
OFFSET = 900 * MIB  # inside the 1 GiB disk, far past the guest image: only the clone has it
BLOCK = 4096
IMAGE = "ucloud-guest"  # the default image, imported by the first daemon


def shell(paths: VmPaths, command: str, timeout: float = 60) -> tuple[int, str]:
    """Run ``command`` on the guest's serial shell; its exit status and what it printed."""
    tag = uuid.uuid4().hex[:8]
    pattern = re.compile(rf"END-{tag}-2-(\d+)".encode())
    with socket.socket(socket.AF_UNIX) as console:
        console.connect(str(paths.serial_sock))
        console.settimeout(timeout)
        console.sendall(f"\n{command}; echo END-{tag}-$((1+1))-$?\n".encode())  # computed: the echo never matches
        received = b""
        while not (found := pattern.search(received)):
            chunk = console.recv(4096)
            assert chunk, f"console closed; got {received!r}"
            received += chunk
    return int(found.group(1)), received.decode(errors="replace")


def guest_write(paths: VmPaths, text: str) -> tuple[int, str]:
    return shell(paths, f"echo {text} > /tmp/block; dd if=/tmp/block of=/dev/vda bs={BLOCK} "
                        f"seek={OFFSET // BLOCK} conv=notrunc,fsync")


def guest_read(paths: VmPaths) -> str:
    status, output = shell(paths, f"dd if=/dev/vda bs={BLOCK} skip={OFFSET // BLOCK} count=1 2>/dev/null "
                                  f"| head -c 64 | tr -d '\\000'")
    assert status == 0, output
    return output


class CephCloud:
    """etcd (the session's), a private Ceph, the scheduler (with the Ceph fencer) and vm hosts."""

    def __init__(self, etcd, base: Path) -> None:
        self.base = base
        self.endpoints = list(etcd.endpoints)
        self.store = Store(etcd.endpoints, timeout=5.0, retry_for=15.0)
        self.store.delete_prefix("/v1/")
        (base / "images").mkdir()
        self.ceph = CephCluster(base / "ceph")
        self.daemons: dict[str, Proc] = {}
        self.scheduler: Proc | None = None
        self.ceph.start()
        settings = load_settings(env={}, env_file=base / "none.env", etcd_endpoints=self.endpoints)
        self.ceph.create_pools([settings.rbd_image_pool, settings.rbd_hdd_pool, settings.rbd_ssd_pool])
        self.settings: Settings = replace(settings, storage_backend="rbd", ceph_conf=str(self.ceph.conf_path),
                                          ceph_timeout=3.0)
        self.ceph_env = {"UCLOUD_STORAGE_BACKEND": "rbd", "UCLOUD_CEPH_CONF": str(self.ceph.conf_path),
                         "UCLOUD_CEPH_TIMEOUT": "3"}
        self.scheduler = Proc([str(BIN / "ucloud-scheduler")],
                              {**os.environ, "UCLOUD_ETCD_ENDPOINTS": ",".join(self.endpoints),
                               "UCLOUD_ENV_FILE": str(base / "none.env"), "UCLOUD_SCHEDULER_RESYNC_SECONDS": "5",
                               **self.ceph_env}, base / "scheduler.log")
        self.api = Api(self.settings, self.store)
        self.backend = RbdBackend(self.settings)  # the test's own view into Ceph

    def start_host(self, name: str) -> Proc:
        # a lease of 5 s: short enough to wait for, long enough that a busy machine renews in time
        proc = start_vm_daemon(self.endpoints, self.base, name, UCLOUD_HOST_LEASE_TTL="5", **self.ceph_env)
        self.daemons[name] = proc
        wait_for(lambda: self.store.get(alive_key(name)), 90, f"host {name} to be alive")
        return proc

    def paths(self, host: str, vm_id: str) -> VmPaths:
        return VmPaths.of(self.base / host, vm_id)

    def lock_owners(self, vm_id: str) -> list[str]:
        with rbd.Image(self.backend._ioctx("boot"), f"{vm_id}-boot") as img:
            return [owner["owner"] for owner in img.lock_get_owners()]

    def close(self) -> None:
        for proc in self.daemons.values():
            proc.stop()
        for proc in [*self.daemons.values(), self.scheduler]:  # shown by pytest when a test failed
            if proc is not None:
                print(f"==== {proc.log_path.name}\n{proc.log()[-6000:]}")
        if self.scheduler is not None:
            self.scheduler.stop()
        for host in self.daemons:  # the daemons leave QEMU and the watchdog running, by design
            stop_host_vms(self.base / host)  # QEMU before Ceph: a QEMU whose cluster vanished hangs
        self.backend.close()
        self.ceph.stop()
        self.store.delete_prefix("/v1/")
        self.store.close()


@pytest.fixture(scope="module")
def cloud(etcd) -> Iterator[CephCloud]:
    base = short_dir("ucceph-")
    c = CephCloud(etcd, base)
    try:
        c.start_host("h1")
        yield c
    finally:
        c.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(480)
def test_vm_on_rbd_moves_from_a_dead_host_to_the_other_on_the_same_disk(cloud: CephCloud) -> None:
    store, api, backend = cloud.store, cloud.api, cloud.backend
    vm_id = api.create(hdd="1GiB")  # only h1 is up: it lands there
    vm = wait_status(store, vm_id, VMStatus.RUNNING, 120)
    assert vm.hostname == host_key("h1") and vm.storage == "rbd"
    assert backend.parent_of(vm_id) == (cloud.settings.rbd_image_pool, IMAGE, SNAPSHOT)  # a clone
    assert [(d.role, d.size) for d in backend.disks(vm_id)] == [("boot", 1024 * MIB)]  # sized to the spec
    on_h1 = cloud.paths("h1", vm_id)
    wait_for(lambda: marker_count(on_h1) >= 1, BOOT_TIMEOUT, "the guest's boot marker on h1")
    old_qemu = qemu_pid(on_h1)
    assert old_qemu and f"rbd:{cloud.settings.rbd_hdd_pool}/{vm_id}-boot:" in " ".join(process.read_cmdline(old_qemu))

    status, output = guest_write(on_h1, "WRITTEN-ON-H1")
    assert status == 0, output
    with rbd.Image(backend._ioctx("boot"), f"{vm_id}-boot", read_only=True) as img:
        assert img.read(OFFSET, 13) == b"WRITTEN-ON-H1"  # the guest's write, seen from Python
    old_client = cloud.lock_owners(vm_id)
    assert len(old_client) == 1  # h1's QEMU holds the disk's exclusive lock

    cloud.start_host("h2")
    h1 = cloud.daemons["h1"]
    watchdog_pid = watchdog.running_pid(cloud.base / "h1")
    assert watchdog_pid is not None
    # h1 freezes, watchdog and all: it cannot renew its lease nor fence itself, its QEMU runs on
    os.kill(watchdog_pid, signal.SIGSTOP)
    os.kill(h1.pid, signal.SIGSTOP)
    try:
        vm = wait_for(lambda: (v := record(store, vm_id)) and v.hostname == host_key("h2")
                      and v.status is VMStatus.RUNNING and v, 120, "the VM to run on h2")
        assert any("re-placed on h2" in e.message for e in vm.events), vm.events
        assert old_client[0] in cloud.ceph.blocklist()  # fenced before it was re-placed
        assert process.alive(old_qemu), h1.log()[-3000:]  # still running: only the blocklist stops it

        on_h2 = cloud.paths("h2", vm_id)
        wait_for(lambda: marker_count(on_h2) >= 1, BOOT_TIMEOUT, "the guest's boot marker on h2")
        assert "WRITTEN-ON-H1" in guest_read(on_h2)  # the same disk, with h1's write
        status, output = guest_write(on_h2, "WRITTEN-ON-H2")
        assert status == 0, output
        new_client = cloud.lock_owners(vm_id)
        assert new_client and new_client != old_client

        status, output = guest_write(on_h1, "HALF-DEAD-H1")  # the old QEMU tries again
        assert status != 0 and "Input/output error" in output
        assert "WRITTEN-ON-H2" in guest_read(on_h2)
    finally:
        os.kill(h1.pid, signal.SIGCONT)
        os.kill(watchdog_pid, signal.SIGCONT)  # it fences (kills h1's QEMU) at once: its deadline passed
    wait_for(lambda: not process.alive(old_qemu), 60, "h1's old QEMU to be stopped")

    api.delete(vm_id)
    wait_for(lambda: record(store, vm_id) is None, 60, "the VM to be deleted")
    assert backend.disks(vm_id) == []  # the clone is gone
    assert backend.has_image(IMAGE)  # the image is not


@pytest.mark.timeout(480)
def test_ceph_stopped_puts_a_new_vm_in_error_and_everything_recovers(cloud: CephCloud) -> None:
    store, api, backend = cloud.store, cloud.api, cloud.backend
    running = api.create(hdd="1GiB")
    vm = wait_status(store, running, VMStatus.RUNNING, 120)
    paths = cloud.paths(vm.host_name, running)
    wait_for(lambda: marker_count(paths) >= 1, BOOT_TIMEOUT, "the guest's boot marker")

    cloud.ceph.stop()
    try:
        broken = api.create(hdd="1GiB")
        vm = wait_status(store, broken, VMStatus.ERROR, 120)
        assert vm.reason.startswith("storage: Ceph"), vm.reason
        assert "did not answer within 3s" in vm.reason or "unreachable" in vm.reason, vm.reason
        assert record(store, running).status is VMStatus.RUNNING  # the others are served on
    finally:
        cloud.ceph.start()

    status, output = guest_write(paths, "AFTER-THE-OUTAGE")  # the guest's disk works again
    assert status == 0, output
    with rbd.Image(backend._ioctx("boot"), f"{running}-boot", read_only=True) as img:
        assert img.read(OFFSET, 16) == b"AFTER-THE-OUTAGE"
    api.action(broken, "start")  # the user retries the VM that failed during the outage
    vm = wait_status(store, broken, VMStatus.RUNNING, 120)
    assert backend.disks(broken) and backend.parent_of(broken) is not None  # its clone exists now
    for vm_id in (broken, running):
        api.delete(vm_id)
    for vm_id in (broken, running):
        wait_for(lambda: record(store, vm_id) is None, 60, f"VM {vm_id} to be deleted")
        assert backend.disks(vm_id) == []
