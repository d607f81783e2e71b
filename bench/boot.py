"""Benchmark of ucloud-vm: how much does the control plane add to booting a guest, and how fast
is a killed VM back?

Everything runs here, in one run: a private etcd, ``ucloud-scheduler`` and ``ucloud-vm``
(subprocesses, TCG), the API app in this process (Flask test client: no HTTP server in
the measured path). Each round, alternately:

* **bare**: ``qemu-system-x86_64`` started with exactly the daemon's command line
  (``qemu_argv.build_argv``: same image as a qcow2 overlay, same options) until the
  guest's ``UCLOUD-GUEST-UP`` appears on its serial log;
* **ucloud**: ``POST /vm/create`` until the record is ``RUNNING`` and until the same
  marker appears; then ``kill -9`` of its QEMU until a new QEMU runs (detection +
  KILLED + restart), until ``RUNNING`` again and until the marker again; then delete.

Printed: medians over the rounds, the control-plane overhead (ucloud marker - bare
marker) and the ratio. Guest boots under TCG on a shared machine vary by seconds, so
compare within one run only.

    .venv/bin/python bench/boot.py               # 3 rounds
    .venv/bin/python bench/boot.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "tests"))

from ucloud_common.config import load_settings  # noqa: E402
from ucloud_common.etcd_process import EtcdCluster  # noqa: E402
from ucloud_common.keys import alive_key, host_key  # noqa: E402
from ucloud_common.models import VMStatus  # noqa: E402
from ucloud_common.storage.file import FileBackend  # noqa: E402
from ucloud_common.store import Store  # noqa: E402
from ucloud_vm import process, watchdog  # noqa: E402
from ucloud_vm.guest_image import build  # noqa: E402
from ucloud_vm.paths import VmPaths  # noqa: E402
from ucloud_vm.qemu_argv import QemuConfig, build_argv  # noqa: E402
from vm_harness import (Api, Proc, marker_count, qemu_pid, record, short_dir, start_scheduler,  # noqa: E402
                        start_vm_daemon, wait_for)

RAM = 128 * 1024 * 1024
TIMEOUT = 300.0
POLL = 0.002


def bare_boot(base: Path, image: Path, n: int) -> tuple[float, float]:
    """(seconds until QEMU's QMP socket is up, seconds until the guest's marker)."""
    settings = load_settings(env={}, env_file=base / "none.env", state_dir=str(base / "bare"),
                             image_dir=str(base / "bare-images"))
    backend = FileBackend(settings)
    backend.import_image("ucloud-guest", str(image))
    vm_id = f"bare-{n}"
    disk = backend.create_disk(vm_id, "boot", 1 << 30, "ucloud-guest")
    paths = VmPaths.of(base / "bare", vm_id)
    argv = build_argv(QemuConfig(vm_id=vm_id, cpu=1, ram=RAM, disks=[disk], paths=paths, accel="tcg"))
    t0 = time.monotonic()
    qemu = process.start(argv, paths)
    up = time.monotonic() - t0
    try:
        wait_for(lambda: marker_count(paths) >= 1, TIMEOUT, "the bare guest's marker", POLL)
        return up, time.monotonic() - t0
    finally:
        process.kill_verified(vm_id, qemu.pid)
        backend.delete_disks(vm_id)


def logged_at(log: str, needle: str) -> float | None:
    """Epoch seconds of the daemon's first log line containing ``needle`` (ms resolution)."""
    for line in log.splitlines():
        if needle in line:
            stamp, ms = line[:23].split(",")
            return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
    return None


def ucloud_boot(store: Store, api: Api, base: Path, daemon: Proc) -> dict[str, float]:
    out: dict[str, float] = {}
    t0 = time.monotonic()
    vm_id = api.create()
    wait_for(lambda: (v := record(store, vm_id)) and v.status is VMStatus.RUNNING, TIMEOUT, "RUNNING", POLL)
    out["create -> RUNNING"] = time.monotonic() - t0
    paths = VmPaths.of(base / "h1", vm_id)
    wait_for(lambda: marker_count(paths) >= 1, TIMEOUT, "the marker", POLL)
    out["create -> marker"] = time.monotonic() - t0

    pid = qemu_pid(paths)
    assert pid is not None
    t1, killed_at = time.monotonic(), time.time()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: qemu_pid(paths) not in (None, pid), TIMEOUT, "a new QEMU", POLL)
    out["kill -9 -> new QEMU"] = time.monotonic() - t1
    noticed = wait_for(lambda: logged_at(daemon.log(), f"QEMU pid {pid} ended"), 10, "the exit in the log")
    out["kill -9 -> noticed (log)"] = max(0.0, noticed - killed_at)
    wait_for(lambda: (v := record(store, vm_id)) and v.status is VMStatus.RUNNING
             and any("QEMU died" in e.message for e in v.events), TIMEOUT, "RUNNING again", POLL)
    out["kill -9 -> RUNNING"] = time.monotonic() - t1
    wait_for(lambda: marker_count(paths) >= 2, TIMEOUT, "the marker again", POLL)
    out["kill -9 -> marker"] = time.monotonic() - t1
    api.delete(vm_id)
    wait_for(lambda: record(store, vm_id) is None, TIMEOUT, "deletion")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    image = build()
    base = short_dir("ucboot-")
    cluster = EtcdCluster(base / "etcd").start()
    store = Store(cluster.endpoints)
    (base / "images").mkdir()
    shutil.copyfile(image, base / "images" / "ucloud-guest.raw")
    endpoints = list(cluster.endpoints)
    scheduler = start_scheduler(endpoints, base)
    daemon = start_vm_daemon(endpoints, base, "h1")
    try:
        wait_for(lambda: store.get(alive_key("h1")) and store.get(host_key("h1")), 60, "the host")
        api = Api(load_settings(env={}, env_file=base / "none.env", etcd_endpoints=endpoints), store)
        bare: list[float] = []
        bare_up: list[float] = []
        runs: list[dict[str, float]] = []
        for n in range(args.rounds):
            up, marker = bare_boot(base, image, n)
            bare.append(marker)
            bare_up.append(up)
            runs.append(ucloud_boot(store, api, base, daemon))
            print(f"round {n + 1}: bare QMP up {up:.3f}s, marker {marker:.3f}s; " +
                  "; ".join(f"{k} {v:.3f}s" for k, v in runs[-1].items()), flush=True)
        bare_m = statistics.median(bare)
        print(f"\nmedians over {args.rounds} rounds (TCG, 1 vCPU, 128 MiB):")
        up_m = statistics.median(bare_up)
        print(f"  bare QEMU -> QMP up          {up_m:8.3f} s")
        print(f"  bare QEMU -> marker          {bare_m:8.3f} s")
        for key in runs[0]:
            print(f"  {key:<28} {statistics.median(r[key] for r in runs):8.3f} s")
        running = statistics.median(r["create -> RUNNING"] for r in runs)
        print(f"  control plane (create->RUNNING minus bare QMP up) {running - up_m:.3f} s")
        marker = statistics.median(r["create -> marker"] for r in runs)
        print(f"  marker: ucloud - bare        {marker - bare_m:8.3f} s  (ucloud/bare = {marker / bare_m:.3f}; "
              f"guest boots under TCG on a shared machine vary by seconds)")
        again = statistics.median(r["kill -9 -> marker"] for r in runs)
        print(f"  restart boot / bare boot     {again / bare_m:8.3f}")
    finally:
        daemon.stop()
        scheduler.stop()
        pid = watchdog.running_pid(base / "h1")
        if pid is not None:
            process.kill(pid)
        watchdog.fence_all(base / "h1")
        store.close()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
