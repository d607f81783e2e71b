"""Start and stop a private single-node Ceph cluster (1 mon, 1 mgr, 1 memstore OSD) on loopback.

For tests and the one-box dev cloud: RBD disks need a real cluster, and Debian's
``ceph-mon``/``ceph-mgr``/``ceph-osd`` can run one in a directory of their own in about
ten seconds. Everything about the cluster lives under ``base_dir``: its ``ceph.conf``,
the daemons' data, their logs and admin sockets. Daemons run in the foreground
(``-f``) so the pid this module holds is the daemon's; they are stopped by that pid,
never by name, OSD first so that it can tell the monitor it is going and save its
data.

What the configuration settles (ENVIRONMENT.md lists the traps):

* ``auth none`` and pool size 1: one box, no keys, no replicas;
* the OSD keeps its objects in RAM (``memstore``) and, with ``osd fast shutdown =
  false``, writes them to its data dir on a clean stop, so a stopped cluster can be
  started again with its data; after a SIGKILL the data is gone;
* every client (QEMU, the CLI, Python) gets its own admin socket and log file,
  named by pid, so several in one machine do not collide.

Run ``python -m ucloud_common.ceph_process --dir DIR`` for a dev cluster that lives
until Ctrl-C (and can be started again from the same dir).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .etcd_process import free_port

POOL_PG_NUM = 8
CLIENT_TIMEOUT = 10  # seconds for the launcher's own mon/osd operations
MEMSTORE_BYTES = 16 * 1024**3  # what the OSD reports as its size (RAM is used only for data written)


def conf_text(base_dir: Path, fsid: str, mon_port: int) -> str:
    """The ``ceph.conf`` of a cluster living in ``base_dir`` whose monitor listens on ``mon_port``."""
    d = base_dir
    return f"""# Written by ucloud_common.ceph_process: a private single-node test/dev cluster.
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = {POOL_PG_NUM}
osd pool default pgp num = {POOL_PG_NUM}
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon data avail warn = 1
# a test cluster: propose map changes and send PG creations without the usual pauses
paxos propose interval = 0.1
mon tick interval = 1
mon data avail crit = 0
mon warn on insecure global id reclaim allowed = false
mon warn on pool no redundancy = false
run dir = {d}/run
crash dir = {d}/crash
log file = {d}/log/$cluster-$name.log
admin socket = {d}/run/$cluster-$name.asok

[mon]
mon data = {d}/$name

[mgr]
mgr data = {d}/$name
public addr = 127.0.0.1

[osd]
osd data = {d}/$name
osd objectstore = memstore
memstore device bytes = {MEMSTORE_BYTES}
osd fast shutdown = false
public addr = 127.0.0.1
cluster addr = 127.0.0.1

[client]
admin socket = {d}/run/$cluster-$name.$pid.$cctid.asok
log file = {d}/log/$cluster-$name.$pid.log
"""


def _client_conf(timeout: float) -> dict[str, str]:
    seconds = str(max(1, int(timeout)))
    return {"client_mount_timeout": seconds, "rados_mon_op_timeout": seconds, "rados_osd_op_timeout": seconds}


@dataclass
class CephCluster:
    """A single-node cluster under ``base_dir``; ``conf_path`` is what clients read."""

    base_dir: Path
    mon_port: int = 0
    fsid: str = ""
    processes: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir).resolve()
        state = self.base_dir / "cluster.json"
        if state.exists():  # a cluster made earlier in this dir: start it again, same fsid and port
            saved = json.loads(state.read_text())
            self.fsid, self.mon_port = saved["fsid"], saved["mon_port"]
        self.fsid = self.fsid or str(uuid.uuid4())
        self.mon_port = self.mon_port or free_port()

    # -- paths and commands -------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return self.base_dir / "ceph.conf"

    @property
    def mon_address(self) -> str:
        return f"127.0.0.1:{self.mon_port}"

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items() if p.poll() is None}

    def _run(self, argv: list[str], timeout: float = 60.0) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()[-500:]}")

    def _spawn(self, name: str, argv: list[str]) -> None:
        proc = self.processes.get(name)
        if proc and proc.poll() is None:
            return
        with open(self.base_dir / "log" / f"{name}.out", "ab") as out:
            self.processes[name] = subprocess.Popen(
                argv + ["-f", "-c", str(self.conf_path)], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    # -- life cycle ---------------------------------------------------------------------

    def _create(self) -> None:
        """Write the conf and make the monitor's store (first start in this dir only)."""
        for sub in ("run", "log", "crash", "mon.a", "mgr.x", "osd.0"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(conf_text(self.base_dir, self.fsid, self.mon_port))
        monmap = self.base_dir / "monmap"
        self._run(["monmaptool", "--create", "--clobber", "--fsid", self.fsid,
                   "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]", str(monmap)])
        self._run(["ceph-mon", "-c", str(self.conf_path), "-i", "a", "--mkfs", "--monmap", str(monmap)])
        (self.base_dir / "cluster.json").write_text(json.dumps({"fsid": self.fsid, "mon_port": self.mon_port}))

    def _create_osd(self) -> None:
        osd_uuid = str(uuid.uuid4())
        self.mon_command({"prefix": "osd new", "uuid": osd_uuid, "id": 0})
        self._run(["ceph-osd", "-c", str(self.conf_path), "-i", "0", "--mkfs", "--osd-uuid", osd_uuid])

    def start(self, timeout: float = 60.0) -> "CephCluster":
        """Start (or start again, with its data) the cluster; return once the OSD is up."""
        deadline = time.monotonic() + timeout
        if not (self.base_dir / "mon.a" / "store.db").exists():
            self._create()
        self._spawn("mon.a", ["ceph-mon", "-i", "a"])
        self._wait(deadline, self._mon_answers, "the monitor to answer")
        if not (self.base_dir / "osd.0" / "whoami").exists():
            self._create_osd()
        self._spawn("osd.0", ["ceph-osd", "-i", "0"])
        self._spawn("mgr.x", ["ceph-mgr", "-i", "x"])
        self._wait(deadline, self._osd_up, "the OSD to come up")
        return self

    def _wait(self, deadline: float, check: Any, what: str) -> None:
        while True:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"ceph {name} exited with {proc.returncode}; "
                                       f"see {self.base_dir / 'log'}")
            if check():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"ceph: timed out waiting for {what}; see {self.base_dir / 'log'}")
            time.sleep(0.2)

    def _mon_answers(self) -> bool:
        try:
            self.mon_command({"prefix": "mon stat"}, timeout=2)
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def _osd_up(self) -> bool:
        dump = json.loads(self.mon_command({"prefix": "osd dump", "format": "json"}))
        return any(osd["osd"] == 0 and osd["up"] == 1 for osd in dump["osds"])

    def stop(self, timeout: float = 30.0) -> None:
        """Stop OSD, mgr, mon in that order, each by pid: SIGTERM, then SIGKILL if it lingers.

        The monitor must outlive the OSD, or the OSD waits for it before saving its data.
        """
        for name in ("osd.0", "mgr.x", "mon.a"):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            # ceph-mgr leaves its admin socket behind on SIGTERM
            (self.base_dir / "run" / f"ceph-{name}.asok").unlink(missing_ok=True)

    def __enter__(self) -> "CephCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients ------------------------------------------------------------------------

    def connect(self, timeout: float = CLIENT_TIMEOUT, name: str = "admin") -> Any:
        """A connected ``rados.Rados`` for this cluster (call ``shutdown()`` when done)."""
        import rados

        cluster = rados.Rados(conffile=str(self.conf_path), rados_id=name, conf=_client_conf(timeout))
        try:
            cluster.connect(timeout=max(1, int(timeout)))
        except BaseException:
            cluster.shutdown()
            raise
        return cluster

    def mon_command(self, cmd: dict[str, Any], timeout: float = CLIENT_TIMEOUT) -> str:
        """Run one monitor command; return its output, or raise RuntimeError with Ceph's message."""
        cluster = self.connect(timeout)
        try:
            ret, out, err = cluster.mon_command(json.dumps(cmd), b"", timeout=max(1, int(timeout)))
        finally:
            cluster.shutdown()
        if ret != 0:
            raise RuntimeError(f"ceph {cmd['prefix']}: {err or ret}")
        return out.decode()

    def create_pools(self, names: Iterable[str], timeout: float = 60.0) -> None:
        """Create the RBD pools that do not exist yet and initialise them for RBD.

        Returns once each pool takes writes (its placement groups are active).
        """
        import rados
        import rbd

        cluster = self.connect(timeout)
        try:
            names = list(names)
            for name in names:
                if not cluster.pool_exists(name):
                    ret, _, err = cluster.mon_command(json.dumps(
                        {"prefix": "osd pool create", "pool": name, "pg_num": POOL_PG_NUM}), b"")
                    if ret != 0:
                        raise RuntimeError(f"ceph: cannot create pool {name}: {err}")
            for name in names:
                with cluster.open_ioctx(name) as ioctx:
                    deadline = time.monotonic() + timeout
                    while True:
                        try:  # writes an object: blocks until the pool's PGs peer
                            rbd.RBD().pool_init(ioctx, True)
                            break
                        except rados.TimedOut:
                            if time.monotonic() > deadline:
                                raise
        finally:
            cluster.shutdown()

    def blocklist(self) -> list[str]:
        """The client addresses the cluster currently refuses."""
        out = self.mon_command({"prefix": "osd blocklist ls", "format": "json"})
        # Ceph 16 prints two JSON lists back to back (addresses, then address ranges): read the first.
        entries, _ = json.JSONDecoder().raw_decode(out.strip() or "[]")
        return [entry["addr"] for entry in entries]


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ucloud_common.ceph_process",
        description="Run a private single-node Ceph cluster (1 mon, 1 mgr, 1 memstore OSD) until Ctrl-C.")
    parser.add_argument("--dir", required=True, type=Path,
                        help="where the cluster lives (started again with its data if it exists)")
    parser.add_argument("--pools", default="ucloud-images,ucloud-hdd,ucloud-ssd",
                        help="RBD pools to create (comma-separated)")
    args = parser.parse_args(argv)
    cluster = CephCluster(args.dir)
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    try:
        cluster.start()
        cluster.create_pools(p for p in args.pools.split(",") if p)
        print(f"ceph: up, mon {cluster.mon_address}; pids {cluster.pids()}", flush=True)
        print(f"ceph: use UCLOUD_STORAGE_BACKEND=rbd UCLOUD_CEPH_CONF={cluster.conf_path}", flush=True)
        print("ceph: Ctrl-C stops it (its data is kept for the next start)", flush=True)
        while not stop and all(p.poll() is None for p in cluster.processes.values()):
            time.sleep(0.5)
    finally:
        cluster.stop()
        print("ceph: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
