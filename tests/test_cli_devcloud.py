"""The CLI end to end against the dev cloud of `make up` (etcd, api, scheduler, one vm host,
real QEMU), as a new user meets it: `vm create --wait` -> RUNNING, `vm list`, `vm console`,
`vm delete --wait` -> gone. No flags, no ~/.ucloud: the CLI finds the dev user's
credentials (`credentials.json`) and the dev host's state dir (for `vm console`) by
itself. `make up` runs with its data dir and ports moved to a temp dir
(`UCLOUD_DEV_DIR`, ...), and `make down` stops it by pid afterwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from cli_harness import CLI_EXE

from ucloud_common.config import PROJECT_DIR
from ucloud_common.etcd_process import free_port
from ucloud_vm import process
from ucloud_vm.paths import VmPaths

pytestmark = pytest.mark.slow
BOOT_TIMEOUT = 240  # a guest under TCG on a busy 2-core machine


def make(target: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", target], cwd=PROJECT_DIR, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


@pytest.fixture
def devcloud() -> Iterator[dict[str, str]]:
    tmp_path = Path(tempfile.mkdtemp(prefix="ucd-", dir="/tmp"))  # unix socket paths must stay short
    env = {k: v for k, v in os.environ.items() if not k.startswith("UCLOUD_")}
    env.update({
        "HOME": str(tmp_path / "home"),  # no ~/.ucloud: the CLI must find the dev credentials itself
        "UCLOUD_DEV_DIR": str(tmp_path / "dev"),
        "UCLOUD_DEV_ETCD_PORT": str(free_port()),
        "UCLOUD_API_BIND": f"127.0.0.1:{free_port()}",
        "UCLOUD_SCHEDULER_METRICS_BIND": f"127.0.0.1:{free_port()}",
        "UCLOUD_VM_METRICS_BIND": f"127.0.0.1:{free_port()}",
    })
    (tmp_path / "home").mkdir()
    try:
        up = make("up", env)
        assert up.returncode == 0, f"make up failed:\n{up.stdout}\n{up.stderr}"
        yield env
    finally:
        make("down", env, timeout=120)
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_cli_on_the_dev_cloud(devcloud: dict[str, str]):
    env = {**devcloud, "UCLOUD_API_BIND": ""}  # the CLI reads the URL from credentials.json

    def ucloud(*args: str, timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(CLI_EXE), *args], env=env, capture_output=True, text=True, timeout=timeout,
                              input=stdin)

    shown = ucloud("config", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["file"] == str(Path(devcloud["UCLOUD_DEV_DIR"]) / "credentials.json")

    created = ucloud("vm", "create", "--cpu", "1", "--ram", "256MiB", "--hdd", "1GB", "--wait",
                     "--timeout", str(BOOT_TIMEOUT), timeout=BOOT_TIMEOUT + 60)
    assert created.returncode == 0, created.stderr
    vm_id = created.stdout.strip()
    assert "RUNNING on devhost" in created.stderr

    listed = ucloud("vm", "list")
    assert listed.returncode == 0 and vm_id in listed.stdout and "RUNNING" in listed.stdout
    [vm] = json.loads(ucloud("vm", "list", "--json").stdout)
    assert (vm["id"], vm["status"], vm["hostname"]) == (vm_id, "RUNNING", "/v1/host/devhost")
    pid = process.read_pidfile(VmPaths.of(Path(devcloud["UCLOUD_DEV_DIR"]) / "state", vm_id))
    assert pid is not None and process.is_qemu_of(pid, vm_id)  # a real QEMU runs it

    # the console is found under the dev cloud's state dir; wait for the shell, then ask it something
    console = ucloud("vm", "console", vm_id, "--idle", "5", stdin="\necho answer-$((6*7))\n",
                     timeout=BOOT_TIMEOUT + 60)
    for _ in range(BOOT_TIMEOUT // 10):
        if "answer-42" in console.stdout:
            break
        console = ucloud("vm", "console", vm_id, "--idle", "5", stdin="\necho answer-$((6*7))\n", timeout=120)
    assert console.returncode == 0 and "answer-42" in console.stdout, console.stderr

    deleted = ucloud("vm", "delete", vm_id, "--wait", "--timeout", "120", timeout=180)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == f"{vm_id} deleted"
    assert json.loads(ucloud("vm", "list", "--json").stdout) == []
    assert process.wait_gone(pid, 30)
