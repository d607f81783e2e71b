"""Where a VM's runtime files live on its host: one directory per VM under the state dir.

``<state_dir>/vms/<vm id>/`` holds the QEMU pid file, the two QMP sockets, the
serial console (a socket to attach to, and a log of everything the guest printed),
QEMU's own stderr log and the daemon's restart history for that VM. The pid file
and the QMP socket are how a restarted daemon finds (adopts) the QEMU processes it
started before (DESIGN.md §3.4). Disks are not here: they belong to the storage
backend.

A unix socket path must fit in 108 bytes; ``check_socket_paths`` says so early
instead of letting QEMU fail with a cryptic message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UNIX_PATH_MAX = 107  # sun_path is 108 bytes, including the terminating NUL


@dataclass(frozen=True)
class VmPaths:
    """The runtime files of one VM."""

    dir: Path

    @classmethod
    def of(cls, state_dir: str | Path, vm_id: str) -> "VmPaths":
        return cls(Path(state_dir) / "vms" / vm_id)

    @property
    def vm_id(self) -> str:
        return self.dir.name

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"  # short command sessions

    @property
    def events(self) -> Path:
        return self.dir / "events.sock"  # held open by the daemon's watcher

    @property
    def serial_sock(self) -> Path:
        return self.dir / "serial.sock"  # attach: socat - UNIX-CONNECT:serial.sock

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"  # everything the guest printed, across restarts

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"  # QEMU's stderr

    @property
    def restarts(self) -> Path:
        return self.dir / "restarts.json"

    def check_socket_paths(self) -> None:
        for path in (self.qmp, self.events, self.serial_sock):
            if len(str(path).encode()) > UNIX_PATH_MAX:
                raise ValueError(f"unix socket path {path} is longer than {UNIX_PATH_MAX} bytes; "
                                 f"use a shorter state_dir")


def vms_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "vms"


def local_vm_ids(state_dir: str | Path) -> list[str]:
    """Every VM that has a runtime directory on this host."""
    root = vms_dir(state_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir())
