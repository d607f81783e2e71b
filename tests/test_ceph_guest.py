"""A real guest on a real RBD disk: bare QEMU (TCG) boots the ucloud guest image from an RBD
clone of it, a write the guest makes to its disk is what Python then reads from the RBD
image, and once the disk's clients are blocklisted the guest can no longer write to it
while a new client (the VM's next QEMU) can."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import rbd

from ucloud_common.config import Settings
from ucloud_common.storage import Disk
from ucloud_common.storage.rbd import RbdBackend
from ucloud_vm.paths import VmPaths
from ucloud_vm.qemu_argv import QemuConfig, build_argv

MIB = 1024 * 1024
BOOT_WAIT = 240  # seconds: TCG on a shared, busy machine
OFFSET = 48 * MIB  # past the 32 MiB guest image: a part of the disk only the clone has
BLOCK = 4096


class Guest:
    """A bare QEMU with one virtio disk and its serial console on a unix socket."""

    def __init__(self, drive: str, workdir: Path) -> None:
        paths = VmPaths(workdir)  # the vm daemon's own command line, with the RBD drive it would give
        self.log, sock = paths.serial_log, paths.serial_sock
        argv = build_argv(QemuConfig(vm_id="bare-rbd-guest", cpu=1, ram=128 * MIB, paths=paths,
                                     disks=[Disk("bare-rbd-guest", "boot", 0, drive, "raw")]))
        self.output = open(workdir / "qemu.out", "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT)
        self.wait_for("UCLOUD-GUEST-UP", BOOT_WAIT)
        self.console = socket.socket(socket.AF_UNIX)
        self.console.connect(str(sock))
        self.console.settimeout(60)

    def serial(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, marker: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.serial():
            if self.proc.poll() is not None:
                raise AssertionError(f"QEMU exited ({self.proc.returncode}): "
                                     f"{(self.log.parent / 'qemu.out').read_text(errors='replace')[-800:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {marker!r} after {timeout}s; serial: {self.serial()[-800:]}")
            time.sleep(0.2)

    def shell(self, command: str) -> tuple[int, str]:
        """Run ``command`` in the guest's serial shell: its exit status and output."""
        tag = uuid.uuid4().hex[:8]
        # the marker is computed by the guest's shell, so the echoed command line never matches it
        self.console.sendall(f"\n{command}; echo END-{tag}-$((1+1))-$?\n".encode())
        received = b""
        pattern = re.compile(rf"END-{tag}-2-(\d+)".encode())
        while not (found := pattern.search(received)):
            chunk = self.console.recv(4096)
            assert chunk, f"console closed; got {received!r}"
            received += chunk
        return int(found.group(1)), received.decode(errors="replace")

    def write_block(self, text: str) -> tuple[int, str]:
        """The guest writes ``text`` to its disk at ``OFFSET``, synchronously."""
        return self.shell(f"echo {text} > /tmp/block; dd if=/tmp/block of=/dev/vda bs={BLOCK} "
                          f"seek={OFFSET // BLOCK} conv=notrunc,fsync")

    def kill(self) -> None:
        # SIGKILL: a QEMU cut off from Ceph may not act on SIGTERM
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.console_close()
        self.output.close()

    def console_close(self) -> None:
        if hasattr(self, "console"):
            self.console.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ucceph-", dir="/tmp"))  # unix socket paths must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_guest_boots_from_an_rbd_clone_writes_to_it_and_is_fenced(
        rbd_settings: Settings, guest_image: Path, workdir: Path) -> None:
    backend = RbdBackend(rbd_settings)
    image, vm_id = f"guest-{uuid.uuid4().hex[:8]}", f"vm-{uuid.uuid4().hex[:8]}"
    guest: Guest | None = None
    try:
        backend.import_image(image, str(guest_image))
        disk = backend.create_disk(vm_id, "boot", 64 * MIB, image)
        assert backend.parent_of(vm_id) == (rbd_settings.rbd_image_pool, image, "base")

        guest = Guest(disk.drive, workdir)
        assert "SYSLINUX" in guest.serial()  # booted by the bootloader on the RBD disk
        status, output = guest.shell("cat /sys/block/vda/size")
        assert status == 0 and str(64 * MIB // 512) in output  # the clone, at the size asked for

        status, output = guest.write_block("WRITTEN-BY-THE-GUEST")
        assert status == 0, output
        ioctx = backend._ioctx("boot")
        assert disk.drive.startswith(f"rbd:{rbd_settings.rbd_hdd_pool}/{vm_id}-boot:")  # what QEMU opened
        with rbd.Image(ioctx, f"{vm_id}-boot", read_only=True) as img:
            assert img.read(OFFSET, 21) == b"WRITTEN-BY-THE-GUEST\n"
        with rbd.Image(ioctx, f"{vm_id}-boot") as img:
            owners = [o["owner"] for o in img.lock_get_owners()]
        assert len(owners) == 1  # the guest's QEMU holds the exclusive lock

        assert backend.fence_vms([vm_id]) == owners  # blocklisted: the QEMU and only it
        with rbd.Image(ioctx, f"{vm_id}-boot") as img:  # the VM's next QEMU, on another host
            img.write(b"THE-NEW-OWNER-WROTE", OFFSET)
            img.flush()
        status, output = guest.write_block("FENCED-GUEST-WRITES")
        assert status != 0 and "Input/output error" in output  # the guest sees its disk refuse the write
        with rbd.Image(ioctx, f"{vm_id}-boot", read_only=True) as img:
            assert img.read(OFFSET, 19) == b"THE-NEW-OWNER-WROTE"
    finally:
        if guest is not None:
            guest.kill()  # QEMU before the disk, and before Ceph
        backend.delete_disks(vm_id)
        backend.close()
