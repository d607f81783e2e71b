"""Helpers for the vm daemon's end-to-end tests: the API (in process, on the real etcd),
the scheduler and ``ucloud-vm`` daemons as real subprocesses, each stopped by its pid.

Not a test module (no ``test_`` prefix); imported by ``tests/test_vm_*.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ucloud_common import accounts
from ucloud_common.keys import vm_key
from ucloud_common.models import VM, VMStatus
from ucloud_common.store import Store
from ucloud_vm import process, watchdog
from ucloud_vm.paths import VmPaths

BIN = Path(sys.executable).parent
MARKER = b"UCLOUD-GUEST-UP"
BOOT_TIMEOUT = 240.0  # a guest under TCG on a busy 2-core machine


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def short_dir(prefix: str) -> Path:
    """A directory with a short path (unix socket paths must fit in 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class Proc:
    """A daemon subprocess with its log file; ``stop()`` ends it by pid."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log_path = argv, env, log
        self.popen: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            os.kill(self.popen.pid, signal.SIGCONT)
            os.kill(self.popen.pid, sig)
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def daemon_env(endpoints: Any, state_dir: Path, image_dir: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "UCLOUD_ETCD_ENDPOINTS": ",".join(endpoints),
           "UCLOUD_ENV_FILE": str(state_dir.parent / "none.env"),
           "UCLOUD_STATE_DIR": str(state_dir), "UCLOUD_IMAGE_DIR": str(image_dir),
           "UCLOUD_QEMU_ACCEL": "tcg", "UCLOUD_HOST_CPU": "8", "UCLOUD_HOST_RAM": "8GiB",
           "UCLOUD_HOST_HDD": "100GiB", "UCLOUD_LOG_LEVEL": "INFO"}
    env.update(extra)
    return env


def start_vm_daemon(endpoints: Any, base: Path, host: str, **extra: str) -> Proc:
    state = base / host
    state.mkdir(parents=True, exist_ok=True)
    env = daemon_env(endpoints, state, base / "images", **extra)
    return Proc([str(BIN / "ucloud-vm"), "--hostname", host], env, base / f"{host}.log")


def start_scheduler(endpoints: Any, base: Path) -> Proc:
    env = {**os.environ, "UCLOUD_ETCD_ENDPOINTS": ",".join(endpoints),
           "UCLOUD_ENV_FILE": str(base / "none.env"), "UCLOUD_SCHEDULER_RESYNC_SECONDS": "5"}
    return Proc([str(BIN / "ucloud-scheduler")], env, base / "scheduler.log")


class Api:
    """The API app (``ucloud_api.create_app``) through Flask's test client, as one user."""

    def __init__(self, settings: Any, store: Store, realm: str = "test", name: str = "alice") -> None:
        from ucloud_api import create_app

        self.app = create_app(settings, store=store)
        self.client = self.app.test_client()
        _, self.seed = accounts.create_user(store, realm, name)
        self.creds = {"realm": realm, "name": name, "seed": self.seed}

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post(path, json={**self.creds, **body})
        assert response.status_code in (200, 201, 202), (path, response.status_code, response.get_json())
        return response.get_json()

    def create(self, ram: str = "128MiB", hdd: str = "1GiB", **extra: Any) -> str:
        return self.post("/vm/create", {"specs": {"cpu": 1, "ram": ram, "hdd": hdd, "ssd": 0}, **extra})["id"]

    def status(self, vm_id: str) -> dict[str, Any]:
        response = self.client.get("/vm/status", json={**self.creds, "id": vm_id})
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def action(self, vm_id: str, action: str) -> None:
        self.post("/vm/action", {"vmid": vm_id, "action": action})

    def delete(self, vm_id: str) -> None:
        self.post("/vm/delete", {"vmid": vm_id})


def record(store: Store, vm_id: str) -> VM | None:
    entry = store.get(vm_key(vm_id))
    return None if entry is None else VM.from_json(vm_id, entry.value, entry.mod_revision)


def wait_status(store: Store, vm_id: str, status: VMStatus, timeout: float = 60.0) -> VM:
    def check() -> VM | None:
        vm = record(store, vm_id)
        return vm if vm is not None and vm.status is status else None
    try:
        return wait_for(check, timeout, f"VM {vm_id} to be {status.value}")
    except AssertionError:
        vm = record(store, vm_id)
        detail = json.dumps(vm.to_dict(), indent=1) if vm else "record gone"
        raise AssertionError(f"VM {vm_id} not {status.value} after {timeout:g}s: {detail}") from None


def marker_count(paths: VmPaths) -> int:
    try:
        return paths.serial_log.read_bytes().count(MARKER)
    except OSError:
        return 0


def qemu_pid(paths: VmPaths) -> int | None:
    from ucloud_vm import process

    found = process.find(paths)
    return found.pid if found else None


def stop_host_vms(state: Path) -> None:
    """After a test host's daemon was stopped: its watchdog and QEMUs keep running by design
    (adoption), so stop them by the pids in its state dir."""
    pid = watchdog.running_pid(state)
    if pid is not None:
        process.kill(pid)
    watchdog.fence_all(state)
