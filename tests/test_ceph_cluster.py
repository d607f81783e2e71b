"""The private Ceph cluster of tests and the dev cloud: one mon, one mgr, one memstore OSD on
loopback, answering the real ``ceph`` CLI, stopped by pid with nothing left behind, and
started again from its directory with its data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rados

from ucloud_common.ceph_process import CephCluster


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def ceph_cli(cluster: CephCluster, *args: str) -> dict:
    done = subprocess.run(["ceph", "-c", str(cluster.conf_path), "--connect-timeout", "10", *args,
                           "--format", "json"], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def test_session_cluster_is_one_mon_mgr_osd_with_the_rbd_pools(ceph: CephCluster) -> None:
    assert sorted(ceph.pids()) == ["mgr.x", "mon.a", "osd.0"]
    assert all(alive(pid) for pid in ceph.pids().values())
    status = ceph_cli(ceph, "status")
    assert status["fsid"] == ceph.fsid
    assert status["osdmap"]["num_up_osds"] == 1 and status["osdmap"]["num_in_osds"] == 1
    monmap = ceph_cli(ceph, "mon", "dump")
    assert [m["public_addrs"]["addrvec"][0]["addr"] for m in monmap["mons"]] == [ceph.mon_address]
    pools = {p["pool_name"]: p for p in ceph_cli(ceph, "osd", "pool", "ls", "detail")}
    for name in ("ucloud-images", "ucloud-hdd", "ucloud-ssd"):
        assert pools[name]["size"] == 1
        assert "rbd" in pools[name]["application_metadata"]


def test_clients_get_their_own_admin_sockets(ceph: CephCluster) -> None:
    """Two clients at once (as QEMU and the CLI are): each has its own socket, none collide."""
    first, second = ceph.connect(), ceph.connect()
    try:
        sockets = [p.name for p in (ceph.base_dir / "run").glob("ceph-client.admin.*.asok")]
        assert len([s for s in sockets if f".{os.getpid()}." in s]) >= 2
    finally:
        first.shutdown()
        second.shutdown()


@pytest.mark.timeout(120)
def test_cluster_stops_by_pid_leaves_nothing_and_restarts_with_its_data(tmp_path: Path) -> None:
    cluster = CephCluster(tmp_path / "c")
    try:
        cluster.start()
        cluster.create_pools(["keep"])
        client = cluster.connect()
        with client.open_ioctx("keep") as ioctx:
            ioctx.write_full("greeting", b"hello from before the stop")
        client.shutdown()
        pids = cluster.pids()
        port = cluster.mon_port
        cluster.stop()

        assert not any(alive(pid) for pid in pids.values())
        assert not list((cluster.base_dir / "run").glob("*.asok"))  # every daemon cleaned up after itself
        with pytest.raises(rados.TimedOut):
            cluster.connect(timeout=1)

        again = CephCluster(tmp_path / "c")  # as the dev command does: same dir, same fsid and port
        assert (again.fsid, again.mon_port) == (cluster.fsid, port)
        cluster = again.start()
        client = cluster.connect()
        try:
            with client.open_ioctx("keep") as ioctx:
                assert ioctx.read("greeting") == b"hello from before the stop"
        finally:
            client.shutdown()
    finally:
        cluster.stop()


@pytest.mark.timeout(120)
def test_dev_command_runs_until_interrupted(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "ucloud_common.ceph_process", "--dir", str(tmp_path / "dev"),
                             "--pools", "dev-pool"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    daemons: dict[str, int] = {}
    try:
        lines = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"exited early: {''.join(lines)}"
            lines.append(line)
            if "Ctrl-C" in line:
                break
        assert any("UCLOUD_CEPH_CONF=" in line for line in lines)
        cluster = CephCluster(tmp_path / "dev")
        daemons.update({name: pid for line in lines if "pids" in line
                        for name, pid in json.loads(line.split("pids ", 1)[1].replace("'", '"')).items()})
        assert sorted(daemons) == ["mgr.x", "mon.a", "osd.0"]
        assert "dev-pool" in [p["pool_name"] for p in ceph_cli(cluster, "osd", "pool", "ls", "detail")]
        proc.send_signal(2)  # Ctrl-C
        assert proc.wait(60) == 0
        assert not any(alive(pid) for pid in daemons.values())
    finally:
        if proc.poll() is None:
            proc.send_signal(2)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in daemons.values():  # started (through the command) by this test
            if alive(pid):
                os.kill(pid, 9)
