"""The host watchdog: a tiny separate process that kills the host's VMs if the daemon stops
feeding it — the self-fencing that still works when ``ucloud-vm`` itself is frozen
(SIGSTOP), wedged or dead, as Proxmox's watchdog-mux does for its HA stack.

The daemon feeds it by writing a deadline (``time.monotonic()`` seconds: one clock for
every process on the host) to ``<state_dir>/watchdog/deadline`` after each successful
lease renewal: the moment by which the VMs must be dead unless the lease is renewed
again. When that moment passes, the watchdog SIGKILLs every QEMU listed by a pid file
under ``<state_dir>/vms/`` (each pid checked against its cmdline first), says so on
stderr (the daemon's log), and exits: the daemon starts a new watchdog when it has a
live lease again. Removing the deadline file disarms it (it exits at once).

Run as ``python -m ucloud_vm.watchdog STATE_DIR``; the daemon starts it (in its own
session, so it outlives the daemon) and keeps exactly one per state dir via its pid file.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from . import process
from .paths import VmPaths, local_vm_ids

POLL = 0.05  # seconds between looks at the deadline


def watchdog_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "watchdog"


def deadline_file(state_dir: str | Path) -> Path:
    return watchdog_dir(state_dir) / "deadline"


def pid_file(state_dir: str | Path) -> Path:
    return watchdog_dir(state_dir) / "watchdog.pid"


def feed(state_dir: str | Path, deadline: float) -> None:
    """Tell the watchdog the new deadline (atomically: it never reads half a number)."""
    path = deadline_file(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".deadline.{os.getpid()}")
    tmp.write_text(f"{deadline:.3f}\n")
    os.replace(tmp, path)


def disarm(state_dir: str | Path) -> None:
    deadline_file(state_dir).unlink(missing_ok=True)


def read_deadline(state_dir: str | Path) -> float | None:
    try:
        return float(deadline_file(state_dir).read_text().strip())
    except (OSError, ValueError):
        return None


def running_pid(state_dir: str | Path) -> int | None:
    """The pid of this state dir's watchdog, if it runs."""
    try:
        pid = int(pid_file(state_dir).read_text().strip())
    except (OSError, ValueError):
        return None
    cmdline = process.read_cmdline(pid)
    if "ucloud_vm.watchdog" in cmdline and str(Path(state_dir).resolve()) in cmdline and process.alive(pid):
        return pid
    return None


def ensure_running(state_dir: str | Path) -> int:
    """Start the watchdog for ``state_dir`` unless one runs; its pid."""
    pid = running_pid(state_dir)
    if pid is not None:
        return pid
    try:
        process.reap(int(pid_file(state_dir).read_text().strip()))  # an exited one we started
    except (OSError, ValueError):
        pass
    watchdog_dir(state_dir).mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ucloud_vm.watchdog", str(Path(state_dir).resolve())]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    pid = os.posix_spawn(sys.executable, argv, env, setsid=True,
                         file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)])
    pid_file(state_dir).write_text(f"{pid}\n")
    # posix_spawn returns while the kernel is still setting up the new program, when its
    # cmdline reads empty; wait for it, so the next look finds this watchdog, not none.
    deadline = time.monotonic() + 2.0
    while running_pid(state_dir) != pid and process.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.001)
    return pid


def fence_all(state_dir: str | Path) -> list[str]:
    """SIGKILL every VM's QEMU under ``state_dir`` (verified); the ids of those killed."""
    killed = []
    for vm_id in local_vm_ids(state_dir):
        found = process.find(VmPaths.of(state_dir, vm_id))
        if found is not None:
            process.kill(found.pid)
            killed.append(f"{vm_id} (pid {found.pid})")
    return killed


def say(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} ucloud-vm-watchdog[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def run(state_dir: str) -> int:
    """Watch the deadline until it passes (fence, exit 1) or is removed (exit 0)."""
    say(f"watching {deadline_file(state_dir)}")
    while True:
        deadline = read_deadline(state_dir)
        if deadline is None:
            say("disarmed (no deadline); exiting")
            return 0
        if time.monotonic() >= deadline:
            late = time.monotonic() - deadline
            killed = fence_all(state_dir)
            disarm(state_dir)
            say(f"FENCING: ucloud-vm did not renew its lease in time (deadline passed {late:.2f}s ago); "
                f"killed {len(killed)} VM(s): {', '.join(killed) or 'none'}")
            return 1
        time.sleep(POLL)


def main() -> None:
    if len(sys.argv) != 2:
        print("usage: python -m ucloud_vm.watchdog STATE_DIR", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(run(sys.argv[1]))


if __name__ == "__main__":
    main()
