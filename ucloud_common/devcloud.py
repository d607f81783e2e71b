"""The one-box dev cloud behind ``make up`` / ``make down`` / ``make status`` / ``make clean``.

Starts, in the background and each with a pid file and a log file under ``var/devcloud/``:
a private etcd (data kept across ``down``/``up``), ``ucloud-api`` (gunicorn), one
``ucloud-scheduler`` and one ``ucloud-vm`` host; waits until they are healthy; creates a
dev user once (its credentials are kept in ``var/devcloud/credentials.json``) and prints
how to use the cloud. Running ``up`` twice is harmless: what runs is left alone.
Everything is stopped by the pid this module recorded (after checking that pid is still
the process it started), never by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .config import PROJECT_DIR
from .etcd_process import EtcdMember

BASE = Path(os.environ.get("UCLOUD_DEV_DIR") or PROJECT_DIR / "var" / "devcloud")
LOGS = BASE / "logs"
PIDS = BASE / "pids"
STATE = BASE / "state"
CREDENTIALS = BASE / "credentials.json"
VENV_BIN = Path(sys.executable).parent
HOSTNAME = "devhost"
ETCD_PORT = int(os.environ.get("UCLOUD_DEV_ETCD_PORT", "2379"))
SCHEDULER_METRICS = os.environ.get("UCLOUD_SCHEDULER_METRICS_BIND", "127.0.0.1:9101")
VM_METRICS = os.environ.get("UCLOUD_VM_METRICS_BIND", "127.0.0.1:9102")


def api_bind() -> str:
    return os.environ.get("UCLOUD_API_BIND", "127.0.0.1:8080")


def api_url() -> str:
    host, _, port = api_bind().rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{host}:{port}"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "UCLOUD_ETCD_ENDPOINTS": f"127.0.0.1:{ETCD_PORT}",
        "UCLOUD_API_BIND": api_bind(),
        "UCLOUD_STATE_DIR": str(STATE),
        "UCLOUD_IMAGE_DIR": str(STATE / "images"),
        "UCLOUD_HOST_NAME": HOSTNAME,
        "UCLOUD_HOST_LEASE_TTL": env.get("UCLOUD_HOST_LEASE_TTL", "10"),
        "UCLOUD_SCHEDULER_METRICS_BIND": SCHEDULER_METRICS,
        "UCLOUD_VM_METRICS_BIND": VM_METRICS,
    })
    return env


@dataclass(frozen=True)
class Component:
    """One background process of the dev cloud."""

    name: str
    argv: tuple[str, ...]
    marker: str  # a word that must appear in /proc/<pid>/cmdline for the pid to be ours

    @property
    def pid_file(self) -> Path:
        return PIDS / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return LOGS / f"{self.name}.log"

    def pid(self) -> int | None:
        """The recorded pid if that process is alive and still ours."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            return None
        return pid if self.marker in cmdline else None

    def start(self) -> int:
        running = self.pid()
        if running:
            return running
        LOGS.mkdir(parents=True, exist_ok=True)
        PIDS.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(list(self.argv), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=child_env(), cwd=PROJECT_DIR,
                                    start_new_session=True)
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc.pid

    def stop(self, timeout: float = 20.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() == pid:
            time.sleep(0.1)
        if self.pid() == pid:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True


def etcd_member() -> EtcdMember:
    return EtcdMember(name="devcloud", data_dir=BASE / "etcd", client_port=ETCD_PORT,
                      peer_port=ETCD_PORT + 1, log_path=LOGS / "etcd.log", token="ucloud-devcloud")


def components() -> list[Component]:
    etcd = etcd_member()
    return [
        Component("etcd", tuple(etcd.argv()), "--name devcloud"),
        Component("api", (str(VENV_BIN / "ucloud-api"),), "ucloud-api"),
        Component("scheduler", (str(VENV_BIN / "ucloud-scheduler"),), "ucloud-scheduler"),
        Component("vm", (str(VENV_BIN / "ucloud-vm"), "--hostname", HOSTNAME), "ucloud-vm"),
    ]


def _wait(what: str, check, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise SystemExit(f"make up: {what} did not become healthy within {timeout:.0f}s; see {log}")


def _healthz() -> bool:
    with urllib.request.urlopen(api_url() + "/healthz", timeout=2) as response:
        return response.status == 200


def _store():
    from .store import Store

    return Store([f"127.0.0.1:{ETCD_PORT}"], timeout=3, retry_for=3)


def dev_user() -> dict[str, str]:
    """The dev user's credentials: created once (an admin, since on a one-box cloud the one
    user is also the operator), then read back from ``credentials.json``. If that file was
    lost while the data was kept, the old account is replaced (its seed cannot be recovered)."""
    if CREDENTIALS.exists():
        return json.loads(CREDENTIALS.read_text())
    from .accounts import UserExists, create_user, user_key

    with _store() as store:
        try:
            _, seed = create_user(store, "dev", "dev", admin=True)
        except UserExists:
            entry = store.get(user_key("dev", "dev"))
            if entry is not None:
                store.delete(entry.key, entry.mod_revision)
            _, seed = create_user(store, "dev", "dev", admin=True)
    creds = {"api_url": api_url(), "realm": "dev", "name": "dev", "seed": seed}
    BASE.mkdir(parents=True, exist_ok=True)
    fd = os.open(CREDENTIALS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(creds, out)
    return creds


def build_guest_image() -> None:
    """Build the default guest image once (minutes on the first run, a no-op after)."""
    from ucloud_vm.guest_image import BUILT_IMAGE, build

    if not BUILT_IMAGE.exists():
        print("  building the guest image from Debian packages (first run only) ...", flush=True)
    print(f"  guest image {build()}")


def up() -> None:
    build_guest_image()
    for comp in components():
        was = comp.pid()
        pid = comp.start()
        print(f"  {comp.name:<10} {'running' if was else 'started'} (pid {pid}, log {comp.log_file})")
        if comp.name == "etcd":
            _wait("etcd", lambda: _store().revision() > 0, 30, comp.log_file)
        if comp.name == "api":
            _wait("ucloud-api", _healthz, 60, comp.log_file)
    with _store() as store:
        _wait(f"ucloud-vm host {HOSTNAME}", lambda: store.get(f"/v1/alive/{HOSTNAME}") is not None, 60,
              LOGS / "vm.log")
    creds = dev_user()
    body = json.dumps({"name": creds["name"], "realm": creds["realm"], "seed": creds["seed"],
                       "specs": {"cpu": 1, "ram": "256MiB", "hdd": "1GB", "ssd": 0}})
    print(f"""
ucloud dev cloud is up.
  API          {api_url()}   (docs: {api_url()}/docs)
  credentials  realm={creds['realm']} name={creds['name']} seed={creds['seed']}
               (kept in {CREDENTIALS})
  metrics      {api_url()}/metrics  http://{SCHEDULER_METRICS}/metrics  http://{VM_METRICS}/metrics
  logs         {LOGS}/
  stop         make down      (keeps data)   |   make clean (also removes it)

Create a VM with curl:
  curl -s -X POST {api_url()}/vm/create -H 'Content-Type: application/json' \\
       -d '{body}'

and watch it (use the "id" it returned):
  curl -s '{api_url()}/vm/status?id=VM_ID' -H 'X-Ucloud-Realm: {creds["realm"]}' \\
       -H 'X-Ucloud-Name: {creds["name"]}' -H 'X-Ucloud-Seed: {creds["seed"]}'

or with the CLI (it reads {CREDENTIALS}):
  .venv/bin/ucloud --config {CREDENTIALS} vm create --cpu 1 --ram 256MiB --hdd 1GB --wait
""")


def stop_vms() -> int:
    """Stop the QEMU processes of the dev host (the vm daemon leaves them running on purpose)."""
    stopped = 0
    for pid_file in sorted((STATE / "vms").glob("*/qemu.pid")):
        vm_id = pid_file.parent.name
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if vm_id.encode() not in cmdline:
            continue
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        stopped += 1
    return stopped


def down() -> None:
    comps = {c.name: c for c in components()}
    for name in ("api", "scheduler", "vm"):
        print(f"  {name:<10} {'stopped' if comps[name].stop() else 'not running'}")
    print(f"  {'vms':<10} {stop_vms()} QEMU process(es) stopped")
    print(f"  {'etcd':<10} {'stopped' if comps['etcd'].stop() else 'not running'}")


def status() -> None:
    for comp in components():
        pid = comp.pid()
        print(f"  {comp.name:<10} {'running, pid ' + str(pid) if pid else 'stopped'}  (log {comp.log_file})")


def clean() -> None:
    import shutil

    down()
    shutil.rmtree(BASE, ignore_errors=True)
    print(f"  removed {BASE}")


def main() -> None:
    commands = {"up": up, "down": down, "status": status, "clean": clean}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        raise SystemExit(f"usage: python -m ucloud_common.devcloud {{{'|'.join(commands)}}}")
    commands[sys.argv[1]]()


if __name__ == "__main__":
    main()
