"""Test helpers: network namespaces joined by a veth underlay, as two compute hosts on one
machine would be. Every namespace is made and removed by name (``ip netns``); removing
a namespace removes every interface in it.

Not a test module (no ``test_`` prefix); imported by ``tests/test_network*.py``.
"""

from __future__ import annotations

import os
import subprocess
from typing import Iterator

IP = "ip"


def ip(*args: str, netns: str = "") -> str:
    argv = [IP, "-n", netns, *args] if netns else [IP, *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def links(netns: str) -> set[str]:
    """Interface names in ``netns``."""
    return {line.split()[0].split("@")[0] for line in ip("-br", "link", "show", netns=netns).splitlines()
            if line.strip()}


def fdb_peers(netns: str, vxlan: str) -> set[str]:
    """The ``dst`` addresses of the all-zero forwarding entries of ``vxlan`` in ``netns``."""
    done = subprocess.run(["bridge", "-n", netns, "fdb", "show", "dev", vxlan], capture_output=True, text=True,
                          timeout=30)
    return {line.split(" dst ")[1].split()[0] for line in done.stdout.splitlines()
            if line.startswith("00:00:00:00:00:00 dst ")}


class Underlay:
    """Namespaces ``<prefix>-h1`` .. ``-hN`` on one underlay: a bridge in ``<prefix>-ul``
    (the "switch") and a veth from each host namespace to it, host i at 10.<net>.0.i."""

    def __init__(self, hosts: int, net: int = 231) -> None:
        tag = f"uc{os.getpid() % 100000}"
        self.switch = f"{tag}-ul"
        self.hosts = [f"{tag}-h{i + 1}" for i in range(hosts)]
        self.addresses = [f"10.{net}.0.{i + 1}" for i in range(hosts)]
        self.made: list[str] = []
        try:
            self._make()
        except BaseException:
            self.remove()
            raise

    def _make(self) -> None:
        for name in [self.switch, *self.hosts]:
            ip("netns", "add", name)
            self.made.append(name)
            ip("link", "set", "lo", "up", netns=name)
        ip("link", "add", "sw", "type", "bridge", netns=self.switch)
        ip("link", "set", "sw", "up", netns=self.switch)
        for i, (host, address) in enumerate(zip(self.hosts, self.addresses)):
            # made in the switch namespace, one end moved to the host namespace as "ul0";
            # MTU 1600 so the guests' 1500-byte frames fit in VXLAN.
            ip("link", "add", f"p{i}", "mtu", "1600", "type", "veth", "peer", "name", "ul0", "mtu", "1600",
               netns=self.switch)
            ip("link", "set", "ul0", "netns", host, netns=self.switch)
            ip("link", "set", f"p{i}", "master", "sw", "up", netns=self.switch)
            ip("addr", "add", f"{address}/24", "dev", "ul0", netns=host)
            ip("link", "set", "ul0", "up", netns=host)

    def remove(self) -> None:
        for name in reversed(self.made):
            subprocess.run([IP, "netns", "del", name], capture_output=True, timeout=30)
        self.made.clear()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(zip(self.hosts, self.addresses))
