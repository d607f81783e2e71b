"""The host side of networks as pure data: what should exist on this host, and the steps
from what exists to that.

Why a separate, pure module: the desired state of a host's network plumbing is a
function of three kinds of records only (the VMs placed here and their NICs, the
networks they use, the other hosts' underlay addresses), and the steps that converge
the kernel's state to it are a diff. Both are plain functions over plain data, so every
case (first VM on a network, a second host joining, the last VM leaving, a changed
underlay) is a table-driven unit test with no namespace, no root and no etcd.
:mod:`ucloud_vm.network` reads the kernel's state, calls :func:`plan` and applies the steps.

For every network (VXLAN id ``vni``) that a VM placed on this host uses:

* a Linux bridge ``ucbr<vni>``;
* a VXLAN interface ``ucvx<vni>`` (id ``vni``, local underlay address, UDP port, no
  learning, no multicast) enslaved to the bridge, with one unicast forwarding entry
  ``00:00:00:00:00:00 dst <peer>`` per other host that has a VM on the same network
  (head-end replication of broadcast/unknown traffic, as ``bridge fdb append`` does);
* one tap per NIC, ``uct<mac as 12 hex digits>``, enslaved to the bridge.

Names are derived from ids the system allocated (the VXLAN id, the MAC), never from a
user's text, and fit the kernel's 15 characters. A MAC that is not a MAC is skipped
(and reported), so a bad record cannot produce a bad interface name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

IFNAME_MAX = 15
BRIDGE_PREFIX = "ucbr"
VXLAN_PREFIX = "ucvx"
TAP_PREFIX = "uct"
MANAGED_PREFIXES = (BRIDGE_PREFIX, VXLAN_PREFIX, TAP_PREFIX)
VNI_MAX = (1 << 24) - 1
ANY_MAC = "00:00:00:00:00:00"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def valid_mac(mac: str) -> bool:
    return bool(_MAC.match(mac.lower()))


def valid_vni(vni: object) -> bool:
    return isinstance(vni, int) and not isinstance(vni, bool) and 1 <= vni <= VNI_MAX


def bridge_name(vni: int) -> str:
    return f"{BRIDGE_PREFIX}{vni}"


def vxlan_name(vni: int) -> str:
    return f"{VXLAN_PREFIX}{vni}"


def tap_name(mac: str) -> str:
    return TAP_PREFIX + mac.lower().replace(":", "")


def netdev_id(mac: str) -> str:
    """QEMU's id of the tap backend of the NIC with ``mac`` (start and hot-plug alike)."""
    return "net" + mac.lower().replace(":", "")


def device_id(mac: str) -> str:
    """QEMU's id of the virtio-net device of the NIC with ``mac``."""
    return "nic" + mac.lower().replace(":", "")


def device_of_netdev(qemu_id: str) -> str:
    """``net<mac>`` -> ``nic<mac>``: the device of a tap backend (ids given here only)."""
    return "nic" + qemu_id[3:]


def tap_of_device(qemu_id: str) -> str:
    """``nic<mac>`` -> ``uct<mac>``: the tap behind a device (ids given here only)."""
    return TAP_PREFIX + qemu_id[3:]


def is_managed(ifname: str) -> bool:
    """True for an interface this layer created (and may therefore remove)."""
    if ifname.startswith(BRIDGE_PREFIX) or ifname.startswith(VXLAN_PREFIX):
        return ifname[4:].isdigit()
    return ifname.startswith(TAP_PREFIX) and len(ifname) == 15 and all(
        c in "0123456789abcdef" for c in ifname[3:])


# -- inputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VmNics:
    """A VM as far as the network is concerned: where it is placed and its NICs."""

    vm_id: str
    host: str  # bare host name ("h1"); "" when not placed
    nics: tuple[tuple[str, str], ...]  # (network id, mac)
    owner: str = ""


@dataclass(frozen=True)
class Underlay:
    """This host's VXLAN underlay: local address, UDP port and device ("" = any)."""

    address: str
    port: int = 4789
    device: str = ""


# -- desired state --------------------------------------------------------------------


@dataclass(frozen=True)
class BridgeSpec:
    vni: int
    peers: frozenset[str] = frozenset()  # underlay addresses of the other hosts on this network

    @property
    def bridge(self) -> str:
        return bridge_name(self.vni)

    @property
    def vxlan(self) -> str:
        return vxlan_name(self.vni)


@dataclass(frozen=True)
class TapSpec:
    name: str
    bridge: str
    vm_id: str
    network: str
    mac: str


@dataclass(frozen=True)
class Desired:
    bridges: Mapping[str, BridgeSpec] = field(default_factory=dict)  # by bridge name
    taps: Mapping[str, TapSpec] = field(default_factory=dict)  # by tap name
    skipped: tuple[str, ...] = ()  # NICs left out, and why (for the log)

    def taps_of(self, vm_id: str) -> list[TapSpec]:
        return [t for t in self.taps.values() if t.vm_id == vm_id]


def desired_state(host: str, vms: Iterable[VmNics], vnis: Mapping[str, object],
                  addresses: Mapping[str, str], owners: Mapping[str, str] | None = None) -> Desired:
    """What should exist on ``host``.

    ``vnis`` maps a network id to its VXLAN id (networks unknown here are skipped: the
    record may not have reached this host yet); ``addresses`` maps host names to their
    underlay address. With ``owners`` (network id -> owner), a NIC of a VM on another
    owner's network is skipped too: the API never allows it, and a host does not
    bridge two users together because of a bad record.
    """
    vms = list(vms)
    skipped: list[str] = []
    taps: dict[str, TapSpec] = {}
    local_vnis: set[int] = set()
    for vm in vms:
        if vm.host != host:
            continue
        for network, mac in vm.nics:
            vni = vnis.get(network)
            if not valid_vni(vni):
                skipped.append(f"VM {vm.vm_id}: network {network!r} is unknown or has no valid VXLAN id")
                continue
            if owners is not None and owners.get(network) != vm.owner:
                skipped.append(f"VM {vm.vm_id}: network {network!r} belongs to another owner")
                continue
            if not valid_mac(mac):
                skipped.append(f"VM {vm.vm_id}: {mac!r} is not a MAC address")
                continue
            assert isinstance(vni, int)
            name = tap_name(mac)
            if name in taps:
                skipped.append(f"VM {vm.vm_id}: MAC {mac} is used twice")
                continue
            taps[name] = TapSpec(name, bridge_name(vni), vm.vm_id, network, mac.lower())
            local_vnis.add(vni)
    own = addresses.get(host, "")
    peers: dict[int, set[str]] = {vni: set() for vni in local_vnis}
    for vm in vms:
        if not vm.host or vm.host == host:
            continue
        address = addresses.get(vm.host, "")
        if not address or address == own:
            continue
        for network, _mac in vm.nics:
            vni = vnis.get(network)
            if owners is not None and owners.get(network) != vm.owner:
                continue
            if isinstance(vni, int) and vni in peers:
                peers[vni].add(address)
    bridges = {bridge_name(v): BridgeSpec(v, frozenset(p)) for v, p in peers.items()}
    return Desired(bridges, taps, tuple(skipped))


# -- actual state (as read from the kernel by network.py) -----------------------------


@dataclass(frozen=True)
class VxlanState:
    vni: int
    local: str
    port: int
    master: str  # the bridge it is enslaved to ("" if none)
    peers: frozenset[str]  # dst of the all-zero FDB entries
    up: bool = True


@dataclass(frozen=True)
class TapState:
    master: str
    up: bool = True


@dataclass(frozen=True)
class Actual:
    bridges: Mapping[str, bool] = field(default_factory=dict)  # name -> up
    vxlans: Mapping[str, VxlanState] = field(default_factory=dict)
    taps: Mapping[str, TapState] = field(default_factory=dict)


# -- steps ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One change to the kernel's state. ``op`` is one of the names below."""

    op: str  # add_bridge | add_vxlan | add_tap | set_master | set_up | fdb_add | fdb_del | unbridge | delete
    ifname: str
    vni: int = 0
    master: str = ""
    peer: str = ""

    @property
    def removes(self) -> bool:
        return self.op in ("delete", "fdb_del", "unbridge")

    def __str__(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in (("vni", self.vni), ("master", self.master),
                                                   ("peer", self.peer)) if v)
        return f"{self.op} {self.ifname}" + (f" {extra}" if extra else "")


def plan(desired: Desired, actual: Actual, underlay: Underlay, removals: bool = True,
         held: Iterable[str] = ()) -> list[Step]:
    """The steps from ``actual`` to ``desired``: creations first (bridges, then VXLANs,
    then taps), removals last (taps, then VXLANs, then bridges). Empty when converged.

    ``removals=False`` leaves out the removals (a VXLAN whose parameters changed is
    still replaced: it is needed as desired). ``held`` names unwanted taps that a QEMU
    still holds (its guest has not released the NIC yet): they are only taken off their
    bridge, so the VM is cut off at once, and removed in a later pass."""
    adds: list[Step] = []
    removes: list[Step] = []
    for name, spec in sorted(desired.bridges.items()):
        if name not in actual.bridges:
            adds += [Step("add_bridge", name), Step("set_up", name)]
        elif not actual.bridges[name]:
            adds.append(Step("set_up", name))
    for _, spec in sorted(desired.bridges.items()):
        have = actual.vxlans.get(spec.vxlan)
        if have is not None and (have.vni != spec.vni or have.port != underlay.port
                                 or have.local != underlay.address):
            adds.append(Step("delete", spec.vxlan))  # recreated below with the right parameters
            have = None
        if have is None:
            adds += [Step("add_vxlan", spec.vxlan, vni=spec.vni),
                     Step("set_master", spec.vxlan, master=spec.bridge), Step("set_up", spec.vxlan)]
            adds += [Step("fdb_add", spec.vxlan, peer=p) for p in sorted(spec.peers)]
            continue
        if have.master != spec.bridge:
            adds.append(Step("set_master", spec.vxlan, master=spec.bridge))
        if not have.up:
            adds.append(Step("set_up", spec.vxlan))
        adds += [Step("fdb_add", spec.vxlan, peer=p) for p in sorted(spec.peers - have.peers)]
        removes += [Step("fdb_del", spec.vxlan, peer=p) for p in sorted(have.peers - spec.peers)]
    for name, tap in sorted(desired.taps.items()):
        have_tap = actual.taps.get(name)
        if have_tap is None:
            adds += [Step("add_tap", name), Step("set_master", name, master=tap.bridge), Step("set_up", name)]
            continue
        if have_tap.master != tap.bridge:
            adds.append(Step("set_master", name, master=tap.bridge))
        if not have_tap.up:
            adds.append(Step("set_up", name))
    if not removals:
        return adds
    wanted_vxlans = {spec.vxlan for spec in desired.bridges.values()}
    held = set(held)
    for name, tap_state in sorted(actual.taps.items()):
        if name in desired.taps:
            continue
        if name not in held:
            removes.append(Step("delete", name))
        elif tap_state.master:
            removes.append(Step("unbridge", name))
    removes += [Step("delete", name) for name in sorted(actual.vxlans) if name not in wanted_vxlans]
    removes += [Step("delete", name) for name in sorted(actual.bridges) if name not in desired.bridges]
    return adds + removes


# -- a running QEMU's NICs ------------------------------------------------------------


def is_managed_qemu_id(qemu_id: str) -> bool:
    """True for a QEMU netdev/device id this layer gave (``net``/``nic`` + 12 hex digits)."""
    return qemu_id[:3] in ("net", "nic") and len(qemu_id) == 15 and all(
        c in "0123456789abcdef" for c in qemu_id[3:])


@dataclass(frozen=True)
class NicChanges:
    """How to bring a running QEMU's NICs to what the VM record says, in this order:
    ``unplug`` devices (``device_del``, which the guest acknowledges), then ``drop`` their
    backends (``netdev_del``), then ``add_netdevs`` (``getfd`` + ``netdev_add``) and
    ``add_devices`` (``device_add``). ``add_*`` hold the NICs' taps."""

    unplug: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    add_netdevs: tuple[TapSpec, ...] = ()
    add_devices: tuple[TapSpec, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.unplug or self.drop or self.add_netdevs or self.add_devices)


def nic_changes(wanted: Iterable[TapSpec], devices: Iterable[str], netdevs: Iterable[str]) -> NicChanges:
    """Diff the NICs a VM should have (``wanted``) against the device and netdev ids its
    QEMU has. Ids this layer did not give are never touched."""
    wanted = sorted(wanted, key=lambda t: t.mac)
    devices = {d for d in devices if is_managed_qemu_id(d)}
    netdevs = {n for n in netdevs if is_managed_qemu_id(n)}
    want_devices = {device_id(t.mac) for t in wanted}
    want_netdevs = {netdev_id(t.mac) for t in wanted}
    return NicChanges(
        unplug=tuple(sorted(devices - want_devices)),
        drop=tuple(sorted(netdevs - want_netdevs)),
        add_netdevs=tuple(t for t in wanted if netdev_id(t.mac) not in netdevs),
        add_devices=tuple(t for t in wanted if device_id(t.mac) not in devices),
    )
