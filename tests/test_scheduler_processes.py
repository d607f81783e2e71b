"""Several ``ucloud-scheduler`` processes at once on a real etcd (issue 4's main test):
3 schedulers, 50 hosts of mixed sizes, 1,000 VMs created concurrently, one scheduler
killed with SIGKILL half-way. Whatever the interleaving, every VM is placed exactly
once or left waiting with a reason, no host is promised beyond its capacity, and the
allocation records equal the sum of their VMs."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from ucloud_common.keys import SCHEDULER_PREFIX, vm_key
from ucloud_common.models import Specs, VMStatus
from ucloud_common.store import Store
from ucloud_common.units import GB
from ucloud_scheduler.shard import owner

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

    members = {e.key[len(SCHEDULER_PREFIX):]: json.loads(e.value)["pid"] for e in store.list(SCHEDULER_PREFIX)[0]}
    victim = procs[0]
    victim_id = next(m for m, pid in members.items() if pid == victim.pid)
    created_after_kill: list[str] = []
    lock = threading.Lock()
    count = 0
    half_created = threading.Event()
    killed = threading.Event()

    def create(part: list[Specs]) -> None:
        nonlocal count
        with Store(store.endpoints) as own:
            for s in part:
                after = killed.is_set()
                vm = create_vm(own, s)
                with lock:
                    count += 1
                    if after:
                        created_after_kill.append(vm.id)
                    if count == 500:
                        half_created.set()

    clients = [threading.Thread(target=create, args=(specs[i::4],)) for i in range(4)]
    for client in clients:
        client.start()
    assert half_created.wait(120)
    victim.send_signal(signal.SIGKILL)  # half-way: it has its share of 500 VMs to come
    victim.wait(10)
    killed.set()
    for client in clients:
        client.join()

    def settled() -> bool:  # every VM placed, or waiting with a reason
        return all(v.hostname or v.reason for v in read_vms(store).values())

    wait_for("every VM placed or given a reason", settled, timeout=120, every=0.2)
    assert all(p.poll() is None for p in procs[1:]), "a surviving scheduler died"
    vms, allocs = check_allocations(store)
    assert len(vms) == 1000
    waiting = [v for v in vms.values() if not v.hostname]
    placed = [v for v in vms.values() if v.hostname]
    # The dead scheduler's share of the VMs created after its death went to the others.
    orphans = [i for i in created_after_kill if owner(vm_key(i), members) == victim_id]
    assert len(orphans) > 50 and all(vms[i].hostname or vms[i].reason for i in orphans)
    for vm in placed:
        assert vm.status is VMStatus.SCHEDULED_DEPLOY and vm.reason == ""
        assert sum(e.message.startswith("placed on ") for e in vm.events) == 1, f"{vm.id} placed twice"
    # Each VM in exactly one allocation.
    listed = [vm_id for a in allocs.values() for vm_id in a.vms]
    assert len(listed) == len(set(listed)) == len(placed)
    # The 10 giants wait with a reason a user can act on; so does anything fragmentation left over.
    giants = [v for v in vms.values() if v.specs.ram == 128 * GB]
    for vm in giants:  # e.g. "no host fits: 50 lack ram", or "...: 47 lack ram, 3 lack ram and hdd"
        parts = vm.reason.removeprefix("no host fits: ").split(", ")
        assert not vm.hostname and all("ram" in part for part in parts), vm.reason
        assert sum(int(part.split()[0]) for part in parts) == 50, vm.reason
    for vm in waiting:
        assert vm.status is VMStatus.REQUESTED_NEW and vm.reason.startswith("no host fits: ")


def test_scheduler_refuses_to_start_when_metrics_cannot_be_served(store: Store, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "UCLOUD_ETCD_ENDPOINTS": ",".join(store.endpoints),
               "UCLOUD_ENV_FILE": str(tmp_path / "none.env"),
               "UCLOUD_SCHEDULER_METRICS_BIND": f"127.0.0.1:{port}"}
        done = subprocess.run([sys.executable, "-m", "ucloud_scheduler"], env=env, cwd=PROJECT,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"ucloud-scheduler: cannot serve /metrics on 127.0.0.1:{port}")
    assert store.list(SCHEDULER_PREFIX)[0] == []  # it never joined
