"""A small synchronous QMP client: JSON lines over a QEMU monitor's unix socket.

Why not ``qemu.qmp``: that library is asyncio, while the vm daemon is threads (the
reconcile workers, and one watcher thread per VM that blocks on its QMP socket so
it learns of QEMU's death the instant the socket closes). A blocking socket in a
thread is the natural shape for that, and QMP is simple enough (a greeting,
``qmp_capabilities``, then ``{"execute": ...}`` -> ``{"return": ...}`` or
``{"error": ...}``, with asynchronous ``{"event": ...}`` lines in between) that
~100 lines cover it with no event loop to bridge.

Each VM's QEMU has two QMP sockets: ``events.sock``, held open by the daemon's
watcher for the VM's whole life, and ``qmp.sock`` for short command sessions (the
daemon's own commands, tests, an operator with ``socat``). A QMP socket serves one
client at a time, so the long-lived watcher must not sit on the command socket.
"""

from __future__ import annotations

import json
import socket
import time
from collections import deque
from typing import Any


class QMPError(Exception):
    """The monitor answered with an error, or could not be reached or understood."""


class QMPClosed(QMPError):
    """The socket closed: QEMU exited (or closed the monitor)."""


class QMP:
    """One QMP session. ``connect`` does the greeting and capabilities negotiation."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buffer = b""
        self.events: deque[dict[str, Any]] = deque(maxlen=1000)  # events read while waiting for replies
        self.greeting: dict[str, Any] = {}

    # -- connection ---------------------------------------------------------------------

    def connect(self, wait: float = 0.0) -> "QMP":
        """Connect (retrying for up to ``wait`` seconds while the socket is not there yet)."""
        deadline = time.monotonic() + wait
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
                break
            except OSError as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise QMPError(f"cannot connect to QMP socket {self.path}: {exc}") from None
                time.sleep(0.01)
        self.sock = sock
        try:
            self.greeting = self._read()
            if "QMP" not in self.greeting:
                raise QMPError(f"{self.path} is not a QMP monitor: {self.greeting!r}")
            self.execute("qmp_capabilities")
        except Exception:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def __enter__(self) -> "QMP":
        return self if self.sock else self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        if self.sock is None:
            raise QMPClosed("not connected")
        return self.sock.fileno()

    # -- reading ------------------------------------------------------------------------

    def _read(self, timeout: float | None = -1.0) -> dict[str, Any]:
        """The next JSON message (reply or event). ``timeout`` None blocks; -1 uses the default."""
        if self.sock is None:
            raise QMPClosed("not connected")
        while b"\n" not in self._buffer:
            self.sock.settimeout(self.timeout if timeout == -1.0 else timeout)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise
            except OSError as exc:
                raise QMPClosed(f"QMP socket {self.path}: {exc}") from None
            if not chunk:
                raise QMPClosed(f"QMP socket {self.path} closed")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            raise QMPError(f"QMP sent something that is not JSON: {line[:200]!r}") from None
        if not isinstance(message, dict):
            raise QMPError(f"QMP sent {message!r}")
        return message

    def next_event(self, timeout: float | None = None) -> dict[str, Any]:
        """The next event (queued ones first); blocks up to ``timeout`` (None: forever).

        Raises ``socket.timeout`` when none came, :class:`QMPClosed` when QEMU went away.
        """
        if self.events:
            return self.events.popleft()
        while True:
            message = self._read(timeout)
            if "event" in message:
                return message

    # -- commands -----------------------------------------------------------------------

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run ``command``; its ``return`` value, or :class:`QMPError` with QEMU's message."""
        if self.sock is None:
            raise QMPClosed("not connected")
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        try:
            self.sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            raise QMPClosed(f"QMP socket {self.path}: {exc}") from None
        while True:
            try:
                message = self._read()
            except socket.timeout:
                raise QMPError(f"QMP {command}: no answer within {self.timeout}s") from None
            if "event" in message:
                self.events.append(message)
                continue
            if "error" in message:
                error = message["error"]
                raise QMPError(f"QMP {command}: {error.get('class')}: {error.get('desc')}")
            if "return" in message:
                return message["return"]


def run_command(path: str, command: str, arguments: dict[str, Any] | None = None,
                timeout: float = 5.0, wait: float = 0.0) -> Any:
    """Open ``path``, run one command, close: for the daemon's occasional commands."""
    with QMP(path, timeout).connect(wait) as qmp:
        return qmp.execute(command, arguments)
