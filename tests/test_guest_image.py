"""The guest image: built from Debian packages, boots from its own disk under real QEMU (TCG),
prints its markers, brings up its NIC, offers a shell on the serial console and powers
off on the ACPI power button."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from ucloud_common.config import load_settings
from ucloud_common.storage.file import FileBackend
from ucloud_vm import process
from ucloud_vm.paths import VmPaths
from ucloud_vm.qemu_argv import NicArgs, QemuConfig, build_argv
from ucloud_vm.qmp import QMP, run_command

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "build-guest-image.sh"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_image_is_a_bootable_fat_disk(guest_image: Path) -> None:
    data = guest_image.read_bytes()[:512]
    assert data[510:512] == b"\x55\xaa"  # a boot sector: SeaBIOS boots the disk itself
    listing = subprocess.run(["mdir", "-a", "-b", "-i", str(guest_image), "::/"], check=True, capture_output=True,
                             text=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout
    for name in ("LDLINUX.SYS", "VMLINUZ", "INITRD.IMG", "SYSLINUX.CFG"):
        assert name in listing.upper()


def test_build_is_cached(guest_image: Path) -> None:
    before = guest_image.stat().st_mtime_ns
    done = subprocess.run([str(SCRIPT)], check=True, capture_output=True, text=True)
    assert done.stdout.strip() == str(guest_image)
    assert guest_image.stat().st_mtime_ns == before


@pytest.fixture
def booted_guest(guest_image: Path) -> Iterator[tuple[VmPaths, process.QemuProcess]]:
    base = Path(tempfile.mkdtemp(prefix="ucg-", dir="/tmp"))  # unix socket paths must stay short
    settings = load_settings(env={}, env_file=base / "no.env", state_dir=str(base / "s"),
                             image_dir=str(base / "i"))
    backend = FileBackend(settings)
    backend.import_image("ucloud-guest", str(guest_image))
    disk = backend.create_disk("guest-test", "boot", 256 * 1024 * 1024, "ucloud-guest")
    paths = VmPaths.of(settings.state_dir, "guest-test")
    nic = NicArgs(netdev="user,id=net0,restrict=on", netdev_id="net0", mac="52:54:00:aa:bb:01")
    argv = build_argv(QemuConfig(vm_id="guest-test", cpu=1, ram=128 * 1024 * 1024, disks=[disk],
                                 paths=paths, nics=[nic]))
    qemu = process.start(argv, paths)
    try:
        yield paths, qemu
    finally:
        process.kill_verified("guest-test", qemu.pid)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_guest_boots_from_disk_with_shell_and_acpi_poweroff(booted_guest) -> None:
    paths, qemu = booted_guest
    assert run_command(str(paths.qmp), "query-status", wait=5)["status"] == "running"
    log = wait_for(lambda: "UCLOUD-GUEST-UP" in (text := paths.serial_log.read_text(errors="replace")) and text,
                   60, "the guest's boot marker")
    assert "SYSLINUX" in log  # booted by the bootloader on its disk, not by -kernel
    assert "UCLOUD-GUEST-NIC eth0 52:54:00:aa:bb:01" in log
    assert "insmod:" not in log  # every module of the list loaded

    # A shell on the serial console: ask it something only a shell can answer.
    with socket.socket(socket.AF_UNIX) as console:
        console.connect(str(paths.serial_sock))
        console.settimeout(20)
        console.sendall(b"\necho answer-$((6*7)) $(ip -o link show eth0)\n")
        received = b""
        while not (b"answer-42 " in received and b"LOWER_UP" in received.split(b"answer-42 ", 1)[1]):
            chunk = console.recv(4096)
            assert chunk, f"console closed; got {received!r}"
            received += chunk

    # The ACPI power button (QMP system_powerdown) makes the guest power off, and QEMU exit.
    with QMP(str(paths.events)).connect() as events:
        run_command(str(paths.qmp), "system_powerdown")
        while True:
            event = events.next_event(timeout=30)
            if event["event"] == "SHUTDOWN":
                break
        assert event["data"] == {"guest": True, "reason": "guest-shutdown"}
    assert process.wait_gone(qemu.pid, 10)
    assert "UCLOUD-GUEST-POWEROFF acpi" in paths.serial_log.read_text(errors="replace")
