"""The QEMU command line (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ucloud_common.storage import Disk
from ucloud_vm.paths import VmPaths
from ucloud_vm.qemu_argv import NicArgs, QemuConfig, argv_vm_id, build_argv, ram_mib

VM_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
BOOT = Disk(VM_ID, "boot", 2 * 1024**3, "/s/disks/x/boot.qcow2", "qcow2")
SSD = Disk(VM_ID, "ssd", 1024**3, "rbd:pool/img:conf=/etc/ceph/ceph.conf", "raw")


def config(**changes) -> QemuConfig:
    values = dict(vm_id=VM_ID, cpu=2, ram=256 * 1024**2, disks=[SSD, BOOT],
                  paths=VmPaths.of("/s", VM_ID))
    values.update(changes)
    return QemuConfig(**values)


def option(argv: list[str], flag: str) -> list[str]:
    return [value for name, value in zip(argv, argv[1:]) if name == flag]


def test_specs_become_m_and_smp() -> None:
    argv = build_argv(config())
    assert option(argv, "-m") == ["256M"]
    assert option(argv, "-smp") == ["2"]


def test_ram_is_rounded_up_to_whole_mib_and_never_tiny() -> None:
    assert ram_mib(256 * 1024**2) == 256
    assert ram_mib(256 * 1024**2 + 1) == 257
    assert ram_mib(2 * 10**9) == 1908
    assert ram_mib(1) == 64


def test_name_carries_the_vm_id_and_is_found_again() -> None:
    argv = build_argv(config())
    assert option(argv, "-name") == [f"guest={VM_ID},process=qemu-0f8fad5b"]
    assert argv_vm_id(argv) == VM_ID
    assert argv_vm_id(["qemu-system-x86_64", "-m", "1G"]) is None


def test_boots_from_its_own_disk_never_a_kernel() -> None:
    argv = build_argv(config())
    assert "-kernel" not in argv and "-initrd" not in argv
    devices = option(argv, "-device")
    boot_devices = [d for d in devices if "bootindex=0" in d]
    assert boot_devices == ["virtio-blk-pci,drive=disk-boot,id=dev-boot,bootindex=0"]
    drives = option(argv, "-drive")
    assert drives[0].startswith("file=/s/disks/x/boot.qcow2,format=qcow2,")  # boot disk first
    assert drives[1].startswith("file=rbd:pool/img:conf=/etc/ceph/ceph.conf,format=raw,")


def test_runtime_files_are_under_the_vm_dir() -> None:
    argv = build_argv(config())
    vm_dir = f"/s/vms/{VM_ID}"
    assert option(argv, "-pidfile") == [f"{vm_dir}/qemu.pid"]
    chardevs = option(argv, "-chardev")
    assert f"socket,id=qmp,path={vm_dir}/qmp.sock,server=on,wait=off" in chardevs
    assert f"socket,id=events,path={vm_dir}/events.sock,server=on,wait=off" in chardevs
    assert any(f"logfile={vm_dir}/serial.log" in c for c in chardevs)
    assert option(argv, "-mon") == ["chardev=qmp,mode=control", "chardev=events,mode=control"]


def test_accelerator() -> None:
    assert option(build_argv(config()), "-accel") == ["tcg"]
    kvm = build_argv(config(accel="kvm"))
    assert option(kvm, "-accel") == ["kvm"] and option(kvm, "-cpu") == ["host"]
    with pytest.raises(ValueError):
        build_argv(config(accel="xen"))


def test_commas_in_paths_cannot_inject_options() -> None:
    disk = Disk(VM_ID, "boot", 1, "/s/evil,readonly=off,file=/etc/shadow", "qcow2")
    argv = build_argv(config(disks=[disk]))
    assert option(argv, "-drive")[0].startswith("file=/s/evil,,readonly=off,,file=/etc/shadow,format=qcow2")


def test_nics_and_missing_boot_disk() -> None:
    nic = NicArgs(netdev="tap,id=net0,fd=5", netdev_id="net0", mac="52:54:00:00:00:01")
    argv = build_argv(config(nics=[nic]))
    assert option(argv, "-netdev") == ["tap,id=net0,fd=5"]
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01" in option(argv, "-device")
    with pytest.raises(ValueError, match="no boot disk"):
        build_argv(config(disks=[SSD]))


def test_every_argument_is_a_plain_string() -> None:
    argv = build_argv(config())
    assert all(isinstance(a, str) for a in argv)
    assert Path(argv[0]).name == "qemu-system-x86_64"
