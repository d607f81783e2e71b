"""``ucloud vm console ID``: attach the terminal to a VM's serial console.

The vm daemon gives each VM's QEMU a serial console on a unix socket,
``<state_dir>/vms/<id>/serial.sock``, and logs all guest output to ``serial.log``
next to it (``ucloud_vm/paths.py``). There is no console proxy in the API, so the
console works on the machine the VM runs on: the CLI first asks the API for the
VM (so only its owner gets this far, and the message can name the VM's host), then
looks for the socket under ``--state-dir`` or, by default, the ``state_dir``
setting and the dev cloud's state dir (``make up``). If there is none it says where
the VM runs and stops.

On a terminal the console is raw (keys go to the guest as typed) and ``Ctrl-]``
detaches. When stdin is not a terminal (``echo 'uname -a' | ucloud vm console ID``)
the input is sent, and the guest's output is printed until it has been quiet for
``--idle`` seconds. QEMU serves one console client at a time: a second attach
waits until the first detaches. ``--log`` prints ``serial.log`` instead (also
for a stopped VM).
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import termios
import time
import tty
from pathlib import Path
from typing import BinaryIO

import click

from ucloud_vm.paths import VmPaths

from .cli_config import dev_credentials_path
from .cli_context import cli_context
from .cli_output import host_of
from .client import ClientError
from .config import ConfigError, load_settings

DETACH = b"\x1d"  # Ctrl-]


class ConsoleError(ClientError):
    """No console to attach to here; the message says why and where to go."""


def candidate_state_dirs(explicit: str | None) -> list[Path]:
    """Where to look for the VM's runtime directory on this machine."""
    if explicit:
        return [Path(explicit)]
    dirs: list[Path] = []
    try:
        dirs.append(Path(load_settings().state_dir))
    except ConfigError:
        pass
    dirs.append(dev_credentials_path(os.environ).parent / "state")
    return list(dict.fromkeys(dirs))


def find_runtime(vm_id: str, dirs: list[Path]) -> VmPaths | None:
    for state_dir in dirs:
        paths = VmPaths.of(state_dir, vm_id)
        if paths.dir.is_dir():
            return paths
    return None


def relay(sock: socket.socket, stdin: BinaryIO, stdout: BinaryIO, interactive: bool, idle: float) -> None:
    """Copy stdin to the socket and the socket to stdout until detach (Ctrl-] on a terminal),
    the guest side closes, or (stdin not a terminal) EOF of stdin plus ``idle`` quiet seconds."""
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "guest")
    stdin_open = True
    try:
        selector.register(stdin.fileno(), selectors.EVENT_READ, "user")
    except (OSError, ValueError, AttributeError):  # no real fd (e.g. an in-memory stream): send it all now
        sock.sendall(stdin.read() or b"")
        stdin_open = False
    last_output = time.monotonic()
    while True:
        timeout = None if stdin_open else max(0.0, idle - (time.monotonic() - last_output))
        ready = selector.select(timeout)
        if not ready and not stdin_open:
            return
        for key, _ in ready:
            if key.data == "guest":
                data = sock.recv(65536)
                if not data:
                    return
                stdout.write(data)
                stdout.flush()
                last_output = time.monotonic()
            else:
                data = os.read(key.fd, 4096)
                if interactive and DETACH in data:
                    sock.sendall(data.split(DETACH, 1)[0])
                    return
                if not data:
                    selector.unregister(key.fd)
                    stdin_open = False
                    last_output = time.monotonic()
                    continue
                sock.sendall(data)


@click.command("console")
@click.argument("vm_id")
@click.option("--state-dir", help="the vm daemon's state_dir on this machine (default: the state_dir "
                                  "setting, then the dev cloud's)")
@click.option("--log", "show_log", is_flag=True, help="print everything the guest printed (serial.log) and exit")
@click.option("--idle", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="stdin not a terminal: exit after its EOF once the guest is quiet this long")
def console_command(vm_id: str, state_dir: str | None, show_log: bool, idle: float) -> None:
    """Attach to a VM's serial console (on the machine it runs on; Ctrl-] detaches)."""
    record = cli_context().client().vm_status(vm_id)  # yours, or a 404 like any other command
    host = host_of(record.get("hostname", ""))
    dirs = candidate_state_dirs(state_dir)
    paths = find_runtime(record["id"], dirs)
    looked = ", ".join(str(d) for d in dirs)
    if paths is None:
        if host == "-":
            raise ConsoleError(f"VM {vm_id} is {record['status']} and not placed on a host yet: it has no console")
        raise ConsoleError(f"VM {vm_id} runs on host {host}; its console is not on this machine (looked under "
                           f"{looked}): run `ucloud vm console {vm_id}` on {host}, or give --state-dir")
    if show_log:
        try:
            data = paths.serial_log.read_bytes()
        except FileNotFoundError:
            raise ConsoleError(f"VM {vm_id} has no console log yet ({paths.serial_log})") from None
        out = sys.stdout.buffer
        out.write(data)
        out.flush()
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(paths.serial_sock))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise ConsoleError(f"VM {vm_id} is {record['status']}: its QEMU is not running, so there is no console "
                           f"(see `ucloud vm console {vm_id} --log` for what it printed)") from None
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    interactive = _isatty(stdin)
    saved = None
    try:
        if interactive:
            click.echo(f"attached to VM {vm_id} on {host}; Ctrl-] detaches", err=True)
            saved = termios.tcgetattr(stdin.fileno())
            tty.setraw(stdin.fileno())
        relay(sock, stdin, stdout, interactive, idle)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin.fileno(), termios.TCSADRAIN, saved)
            sys.stderr.write("\r\ndetached\r\n")
        sock.close()


def _isatty(stream: BinaryIO) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
