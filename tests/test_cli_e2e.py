"""The CLI end to end on a real one-host cloud: `ucloud-api`, `ucloud-scheduler` and `ucloud-vm`
as subprocesses over the session's etcd, a real guest under QEMU (TCG). `vm create --wait`
follows the VM to RUNNING, `vm list` shows it on the host, `vm delete --wait` until it is gone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from cli_harness import CLI_EXE, api_url, base_env, home, user  # noqa: F401 (fixtures)

from ucloud_common.keys import vm_key
from ucloud_common.store import Store
from ucloud_vm import process
from ucloud_vm.paths import VmPaths, local_vm_ids

BIN = Path(sys.executable).parent
HOST = "cli-e2e"
BOOT_TIMEOUT = 240  # a guest under TCG on a busy 2-core machine


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def cloud(etcd, store: Store, guest_image: Path) -> Iterator[Path]:
    """The scheduler and one vm daemon; on the way out both are stopped by pid, then any QEMU the
    daemon left running (it leaves VMs running on purpose) is killed after checking its cmdline."""
    base = Path(tempfile.mkdtemp(prefix="ucli-", dir="/tmp"))  # unix socket paths must stay short
    env = {**os.environ, "UCLOUD_ETCD_ENDPOINTS": ",".join(etcd.endpoints), "UCLOUD_ENV_FILE": str(base / "none.env"),
           "UCLOUD_STATE_DIR": str(base / "state"), "UCLOUD_IMAGE_DIR": str(base / "images"),
           "UCLOUD_QEMU_ACCEL": "tcg", "UCLOUD_HOST_CPU": "4", "UCLOUD_HOST_RAM": "4GiB", "UCLOUD_HOST_HDD": "50GiB",
           "UCLOUD_SCHEDULER_RESYNC_SECONDS": "5"}
    procs: list[subprocess.Popen] = []
    try:
        for name, argv in (("scheduler", [str(BIN / "ucloud-scheduler")]),
                           ("vm", [str(BIN / "ucloud-vm"), "--hostname", HOST])):
            with open(base / f"{name}.log", "ab") as log:
                procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + 120
        while store.get(f"/v1/alive/{HOST}") is None:
            assert all(p.poll() is None for p in procs), (base / "vm.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "the vm daemon did not register its host"
            time.sleep(0.2)
        yield base
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for vm_id in local_vm_ids(base / "state"):
            pid = process.read_pidfile(VmPaths.of(base / "state", vm_id))
            if pid is not None:
                process.kill_verified(vm_id, pid)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_create_wait_list_delete_wait(cloud: Path, store: Store, api_url: str, base_env, user):
    env = {**os.environ, **base_env, "UCLOUD_API_URL": api_url, "UCLOUD_REALM": user["realm"],
           "UCLOUD_NAME": user["name"], "UCLOUD_SEED": user["seed"]}

    def ucloud(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(CLI_EXE), *args], env=env, capture_output=True, text=True, timeout=timeout)

    created = ucloud("vm", "create", "--cpu", "1", "--ram", "128MiB", "--hdd", "1GiB", "--wait",
                     "--timeout", str(BOOT_TIMEOUT), timeout=BOOT_TIMEOUT + 60)
    assert created.returncode == 0, (created.stderr, (cloud / "vm.log").read_text(errors="replace")[-3000:])
    vm_id = created.stdout.strip()
    assert f"RUNNING on {HOST}" in created.stderr  # the progress it showed

    listed = ucloud("vm", "list", "--json")
    assert listed.returncode == 0
    [vm] = json.loads(listed.stdout)
    assert (vm["id"], vm["status"], vm["hostname"]) == (vm_id, "RUNNING", f"/v1/host/{HOST}")
    paths = VmPaths.of(cloud / "state", vm_id)
    pid = process.read_pidfile(paths)
    assert pid is not None and process.is_qemu_of(pid, vm_id)  # a real QEMU runs it

    deleted = ucloud("vm", "delete", vm_id, "--wait", "--timeout", "120", timeout=180)
    assert deleted.returncode == 0, (deleted.stderr, (cloud / "vm.log").read_text(errors="replace")[-3000:])
    assert deleted.stdout.strip() == f"{vm_id} deleted"
    assert store.get(vm_key(vm_id)) is None
    assert process.wait_gone(pid, 30)
