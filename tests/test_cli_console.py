"""`ucloud vm console`: where the console is not (one clear line), and a real guest's serial
console through a real QEMU started the way the vm daemon starts it (same argv, same
runtime paths), driven through the installed `ucloud` script."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from cli_harness import (CLI_EXE, api_url, base_env, cli, home, one_error_line,  # noqa: F401 (fixtures)
                         set_status, user)

from ucloud_common.config import load_settings
from ucloud_common.models import VMStatus
from ucloud_common.storage.file import FileBackend
from ucloud_common.store import Store
from ucloud_vm import process
from ucloud_vm.paths import VmPaths
from ucloud_vm.qemu_argv import QemuConfig, build_argv


def test_console_of_a_vm_on_another_host(cli, store: Store, tmp_path: Path):
    vm_id = cli("vm", "create").stdout.strip()
    line = one_error_line(cli("vm", "console", vm_id, "--state-dir", str(tmp_path)))
    assert line == f"ucloud: VM {vm_id} is REQUESTED_NEW and not placed on a host yet: it has no console"

    set_status(store, vm_id, VMStatus.RUNNING, hostname="/v1/host/node9")
    line = one_error_line(cli("vm", "console", vm_id, "--state-dir", str(tmp_path)))
    assert f"VM {vm_id} runs on host node9" in line and f"run `ucloud vm console {vm_id}` on node9" in line
    assert str(tmp_path) in line


def test_console_of_another_users_vm_is_404(cli, store: Store, tmp_path: Path):
    from ucloud_common import accounts

    _, seed = accounts.create_user(store, "acme", "bob")
    vm_id = cli("vm", "create", UCLOUD_NAME="bob", UCLOUD_SEED=seed).stdout.strip()
    line = one_error_line(cli("vm", "console", vm_id, "--state-dir", str(tmp_path)))
    assert "HTTP 404" in line


@pytest.fixture
def guest_for(guest_image: Path) -> Iterator:
    """Start a real guest for a given VM id under a short state dir; killed by pid afterwards."""
    base = Path(tempfile.mkdtemp(prefix="ucc-", dir="/tmp"))  # unix socket paths must stay short
    started: list[tuple[str, int]] = []

    def start(vm_id: str) -> VmPaths:
        settings = load_settings(env={}, env_file=base / "no.env", state_dir=str(base / "s"),
                                 image_dir=str(base / "i"))
        backend = FileBackend(settings)
        backend.import_image("ucloud-guest", str(guest_image))
        disk = backend.create_disk(vm_id, "boot", 256 * 2**20, "ucloud-guest")
        paths = VmPaths.of(settings.state_dir, vm_id)
        argv = build_argv(QemuConfig(vm_id=vm_id, cpu=1, ram=128 * 2**20, disks=[disk], paths=paths))
        started.append((vm_id, process.start(argv, paths).pid))
        return paths

    try:
        yield start
    finally:
        for vm_id, pid in started:
            process.kill_verified(vm_id, pid)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_console_attaches_to_a_real_guest(cli, store: Store, guest_for, api_url: str, base_env, user):
    vm_id = cli("vm", "create").stdout.strip()
    paths = guest_for(vm_id)
    set_status(store, vm_id, VMStatus.RUNNING, hostname="/v1/host/here")
    deadline = time.monotonic() + 240
    while b"UCLOUD-GUEST-UP" not in (paths.serial_log.read_bytes() if paths.serial_log.exists() else b""):
        assert time.monotonic() < deadline, "the guest did not boot"
        time.sleep(0.5)

    env = {**os.environ, **base_env, "UCLOUD_API_URL": api_url, "UCLOUD_REALM": user["realm"],
           "UCLOUD_NAME": user["name"], "UCLOUD_SEED": user["seed"]}
    state_dir = str(paths.dir.parent.parent)
    # stdin is a pipe: the input is sent, and the output printed until the guest is quiet for --idle s
    done = subprocess.run([str(CLI_EXE), "vm", "console", vm_id, "--state-dir", state_dir, "--idle", "5"],
                          input=b"\necho answer-$((6*7))\n", env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert b"answer-42" in done.stdout  # only a shell in the guest computes this

    done = subprocess.run([str(CLI_EXE), "vm", "console", vm_id, "--state-dir", state_dir, "--log"],
                          env=env, capture_output=True, timeout=60)
    assert done.returncode == 0 and b"UCLOUD-GUEST-UP" in done.stdout and b"answer-42" in done.stdout

    # On a terminal: raw mode, keys go to the guest, Ctrl-] detaches (and the terminal is restored).
    pid, fd = pty.fork()
    if pid == 0:  # the child: the console on the pty
        os.execve(str(CLI_EXE), [str(CLI_EXE), "vm", "console", vm_id, "--state-dir", state_dir], env)
    try:
        seen = read_until(fd, b"Ctrl-] detaches", 30)
        os.write(fd, b"echo tty-$((6*7))\r")
        seen += read_until(fd, b"tty-42", 180)
        os.write(fd, b"\x1d")
        seen += read_until(fd, b"detached", 30)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, seen
    finally:
        os.close(fd)
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    received = b""
    deadline = time.monotonic() + timeout
    while marker not in received:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} in {received!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            assert chunk, f"the console ended before {marker!r}: {received!r}"
            received += chunk
    return received
