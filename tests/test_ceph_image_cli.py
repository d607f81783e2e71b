"""``ucloud image import NAME FILE``, run as an operator runs it (the installed command, settings
from the environment), into Ceph and into the file store: the image arrives whole, with a
progress bar, and a name that exists is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import rbd

from ucloud_common.ceph_process import CephCluster
from ucloud_common.config import Settings
from ucloud_common.storage.rbd import SNAPSHOT

MIB = 1024 * 1024
UCLOUD = str(Path(sys.executable).with_name("ucloud"))


def ucloud(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([UCLOUD, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, stdin=subprocess.DEVNULL)


def make_image(path: Path, data: bytes, size: int = 12 * MIB) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(3 * MIB)
        f.write(data)
    return path


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    return {"UCLOUD_ENV_FILE": str(tmp_path / "no.env"), "UCLOUD_STATE_DIR": str(tmp_path / "state"),
            "UCLOUD_IMAGE_DIR": str(tmp_path / "images"), "COLUMNS": "120"}


def test_import_into_ceph_converts_qcow2_and_shows_progress(
        base_env: dict[str, str], rbd_settings: Settings, ceph: CephCluster, tmp_path: Path) -> None:
    env = {**base_env, "UCLOUD_STORAGE_BACKEND": "rbd", "UCLOUD_CEPH_CONF": rbd_settings.ceph_conf,
           "UCLOUD_CEPH_TIMEOUT": "5"}
    name = f"cli-{uuid.uuid4().hex[:8]}"
    raw = make_image(tmp_path / "disk.raw", b"CLI-IMPORTED")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(tmp_path / "disk.qcow2")],
                   check=True)

    done = ucloud(env, "image", "import", name, str(tmp_path / "disk.qcow2"))
    assert done.returncode == 0, done.stderr
    assert f"image {name} imported into the rbd store" in done.stdout
    assert "importing" in done.stderr and "12.6 MB" in done.stderr  # the progress bar (12 MiB)

    client = ceph.connect()
    try:
        with client.open_ioctx(rbd_settings.rbd_image_pool) as ioctx, \
                rbd.Image(ioctx, name, snapshot=SNAPSHOT, read_only=True) as img:
            assert img.size() == 12 * MIB  # the qcow2's virtual size: converted, not copied
            assert img.read(3 * MIB, 12) == b"CLI-IMPORTED"
    finally:
        client.shutdown()
    assert name in ucloud(env, "image", "list").stdout.split()

    again = ucloud(env, "image", "import", name, str(raw))
    assert again.returncode == 1
    assert f"image '{name}' already exists in the rbd store" in again.stderr


def test_import_into_the_file_store(base_env: dict[str, str], tmp_path: Path) -> None:
    env = {**base_env, "UCLOUD_STORAGE_BACKEND": "file"}
    raw = make_image(tmp_path / "disk.raw", b"FILE-IMPORTED")
    done = ucloud(env, "image", "import", "plain", str(raw), "--quiet")
    assert done.returncode == 0, done.stderr
    stored = tmp_path / "images" / "plain.raw"
    assert stored.read_bytes() == raw.read_bytes()
    assert ucloud(env, "image", "list").stdout.split() == ["plain"]

    broken = tmp_path / "broken.raw"
    bad = ucloud(env, "image", "import", "bad name!", str(broken.with_name("nope")))
    assert bad.returncode == 2 and "does not exist" in bad.stderr  # click checks the file
    bad = ucloud(env, "image", "import", "bad name!", str(raw))
    assert bad.returncode == 1 and "invalid image name" in bad.stderr
