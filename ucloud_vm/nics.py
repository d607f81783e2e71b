"""A VM's NICs in QEMU: tap file descriptors at start, hot-plug and hot-unplug through QMP.

Why file descriptors: the taps live in the host's network namespace while QEMU stays in
the root namespace (:mod:`ucloud_vm.netns`), so QEMU never opens a tap by name. At start
each tap is opened here and handed to QEMU as an inherited descriptor
(``-netdev tap,id=net<mac>,fd=N``); on a running VM it is sent over the QMP socket
(``getfd``, SCM_RIGHTS) and used by ``netdev_add``. Devices and backends carry ids
derived from the MAC (``nic<mac>``, ``net<mac>``), the same at start and at hot-plug,
so what a running QEMU has can be compared with the VM record at any time
(:func:`ucloud_vm.netplan.nic_changes`), and a restarted daemon needs no memory of
what it plugged.

Hot-unplug needs the guest's help (ACPI eject): ``device_del`` only asks, the device is
gone when the guest let go of it; its backend (and so QEMU's hold on the tap) is
removed after that. If the guest does not answer in time, the caller tries again later.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from typing import Iterable

from .netns import open_tap
from .netplan import (NicChanges, TapSpec, device_id, device_of_netdev, netdev_id, nic_changes,
                      tap_of_device)
from .qemu_argv import NicArgs
from .qmp import QMP, QMPError

log = logging.getLogger(__name__)

UNPLUG_WAIT = 5.0  # seconds to wait for a guest to release a device (after that: the next pass)
_INFO_LINE = re.compile(r"^\s*(?:\\ )?([A-Za-z][\w.-]*): index=\d+,type=(\w+)")


class NicError(Exception):
    """QEMU's NICs could not be brought to what the record says (tried again later).

    ``held``: taps of NICs being unplugged that the QEMU still holds (the guest has not
    released them yet); they must not be removed yet."""

    def __init__(self, message: str, held: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.held = frozenset(held)


def open_fds(netns: str, taps: Iterable[TapSpec]) -> list[tuple[TapSpec, int]]:
    """Open every tap (in ``netns``); on failure the ones opened already are closed."""
    opened: list[tuple[TapSpec, int]] = []
    try:
        for tap in taps:
            opened.append((tap, open_tap(netns, tap.name)))
    except OSError:
        close_fds(fd for _, fd in opened)
        raise
    return opened


def close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def start_args(opened: list[tuple[TapSpec, int]]) -> list[NicArgs]:
    """The NICs of a QEMU command line for taps opened with :func:`open_fds`."""
    return [NicArgs(netdev=f"tap,id={netdev_id(tap.mac)},fd={fd}", netdev_id=netdev_id(tap.mac),
                    mac=tap.mac, fd=fd, device_id=device_id(tap.mac))
            for tap, fd in sorted(opened, key=lambda item: item[0].mac)]


def qemu_nics(qmp: QMP) -> tuple[set[str], set[str]]:
    """The device ids (``/machine/peripheral``) and netdev ids a running QEMU has."""
    devices = {child["name"] for child in qmp.execute("qom-list", {"path": "/machine/peripheral"})
               if str(child.get("type", "")).startswith("child<")}
    netdevs: set[str] = set()
    info = qmp.execute("human-monitor-command", {"command-line": "info network"})
    for line in str(info).splitlines():
        match = _INFO_LINE.match(line)
        if match and match.group(2) != "nic":
            netdevs.add(match.group(1))
    return devices, netdevs


def _send_fd(qmp: QMP, name: str, fd: int) -> None:
    """``getfd``: QEMU keeps ``fd`` (sent as SCM_RIGHTS) under ``name``."""
    if qmp.sock is None:
        raise QMPError("not connected")
    # A whitespace byte carries the descriptor (the JSON parser skips it); QEMU keeps the
    # last descriptor it received until a command such as getfd claims it.
    socket.send_fds(qmp.sock, [b" "], [fd])
    qmp.execute("getfd", {"fdname": name})


def sync(qmp_path: str, netns: str, wanted: Iterable[TapSpec], timeout: float = 5.0,
         unplug_wait: float = UNPLUG_WAIT) -> NicChanges:
    """Bring the running QEMU at ``qmp_path`` to exactly the NICs ``wanted``; returns what
    it changed. Raises :class:`NicError` (or QMPError) when it could not, to be retried:
    a device the guest has not released within ``unplug_wait`` keeps its backend (and
    tap) until a later call finds it gone."""
    with QMP(qmp_path, timeout).connect(wait=timeout) as qmp:
        devices, netdevs = qemu_nics(qmp)
        changes = nic_changes(wanted, devices, netdevs)
        if not changes:
            return changes
        for dev in changes.unplug:
            try:
                qmp.execute("device_del", {"id": dev})
                log.info("QMP %s: device_del %s", qmp_path, dev)
            except QMPError as exc:  # e.g. asked already: whether it went is checked below
                log.info("QMP %s: device_del %s: %s", qmp_path, dev, exc)
        remaining = set(changes.unplug)
        deadline = time.monotonic() + unplug_wait
        while remaining:
            remaining &= qemu_nics(qmp)[0]
            if not remaining or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        for net in changes.drop:
            if device_of_netdev(net) in remaining:
                continue  # its device is still there: the backend stays with it
            qmp.execute("netdev_del", {"id": net})
            log.info("QMP %s: netdev_del %s", qmp_path, net)
        for tap in changes.add_netdevs:
            fd = open_tap(netns, tap.name)
            try:
                name = "fd-" + netdev_id(tap.mac)
                _send_fd(qmp, name, fd)
                try:
                    qmp.execute("netdev_add", {"type": "tap", "id": netdev_id(tap.mac), "fd": name})
                except QMPError:
                    qmp.execute("closefd", {"fdname": name})
                    raise
            finally:
                os.close(fd)
            log.info("QMP %s: netdev_add %s (tap %s)", qmp_path, netdev_id(tap.mac), tap.name)
        for tap in changes.add_devices:
            qmp.execute("device_add", {"driver": "virtio-net-pci", "id": device_id(tap.mac),
                                       "netdev": netdev_id(tap.mac), "mac": tap.mac})
            log.info("QMP %s: device_add %s (mac %s)", qmp_path, device_id(tap.mac), tap.mac)
        if remaining:
            raise NicError(f"the guest has not released {', '.join(sorted(remaining))} yet",
                           held=(tap_of_device(dev) for dev in remaining))
        return changes
