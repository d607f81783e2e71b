"""ucloud-vm end to end: VMs created through the API, placed by the running scheduler, run by
real ``ucloud-vm`` daemons (subprocesses) as real QEMU guests (TCG) booting the ucloud guest
image from their own disks.

One etcd, scheduler and first host for the whole module, and as few guest boots as the
assertions allow: each test walks one VM through several steps.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from ucloud_common.config import load_settings
from ucloud_common.etcd_process import free_port
from ucloud_common.keys import alive_key, host_key
from ucloud_common.models import Host, HostStatus, VMStatus
from ucloud_common.store import Store
from ucloud_vm import process
from ucloud_vm.paths import VmPaths

from vm_harness import (BOOT_TIMEOUT, Api, Proc, marker_count, qemu_pid, record, short_dir, start_scheduler,
                        start_vm_daemon, stop_host_vms, wait_for, wait_status)

pytestmark = pytest.mark.slow


class Cloud:
    def __init__(self, etcd, base: Path, guest_image: Path) -> None:
        self.base = base
        self.endpoints = list(etcd.endpoints)
        self.store = Store(etcd.endpoints, timeout=5.0, retry_for=15.0)
        self.store.delete_prefix("/v1/")
        (base / "images").mkdir()
        shutil.copyfile(guest_image, base / "images" / "ucloud-guest.raw")  # what the daemon would import
        self.notify_file = base / "notify.jsonl"
        self.metrics_port = free_port()
        self.h1_env = {"UCLOUD_VM_STOP_TIMEOUT": "60", "UCLOUD_VM_RESTART_MAX": "3",
                       "UCLOUD_NOTIFY_COMMAND": f"tee,-a,{self.notify_file}",
                       "UCLOUD_VM_METRICS_BIND": f"127.0.0.1:{self.metrics_port}"}
        self.daemons: dict[str, Proc] = {}
        self.scheduler = start_scheduler(self.endpoints, base)
        self.start_host("h1", **self.h1_env)
        settings = load_settings(env={}, env_file=base / "none.env", etcd_endpoints=self.endpoints)
        self.api = Api(settings, self.store)

    def start_host(self, name: str, **env: str) -> Proc:
        proc = start_vm_daemon(self.endpoints, self.base, name, **env)
        self.daemons[name] = proc
        wait_for(lambda: self.store.get(alive_key(name)) and self.store.get(host_key(name)), 60,
                 f"host {name} to be registered and alive")
        return proc

    def paths(self, host: str, vm_id: str) -> VmPaths:
        return VmPaths.of(self.base / host, vm_id)

    def close(self) -> None:
        for proc in self.daemons.values():
            proc.stop()
        for proc in [*self.daemons.values(), self.scheduler]:  # shown by pytest when a test failed
            print(f"==== {proc.log_path.name}\n{proc.log()[-6000:]}")
        self.scheduler.stop()
        for host in self.daemons:  # the daemons leave QEMU and the watchdog running, by design
            stop_host_vms(self.base / host)
        self.store.delete_prefix("/v1/")
        self.store.close()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def cloud(etcd, guest_image: Path) -> Iterator[Cloud]:
    c = Cloud(etcd, short_dir("ucvm-"), guest_image)
    try:
        yield c
    finally:
        c.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_vm_boots_dies_is_restarted_is_adopted_stops_starts_and_is_deleted(cloud: Cloud) -> None:
    store, api = cloud.store, cloud.api
    vm_id = api.create()
    vm = wait_status(store, vm_id, VMStatus.RUNNING, 120)
    assert vm.hostname == host_key("h1") and vm.storage == "file"
    assert api.status(vm_id)["status"] == "RUNNING"
    paths = cloud.paths("h1", vm_id)
    wait_for(lambda: marker_count(paths) >= 1, BOOT_TIMEOUT, "the guest's boot marker")
    pid1 = qemu_pid(paths)
    assert pid1 is not None and f"guest={vm_id}" in " ".join(process.read_cmdline(pid1))
    disks = list((cloud.base / "h1" / "disks" / vm_id).iterdir())
    assert [d.name for d in disks] == ["boot.qcow2"]

    # kill -9: KILLED (cause in its log), notified, restarted with a new pid, the guest boots again
    os.kill(pid1, signal.SIGKILL)
    vm = wait_for(lambda: (v := record(store, vm_id)) and v.status is VMStatus.RUNNING
                  and any("QEMU died" in e.message for e in v.events) and v, 60, "restart after kill -9")
    died = [e.message for e in vm.events if "QEMU died" in e.message]
    assert "signal 9" in died[-1], died
    assert vm.events[-1].message.startswith("restarted")
    pid2 = qemu_pid(paths)
    assert pid2 is not None and pid2 != pid1
    wait_for(lambda: marker_count(paths) >= 2, BOOT_TIMEOUT, "the marker after the restart")
    notes = wait_for(lambda: cloud.notify_file.exists() and cloud.notify_file.read_text(), 20, "a notification")
    assert vm_id in notes and "vm_killed" in notes

    # restart ucloud-vm: the same QEMU keeps running, is adopted and still watched
    daemon = cloud.daemons["h1"]
    daemon.stop()
    assert process.is_qemu_of(pid2, vm_id)
    daemon.start()
    wait_for(lambda: "adopted QEMU pid %d" % pid2 in daemon.log(), 60, "adoption")
    assert qemu_pid(paths) == pid2 and record(store, vm_id).status is VMStatus.RUNNING
    os.kill(pid2, signal.SIGKILL)  # only a watching daemon brings it back
    pid3 = wait_for(lambda: (p := qemu_pid(paths)) not in (None, pid2) and p, 60, "restart after adoption")
    wait_status(store, vm_id, VMStatus.RUNNING)
    wait_for(lambda: marker_count(paths) >= 3, BOOT_TIMEOUT, "the marker after the second restart")

    # reboot: the same QEMU, reset: the guest boots again
    api.action(vm_id, "reboot")
    vm = wait_for(lambda: (v := record(store, vm_id)) and v.status is VMStatus.RUNNING
                  and v.events[-1].message == "rebooted" and v, 60, "the reboot")
    wait_for(lambda: marker_count(paths) >= 4, BOOT_TIMEOUT, "the marker after the reboot")
    assert qemu_pid(paths) == pid3

    # a guest kernel panic (from its serial shell) ends QEMU through pvpanic: KILLED with that
    # cause, restarted
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as console:
        console.connect(str(paths.serial_sock))
        console.sendall(b"\necho c > /proc/sysrq-trigger\n")
        wait_for(lambda: not process.alive(pid3), BOOT_TIMEOUT, "the guest to panic")
    vm = wait_for(lambda: (v := record(store, vm_id)) and v.status is VMStatus.RUNNING
                  and "panicked" in v.events[-2].message and v, 60, "the restart after the panic")
    pid3 = wait_for(lambda: qemu_pid(paths), 10, "the new QEMU")

    # stop: ACPI power button (pressed again until the restarted guest's acpid is up), the guest powers off -> STOPPED; start -> RUNNING with a new QEMU
    api.action(vm_id, "stop")
    vm = wait_status(store, vm_id, VMStatus.STOPPED, 60)
    assert not process.alive(pid3)
    assert qemu_pid(paths) is None
    api.action(vm_id, "start")
    wait_status(store, vm_id, VMStatus.RUNNING, 60)
    pid4 = qemu_pid(paths)
    assert pid4 is not None and pid4 != pid3

    # delete: process gone, disk gone, record gone
    api.delete(vm_id)
    wait_for(lambda: record(store, vm_id) is None, 60, "the record to be removed")
    assert not process.alive(pid4)
    assert not (cloud.base / "h1" / "disks" / vm_id).exists()
    assert not paths.dir.exists()


def test_crash_loop_ends_in_error_and_metrics_count_it(cloud: Cloud) -> None:
    store, api = cloud.store, cloud.api
    vm_id = api.create()
    wait_status(store, vm_id, VMStatus.RUNNING, 120)
    paths = cloud.paths("h1", vm_id)
    pid = None

    def running_anew() -> int | None:  # RUNNING on a QEMU other than the one killed last
        vm, now = record(store, vm_id), qemu_pid(paths)
        if vm and vm.status is VMStatus.RUNNING and now not in (None, pid) and f"QEMU pid {now}," in \
                vm.events[-1].message:
            return now
        return None

    for _ in range(4):  # vm_restart_max is 3: the fourth death is one too many
        pid = wait_for(running_anew, 60, "RUNNING on a (new) QEMU")
        os.kill(pid, signal.SIGKILL)
    vm = wait_status(store, vm_id, VMStatus.ERROR, 60)
    assert "crash loop" in vm.reason
    assert qemu_pid(paths) is None
    text = wait_for(lambda: "vm_error" in (t := cloud.notify_file.read_text()) and t, 20, "error notice")
    assert vm_id in text.splitlines()[-1] or vm_id in text

    metrics = scrape(cloud.metrics_port)
    assert metric(metrics, "ucloud_vm_vms", host="h1", status="ERROR") == 1.0
    assert metric(metrics, "ucloud_vm_restarts_total", host="h1") >= 3.0
    assert metric(metrics, "ucloud_vm_qemu_exits_total", host="h1") >= 4.0

    # A person looks and starts it again: it runs, and the crash-loop count starts over
    # (one more death is restarted, not another ERROR).
    api.action(vm_id, "start")
    pid = wait_for(running_anew, 120, "RUNNING again after start from ERROR")
    assert not paths.restarts.exists()
    os.kill(pid, signal.SIGKILL)
    wait_for(running_anew, 60, "a restart after the fresh start")

    api.delete(vm_id)
    wait_for(lambda: record(store, vm_id) is None, 60, "the ERROR VM to be deleted")


def test_a_storage_error_is_the_vms_error_only(cloud: Cloud) -> None:
    store, api = cloud.store, cloud.api
    broken = api.create(image="no-such-image")
    good = api.create()
    vm = wait_status(store, broken, VMStatus.ERROR, 120)
    assert vm.reason.startswith("storage:") and "no-such-image" in vm.reason
    wait_status(store, good, VMStatus.RUNNING, 120)  # the daemon goes on serving the others
    for vm_id in (broken, good):
        api.delete(vm_id)
    for vm_id in (broken, good):
        wait_for(lambda: record(store, vm_id) is None, 60, "deletion")


def test_two_hosts_get_vms_of_their_own_and_a_frozen_host_fences_itself(cloud: Cloud) -> None:
    store, api = cloud.store, cloud.api
    h2 = cloud.start_host("h2", UCLOUD_HOST_LEASE_TTL="3")
    host = wait_for(lambda: (h := Host.from_json("h2", store.get(host_key("h2")).value)).status is HostStatus.UP
                    and h, 30, "host h2 to be UP")
    assert host.capacity.cpu == 8 and host.lease_ttl == 3
    ids = [api.create(), api.create()]
    vms = [wait_status(store, i, VMStatus.RUNNING, 120) for i in ids]
    assert sorted(v.hostname for v in vms) == [host_key("h1"), host_key("h2")]
    on = {v.host_name: v.id for v in vms}
    pid_h1 = qemu_pid(cloud.paths("h1", on["h1"]))
    pid_h2 = qemu_pid(cloud.paths("h2", on["h2"]))
    assert pid_h1 and pid_h2
    assert cloud.paths("h1", on["h2"]).dir.exists() is False  # each runs only its own

    # a record removed behind the daemon's back (not through REQUESTED_DELETE): its QEMU is
    # stopped and what is local to it removed
    gone = record(store, on["h1"])
    store.delete(f"/v1/vm/{gone.id}", gone.mod_revision)
    wait_for(lambda: not process.alive(pid_h1), 60, "the orphaned QEMU to be stopped")
    wait_for(lambda: not cloud.paths("h1", gone.id).dir.exists(), 30, "its runtime dir to be removed")
    assert not (cloud.base / "h1" / "disks" / gone.id).exists()

    os.kill(h2.pid, signal.SIGSTOP)  # frozen: it can neither renew its lease nor fence itself
    try:
        wait_for(lambda: not process.alive(pid_h2), 30, "the frozen host's VM to be killed")
        assert "FENCING" in h2.log()
    finally:
        os.kill(h2.pid, signal.SIGCONT)
    # thawed, the daemon gets a new lease and runs its VM again (from KILLED or HOST_LOST)
    paths = cloud.paths("h2", on["h2"])
    wait_for(lambda: (v := record(store, on["h2"])) and v.status is VMStatus.RUNNING
             and qemu_pid(paths) not in (None, pid_h2), 120, "the thawed host's VM to run again")
    assert record(store, on["h2"]).hostname == host_key("h2")
