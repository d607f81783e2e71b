"""Benchmark of VM disks: provisioning an RBD clone vs a full copy, and guest write throughput
on RBD vs on the local file backend — all in one run, on a private Ceph cluster.

1. Provisioning, for a 1 GiB and a 10 GiB image: the time ``RbdBackend.create_disk`` takes
   to make a VM's boot disk (a copy-on-write clone of the image's snapshot, resized),
   against a full copy of the same snapshot into the VM pool (``rbd.Image.copy``: what a
   backend without clones would do), and the file backend's qcow2 overlay for reference.
   The images are sparse — 1 MiB of data every 64 MiB (1.6 %), so that 10 GiB fit a
   memstore OSD in RAM — which flatters the full copy: with a full image it would copy
   62 times more data. The clone should cost the same for both sizes.
2. Throughput: the ucloud guest image boots under QEMU (TCG) twice, once from an RBD
   clone and once from a file-backend qcow2 overlay, and writes ``--write-mib`` MiB of
   zeroes to its disk with ``dd oflag=direct conv=fsync``, timed from the host (the
   command's round trip on the serial shell, less the round trip of an empty command).

    .venv/bin/python bench/storage.py                  # 1 and 10 GiB, 5 rounds, 128 MiB guest writes
    .venv/bin/python bench/storage.py --sizes 1 --rounds 3 --write-mib 64
    .venv/bin/python bench/storage.py --no-guest       # provisioning only
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rbd  # noqa: E402

from ucloud_common.ceph_process import CephCluster  # noqa: E402
from ucloud_common.config import Settings, load_settings, replace  # noqa: E402
from ucloud_common.storage import Disk  # noqa: E402
from ucloud_common.storage.file import FileBackend  # noqa: E402
from ucloud_common.storage.rbd import FEATURES, SNAPSHOT, RbdBackend  # noqa: E402
from ucloud_vm.paths import VmPaths  # noqa: E402
from ucloud_vm.qemu_argv import QemuConfig, build_argv  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
GIB = 1024 * MIB
STRIDE = 64 * MIB  # one 1 MiB extent of data per stride
BOOT_WAIT = 240.0


def sparse_image(path: Path, size: int) -> Path:
    """A sparse raw file of ``size`` bytes with 1 MiB of data at the start of every stride."""
    block = bytes(range(256)) * (MIB // 256)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in range(0, size, STRIDE):
            f.seek(offset)
            f.write(block)
    return path


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def full_copy(backend: RbdBackend, image: str, name: str) -> None:
    """What a backend without clones does: copy every byte of the image into the VM's pool."""
    with rbd.Image(backend._ioctx("image"), image, snapshot=SNAPSHOT, read_only=True) as src:
        src.copy(backend._ioctx("boot"), name, features=FEATURES)


def provisioning(backend: RbdBackend, files: FileBackend, tmp: Path, sizes: list[int], rounds: int) -> None:
    print(f"{'image':>8}  {'RBD clone':>11}  {'full copy':>11}  {'copy/clone':>10}  {'file overlay':>12}")
    clone_times: dict[int, float] = {}
    for gib in sizes:
        size = gib * GIB
        image = f"bench-{gib}g-{uuid.uuid4().hex[:6]}"
        source = sparse_image(tmp / f"{image}.raw", size)
        backend.import_image(image, str(source))
        files.import_image(image, str(source))
        clone, copy, overlay = [], [], []
        for i in range(rounds):
            vm = f"bench-{gib}g-{i}"
            clone.append(timed(lambda: backend.create_disk(vm, "boot", size, image)))
            copy.append(timed(lambda: full_copy(backend, image, f"{vm}-copy")))
            overlay.append(timed(lambda: files.create_disk(vm, "boot", size, image)))
            with rbd.Image(backend._ioctx("boot"), f"{vm}-copy", read_only=True) as img:  # a real copy
                assert img.read(STRIDE, 16) == bytes(range(16))
            rbd.RBD().remove(backend._ioctx("boot"), f"{vm}-copy")
            backend.delete_disks(vm)
            files.delete_disks(vm)
        c, f, o = statistics.median(clone), statistics.median(copy), statistics.median(overlay)
        clone_times[gib] = c
        print(f"{gib:>5} GiB  {c * 1000:>8.1f} ms  {f * 1000:>8.1f} ms  {f / c:>9.0f}x  {o * 1000:>9.1f} ms")
        source.unlink()
    if len(clone_times) > 1:
        small, large = min(clone_times), max(clone_times)
        print(f"clone time, {large} GiB vs {small} GiB image: {clone_times[large] / clone_times[small]:.2f}x "
              f"(medians of {rounds})")


class Guest:
    """The guest under bare QEMU, with a shell on its serial console."""

    def __init__(self, drive: str, fmt: str, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        paths = VmPaths(workdir)  # the vm daemon's own command line for this disk
        self.log, sock = paths.serial_log, paths.serial_sock
        argv = build_argv(QemuConfig(vm_id="bench-guest", cpu=1, ram=128 * MIB, paths=paths,
                                     disks=[Disk("bench-guest", "boot", 0, drive, fmt)]))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + BOOT_WAIT
        while "UCLOUD-GUEST-UP" not in (self.log.read_text(errors="replace") if self.log.exists() else ""):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"guest did not boot from {drive}")
            time.sleep(0.2)
        self.console = socket.socket(socket.AF_UNIX)
        self.console.connect(str(sock))
        self.console.settimeout(120)

    def shell(self, command: str) -> tuple[int, float]:
        """Run ``command``; its exit status and the seconds until its end marker came back."""
        tag = uuid.uuid4().hex[:8]
        pattern = re.compile(rf"END-{tag}-2-(\d+)".encode())
        received = b""
        start = time.perf_counter()
        self.console.sendall(f"{command}; echo END-{tag}-$((1+1))-$?\n".encode())
        while not (found := pattern.search(received)):
            chunk = self.console.recv(4096)
            if not chunk:
                raise RuntimeError("guest console closed")
            received += chunk
        return int(found.group(1)), time.perf_counter() - start

    def close(self) -> None:
        self.console.close()
        self.proc.terminate()  # QEMU closes its RBD image (and its watch) on SIGTERM
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


def guest_write(drive: str, fmt: str, workdir: Path, write_mib: int) -> float:
    """MiB/s of a sequential direct write of ``write_mib`` MiB inside the guest."""
    guest = Guest(drive, fmt, workdir)
    try:
        guest.shell("true")  # the prompt is up
        empty = min(guest.shell("true")[1] for _ in range(3))
        status, seconds = guest.shell(f"dd if=/dev/zero of=/dev/vda bs=1M count={write_mib} seek=64 "
                                      f"oflag=direct conv=fsync 2>/dev/null")
        if status != 0:
            raise RuntimeError(f"dd in the guest failed ({status})")
        return write_mib / max(seconds - empty, 1e-6)
    finally:
        guest.close()


def throughput(backend: RbdBackend, files: FileBackend, guest_image: Path, workdir: Path, write_mib: int) -> None:
    size = (64 + write_mib + 64) * MIB
    backend.import_image("bench-guest", str(guest_image))
    files.import_image("bench-guest", str(guest_image))
    results = {}
    try:
        disk = backend.create_disk("bench-guest-rbd", "boot", size, "bench-guest")
        results["rbd"] = guest_write(disk.drive, disk.format, workdir / "rbd", write_mib)
        disk = files.create_disk("bench-guest-file", "boot", size, "bench-guest")
        results["file"] = guest_write(disk.drive, disk.format, workdir / "file", write_mib)
    finally:
        backend.delete_disks("bench-guest-rbd")
        files.delete_disks("bench-guest-file")
    print(f"guest sequential write ({write_mib} MiB, dd oflag=direct conv=fsync, TCG): "
          f"RBD {results['rbd']:.1f} MiB/s, file {results['file']:.1f} MiB/s, "
          f"RBD/file {results['rbd'] / results['file']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10", help="image sizes in GiB (comma-separated)")
    parser.add_argument("--rounds", type=int, default=5, help="disks provisioned per size and method (median)")
    parser.add_argument("--write-mib", type=int, default=128, help="MiB the guest writes")
    parser.add_argument("--no-guest", action="store_true", help="skip the guest throughput part")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]

    base = Path(tempfile.mkdtemp(prefix="ucbench-", dir="/tmp"))  # short: unix socket paths
    cluster = CephCluster(base / "ceph")
    try:
        settings: Settings = load_settings(env={}, env_file=base / "no.env", state_dir=str(base / "state"),
                                           image_dir=str(base / "images"))
        cluster.start()
        cluster.create_pools([settings.rbd_image_pool, settings.rbd_hdd_pool, settings.rbd_ssd_pool])
        settings = replace(settings, storage_backend="rbd", ceph_conf=str(cluster.conf_path))
        backend, files = RbdBackend(settings), FileBackend(settings)
        print(f"ceph: 1 memstore OSD on loopback; images sparse (1 MiB of data per {STRIDE // MIB} MiB)")
        provisioning(backend, files, base, sizes, args.rounds)
        if not args.no_guest:
            built = subprocess.run([str(PROJECT / "scripts" / "build-guest-image.sh")], capture_output=True,
                                   text=True, check=True)
            throughput(backend, files, Path(built.stdout.strip().splitlines()[-1]), base / "g", args.write_mib)
        backend.close()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
