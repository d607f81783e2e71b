"""Shared fixtures: real etcd servers on loopback, started and stopped by pid.

* ``etcd`` — one member for the whole session; ``store`` empties ``/v1/`` before each test.
* ``etcd_factory`` — a private member or cluster for a test that restarts or kills etcd.
* ``ceph`` — a single-node Ceph cluster for the session; ``rbd_settings`` points at it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

from ucloud_common.config import Settings, load_settings
from ucloud_common.etcd_process import EtcdCluster
from ucloud_common.store import Store

if TYPE_CHECKING:
    from ucloud_common.ceph_process import CephCluster


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), size=1).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def store(etcd: EtcdCluster) -> Iterator[Store]:
    s = Store(etcd.endpoints, timeout=5.0, retry_for=15.0)
    s.delete_prefix("/v1/")
    yield s
    s.close()


@pytest.fixture
def settings(etcd: EtcdCluster, tmp_path: Path) -> Settings:
    """Settings that point at the session etcd and keep state under the test's tmp dir."""
    return load_settings(
        env={}, env_file=tmp_path / "no.env",
        etcd_endpoints=list(etcd.endpoints),
        state_dir=str(tmp_path / "state"), image_dir=str(tmp_path / "images"),
    )


@pytest.fixture
def etcd_factory(tmp_path: Path) -> Iterator[Callable[[int], EtcdCluster]]:
    """Start private etcd clusters of a given size; all are stopped after the test."""
    started: list[EtcdCluster] = []

    def make(size: int = 1) -> EtcdCluster:
        cluster = EtcdCluster(tmp_path / f"etcd-{len(started)}", size=size)
        started.append(cluster)
        return cluster.start()

    yield make
    for cluster in started:
        cluster.stop()


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """The ucloud guest disk image (``scripts/build-guest-image.sh``; built once, then cached
    in ``build/guest/``): a raw disk that boots (SeaBIOS -> syslinux -> Debian kernel ->
    busybox) and prints ``UCLOUD-GUEST-UP`` on its serial console."""
    import subprocess

    script = Path(__file__).resolve().parent.parent / "scripts" / "build-guest-image.sh"
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"build-guest-image.sh failed: {done.stderr.strip()}")
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def ceph(tmp_path_factory: pytest.TempPathFactory) -> Iterator["CephCluster"]:
    """A real single-node Ceph cluster (1 mon, 1 mgr, 1 memstore OSD) on loopback for the
    whole session, with the default RBD pools (``ucloud-images``, ``-hdd``, ``-ssd``);
    stopped by pid at the end. Tests sharing it use their own image and VM names."""
    from ucloud_common.ceph_process import CephCluster

    defaults = Settings()
    cluster = CephCluster(tmp_path_factory.mktemp("ceph"))
    try:
        cluster.start()
        cluster.create_pools([defaults.rbd_image_pool, defaults.rbd_hdd_pool, defaults.rbd_ssd_pool])
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest.fixture
def rbd_settings(settings: Settings, ceph: "CephCluster") -> Settings:
    """``settings`` with the RBD storage backend on the session's Ceph cluster."""
    from ucloud_common.config import replace

    return replace(settings, storage_backend="rbd", ceph_conf=str(ceph.conf_path), ceph_timeout=5.0)
