"""`make up` / `make down` and the CLI: the one-box dev cloud as a new user meets it (issue 8).

The real command is run (through make, as the README says) with its data dir and ports
moved to a temporary place, so a developer's own dev cloud is left alone. Then the seed's
three calls are made over HTTP with the credentials `make up` printed, a VM reaches
RUNNING, and `make down` must leave no process of the dev cloud behind — QEMU included.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from ucloud_common.config import PROJECT_DIR
from ucloud_common.etcd_process import free_port
from ucloud_vm import process
from ucloud_vm.paths import VmPaths

from cli_harness import CLI_EXE

pytestmark = pytest.mark.slow
BOOT_TIMEOUT = 240  # a guest under TCG on a busy 2-core machine


def make(target: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", target], cwd=PROJECT_DIR, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Every live process whose command line contains ``text`` (our temp dir or a port)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append((int(proc.name), cmdline))
    return found


@pytest.fixture(scope="module")
def devcloud() -> Iterator[dict]:
    top = Path(tempfile.mkdtemp(prefix="ucd-", dir="/tmp"))  # unix socket paths must stay short
    base = top / "dev"
    (top / "home").mkdir()
    api_port = free_port()
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("UCLOUD_"):
            del env[key]
    env.update({
        "HOME": str(top / "home"),  # no ~/.ucloud: the CLI must find the dev credentials itself
        "UCLOUD_DEV_DIR": str(base),
        "UCLOUD_DEV_ETCD_PORT": str(free_port()),
        "UCLOUD_API_BIND": f"127.0.0.1:{api_port}",
        "UCLOUD_SCHEDULER_METRICS_BIND": f"127.0.0.1:{free_port()}",
        "UCLOUD_VM_METRICS_BIND": f"127.0.0.1:{free_port()}",
    })
    up = make("up", env)
    info = {"env": env, "base": base, "up": up, "api": f"http://127.0.0.1:{api_port}"}
    try:
        yield info
    finally:
        make("down", env, timeout=120)
        shutil.rmtree(top, ignore_errors=True)


def family(pids: set[int]) -> set[int]:
    """``pids`` and all their live descendants (gunicorn workers, a watchdog, QEMU)."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found = {pid for pid in pids if pid in parents}
    grew = True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in found} - found
        found |= children
        grew = bool(children)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def printed_credentials(output: str) -> dict[str, str]:
    match = re.search(r"credentials\s+realm=(\S+) name=(\S+) seed=(\S+)", output)
    assert match, f"make up printed no credentials:\n{output}"
    return {"realm": match[1], "name": match[2], "seed": match[3]}


def wait_status(api: str, creds: dict[str, str], vm_id: str, want: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        reply = requests.get(f"{api}/vm/status", json={"id": vm_id, **creds}, timeout=10)
        body = reply.json()
        if reply.status_code == 404 and want == "gone":
            return body
        if body.get("status") == want:
            return body
        if body.get("status") == "ERROR":
            pytest.fail(f"VM went to ERROR: {body}")
        time.sleep(0.5)
    pytest.fail(f"VM {vm_id} did not reach {want} within {timeout}s; last: {body}")


def test_cli_on_the_dev_cloud(devcloud: dict) -> None:
    """The CLI as a new user meets it: no flags, no ~/.ucloud — it finds the dev user's
    credentials and the dev host's state dir (for `vm console`) by itself."""
    assert devcloud["up"].returncode == 0, f"make up failed:\n{devcloud['up'].stdout}\n{devcloud['up'].stderr}"
    env = {**devcloud["env"], "UCLOUD_API_BIND": ""}  # the CLI reads the URL from credentials.json

    def ucloud(*args: str, timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(CLI_EXE), *args], env=env, capture_output=True, text=True, timeout=timeout,
                              input=stdin)

    shown = ucloud("config", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["file"] == str(Path(devcloud["env"]["UCLOUD_DEV_DIR"]) / "credentials.json")

    created = ucloud("vm", "create", "--cpu", "1", "--ram", "256MiB", "--hdd", "1GB", "--wait",
                     "--timeout", str(BOOT_TIMEOUT), timeout=BOOT_TIMEOUT + 60)
    assert created.returncode == 0, created.stderr
    vm_id = created.stdout.strip()
    assert "RUNNING on devhost" in created.stderr

    listed = ucloud("vm", "list")
    assert listed.returncode == 0 and vm_id in listed.stdout and "RUNNING" in listed.stdout
    [vm] = json.loads(ucloud("vm", "list", "--json").stdout)
    assert (vm["id"], vm["status"], vm["hostname"]) == (vm_id, "RUNNING", "/v1/host/devhost")
    pid = process.read_pidfile(VmPaths.of(Path(devcloud["env"]["UCLOUD_DEV_DIR"]) / "state", vm_id))
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


def test_make_up_runs_a_cloud_that_boots_a_vm_and_make_down_leaves_nothing(devcloud: dict) -> None:
    up, env, api = devcloud["up"], devcloud["env"], devcloud["api"]
    assert up.returncode == 0, f"make up failed:\n{up.stdout}\n{up.stderr}"
    assert api in up.stdout and "curl" in up.stdout
    creds = printed_credentials(up.stdout)

    # The seed's three calls, verbatim in shape, against the printed URL and credentials.
    created = requests.post(f"{api}/vm/create", json={**creds, "specs": {"cpu": 1, "ram": "256MiB",
                                                                          "hdd": "1GB", "ssd": 0}}, timeout=10)
    assert created.status_code == 201, created.text
    vm_id = created.json()["id"]
    running = wait_status(api, creds, vm_id, "RUNNING")
    assert running["hostname"].endswith("devhost")
    serial = Path(devcloud["base"]) / "state" / "vms" / vm_id / "serial.log"
    deadline = time.monotonic() + 240
    while b"UCLOUD-GUEST-UP" not in (serial.read_bytes() if serial.exists() else b""):
        assert time.monotonic() < deadline, "the guest never printed its boot marker"
        time.sleep(0.5)

    # Running `make up` again is harmless: same processes, same credentials.
    pids_before = sorted(p.read_text() for p in (Path(devcloud["base"]) / "pids").glob("*.pid"))
    again = make("up", env)
    assert again.returncode == 0, again.stderr
    assert printed_credentials(again.stdout) == creds
    assert sorted(p.read_text() for p in (Path(devcloud["base"]) / "pids").glob("*.pid")) == pids_before
    status = make("status", env)
    assert status.stdout.count("running, pid") == 4, status.stdout

    deleted = requests.post(f"{api}/vm/delete", json={**creds, "vmid": vm_id}, timeout=10)
    assert deleted.status_code == 202, deleted.text
    wait_status(api, creds, vm_id, "gone")

    # A last VM is left running on purpose: `make down` must stop its QEMU too.
    second = requests.post(f"{api}/vm/create", json={**creds, "specs": {"cpu": 1, "ram": "256MiB",
                                                                         "hdd": "1GB", "ssd": 0}}, timeout=10)
    assert second.status_code == 201, second.text
    wait_status(api, creds, second.json()["id"], "RUNNING")
    assert processes_mentioning(str(devcloud["base"])), "no dev cloud process found while it runs"
    base = Path(devcloud["base"])
    started = {int(p.read_text()) for p in (base / "pids").glob("*.pid")}
    started |= {int(p.read_text()) for p in (base / "state" / "vms").glob("*/qemu.pid")}
    ours = family(started) | {pid for pid, _ in processes_mentioning(str(base))}
    assert len(ours) >= 5, ours  # etcd, api (+ workers), scheduler, vm, one QEMU

    down = make("down", env, timeout=120)
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 30
    while processes_mentioning(str(devcloud["base"])) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_mentioning(str(devcloud["base"])) == []
    assert [pid for pid in ours if alive(pid)] == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{api}/healthz", timeout=2)
    # Data is kept by `down`.
    assert (Path(devcloud["base"]) / "credentials.json").exists()
    assert json.loads((Path(devcloud["base"]) / "credentials.json").read_text())["seed"] == creds["seed"]
