"""Doing things inside a named network namespace from a threaded daemon, without a fork.

Why: a compute host's bridges, VXLANs and taps live in the namespace named by the
``host_netns`` setting ("" = the daemon's own). QEMU itself must stay in the root
namespace (a QEMU inside a namespace cannot reach a Ceph mon on the root namespace's
loopback, ENVIRONMENT.md), so it is handed a file descriptor of a tap that was opened
inside the host's namespace.

Linux keeps the network namespace per *thread*: a short-lived thread ``setns()``-es into
the namespace, creates the socket or opens ``/dev/net/tun`` there, and ends; the
descriptor stays bound to that namespace wherever it is used afterwards. Python 3.11
has no ``os.setns``, hence ``libc.setns`` through ctypes. pyroute2's own ``netns=``
support forks a helper process per socket; taking the netlink socket from such a thread
(``IPRoute(use_socket=...)``) needs no fork in a daemon full of threads.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Callable, TypeVar

from pyroute2 import IPRoute

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")  # where `ip netns add` keeps named namespaces
NETLINK_ROUTE = 0
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(OSError):
    """A namespace that cannot be entered, or a tap that cannot be opened."""


def netns_path(name: str) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise NetnsError(f"invalid network namespace name {name!r}")
    return NETNS_DIR / name


def run_in(netns: str, fn: Callable[[], T]) -> T:
    """``fn()`` run inside namespace ``netns`` (on a fresh thread); directly when ``netns`` is ""."""
    if not netns:
        return fn()
    path = netns_path(netns)
    result: dict[str, object] = {}

    def body() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            result["error"] = NetnsError(exc.errno, f"network namespace {netns!r}: {exc.strerror}")
            return
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                result["error"] = NetnsError(err, f"setns into {netns!r}: {os.strerror(err)}")
                return
        finally:
            os.close(fd)
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=body, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]


def iproute(netns: str) -> IPRoute:
    """A pyroute2 ``IPRoute`` whose netlink socket lives in ``netns``. Close it after use."""
    if not netns:
        return IPRoute()
    sock = run_in(netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE))
    return IPRoute(use_socket=sock)


def _tun_open(ifname: str) -> int:
    if not 0 < len(ifname.encode()) <= 15:
        raise NetnsError(f"invalid interface name {ifname!r}")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def open_tap(netns: str, ifname: str) -> int:
    """An fd of tap ``ifname`` in ``netns`` (created, not persistent, if it does not exist).

    The caller owns the fd (close-on-exec; pass it to QEMU explicitly).
    """
    return run_in(netns, lambda: _tun_open(ifname))


def create_tap(netns: str, ifname: str) -> None:
    """Create the persistent tap ``ifname`` in ``netns`` (attach to it if it exists)."""
    def make() -> None:
        fd = _tun_open(ifname)
        try:
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
        finally:
            os.close(fd)
    run_in(netns, make)
