"""The kernel side of a host's networks: read the bridges, VXLANs and taps that exist in
the host's network namespace, and apply the steps of :func:`ucloud_vm.netplan.plan`.

Why this split: the decision (what should exist, which steps) is pure and lives in
:mod:`~ucloud_vm.netplan`; this module is the thin layer of netlink calls (pyroute2)
that observes and changes the kernel, and nothing else. Only interfaces with the names
this layer gives (``ucbr<vni>``, ``ucvx<vni>``, ``uct<mac>``) are ever read as ours or
removed, so an operator's own interfaces in the same namespace are left alone. With an
``owner`` (the host's name) each interface made is also tagged with the alias
``ucloud:<owner>`` and only interfaces carrying that tag count as ours: two vm daemons
that share a namespace by mistake (a dev cloud beside test hosts) then fail loudly on a
clash instead of silently removing each other's bridges.

``reconcile(desired)`` is idempotent: it observes, plans and applies; a second call
finds nothing to do. A step that fails (e.g. an interface that vanished meanwhile)
raises, and the caller's loop tries again from a fresh observation.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any, Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import netns
from .netplan import ANY_MAC, Actual, Desired, Step, TapState, Underlay, VxlanState, is_managed, plan

log = logging.getLogger(__name__)

IFF_UP = 0x1
ENOENT, ESRCH, ENODEV, EEXIST = 2, 3, 19, 17


class NetworkError(Exception):
    """The host's network plumbing cannot be read or changed."""


def _kind(link: Any) -> str:
    info = link.get("IFLA_LINKINFO")
    return (info.get("IFLA_INFO_KIND") if info else None) or ""


class HostNetwork:
    """The managed interfaces in one network namespace (``""``: the daemon's own)."""

    def __init__(self, netns_name: str, underlay: Underlay, owner: str = "") -> None:
        self.netns = netns_name
        self.underlay = underlay
        self.tag = f"ucloud:{owner}" if owner else ""
        self._lock = threading.Lock()

    def _ours(self, link: Any) -> bool:
        return not self.tag or link.get_attr("IFLA_IFALIAS") == self.tag

    def _ipr(self) -> IPRoute:
        try:
            return netns.iproute(self.netns)
        except OSError as exc:
            raise NetworkError(f"network namespace {self.netns!r}: {exc}") from None

    # -- observe --------------------------------------------------------------------------

    def observe(self, ipr: IPRoute | None = None) -> Actual:
        """The managed bridges, VXLANs (with their forwarding peers) and taps that exist."""
        own = ipr is None
        ipr = ipr or self._ipr()
        try:
            links = list(ipr.get_links())
            names = {link["index"]: link.get("ifname") for link in links}
            bridges: dict[str, bool] = {}
            vxlans: dict[str, VxlanState] = {}
            taps: dict[str, TapState] = {}
            for link in links:
                name = link.get("ifname") or ""
                if not is_managed(name) or not self._ours(link):
                    continue
                kind = _kind(link)
                up = bool(link["flags"] & IFF_UP)
                master = names.get(link.get("IFLA_MASTER") or 0, "") or ""
                if kind == "bridge":
                    bridges[name] = up
                elif kind == "vxlan":
                    data = link.get("IFLA_LINKINFO").get("IFLA_INFO_DATA")
                    peers = frozenset(
                        f.get("NDA_DST") for f in ipr.fdb("dump", ifindex=link["index"])
                        if f.get("NDA_LLADDR") == ANY_MAC and f.get("NDA_DST")
                        and f.get("ifindex") == link["index"])
                    vxlans[name] = VxlanState(
                        vni=int(data.get("IFLA_VXLAN_ID") or 0), local=str(data.get("IFLA_VXLAN_LOCAL") or ""),
                        port=int(data.get("IFLA_VXLAN_PORT") or 0), master=master, peers=peers, up=up)
                elif kind == "tun":
                    taps[name] = TapState(master=master, up=up)
            return Actual(bridges, vxlans, taps)
        finally:
            if own:
                ipr.close()

    # -- apply ----------------------------------------------------------------------------

    def _underlay_index(self, ipr: IPRoute) -> int:
        if self.underlay.device:
            found = ipr.link_lookup(ifname=self.underlay.device)
            if not found:
                raise NetworkError(f"underlay device {self.underlay.device!r} does not exist "
                                   f"in namespace {self.netns or '(default)'}")
            return int(found[0])
        want = ipaddress.ip_address(self.underlay.address)
        for addr in ipr.get_addr():
            if addr.get("IFA_ADDRESS") and ipaddress.ip_address(addr.get("IFA_ADDRESS")) == want:
                return int(addr["index"])
        raise NetworkError(f"no device holds the underlay address {self.underlay.address} "
                           f"in namespace {self.netns or '(default)'}")

    def _index(self, ipr: IPRoute, name: str) -> int:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise NetworkError(f"interface {name} vanished")
        return int(found[0])

    def apply(self, steps: list[Step], ipr: IPRoute) -> None:
        for step in steps:
            try:
                self._apply_one(step, ipr)
            except NetlinkError as exc:
                if step.removes and exc.code in (ENOENT, ESRCH, ENODEV):
                    continue  # already gone
                raise NetworkError(f"{step}: {exc}") from None
            log.info("network%s: %s", f"[{self.netns}]" if self.netns else "", step)

    def _claim(self, ipr: IPRoute, name: str) -> None:
        """Tag a just-made interface as ours; refuse one another host's daemon tagged."""
        if not self.tag:
            return
        index = self._index(ipr, name)
        alias = ipr.get_links(index)[0].get_attr("IFLA_IFALIAS") or ""
        if alias and alias != self.tag:
            raise NetworkError(f"{name} exists in namespace {self.netns or '(default)'} and belongs to "
                               f"{alias}: two vm daemons share this namespace (set host_netns)")
        if alias != self.tag:
            ipr.link("set", index=index, ifalias=self.tag)

    def _add(self, ipr: IPRoute, name: str, **kwargs: Any) -> None:
        try:
            ipr.link("add", ifname=name, **kwargs)
        except NetlinkError as exc:
            if exc.code != EEXIST or not self.tag:
                raise
        self._claim(ipr, name)

    def _apply_one(self, step: Step, ipr: IPRoute) -> None:
        op, name = step.op, step.ifname
        if op == "add_bridge":
            self._add(ipr, name, kind="bridge", br_mcast_snooping=0)
        elif op == "add_vxlan":
            self._add(ipr, name, kind="vxlan", vxlan_id=step.vni, vxlan_local=self.underlay.address,
                      vxlan_port=self.underlay.port, vxlan_learning=0, vxlan_link=self._underlay_index(ipr))
        elif op == "add_tap":
            if self.tag and ipr.link_lookup(ifname=name):
                self._claim(ipr, name)  # refuses another daemon's tap before attaching to it
            netns.create_tap(self.netns, name)
            self._claim(ipr, name)
        elif op == "set_master":
            ipr.link("set", index=self._index(ipr, name), master=self._index(ipr, step.master))
        elif op == "unbridge":
            found = ipr.link_lookup(ifname=name)
            if found:
                ipr.link("set", index=int(found[0]), master=0)
        elif op == "set_up":
            ipr.link("set", index=self._index(ipr, name), state="up")
        elif op == "fdb_add":
            ipr.fdb("append", ifindex=self._index(ipr, name), lladdr=ANY_MAC, dst=step.peer)
        elif op == "fdb_del":
            found = ipr.link_lookup(ifname=name)
            if found:
                ipr.fdb("del", ifindex=int(found[0]), lladdr=ANY_MAC, dst=step.peer)
        elif op == "delete":
            found = ipr.link_lookup(ifname=name)
            if found:
                ipr.link("del", index=int(found[0]))
        else:  # pragma: no cover - plan() only makes the ops above
            raise NetworkError(f"unknown step {step}")

    # -- converge -------------------------------------------------------------------------

    def reconcile(self, desired: Desired, *, removals: bool = True, held: Iterable[str] = ()) -> list[Step]:
        """Bring the namespace to ``desired``; returns the steps taken (none when converged).

        ``removals=False`` only creates (used before a VM starts, when the rest of the
        host's state may be older than the VM's record); ``held`` taps are taken off
        their bridge instead of removed (see :func:`~ucloud_vm.netplan.plan`)."""
        with self._lock:
            ipr = self._ipr()
            try:
                steps = plan(desired, self.observe(ipr), self.underlay, removals, held)
                self.apply(steps, ipr)
                return steps
            finally:
                ipr.close()
