"""Shared fixtures: real etcd servers on loopback, started and stopped by pid.

* ``etcd`` — one member for the whole session; ``store`` empties ``/v1/`` before each test.
* ``etcd_factory`` — a private member or cluster for a test that restarts or kills etcd.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from ucloud_common.config import Settings, load_settings
from ucloud_common.etcd_process import EtcdCluster
from ucloud_common.store import Store


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
