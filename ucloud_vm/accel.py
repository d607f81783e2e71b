"""Which accelerator QEMU gets on this host: KVM only where a probe boot proves it works.

``/dev/kvm`` existing proves nothing: on a nested-virtualisation shim ``-accel kvm``
aborts (``kvm_buf_set_msrs: Assertion failed``) or a stock kernel crawls or hits
emulation failures (ENVIRONMENT.md). So with ``qemu_accel: auto`` the daemon boots the
guest image once under KVM and waits, with a deadline, for its boot marker on the
serial console; only a marker within the deadline means KVM. Anything else — no
usable ``/dev/kvm``, QEMU exiting, the deadline passing — means TCG. The answer is
cached in the state dir per QEMU binary and kernel release, so it is paid once per
host, and ``qemu_accel: kvm`` or ``tcg`` skips the probe.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ucloud_common.storage import Disk

from . import process
from .paths import VmPaths
from .qemu_argv import QemuConfig, build_argv

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 10.0  # a working KVM boots the guest to its marker in about a second
MARKER = b"UCLOUD-GUEST-UP"


def kvm_device_usable(path: str = "/dev/kvm") -> bool:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def cache_key(binary: str) -> str:
    return f"{shutil.which(binary) or binary}|{os.uname().release}"


def choose(setting: str, binary: str, state_dir: str | Path, image: Path | None) -> str:
    """``kvm`` or ``tcg`` for ``setting`` (auto/kvm/tcg), probing (once, cached) for auto."""
    if setting in ("kvm", "tcg"):
        return setting
    cache = Path(state_dir) / "accel.json"
    key = cache_key(binary)
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key and cached.get("accel") in ("kvm", "tcg"):
            return cached["accel"]
    except (OSError, ValueError):
        pass
    accel, why = probe(binary, image)
    log.info("accelerator: %s (%s)", accel, why)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "accel": accel, "why": why}) + "\n")
    return accel


def probe(binary: str, image: Path | None, timeout: float = PROBE_TIMEOUT) -> tuple[str, str]:
    """Boot ``image`` under KVM; ("kvm", why) if its marker appears in time, else ("tcg", why)."""
    if not kvm_device_usable():
        return "tcg", "/dev/kvm cannot be opened"
    if image is None or not image.is_file():
        return "tcg", "no guest image to probe KVM with"
    with tempfile.TemporaryDirectory(prefix="ucloud-kvm-probe-", dir="/tmp") as tmp:
        overlay = Path(tmp) / "probe.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.resolve()), "-F", "raw",
                        str(overlay)], check=True, capture_output=True, timeout=30)
        paths = VmPaths(Path(tmp) / "kvm-probe")
        disk = Disk("kvm-probe", "boot", 0, str(overlay), "qcow2")
        argv = build_argv(QemuConfig(vm_id="kvm-probe", cpu=1, ram=128 * 1024 * 1024, disks=[disk],
                                     paths=paths, accel="kvm", binary=binary))
        try:
            qemu = process.start(argv, paths)
        except process.StartError as exc:
            return "tcg", f"QEMU with -accel kvm did not start: {exc}"
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if paths.serial_log.exists() and MARKER in paths.serial_log.read_bytes():
                    return "kvm", "a probe boot under KVM reached the guest's marker"
                if not process.alive(qemu.pid):
                    return "tcg", f"QEMU with -accel kvm died: {process.log_tail(paths)}"
                time.sleep(0.1)
            return "tcg", f"a probe boot under KVM did not reach the guest's marker within {timeout:g}s"
        finally:
            process.kill_verified("kvm-probe", qemu.pid)
