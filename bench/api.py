"""Benchmark: ucloud-api through gunicorn on loopback, beside raw etcd in the same run.

    .venv/bin/python bench/api.py [--seconds 3] [--workers 2] [--concurrency 1,32]

Starts a private etcd (``EtcdCluster``) and ``ucloud-api`` (the console script, as a
subprocess on a free loopback port, stopped by pid), creates a user, then for each
concurrency measures for ``--seconds`` each:

* raw etcd ``put`` and ``get`` of a VM-sized record through ``ucloud_common.store``,
  one shared ``Store`` and N client threads — the baseline;
* ``POST /vm/create`` (the seed's body, credentials in it) and
  ``GET /vm/status?id=`` (credentials in headers), N client threads, each with its own
  keep-alive HTTP connection.

It prints requests/s, p50 and p99 latency, the ratios create/put and status/get, and
where the CPU went: ms of CPU per request in the client threads (this process),
in ucloud-api (master + workers) and in etcd — on a small machine the three share the
cores, so at high concurrency throughput is CPU per request, and latency is queueing.
Aims (issue 3): create >= 30% of raw puts/s; status p99 < 20 ms at 32 clients.
Everything it starts is stopped by pid; every loop is bounded by time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ucloud_common import accounts  # noqa: E402
from ucloud_common.etcd_process import EtcdCluster, free_port  # noqa: E402
from ucloud_common.keys import VM_PREFIX, name_from_key  # noqa: E402
from ucloud_common.models import VM, Specs  # noqa: E402
from ucloud_common.store import Store  # noqa: E402


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by ``pids`` (from /proc; 0 for a pid that is gone)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (gunicorn's workers), found through /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return children


class CpuMeter:
    """CPU ms per request spent in this process (the clients), ucloud-api and etcd during a run."""

    def __init__(self, api_pids: list[int], etcd_pids: list[int]) -> None:
        self.groups = {"client": [os.getpid()], "api": api_pids, "etcd": etcd_pids}

    def snapshot(self) -> dict[str, float]:
        return {name: cpu_seconds(pids) for name, pids in self.groups.items()}

    @staticmethod
    def per_request(before: dict[str, float], after: dict[str, float], ops: int) -> dict[str, float]:
        return {name: (after[name] - before[name]) * 1000 / max(ops, 1) for name in before}


def run_clients(concurrency: int, seconds: float, make_worker: Callable[[int], Callable[[], None]]) -> dict:
    """Run ``concurrency`` threads, each calling its op in a loop for ``seconds``; return stats."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def loop(i: int) -> None:
        op = make_worker(i)
        start.wait()
        mine = latencies[i]
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline[0]:
                return
            try:
                op()
            except Exception:  # noqa: BLE001 - counted, not fatal
                errors[i] += 1
                continue
            mine.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    t_start = time.perf_counter()
    start.wait()
    for t in threads:
        t.join(seconds + 30)
    elapsed = time.perf_counter() - t_start
    all_lat = sorted(x for lat in latencies for x in lat)
    n = len(all_lat)

    def pct(p: float) -> float:
        return all_lat[min(n - 1, int(p * n))] * 1000 if n else float("nan")

    return {"ops": n, "rps": n / elapsed, "p50": pct(0.50), "p99": pct(0.99), "errors": sum(errors)}


class Api:
    """A ucloud-api subprocess (the real console script) on a free loopback port."""

    def __init__(self, endpoints: tuple[str, ...], workers: int, log: Path) -> None:
        self.port = free_port()
        env = dict(os.environ, UCLOUD_ETCD_ENDPOINTS=",".join(endpoints),
                   UCLOUD_API_BIND=f"127.0.0.1:{self.port}", UCLOUD_API_WORKERS=str(workers),
                   UCLOUD_LOG_LEVEL="WARNING")
        exe = Path(sys.executable).parent / "ucloud-api"
        self.log = open(log, "wb")
        self.proc = subprocess.Popen([str(exe)], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ucloud-api did not answer on port {self.port}; see {log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def http_worker(port: int, method: str, path: Callable[[], str], body: bytes | None,
                headers: dict[str, str], expect: int) -> Callable[[], None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def op() -> None:
        conn.request(method, path(), body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != expect:
            raise RuntimeError(f"{method} -> {response.status}")

    return op


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated client counts")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="ucloud-bench-") as tmp:
        cluster = EtcdCluster(Path(tmp) / "etcd", size=1).start()
        api = None
        try:
            store = Store(cluster.endpoints)
            _, seed = accounts.create_user(store, "bench", "alice")
            api = Api(cluster.endpoints, args.workers, Path(tmp) / "api.log")
            sample = VM(id=str(uuid.uuid4()), owner="bench/alice", specs=Specs(16, 256 * 10**9, 2000 * 10**9, 0),
                        image="ucloud-guest").with_event("created").to_json()
            create_body = json.dumps({"name": "alice", "realm": "bench", "seed": seed,
                                      "specs": {"cpu": 16, "ram": 256, "hdd": 2000, "ssd": 256}}).encode()
            json_headers = {"Content-Type": "application/json"}
            auth_headers = {"X-Ucloud-Realm": "bench", "X-Ucloud-Name": "alice", "X-Ucloud-Seed": seed}
            # VMs to ask the status of
            warm = http_worker(api.port, "POST", lambda: "/vm/create", create_body, json_headers, 201)
            for _ in range(64):
                warm()
            ids = [name_from_key(e.key, VM_PREFIX) for e in store.list(VM_PREFIX)[0]]
            meter = CpuMeter([api.proc.pid, *child_pids(api.proc.pid)],
                             [m.pid for m in cluster.members if m.pid])

            def measure(c: int, make_worker: Callable[[int], Callable[[], None]]) -> dict:
                before = meter.snapshot()
                stats = run_clients(c, args.seconds, make_worker)
                stats["cpu"] = meter.per_request(before, meter.snapshot(), stats["ops"])
                return stats

            rows = []
            for c in levels:
                counter = iter(range(10**9))

                def put_worker(i: int) -> Callable[[], None]:
                    return lambda: store.put(f"/v1/bench/{i}/{next(counter)}", sample)

                def get_worker(i: int) -> Callable[[], None]:
                    key = f"/v1/vm/{ids[i % len(ids)]}"
                    return lambda: store.get(key)

                def create_worker(i: int) -> Callable[[], None]:
                    return http_worker(api.port, "POST", lambda: "/vm/create", create_body, json_headers, 201)

                def status_worker(i: int) -> Callable[[], None]:
                    path = f"/vm/status?id={ids[i % len(ids)]}"
                    return http_worker(api.port, "GET", lambda: path, None, auth_headers, 200)

                put = measure(c, put_worker)
                create = measure(c, create_worker)
                get = measure(c, get_worker)
                status = measure(c, status_worker)
                rows += [(c, "etcd put", put, None), (c, "POST /vm/create", create, create["rps"] / put["rps"]),
                         (c, "etcd get", get, None), (c, "GET /vm/status", status, status["rps"] / get["rps"])]
            store.close()
        finally:
            if api:
                api.stop()
            cluster.stop()

    print(f"ucloud-api benchmark: gunicorn {args.workers} workers, {args.seconds:.0f} s per row, "
          f"{os.cpu_count()} cores (clients, api and etcd share them)")
    print(f"{'clients':>7} {'operation':<16} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
          f"{'vs raw etcd':>11}   CPU ms/request: {'client':>6} {'api':>6} {'etcd':>6}")
    for c, name, r, ratio in rows:
        vs = f"{ratio * 100:.0f}%" if ratio is not None else ""
        cpu = r["cpu"]
        print(f"{c:>7} {name:<16} {r['rps']:>8.0f} {r['p50']:>7.2f} {r['p99']:>7.2f} {r['errors']:>6} {vs:>11}   "
              f"{'':>15} {cpu['client']:>6.2f} {cpu['api']:>6.2f} {cpu['etcd']:>6.2f}")
    load = os.getloadavg()[0]
    print(f"load average at the end: {load:.1f} on {os.cpu_count()} cores (other work on the machine skews the figures)")
    for c, name, r, ratio in rows:
        if name == "POST /vm/create":
            print(f"aim create >= 30% of raw puts/s at {c} clients: {'met' if ratio >= 0.30 else 'NOT met'} ({ratio:.0%})")
        if name == "GET /vm/status" and c >= 32:
            print(f"aim status p99 < 20 ms at {c} clients: {'met' if r['p99'] < 20 else 'NOT met'} ({r['p99']:.1f} ms)")


if __name__ == "__main__":
    main()
