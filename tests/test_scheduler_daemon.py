"""The scheduler daemon against a real etcd: placement, reasons, releases, the audit,
host death (re-placement after the lease TTL, HOST_LOST for local disks, fencing
first) and its Prometheus ``/metrics``. Hosts and VMs are written the way the vm
daemon and the API write them; everything is checked by reading etcd back.

The 3-process, 1,000-VM test is in ``test_scheduler_processes.py``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Callable, Iterator, TypeVar

import pytest
import requests

from ucloud_common.config import Settings, replace as replace_settings
from ucloud_common.keys import ALLOC_PREFIX, HOST_PREFIX, VM_PREFIX, alive_key, alloc_key, host_key, vm_key
from ucloud_common.models import Allocation, Host, HostStatus, Specs, VM, VMStatus
from ucloud_common.store import Store
from ucloud_common.units import GB
from ucloud_scheduler.fencing import FencingError
from ucloud_scheduler.scheduler import Scheduler

T = TypeVar("T")

# -- helpers (also imported by test_scheduler_processes.py) --------------------------------


def register_host(store: Store, name: str, capacity: Specs, lease: int, lease_ttl: int = 10) -> Host:
    """What ``ucloud-vm`` does at start: the host record (UP) and its liveness key on ``lease``."""
    host = Host(name, capacity, lease_ttl=lease_ttl, address="127.0.0.1")
    store.put(alive_key(name), f'{{"lease":{lease}}}'.encode(), lease=lease)
    store.put(host_key(name), host.to_json())
    return host


def create_vm(store: Store, specs: Specs, **fields: object) -> VM:
    """What the API does on create (with ``hostname``/``status``: a VM already placed)."""
    vm = VM(id=str(uuid.uuid4()), owner="alice", specs=specs, image="ucloud-guest",
            created=time.time(), **fields)  # type: ignore[arg-type]
    store.create(vm_key(vm.id), vm.to_json())
    return vm


def small(cpu: int = 1, ram_gb: float = 1, hdd_gb: int = 10) -> Specs:
    return Specs(cpu, int(ram_gb * GB), hdd_gb * GB, 0)


def read_vms(store: Store) -> dict[str, VM]:
    entries, _ = store.list(VM_PREFIX)
    return {e.key[len(VM_PREFIX):]: VM.from_json(e.key[len(VM_PREFIX):], e.value, e.mod_revision)
            for e in entries}


def read_vm(store: Store, vm_id: str) -> VM:
    entry = store.get(vm_key(vm_id))
    assert entry is not None, f"VM {vm_id} is gone"
    return VM.from_json(vm_id, entry.value, entry.mod_revision)


def read_hosts(store: Store) -> dict[str, Host]:
    entries, _ = store.list(HOST_PREFIX)
    return {e.key[len(HOST_PREFIX):]: Host.from_json(e.key[len(HOST_PREFIX):], e.value, e.mod_revision)
            for e in entries}


def read_allocs(store: Store) -> dict[str, Allocation]:
    entries, _ = store.list(ALLOC_PREFIX)
    return {e.key[len(ALLOC_PREFIX):]: Allocation.from_json(e.key[len(ALLOC_PREFIX):], e.value, e.mod_revision)
            for e in entries}


def check_allocations(store: Store, cpu_overcommit: float = 4.0) -> tuple[dict[str, VM], dict[str, Allocation]]:
    """The invariants a user would check: every allocation lists exactly the VMs placed on
    its host, with their specs, and no host is promised beyond capacity x overcommit."""
    allocs = read_allocs(store)  # first: a VM moves only together with its allocations
    vms, hosts = read_vms(store), read_hosts(store)
    expected: dict[str, dict[str, Specs]] = {}
    for vm in vms.values():
        if vm.hostname:
            expected.setdefault(vm.host_name, {})[vm.id] = vm.specs
    for name in set(expected) | set(allocs):
        have = dict(allocs[name].vms) if name in allocs else {}
        assert have == expected.get(name, {}), f"allocation of {name} differs from its VMs"
    for name, alloc in allocs.items():
        used, cap = alloc.used, hosts[name].capacity
        assert used.ram <= cap.ram and used.hdd <= cap.hdd and used.ssd <= cap.ssd, f"{name} promised too much"
        assert used.cpu <= cpu_overcommit * cap.cpu, f"{name} promised too many vCPUs"
    return vms, allocs


def wait_for(what: str, check: Callable[[], T], timeout: float = 60.0, every: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def placed(vm: VM) -> bool:
    return bool(vm.hostname) and vm.status is VMStatus.SCHEDULED_DEPLOY


class ManualClock:
    """The scheduler's monotonic clock, moved only by the test (orders events, not wall time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def lease(store: Store) -> Iterator[int]:
    """A long lease for live hosts' liveness keys, revoked after the test."""
    lease_id = store.grant_lease(120)
    yield lease_id
    store.revoke_lease(lease_id)


@pytest.fixture
def start_scheduler(settings: Settings, store: Store) -> Iterator[Callable[..., Scheduler]]:
    """Start in-process schedulers (each with its own etcd connection); all stopped after."""
    started: list[tuple[Scheduler, Store]] = []

    def start(fencer: object = None, clock: Callable[[], float] = time.monotonic, **overrides: object) -> Scheduler:
        own = Store(settings.etcd_endpoints, timeout=5.0, retry_for=15.0)
        scheduler = Scheduler(own, replace_settings(settings, **overrides), fencer,  # type: ignore[arg-type]
                              clock=clock, seed=1)
        started.append((scheduler, own))
        return scheduler.start()

    yield start
    for scheduler, own in started:
        scheduler.stop()
        own.close()


# -- tests -----------------------------------------------------------------------------------


def test_places_vms_keeps_promises_and_releases_them_on_delete(store: Store, lease: int, start_scheduler) -> None:
    for i in range(3):
        register_host(store, f"node{i}", Specs(4, 8 * GB, 100 * GB, 0), lease)
    scheduler = start_scheduler()
    vms = [create_vm(store, small()) for _ in range(12)]
    wait_for("every VM placed", lambda: all(placed(v) for v in read_vms(store).values()))
    got, allocs = check_allocations(store)
    assert {v.host_name for v in got.values()} == {"node0", "node1", "node2"}  # spread
    assert sum(len(a.vms) for a in allocs.values()) == 12
    first = got[vms[0].id]
    assert first.events[-1].message == f"placed on {first.host_name}" and first.reason == ""

    # A stopped VM keeps its host and its promise; a deleted one gives its promise back.
    stopped, deleted = got[vms[0].id], got[vms[1].id]
    store.update(vm_key(stopped.id), replace(stopped, status=VMStatus.STOPPED).to_json(), stopped.mod_revision)
    store.delete(vm_key(deleted.id), deleted.mod_revision)
    wait_for("the deleted VM's promise released",
             lambda: deleted.id not in read_allocs(store)[deleted.host_name].vms)
    assert scheduler.wait_idle(30)
    _, allocs = check_allocations(store)
    assert stopped.id in allocs[stopped.host_name].vms
    assert scheduler.stats.placements == 12 and scheduler.stats.released == 1


def test_unplaceable_vm_gets_a_reason_then_is_placed_when_a_big_host_registers(
        store: Store, lease: int, start_scheduler) -> None:
    register_host(store, "small0", Specs(2, 2 * GB, 20 * GB, 0), lease)
    register_host(store, "small1", Specs(2, 2 * GB, 20 * GB, 0), lease)
    # A dead host (no liveness key) that was marked DOWN: big, but of no use.
    store.put(host_key("down0"), Host("down0", Specs(64, 256 * GB, 2000 * GB, 0), HostStatus.DOWN).to_json())
    scheduler = start_scheduler(scheduler_resync_seconds=3600)  # no periodic re-list: only events help
    big = create_vm(store, small(cpu=2, ram_gb=8, hdd_gb=50))
    waiting = wait_for("a reason", lambda: read_vm(store, big.id).reason)
    assert waiting == "no host fits: 2 lack ram and hdd, 1 is down"
    vm = read_vm(store, big.id)
    assert vm.status is VMStatus.REQUESTED_NEW and vm.hostname == ""
    assert vm.events[-1].message == f"not placed: {waiting}"
    assert scheduler.wait_idle(30)
    assert read_vm(store, big.id).mod_revision == vm.mod_revision  # the reason is written once
    assert scheduler.stats.reasons_written == 1

    register_host(store, "big0", Specs(8, 16 * GB, 200 * GB, 0), lease)  # no polling: the host event wakes it
    vm = wait_for("placed on the new host", lambda: placed(v := read_vm(store, big.id)) and v)
    assert vm.host_name == "big0" and vm.reason == ""
    check_allocations(store)


class RecordingFencer:
    """Fails the first ``failures`` calls, then records which VMs were still on the host."""

    def __init__(self, store: Store, failures: int = 0) -> None:
        self.store = store
        self.failures = failures
        self.calls: list[tuple[str, set[str]]] = []

    def fence(self, host_name: str) -> None:
        if self.failures:
            self.failures -= 1
            raise FencingError("ceph is not answering")
        still_there = {v.id for v in read_vms(self.store).values() if v.host_name == host_name}
        self.calls.append((host_name, still_there))


def test_dead_host_shared_and_diskless_vms_move_after_the_ttl_local_ones_are_lost(
        store: Store, lease: int, start_scheduler) -> None:
    register_host(store, "live", Specs(16, 64 * GB, 1000 * GB, 0), lease)
    dying_lease = store.grant_lease(2)  # never renewed: the host "dies" when it runs out
    register_host(store, "dying", Specs(16, 64 * GB, 1000 * GB, 0), dying_lease, lease_ttl=2)
    on_dying = dict(hostname=host_key("dying"))
    rbd = create_vm(store, small(), status=VMStatus.RUNNING, storage="rbd", **on_dying)
    fresh = create_vm(store, small(), status=VMStatus.SCHEDULED_DEPLOY, storage="", **on_dying)
    local = create_vm(store, small(), status=VMStatus.RUNNING, storage="file", **on_dying)
    stopped = create_vm(store, small(), status=VMStatus.STOPPED, storage="rbd", **on_dying)
    # deleted by their users while the host was dying: nobody would ever finish them there
    gone_local = create_vm(store, small(), status=VMStatus.REQUESTED_DELETE, storage="file", **on_dying)
    gone_shared = create_vm(store, small(), status=VMStatus.REQUESTED_DELETE, storage="rbd", **on_dying)
    clock = ManualClock()
    fencer = RecordingFencer(store, failures=1)
    scheduler = start_scheduler(fencer=fencer, clock=clock)
    assert set(read_allocs(store)["dying"].vms) == {rbd.id, fresh.id, local.id, stopped.id, gone_local.id,
                                                    gone_shared.id}  # the start audit

    wait_for("the dying host marked DOWN", lambda: read_hosts(store)["dying"].status is HostStatus.DOWN,
             timeout=30)
    clock.advance(2 - 0.05)  # just short of the TTL since the liveness key vanished
    time.sleep(1.0)  # the scheduler keeps looking (every 50 ms), and must keep waiting
    vms = read_vms(store)
    assert all(vms[v.id].host_name == "dying" for v in (rbd, fresh, local, stopped, gone_local, gone_shared)), \
        "moved before the TTL"
    assert vms[local.id].status is VMStatus.RUNNING and fencer.calls == []

    clock.advance(0.1)  # the TTL has passed: fence (fails once: the VMs stay put), then move
    wait_for("a failed fencing", lambda: scheduler.stats.fencing_failures == 1)
    # a deleted VM whose disk was local to the dead host needs no fencing: record and promise go
    wait_for("the deleted local-disk VM removed", lambda: gone_local.id not in read_vms(store))
    time.sleep(0.5)
    assert read_vm(store, gone_shared.id).host_name == "dying"  # its shared disk waits for the fencing
    assert {read_vm(store, v.id).host_name for v in (rbd, fresh)} == {"dying"} and fencer.calls == []
    clock.advance(2.0)  # FENCE_RETRY later: fenced, moved
    wait_for("the shared-disk and diskless VMs re-placed",
             lambda: all(placed(v) and v.host_name == "live" for i, v in read_vms(store).items()
                         if i in (rbd.id, fresh.id)), timeout=30)
    lost = wait_for("the local-disk VM lost",
                    lambda: (v := read_vm(store, local.id)).status is VMStatus.HOST_LOST and v)
    assert lost.host_name == "dying" and "local to it (file storage)" in lost.reason
    assert read_vm(store, stopped.id).host_name == "dying"  # not running anywhere: stays with its disk
    moved = read_vm(store, rbd.id)
    assert "dying lost its lease" in moved.events[-1].message and moved.events[-1].message.endswith("on live")
    # Fenced before anything moved, and only once for the host's death (after one failure).
    assert fencer.calls == [("dying", {rbd.id, fresh.id, local.id, stopped.id, gone_shared.id})]
    # the deleted VM on shared storage goes to a live host, still to be deleted there (its disk with it)
    finishing = wait_for("the deleted shared-disk VM handed to a live host",
                         lambda: (v := read_vm(store, gone_shared.id)).host_name == "live" and v)
    assert finishing.status is VMStatus.REQUESTED_DELETE and "finishes the deletion" in finishing.events[-1].message
    assert scheduler.stats.fencing_failures == 1 and scheduler.stats.replacements == 3
    _, allocs = check_allocations(store)
    assert set(allocs["dying"].vms) == {local.id, stopped.id}  # lost and stopped VMs keep their promise

    # The host comes back: UP again (the vm daemon would also write UP).
    back = store.grant_lease(60)
    store.put(alive_key("dying"), b"{}", lease=back)
    wait_for("the host marked UP again", lambda: read_hosts(store)["dying"].status is HostStatus.UP)
    store.revoke_lease(back)


def test_with_two_schedulers_a_dead_host_is_fenced_once_and_all_its_vms_move(
        store: Store, lease: int, start_scheduler) -> None:
    register_host(store, "live", Specs(32, 64 * GB, 1000 * GB, 0), lease)
    dying_lease = store.grant_lease(2)
    register_host(store, "dying", Specs(32, 64 * GB, 1000 * GB, 0), dying_lease, lease_ttl=2)
    vms = [create_vm(store, small(), status=VMStatus.RUNNING, storage="rbd", hostname=host_key("dying"))
           for _ in range(12)]
    clock = ManualClock()
    fencer = RecordingFencer(store)
    first = start_scheduler(fencer=fencer, clock=clock)
    second = start_scheduler(fencer=fencer, clock=clock)
    wait_for("each scheduler sees the other", lambda: first.view.member_count() == second.view.member_count() == 2)
    owners = {s.membership.id for s in (first, second) for v in vms if s.view.owns(vm_key(v.id))}
    assert len(owners) == 2  # the VMs are shared out, yet the host is handled by one of them
    wait_for("the dying host marked DOWN", lambda: read_hosts(store)["dying"].status is HostStatus.DOWN,
             timeout=30)
    clock.advance(2.1)
    wait_for("all its VMs re-placed",
             lambda: all(placed(v) and v.host_name == "live" for v in read_vms(store).values()), timeout=30)
    assert len(fencer.calls) == 1 and fencer.calls[0] == ("dying", {v.id for v in vms})
    assert first.stats.replacements + second.stats.replacements == 12
    check_allocations(store)


def test_vm_of_a_dead_host_waits_with_a_reason_when_no_live_host_has_room(
        store: Store, lease: int, start_scheduler) -> None:
    dying_lease = store.grant_lease(2)
    register_host(store, "dying", Specs(8, 16 * GB, 100 * GB, 0), dying_lease, lease_ttl=2)
    register_host(store, "tiny", Specs(1, 1 * GB, 5 * GB, 0), lease)
    vm = create_vm(store, small(cpu=2, ram_gb=4), status=VMStatus.RUNNING, storage="rbd",
                   hostname=host_key("dying"))
    clock = ManualClock()
    start_scheduler(clock=clock, scheduler_resync_seconds=3600)
    wait_for("the dying host marked DOWN", lambda: read_hosts(store)["dying"].status is HostStatus.DOWN,
             timeout=30)
    clock.advance(2.1)
    waiting = wait_for("the VM back to waiting",
                       lambda: (v := read_vm(store, vm.id)).status is VMStatus.REQUESTED_NEW and v)
    assert waiting.hostname == "" and waiting.reason == "no host fits: 1 is down, 1 lacks ram and hdd"
    assert waiting.events[-1].message == "host dying is dead; waiting for room elsewhere"
    assert "dying" not in read_allocs(store) or not read_allocs(store)["dying"].vms  # its promise released
    register_host(store, "roomy", Specs(8, 16 * GB, 100 * GB, 0), lease)
    moved = wait_for("placed on the new host", lambda: placed(v := read_vm(store, vm.id)) and v)
    assert moved.host_name == "roomy"
    check_allocations(store)


def test_audit_rewrites_allocations_that_differ_from_the_vms(store: Store, lease: int, start_scheduler) -> None:
    register_host(store, "node0", Specs(8, 16 * GB, 100 * GB, 0), lease)
    vm = create_vm(store, small(cpu=2), hostname=host_key("node0"), status=VMStatus.RUNNING)
    ghost = Allocation("node0").with_vm("deleted-long-ago", small(cpu=6))
    store.put(alloc_key("node0"), ghost.to_json())
    store.put(alloc_key("gone-host"), ghost.to_json())
    scheduler = start_scheduler()
    assert scheduler.stats.audit_fixes == 2
    allocs = read_allocs(store)
    assert set(allocs) == {"node0"} and dict(allocs["node0"].vms) == {vm.id: vm.specs}
    # The room the ghost held is usable again: 6 more vCPUs x 4 overcommit fit now.
    extra = create_vm(store, small(cpu=6))
    wait_for("placed", lambda: placed(read_vm(store, extra.id)))
    check_allocations(store)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_endpoint_counts_placements_latency_and_unplaceable(
        store: Store, lease: int, start_scheduler) -> None:
    register_host(store, "node0", Specs(4, 4 * GB, 100 * GB, 0), lease)
    scheduler = start_scheduler(scheduler_metrics_bind="127.0.0.1:0")
    assert scheduler.metrics_address is not None
    url = "http://%s:%d/metrics" % scheduler.metrics_address
    for _ in range(3):
        create_vm(store, small())
    too_big = create_vm(store, small(ram_gb=64))
    wait_for("3 placed and a reason", lambda: read_vm(store, too_big.id).reason
             and sum(placed(v) for v in read_vms(store).values()) == 3)
    assert scheduler.wait_idle(30)
    text = requests.get(url, timeout=10).text
    assert _metric(text, "ucloud_scheduler_placements_total") == 3
    assert _metric(text, "ucloud_scheduler_placement_latency_seconds_count") == 3
    assert _metric(text, "ucloud_scheduler_unplaceable_vms") == 1
    assert _metric(text, "ucloud_scheduler_conflicts_total") == 0
    assert _metric(text, "ucloud_scheduler_etcd_errors_total") == 0
    store.delete(vm_key(too_big.id), read_vm(store, too_big.id).mod_revision)
    wait_for("the gauge back to 0",
             lambda: _metric(requests.get(url, timeout=10).text, "ucloud_scheduler_unplaceable_vms") == 0)
