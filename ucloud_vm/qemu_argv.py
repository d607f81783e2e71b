"""The QEMU command line of a VM, as a pure function of plain data.

An argument list (never a shell string: DESIGN.md §3.6) built from the VM's specs,
its disks, its runtime paths and the accelerator this host proved to work. Keeping it
pure makes it easy to read and to unit-test, and lets the benchmark start a bare
QEMU with exactly the options the daemon uses.

What the options are for:

* ``-name guest=<id>`` so ``ps`` shows which VM a process is; the daemon also checks
  it in ``/proc/<pid>/cmdline`` before adopting or killing a pid from a pid file.
* the disks as ``virtio-blk`` with the boot disk at ``bootindex=0``: the guest boots
  from its own disk (SeaBIOS -> syslinux), like a real cloud image, never ``-kernel``;
* two QMP monitors (``qmp.sock`` for commands, ``events.sock`` for the watcher);
* the serial console on a socket (attach to it) that is also logged to ``serial.log``;
* ``pvpanic`` with ``-action panic=exit-failure``: a guest kernel panic ends QEMU, so it
  is noticed and restarted like any other death;
* ``-pidfile`` (QEMU writes and locks it) for adoption after a daemon restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ucloud_common.storage import Disk

from .paths import VmPaths

MIB = 1024 * 1024
MIN_RAM_MIB = 64  # below this the guest kernel does not boot


@dataclass(frozen=True)
class NicArgs:
    """A NIC prepared by the network layer: its ``-netdev`` value and the device's MAC."""

    netdev: str  # e.g. "tap,id=net0,ifname=uc-1234,script=no,downscript=no" or "tap,id=net0,fd=5"
    netdev_id: str
    mac: str
    model: str = "virtio-net-pci"
    fd: int | None = None  # the tap's descriptor QEMU inherits (``fd=N`` in ``netdev``), if any
    device_id: str = ""  # the device's QMP id (for hot-unplug), if any


@dataclass(frozen=True)
class QemuConfig:
    """Everything that shapes the command line."""

    vm_id: str
    cpu: int
    ram: int  # bytes
    disks: Sequence[Disk]
    paths: VmPaths
    accel: str = "tcg"  # "kvm" or "tcg"
    binary: str = "qemu-system-x86_64"
    nics: Sequence[NicArgs] = ()


def ram_mib(ram: int) -> int:
    """Bytes -> whole MiB for ``-m``, rounded up, and never below what the guest needs."""
    return max(MIN_RAM_MIB, -(-ram // MIB))


def _q(value: object) -> str:
    """A value inside a QEMU option list: commas are doubled, so a path cannot add options."""
    return str(value).replace(",", ",,")


def _disk_args(disk: Disk) -> list[str]:
    drive_id = f"disk-{disk.role}"
    device = f"virtio-blk-pci,drive={drive_id},id=dev-{disk.role}"
    if disk.role == "boot":
        device += ",bootindex=0"
    return ["-drive", f"file={_q(disk.drive)},format={disk.format},if=none,id={drive_id},"
                      f"cache=writeback,discard=unmap",
            "-device", device]


def build_argv(config: QemuConfig) -> list[str]:
    """The full QEMU argument list for ``config``."""
    if config.accel not in ("kvm", "tcg"):
        raise ValueError(f"accelerator must be kvm or tcg, got {config.accel!r}")
    if not any(d.role == "boot" for d in config.disks):
        raise ValueError(f"VM {config.vm_id} has no boot disk")
    paths = config.paths
    argv = [
        config.binary,
        "-name", f"guest={_q(config.vm_id)},process=qemu-{config.vm_id[:8]}",
        "-machine", "pc",
        "-accel", config.accel,
        "-cpu", "host" if config.accel == "kvm" else "qemu64",
        "-smp", str(max(1, config.cpu)),
        "-m", f"{ram_mib(config.ram)}M",
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-boot", "strict=on",
        "-rtc", "base=utc",
        "-pidfile", str(paths.pidfile),  # a plain argument: no escaping
        "-chardev", f"socket,id=qmp,path={_q(paths.qmp)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"socket,id=events,path={_q(paths.events)},server=on,wait=off",
        "-mon", "chardev=events,mode=control",
        "-chardev", f"socket,id=serial0,path={_q(paths.serial_sock)},server=on,wait=off,"
                    f"logfile={_q(paths.serial_log)},logappend=on",
        "-serial", "chardev:serial0",
        "-device", "pvpanic",
        "-action", "panic=exit-failure",
    ]
    if _is_uuid(config.vm_id):
        argv += ["-uuid", config.vm_id]  # the guest sees its id in SMBIOS
    ordered = sorted(config.disks, key=lambda d: (d.role != "boot", d.role))
    for disk in ordered:
        argv += _disk_args(disk)
    for nic in config.nics:
        device = f"{nic.model},netdev={nic.netdev_id},mac={nic.mac}" + (f",id={nic.device_id}" if nic.device_id else "")
        argv += ["-netdev", nic.netdev, "-device", device]
    return argv


def _is_uuid(text: str) -> bool:
    parts = text.split("-")
    return [len(p) for p in parts] == [8, 4, 4, 4, 12] and all(
        c in "0123456789abcdefABCDEF" for p in parts for c in p)


def argv_vm_id(cmdline: Sequence[str]) -> str | None:
    """The VM id in a QEMU command line built here (``-name guest=<id>,...``), or None."""
    for flag, value in zip(cmdline, cmdline[1:]):
        if flag == "-name":
            for part in value.replace(",,", "\0").split(","):
                if part.startswith("guest="):
                    return part[len("guest="):].replace("\0", ",")
    return None
