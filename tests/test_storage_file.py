"""The local-file storage backend against real files and the real qemu-img / qemu-io."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from ucloud_common.config import load_settings
from ucloud_common.storage import ImageNotFound, StorageError, open_backend
from ucloud_common.storage.file import FileBackend

MIB = 1024 * 1024


@pytest.fixture
def backend(tmp_path: Path) -> FileBackend:
    settings = load_settings(env={}, env_file=tmp_path / "no.env", state_dir=str(tmp_path / "state"),
                             image_dir=str(tmp_path / "images"))
    b = open_backend(settings)
    assert isinstance(b, FileBackend)
    return b


@pytest.fixture
def raw_image(tmp_path: Path) -> Path:
    """A 4 MiB raw image with recognisable bytes at its start."""
    path = tmp_path / "src.img"
    path.write_bytes(b"UCLOUD-IMAGE" + bytes(4 * MIB - 12))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def info(path: str | Path) -> dict:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def qemu_io(path: str, command: str) -> str:
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, path], check=True,
                          capture_output=True, text=True).stdout


def test_backend_is_local(backend: FileBackend) -> None:
    assert backend.name == "file"
    assert backend.shared is False


def test_import_image_and_find_it(backend: FileBackend, raw_image: Path) -> None:
    assert not backend.has_image("guest")
    backend.import_image("guest", str(raw_image))
    assert backend.has_image("guest")
    assert backend.images() == ["guest"]
    stored = backend.image_path("guest")
    assert stored is not None and stored.name == "guest.raw"
    assert sha(stored) == sha(raw_image)


def test_import_reports_progress_and_keeps_an_existing_image(backend: FileBackend, raw_image: Path,
                                                             tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    backend.import_image("guest", str(raw_image), progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (raw_image.stat().st_size, raw_image.stat().st_size)
    other = tmp_path / "other.img"
    other.write_bytes(b"\1" * MIB)
    backend.import_image("guest", str(other))  # an image is never replaced
    assert sha(backend.image_path("guest")) == sha(raw_image)


def test_import_qcow2_keeps_its_format(backend: FileBackend, tmp_path: Path) -> None:
    source = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "8M"], check=True)
    backend.import_image("q", str(source))
    assert backend.image_path("q").name == "q.qcow2"


@pytest.mark.parametrize("name", ["", "../etc", "a/b", ".hidden", "x" * 200, "sp ace"])
def test_bad_image_names_are_refused(backend: FileBackend, raw_image: Path, name: str) -> None:
    with pytest.raises(StorageError):
        backend.import_image(name, str(raw_image))


def test_import_of_a_missing_file_fails_clearly(backend: FileBackend, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        backend.import_image("guest", str(tmp_path / "nope.img"))
    assert not backend.has_image("guest")


def test_boot_disk_is_an_overlay_of_the_requested_size(backend: FileBackend, raw_image: Path) -> None:
    backend.import_image("guest", str(raw_image))
    image_sum = sha(backend.image_path("guest"))
    disk = backend.create_disk("vm-1", "boot", 64 * MIB, "guest")
    assert disk.role == "boot" and disk.format == "qcow2" and disk.size == 64 * MIB
    details = info(disk.drive)
    assert details["format"] == "qcow2"
    assert details["virtual-size"] == 64 * MIB
    assert details["backing-filename"] == str(backend.image_path("guest").resolve())
    # The guest sees the image's bytes; what it writes lands in the overlay, never the image.
    assert "55 43 4c 4f 55 44" in qemu_io(disk.drive, "read -v 0 12")  # "UCLOUD"
    qemu_io(disk.drive, "write -P 0xab 0 1M")
    assert "ab ab ab" in qemu_io(disk.drive, "read -v 0 16")
    assert sha(backend.image_path("guest")) == image_sum


def test_create_disk_is_idempotent(backend: FileBackend, raw_image: Path) -> None:
    backend.import_image("guest", str(raw_image))
    first = backend.create_disk("vm-1", "boot", 64 * MIB, "guest")
    qemu_io(first.drive, "write -P 0xcd 0 4k")  # data written by the guest must survive a repeat
    again = backend.create_disk("vm-1", "boot", 64 * MIB, "guest")
    assert again == first
    assert "cd cd cd" in qemu_io(first.drive, "read -v 0 16")


def test_ssd_disk_is_empty_and_listed(backend: FileBackend, raw_image: Path) -> None:
    backend.import_image("guest", str(raw_image))
    backend.create_disk("vm-1", "boot", 64 * MIB, "guest")
    ssd = backend.create_disk("vm-1", "ssd", 32 * MIB, None)
    assert "backing-filename" not in info(ssd.drive)
    assert info(ssd.drive)["virtual-size"] == 32 * MIB
    assert [d.role for d in backend.disks("vm-1")] == ["boot", "ssd"]
    assert backend.disks("vm-2") == []
    assert backend.vm_ids() == ["vm-1"]


def test_delete_disks_removes_everything_and_repeats_fine(backend: FileBackend, raw_image: Path) -> None:
    backend.import_image("guest", str(raw_image))
    boot = backend.create_disk("vm-1", "boot", 64 * MIB, "guest")
    backend.create_disk("vm-1", "ssd", 32 * MIB, None)
    backend.delete_disks("vm-1")
    assert not Path(boot.drive).exists()
    assert backend.disks("vm-1") == []
    backend.delete_disks("vm-1")
    assert backend.has_image("guest")  # the image stays


def test_disk_errors_say_why(backend: FileBackend, raw_image: Path) -> None:
    with pytest.raises(ImageNotFound):
        backend.create_disk("vm-1", "boot", 64 * MIB, "missing")
    backend.import_image("guest", str(raw_image))
    with pytest.raises(StorageError, match="smaller than image"):
        backend.create_disk("vm-1", "boot", MIB, "guest")
    with pytest.raises(StorageError, match="role"):
        backend.create_disk("vm-1", "swap", 64 * MIB, None)
    with pytest.raises(StorageError, match="invalid VM id"):
        backend.create_disk("../x", "boot", 64 * MIB, "guest")
    assert backend.disks("vm-1") == []  # a failed create leaves nothing behind
