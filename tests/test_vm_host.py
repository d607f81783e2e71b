"""Host registration, the liveness lease and self-fencing, against real etcd servers, and the
host watchdog as a real process killing real processes."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from ucloud_common.config import replace
from ucloud_common.keys import alive_key, host_key
from ucloud_common.models import Host, HostStatus, Specs
from ucloud_common.store import Store
from ucloud_vm import process, watchdog
from ucloud_vm.host import LeaseKeeper, detect_capacity, register_host
from ucloud_vm.paths import VmPaths

from vm_harness import wait_for


def test_register_creates_then_updates_and_keeps_draining(store: Store, settings) -> None:
    capacity = detect_capacity(replace(settings, host_cpu=3, host_ram="2GiB", host_hdd="10GiB"))
    assert capacity == Specs(3, 2 << 30, 10 << 30, 0)
    host = register_host(store, "n1", capacity, "10.0.0.1", 10)
    stored = Host.from_json("n1", store.get(host_key("n1")).value)
    assert stored.status is HostStatus.UP and stored.capacity == capacity and stored.address == "10.0.0.1"
    draining = Host(**{**host.__dict__, "status": HostStatus.DRAINING})
    store.update(host_key("n1"), draining.to_json(), host.mod_revision)
    register_host(store, "n1", Specs(4, 2 << 30, 10 << 30, 0), "10.0.0.2", 10)
    stored = Host.from_json("n1", store.get(host_key("n1")).value)
    assert stored.status is HostStatus.DRAINING and stored.capacity.cpu == 4 and stored.address == "10.0.0.2"


def test_detected_capacity_is_the_machines(settings) -> None:
    capacity = detect_capacity(settings)
    assert capacity.cpu == os.cpu_count() and capacity.ram > 0 and capacity.hdd > 0


def test_lease_is_kept_alive_and_reused_by_a_restarted_daemon(etcd_factory, settings, tmp_path: Path) -> None:
    cluster = etcd_factory(1)
    s = replace(settings, etcd_endpoints=tuple(cluster.endpoints), host_lease_ttl=2)
    fenced: list[str] = []
    lease_file = tmp_path / "lease"
    keeper = LeaseKeeper(s, "n1", lease_file, fence=fenced.append).start()
    with Store(cluster.endpoints) as store:
        try:
            first = keeper.lease_id
            time.sleep(3 * s.host_lease_ttl)  # several TTLs: only renewals keep the key
            assert store.get(alive_key("n1")) is not None and keeper.renewals > 3 and keeper.valid()
        finally:
            keeper.stop()
        again = LeaseKeeper(s, "n1", lease_file, fence=fenced.append)
        assert again.acquire() == first  # the still-live lease: the host never looked dead
        again.store.close()
        assert fenced == []
        store.revoke_lease(first)
        third = LeaseKeeper(s, "n1", lease_file, fence=fenced.append)
        assert third.acquire() != first  # an expired lease is replaced
        assert store.get(alive_key("n1")) is not None
        third.store.close()


def test_a_host_cut_off_from_etcd_fences_itself(etcd_factory, settings, caplog) -> None:
    cluster = etcd_factory(1)
    s = replace(settings, etcd_endpoints=tuple(cluster.endpoints), host_lease_ttl=3)
    fenced: list[tuple[str, float]] = []
    deadlines: list[float] = []
    keeper = LeaseKeeper(s, "n1", Path(s.state_dir) / "lease",
                         fence=lambda why: fenced.append((why, time.monotonic())), on_deadline=deadlines.append)
    Path(s.state_dir).mkdir(parents=True, exist_ok=True)
    caplog.set_level(logging.ERROR)
    keeper.start()
    try:
        cluster.stop()
        wait_for(lambda: fenced, 30, "the keeper to fence the host")
        # not before the deadline its last renewal gave it (a blip shorter than that is no reason)
        assert len(fenced) == 1 and fenced[0][1] >= deadlines[-1]
        assert "not renewed" in fenced[0][0]
        assert not keeper.valid()
        assert "FENCING" in caplog.text
    finally:
        keeper.stop()


def _stand_in_qemu(vm_id: str) -> int:
    """A process whose cmdline looks like a QEMU of ``vm_id`` (argv[0] "qemu-...", -name guest=)."""
    argv = ["qemu-standin", "-c", "import time; time.sleep(120)", "-name", f"guest={vm_id}"]
    return os.posix_spawn(sys.executable, argv, dict(os.environ), setsid=True)


def test_watchdog_kills_the_vms_when_it_is_not_fed(tmp_path: Path) -> None:
    state = tmp_path / "s"
    pids = []
    for vm_id in ("vm-a", "vm-b"):
        paths = VmPaths.of(state, vm_id)
        paths.dir.mkdir(parents=True)
        pid = _stand_in_qemu(vm_id)
        pids.append(pid)
        paths.pidfile.write_text(f"{pid}\n")
    stranger = _stand_in_qemu("someone-else")  # a pid file pointing at another VM's process
    VmPaths.of(state, "vm-c").dir.mkdir(parents=True)
    VmPaths.of(state, "vm-c").pidfile.write_text(f"{stranger}\n")
    dog = None
    try:
        wait_for(lambda: all(process.is_qemu_of(p, v) for p, v in zip(pids, ("vm-a", "vm-b"))), 10, "stand-ins")
        watchdog.feed(state, time.monotonic() + 1.5)
        dog = watchdog.ensure_running(state)
        assert watchdog.ensure_running(state) == dog  # one per state dir
        wait_for(lambda: not any(process.alive(p) for p in pids), 30, "the watchdog to kill the VMs")
        assert process.wait_gone(dog, 10)  # it exits after fencing
        assert process.alive(stranger)  # never a pid that is not that VM's QEMU
        assert watchdog.read_deadline(state) is None
    finally:
        for pid in [*pids, stranger] + ([dog] if dog else []):
            process.kill(pid)
            process.wait_gone(pid, 5)


def test_a_disarmed_watchdog_exits_without_killing(tmp_path: Path) -> None:
    state = tmp_path / "s"
    paths = VmPaths.of(state, "vm-a")
    paths.dir.mkdir(parents=True)
    pid = _stand_in_qemu("vm-a")
    paths.pidfile.write_text(f"{pid}\n")
    dog = None
    try:
        watchdog.feed(state, time.monotonic() + 60)
        dog = watchdog.ensure_running(state)
        watchdog.disarm(state)
        assert process.wait_gone(dog, 10)
        assert process.alive(pid)
    finally:
        for p in [pid] + ([dog] if dog else []):
            process.kill(p)
            process.wait_gone(p, 5)


