"""QEMU processes: start one so that it outlives the daemon, find it again, stop it.

QEMU runs in its own session (``start_new_session``), so a daemon restart or crash
(or systemd's ``KillMode=process``) leaves it running; its stderr goes to the VM's
``qemu.log``. It is found again from its pid file, and a pid is only ever believed
(adopted, signalled) after ``/proc/<pid>/cmdline`` shows it is QEMU with
``-name guest=<that vm id>``: a pid file can be stale and its pid reused.

Death is noticed through a pidfd (``os.pidfd_open``: readable the instant the
process exits, for children and adopted processes alike). For a child the exit
status is then collected (``waitpid``), which also reaps it; an adopted process is
reaped by init, and its exit status is not knowable here.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .paths import VmPaths
from .qemu_argv import argv_vm_id


class StartError(Exception):
    """QEMU did not start; the message carries its own last words."""


@dataclass(frozen=True)
class QemuProcess:
    """A running QEMU of VM ``vm_id``; ``child`` if this daemon process started it."""

    vm_id: str
    pid: int
    child: bool


def read_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_qemu_of(pid: int, vm_id: str) -> bool:
    """True if ``pid`` is alive and is the QEMU of ``vm_id`` (not a reused pid)."""
    cmdline = read_cmdline(pid)
    return bool(cmdline) and "qemu" in os.path.basename(cmdline[0]) and argv_vm_id(cmdline) == vm_id \
        and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def read_pidfile(paths: VmPaths) -> int | None:
    try:
        return int(paths.pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def find(paths: VmPaths) -> QemuProcess | None:
    """The running QEMU of this VM according to its pid file, verified; else None."""
    pid = read_pidfile(paths)
    if pid is not None and is_qemu_of(pid, paths.vm_id):
        return QemuProcess(paths.vm_id, pid, child=False)
    return None


def start(argv: Sequence[str], paths: VmPaths, env: dict[str, str] | None = None,
          pass_fds: Sequence[int] = ()) -> QemuProcess:
    """Start QEMU with ``argv`` in its own session; returns once its QMP socket accepts.

    ``pass_fds`` (e.g. tap descriptors) are inherited by QEMU under the same numbers.

    Raises :class:`StartError` (with the end of ``qemu.log``) if QEMU exits first.
    """
    paths.dir.mkdir(parents=True, exist_ok=True)
    paths.check_socket_paths()
    for stale in (paths.pidfile, paths.qmp, paths.events, paths.serial_sock):
        stale.unlink(missing_ok=True)
    with open(paths.qemu_log, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting QEMU\n".encode())
    # posix_spawn rather than Popen: nothing in this process keeps (and later reaps) the
    # child behind the watcher's back; setsid puts QEMU in its own session.
    pid = os.posix_spawnp(argv[0], list(argv), dict(os.environ if env is None else env), setsid=True,
                          file_actions=[
                              (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                              (os.POSIX_SPAWN_OPEN, 1, str(paths.qemu_log), os.O_WRONLY | os.O_APPEND, 0),
                              (os.POSIX_SPAWN_DUP2, 1, 2),
                              # dup2 onto itself clears close-on-exec in the child only (glibc >= 2.29)
                              *((os.POSIX_SPAWN_DUP2, fd, fd) for fd in pass_fds),
                          ])
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            raise StartError(f"QEMU exited at start ({describe_status(status)}): {log_tail(paths)}")
        if paths.qmp.exists() and paths.events.exists():
            return QemuProcess(paths.vm_id, pid, child=True)
        time.sleep(0.005)
    kill(pid)
    wait_gone(pid, 5.0)
    raise StartError(f"QEMU did not open its QMP socket within 30 s: {log_tail(paths)}")


def log_tail(paths: VmPaths, lines: int = 3) -> str:
    try:
        text = paths.qemu_log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no qemu.log)"
    tail = [line for line in text if not line.startswith("--- ")][-lines:]
    return " | ".join(tail) or "(qemu.log is empty)"


def describe_status(status: int) -> str:
    """A waitpid status in words: "exit status 1", "killed by signal 9 (SIGKILL)"."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"killed by signal {sig} ({name})"
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    return f"wait status {status}"


def reap(pid: int) -> str | None:
    """Collect a child's exit status (in words) if it is ours and has exited; else None."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return describe_status(status) if got else None


def reap_wait(pid: int, timeout: float) -> str | None:
    """Like :func:`reap`, waiting up to ``timeout`` for the child to finish exiting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if got:
            return describe_status(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited (reaping it if it is our child); True if it did."""
    deadline = time.monotonic() + timeout
    while True:
        reap(pid)
        if not alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def kill_verified(vm_id: str, pid: int, timeout: float = 5.0) -> bool:
    """SIGKILL ``pid`` only if it is still the QEMU of ``vm_id``; True once it is gone."""
    if is_qemu_of(pid, vm_id):
        kill(pid)
    return wait_gone(pid, timeout)
