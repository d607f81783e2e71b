"""Start and stop private etcd servers (Debian's ``etcd-server``) on loopback.

Used by the test harness (one member, or a 3-member cluster) and by the one-box dev
cloud. Each member gets free ports and its own data directory; it is stopped by the
pid this module started, never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ETCD_BINARY = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class EtcdMember:
    """One etcd process: its name, ports, data dir and (while running) its Popen."""

    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    log_path: Path
    cluster: str = ""  # initial-cluster string; "" for a single member
    token: str = "ucloud"  # the same for every member of one cluster
    process: subprocess.Popen | None = field(default=None, repr=False)
    started_once: bool = False

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def argv(self) -> list[str]:
        cluster = self.cluster or f"{self.name}=http://127.0.0.1:{self.peer_port}"
        return [
            ETCD_BINARY,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", f"http://127.0.0.1:{self.client_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.client_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-cluster", cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.token,
            # Short election timings keep failover in tests to about a second.
            "--heartbeat-interval", "100",
            "--election-timeout", "1000",
            "--quota-backend-bytes", str(4 * 1024**3),
            "--log-level", "warn",
            "--logger", "zap",
        ]

    def start(self) -> None:
        """Start (or restart, keeping its data) this member."""
        if self.process and self.process.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.started_once = True

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited with {self.process.returncode}; "
                                   f"see {self.log_path}")
            if _port_open(self.client_port):
                return
            time.sleep(0.05)
        raise TimeoutError(f"etcd {self.name} did not listen on {self.endpoint} within {timeout}s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop this member by its pid: ``sig`` first, SIGKILL if it lingers."""
        proc = self.process
        if not proc:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class EtcdCluster:
    """``size`` etcd members on loopback under ``base_dir``; ``endpoints`` for clients."""

    def __init__(self, base_dir: Path, size: int = 1) -> None:
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.members = [
            EtcdMember(name=f"etcd{i}", data_dir=self.base_dir / f"etcd{i}.data",
                       client_port=free_port(), peer_port=free_port(),
                       log_path=self.base_dir / f"etcd{i}.log")
            for i in range(size)
        ]
        token = f"ucloud-{os.getpid()}-{self.members[0].peer_port}"
        cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        for member in self.members:
            member.cluster = cluster
            member.token = token

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(m.endpoint for m in self.members)

    def start(self, timeout: float = 30.0) -> "EtcdCluster":
        for member in self.members:
            member.start()
        for member in self.members:
            member.wait_listening(timeout)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until a write through the cluster succeeds (a leader exists)."""
        from .store import Store, Unavailable

        deadline = time.monotonic() + timeout
        running = [m.endpoint for m in self.members if m.process and m.process.poll() is None]
        with Store(running, timeout=2.0, retry_for=1.0) as store:
            while True:
                try:
                    store.put("/v1/.health", b"ok")
                    return
                except Unavailable:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"etcd cluster at {running} not healthy within {timeout}s")

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def __enter__(self) -> "EtcdCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
