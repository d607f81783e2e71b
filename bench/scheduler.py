"""Benchmark of ucloud-scheduler: how fast are 10,000 waiting VMs placed on 1,000 hosts?

Everything runs here, in one run, on one private etcd: first the *baseline* — raw etcd
transactions of exactly the size the scheduler writes (per placement: the VM record
and the host's allocation record, both compared and written), one placement per
transaction and ``--batch`` per transaction — then the real thing: the hosts (with
liveness keys on a lease) and the VMs are created up front, ``ucloud-scheduler``
processes are started (1, then 3), and the time until every VM is placed is taken
from a watch. Printed: placements/s, the ratio to the raw transaction rate, conflicts
seen in etcd's history, and each scheduler's peak memory (``ru_maxrss`` of the child,
from ``os.wait4``). Every run is checked: no host promised beyond its limit, every
allocation equal to the sum of its VMs.

    .venv/bin/python bench/scheduler.py                      # 1,000 hosts, 10,000 VMs; 1 and 3 schedulers
    .venv/bin/python bench/scheduler.py --hosts 100 --vms 2000 --schedulers 1 --batch 1
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ucloud_common.etcd_process import EtcdCluster  # noqa: E402
from ucloud_common.keys import ALLOC_PREFIX, HOST_PREFIX, VM_PREFIX, alive_key, host_key, vm_key  # noqa: E402
from ucloud_common.models import Allocation, Host, Specs, VM, VMStatus  # noqa: E402
from ucloud_common.store import Compare, Put, Store  # noqa: E402
from ucloud_common.units import GB  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent


def make_hosts(count: int, rng: random.Random) -> list[Host]:
    sizes = [Specs(16, 64 * GB, 1000 * GB, 0), Specs(32, 128 * GB, 2000 * GB, 500 * GB),
             Specs(64, 256 * GB, 4000 * GB, 1000 * GB)]
    return [Host(f"node{i:04d}", rng.choice(sizes), address=f"10.0.{i // 250}.{i % 250}", lease_ttl=10)
            for i in range(count)]


def make_vms(count: int, rng: random.Random) -> list[VM]:
    now = time.time()
    return [VM(id=str(uuid.uuid4()), owner=f"user{rng.randrange(50)}",
               specs=Specs(rng.choice((1, 2, 4)), rng.choice((1, 2, 4, 8)) * GB, rng.choice((10, 20, 50)) * GB, 0),
               name=f"vm{i}", image="ucloud-guest", created=now)
            for i in range(count)]


def put_all(store: Store, items: list[tuple[str, bytes]], lease: int = 0, chunk: int = 100) -> None:
    for i in range(0, len(items), chunk):
        store.txn([], [Put(k, v, lease) for k, v in items[i:i + chunk]])


def baseline(store: Store, hosts: list[Host], vms: list[VM], batch: int, seconds: float) -> float:
    """Raw etcd: placements/s when each transaction compares and writes ``batch`` VM records
    and ``batch`` allocation records of realistic size (keys outside /v1/)."""
    per_host = max(1, len(vms) // len(hosts))
    alloc = Allocation("x")
    for vm in vms[:per_host]:
        alloc = alloc.with_vm(vm.id, vm.specs)
    alloc_value = alloc.to_json()
    placed = [vm.with_event(f"placed on {hosts[0].name}", hostname=host_key(hosts[0].name),
                            status=VMStatus.SCHEDULED_DEPLOY).to_json() for vm in vms[:batch]]
    store.delete_prefix("/bench/")
    revisions: dict[str, int] = {}
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        compares, ops = [], []
        for i in range(batch):
            vkey = f"/bench/vm/{(done * batch + i) % len(vms)}"
            akey = f"/bench/alloc/{(done * batch + i) % len(hosts)}"
            compares += [Compare(vkey, revisions.get(vkey, 0)), Compare(akey, revisions.get(akey, 0))]
            ops += [Put(vkey, placed[i]), Put(akey, alloc_value)]
        revision = store.txn(compares, ops)
        for compare in compares:
            revisions[compare.key] = revision
        done += 1
    return done * batch / (time.perf_counter() - start)


class Counter_:
    """Counts VMs seen placed by a watch on /v1/vm/."""

    def __init__(self, store: Store, start_revision: int, total: int) -> None:
        self.placed: set[str] = set()
        self.puts = 0
        self.first = 0.0
        self.last = 0.0
        self.total = total
        self.done = threading.Event()
        self._watch = store.watch(VM_PREFIX, start_revision)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for event in self._watch:
            if event.type != "put":
                continue
            self.puts += 1
            if b'"SCHEDULED_DEPLOY"' in event.value:
                now = time.perf_counter()
                self.first = self.first or now
                self.placed.add(event.key)
                if len(self.placed) == self.total:
                    self.last = now
                    self.done.set()
                    return

    def stop(self) -> None:
        self._watch.cancel()


def start_scheduler(endpoints: tuple[str, ...], workdir: Path, batch: int, candidates: int, index: int,
                    log_level: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")}
    env.update({"UCLOUD_ETCD_ENDPOINTS": ",".join(endpoints), "UCLOUD_SCHEDULER_BATCH": str(batch),
                "UCLOUD_SCHEDULER_CANDIDATES": str(candidates), "UCLOUD_LOG_LEVEL": log_level,
                "UCLOUD_SCHEDULER_RESYNC_SECONDS": "300"})
    log = open(workdir / f"scheduler{index}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "ucloud_scheduler"], cwd=workdir, env=env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    return proc


def stop_and_measure(proc: subprocess.Popen) -> tuple[int, float]:
    """SIGTERM the scheduler, reap it with wait4: its peak RSS in KiB and CPU seconds used."""
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        pid, _status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = 0  # reaped here; keep Popen from waiting again
            return usage.ru_maxrss, usage.ru_utime + usage.ru_stime
        time.sleep(0.05)
    proc.kill()
    _pid, _status, usage = os.wait4(proc.pid, 0)
    proc.returncode = -9
    return usage.ru_maxrss, usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a running process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _final_stats(log: Path) -> dict[str, int]:
    """The counters a scheduler logs when it stops ("scheduler ... stopped: placements=... ...")."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if " stopped: " in line:
            return {k: int(float(v)) for k, _, v in (p.partition("=") for p in line.split(" stopped: ")[1].split())}
    return {}


def verify(store: Store, hosts: list[Host], overcommit: dict[str, float]) -> str:
    """Check the invariants after a run; returns "ok" or what is wrong."""
    allocs = {e.key[len(ALLOC_PREFIX):]: Allocation.from_json(e.key, e.value) for e in store.list(ALLOC_PREFIX)[0]}
    vms = [VM.from_json(e.key[len(VM_PREFIX):], e.value) for e in store.list(VM_PREFIX)[0]]
    by_host: dict[str, dict[str, Specs]] = {}
    for vm in vms:
        if vm.hostname:
            by_host.setdefault(vm.hostname[len(HOST_PREFIX):], {})[vm.id] = vm.specs
    for host in hosts:
        alloc = allocs.get(host.name, Allocation(host.name))
        if dict(alloc.vms) != by_host.get(host.name, {}):
            return f"allocation of {host.name} differs from its VMs"
        used = alloc.used
        for r, ratio in overcommit.items():
            if getattr(used, r) > getattr(host.capacity, r) * ratio:
                return f"{host.name} promised {r} beyond its limit"
    return "ok"


def run(store: Store, etcd: EtcdCluster, workdir: Path, hosts: list[Host], vms: list[VM], schedulers: int,
        batch: int, candidates: int, timeout: float, log_level: str) -> dict[str, object]:
    store.delete_prefix("/v1/")
    lease = store.grant_lease(600)
    put_all(store, [(host_key(h.name), h.to_json()) for h in hosts])
    put_all(store, [(alive_key(h.name), b"{}") for h in hosts], lease=lease)
    put_all(store, [(vm_key(vm.id), vm.to_json()) for vm in vms])
    start_revision = store.revision() + 1
    counter = Counter_(store, start_revision, len(vms))
    etcd_pid = etcd.members[0].pid or 0
    etcd_cpu = cpu_seconds(etcd_pid)
    launched = time.perf_counter()
    procs = [start_scheduler(etcd.endpoints, workdir, batch, candidates, i, log_level) for i in range(schedulers)]
    finished = counter.done.wait(timeout)
    end = counter.last if finished else time.perf_counter()
    etcd_cpu = cpu_seconds(etcd_pid) - etcd_cpu
    measured = [stop_and_measure(p) for p in procs]
    peaks = [m[0] for m in measured]
    counter.stop()
    stats = [_final_stats(workdir / f"scheduler{i}.log") for i in range(schedulers)]
    result = {
        "schedulers": schedulers, "batch": batch, "placed": len(counter.placed), "finished": finished,
        "from_launch": end - launched, "placing": (end - counter.first) if counter.first else 0.0,
        "peak_kib": peaks, "transactions": sum(s.get("transactions", 0) for s in stats),
        "cpu": sum(m[1] for m in measured), "etcd_cpu": etcd_cpu,
        "conflicts": sum(s.get("conflicts", 0) for s in stats),
        "shares": [s.get("placements", 0) for s in stats],
        "check": verify(store, hosts, {"cpu": 4.0, "ram": 1.0, "hdd": 1.0, "ssd": 1.0}),
    }
    store.revoke_lease(lease)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--vms", type=int, default=10000)
    parser.add_argument("--schedulers", default="1,3", help="comma-separated counts to run")
    parser.add_argument("--batch", type=int, default=32, help="placements per transaction")
    parser.add_argument("--candidates", type=int, default=20, help="feasible hosts weighed per VM (0: all)")
    parser.add_argument("--baseline-seconds", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    rng = random.Random(42)
    hosts = make_hosts(args.hosts, rng)
    vms = make_vms(args.vms, rng)
    with tempfile.TemporaryDirectory(prefix="ucloud-bench-") as tmp:
        workdir = Path(tmp)
        etcd = EtcdCluster(workdir / "etcd").start()
        try:
            with Store(etcd.endpoints) as store:
                raw1 = baseline(store, hosts, vms, 1, args.baseline_seconds)
                raw_b = baseline(store, hosts, vms, args.batch, args.baseline_seconds) if args.batch > 1 else raw1
                store.delete_prefix("/bench/")
                print(f"{args.hosts} hosts, {args.vms} VMs, batch {args.batch}, candidates {args.candidates}, "
                      f"{os.cpu_count()} cores")
                print(f"raw etcd, 1 placement per txn       : {raw1:8.0f} placements/s")
                print(f"raw etcd, {args.batch:2d} placements per txn      : {raw_b:8.0f} placements/s")
                for n in [int(x) for x in args.schedulers.split(",") if x]:
                    r = run(store, etcd, workdir, hosts, vms, n, args.batch, args.candidates, args.timeout,
                            args.log_level)
                    rate = r["placed"] / r["from_launch"]  # type: ignore[operator]
                    rate_placing = r["placed"] / r["placing"] if r["placing"] else 0.0  # type: ignore[operator]
                    peaks = ", ".join(f"{kib / 1024:.0f} MiB" for kib in r["peak_kib"])  # type: ignore[union-attr]
                    print(f"{n} scheduler(s): placed {r['placed']}/{args.vms} in {r['from_launch']:.2f} s from launch "
                          f"= {rate:.0f}/s ({rate / raw_b:.2f}x raw batched, {rate / raw1:.2f}x raw single); "
                          f"placing phase {r['placing']:.2f} s = {rate_placing:.0f}/s; "
                          f"{r['transactions']} txns, {r['conflicts']} conflicts; placed by each: "
                          f"{'/'.join(str(x) for x in r['shares'])}; peak RSS {peaks}; check: {r['check']}")
                    wall = r["from_launch"]
                    print(f"   CPU from launch to the last placement: schedulers {r['cpu']:.1f} s "
                          f"(incl. start-up and stop), etcd {r['etcd_cpu']:.1f} s, over {wall:.1f} s wall "
                          f"on {os.cpu_count()} cores")  # type: ignore[str-format]
        finally:
            etcd.stop()


if __name__ == "__main__":
    main()
