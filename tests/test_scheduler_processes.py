"""Several ``ucloud-scheduler`` processes at once on a real etcd (issue 4's main test):
3 schedulers, 50 hosts of mixed sizes, 1,000 VMs created concurrently, one scheduler
killed with SIGKILL half-way. Whatever the interleaving, every VM is placed exactly
once or left waiting with a reason, no host is promised beyond its capacity, and the
allocation records equal the sum of their VMs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from ucloud_common.keys import SCHEDULER_PREFIX
from ucloud_common.models import Specs, VMStatus
from ucloud_common.store import Store
from ucloud_common.units import GB

from test_scheduler_daemon import check_allocations, create_vm, read_vms, register_host, wait_for

PROJECT = Path(__file__).resolve().parent.parent
HOST_SIZES = (Specs(8, 16 * GB, 200 * GB, 0), Specs(16, 32 * GB, 500 * GB, 100 * GB),
              Specs(32, 64 * GB, 1000 * GB, 200 * GB))


@pytest.fixture
def scheduler_procs(store: Store, tmp_path: Path) -> Iterator[Callable[[int], list[subprocess.Popen]]]:
    """Start ``ucloud-scheduler`` processes (``python -m ucloud_scheduler``); each is stopped
    by its pid afterwards (SIGTERM, then SIGKILL)."""
    procs: list[subprocess.Popen] = []

    def start(count: int) -> list[subprocess.Popen]:
        env = {**os.environ, "UCLOUD_ETCD_ENDPOINTS": ",".join(store.endpoints),
               "UCLOUD_ENV_FILE": str(tmp_path / "none.env"), "UCLOUD_LOG_LEVEL": "INFO"}
        for i in range(count):
            log = open(tmp_path / f"scheduler{len(procs)}.log", "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "ucloud_scheduler"], env=env, cwd=PROJECT,
                                          stdout=log, stderr=subprocess.STDOUT))
            log.close()
        return procs[-count:]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_three_schedulers_place_1000_vms_on_50_hosts_one_killed_half_way(
        store: Store, scheduler_procs, tmp_path: Path) -> None:
    rng = random.Random(4)
    lease = store.grant_lease(300)  # outlives the test; the keys are removed by the store fixture
    hosts = {f"node{i:02d}": rng.choice(HOST_SIZES) for i in range(50)}
    for name, capacity in hosts.items():
        register_host(store, name, capacity, lease)
    procs = scheduler_procs(3)
    wait_for("3 schedulers registered", lambda: len(store.list(SCHEDULER_PREFIX)[0]) == 3, timeout=60)

    # 1,000 VMs from 4 clients at once: mostly small, 10 that no host can take.
    specs = [Specs(rng.choice((1, 2, 4)), rng.choice((1, 2)) * GB, rng.choice((10, 20)) * GB, 0)
             for _ in range(990)] + [Specs(2, 128 * GB, 10 * GB, 0)] * 10
    rng.shuffle(specs)

    def create(part: list[Specs]) -> None:
        with Store(store.endpoints) as own:
            for s in part:
                create_vm(own, s)

    clients = [threading.Thread(target=create, args=(specs[i::4],)) for i in range(4)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()

    def placed_count() -> int:
        return sum(1 for v in read_vms(store).values() if v.hostname)

    wait_for("half the VMs placed", lambda: placed_count() >= 500, timeout=120, every=0.02)
    victim = procs[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    at_kill = placed_count()

    def settled() -> bool:  # every VM placed, or waiting with a reason
        return all(v.hostname or v.reason for v in read_vms(store).values())

    wait_for("every VM placed or given a reason", settled, timeout=120, every=0.2)
    assert all(p.poll() is None for p in procs[1:]), "a surviving scheduler died"
    vms, allocs = check_allocations(store)
    assert len(vms) == 1000
    waiting = [v for v in vms.values() if not v.hostname]
    placed = [v for v in vms.values() if v.hostname]
    assert at_kill < len(placed)  # the survivors went on after the kill
    for vm in placed:
        assert vm.status is VMStatus.SCHEDULED_DEPLOY and vm.reason == ""
        assert sum(e.message.startswith("placed on ") for e in vm.events) == 1, f"{vm.id} placed twice"
    # Each VM in exactly one allocation.
    listed = [vm_id for a in allocs.values() for vm_id in a.vms]
    assert len(listed) == len(set(listed)) == len(placed)
    # The 10 giants wait with a reason a user can act on; so does anything fragmentation left over.
    giants = [v for v in vms.values() if v.specs.ram == 128 * GB]
    assert all(not v.hostname and v.reason == "no host fits: 50 lack ram" for v in giants)
    for vm in waiting:
        assert vm.status is VMStatus.REQUESTED_NEW and vm.reason.startswith("no host fits: ")
