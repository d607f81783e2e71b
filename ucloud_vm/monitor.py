"""Watching one QEMU: a thread per VM that learns of its death the instant it happens.

The thread holds the VM's ``events.sock`` QMP connection and a pidfd of the QEMU
process and blocks in ``select`` on both: a ``kill -9``, a crash or a guest panic
closes the socket and makes the pidfd readable at once — no polling interval, so
the restart starts within milliseconds (the benchmark measures it). QMP events seen
on the way say *how* it ended: ``SHUTDOWN`` from the guest (it powered itself off),
``GUEST_PANICKED`` (pvpanic), ``SHUTDOWN`` from a signal or a ``quit`` command. For
a QEMU this daemon started, the exit status is collected too ("killed by signal 9").

The watcher reports once, through ``on_exit(vm_id, pid, Exit)``; ``stop()`` ends the
watch without touching QEMU (a daemon shutting down leaves its VMs running).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from typing import Callable

from . import process
from .lifecycle import Exit
from .paths import VmPaths
from .qmp import QMP, QMPClosed, QMPError

log = logging.getLogger(__name__)

ExitCallback = Callable[[str, int, Exit], None]


def describe_exit(events: list[dict], status: str | None, child: bool, log_tail: str) -> Exit:
    """How QEMU ended, from the QMP events seen and its exit status (pure; unit-tested)."""
    names = [e.get("event") for e in events]
    now = time.time()
    if "GUEST_PANICKED" in names:
        return Exit("guest kernel panicked (pvpanic); QEMU exited", time=now)
    shutdown = next((e for e in reversed(events) if e.get("event") == "SHUTDOWN"), None)
    if shutdown is not None:
        data = shutdown.get("data", {})
        reason = data.get("reason", "")
        if data.get("guest") and reason == "guest-shutdown":
            return Exit("guest powered itself off", guest_poweroff=True, time=now)
        if reason == "host-signal":
            return Exit(f"QEMU stopped by a signal ({status or 'exit status unknown'})", time=now)
        if reason == "host-qmp-quit":
            return Exit("QEMU quit by a QMP command", time=now)
        return Exit(f"QEMU shut down ({reason or 'no reason given'})", time=now)
    if status is not None:
        cause = f"QEMU {status}"
        if not status.startswith("killed by signal"):
            cause += f": {log_tail}"
        return Exit(cause, time=now)
    if child:
        return Exit(f"QEMU exited (exit status lost): {log_tail}", time=now)
    return Exit(f"QEMU exited (adopted after a daemon restart, so its exit status is not known here); "
                f"last log lines: {log_tail}", time=now)


class Watcher:
    """Watches one QEMU process; see the module docstring."""

    def __init__(self, vm_id: str, paths: VmPaths, pid: int, child: bool, on_exit: ExitCallback) -> None:
        self.vm_id = vm_id
        self.paths = paths
        self.pid = pid
        self.child = child
        self.on_exit = on_exit
        self.events: list[dict] = []
        self._stop_r, self._stop_w = os.pipe()
        self._stopped = False
        self.thread = threading.Thread(target=self._run, name=f"watch-{vm_id[:8]}", daemon=True)

    def start(self) -> "Watcher":
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (QEMU keeps running)."""
        if not self._stopped:
            self._stopped = True
            os.write(self._stop_w, b"x")
        self.thread.join(5)

    def _run(self) -> None:
        try:
            self._watch()
        except Exception:  # noqa: BLE001 - a watcher must always report or say why it cannot
            log.exception("watcher of VM %s failed", self.vm_id)
        finally:
            os.close(self._stop_r)
            os.close(self._stop_w)

    def _watch(self) -> None:
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._report()
            return
        qmp: QMP | None = None
        try:
            try:
                qmp = QMP(str(self.paths.events), timeout=2.0).connect(wait=2.0)
            except QMPError as exc:
                log.info("VM %s: no QMP event connection (%s); watching the process only", self.vm_id, exc)
                qmp = None
            while True:
                watched: list = [pidfd, self._stop_r] + ([qmp.sock] if qmp and qmp.sock else [])
                readable, _, _ = select.select(watched, [], [])
                if self._stop_r in readable:
                    return  # stop(): QEMU keeps running, nobody is told anything
                if qmp is not None and qmp.sock in readable:
                    try:
                        self.events.append(qmp.next_event(timeout=1.0))
                        while qmp.events:
                            self.events.append(qmp.events.popleft())
                    except (QMPClosed, socket.timeout, QMPError):
                        qmp.close()
                        qmp = None  # QEMU closed the monitor: it is exiting
                    continue
                if pidfd in readable:
                    break
            if qmp is not None:  # read what QEMU said before it went (already buffered)
                try:
                    while True:
                        self.events.append(qmp.next_event(timeout=0.05))
                except (QMPClosed, socket.timeout, QMPError):
                    pass
        finally:
            if qmp is not None:
                qmp.close()
            os.close(pidfd)
        self._report()

    def _report(self) -> None:
        status = process.reap_wait(self.pid, 1.0) if self.child else None
        exit_ = describe_exit(self.events, status, self.child, process.log_tail(self.paths))
        self.on_exit(self.vm_id, self.pid, exit_)
