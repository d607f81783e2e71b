"""What the API does with networks, as plain functions over a :class:`Store` — no Flask.

Records (DESIGN.md §2, issue 7):

* ``/v1/network/<uuid>`` — :class:`~ucloud_common.models.Network`: ``owner``, ``name``
  (the user's label), ``vni``, optional ``ipv6_prefix``/``ipv4_subnet``, ``created``,
  and ``attached`` {vm id: mac}.
* ``/v1/vxlan/<vni>`` — ``{"network": <uuid>}``: created if absent in the same
  transaction as the network, so a VXLAN id is never handed out twice.
* ``/v1/netname/<realm>/<name>/<label>`` — ``{"network": <uuid>}``: makes a label unique
  per user, so ``network`` in a request may be the id or the label.
* ``/v1/mac/<mac>`` — ``{"vm", "network"}``: created if absent in the same transaction
  as the NIC, so a MAC is never handed out twice.
* the VM record's ``networks``: ``[{"network": <uuid>, "mac": ...}]`` — what the hosts act on.

Why ``attached`` lives in the network record: attach and detach write the VM record,
the MAC key *and* the network record in one compare-and-swap transaction, and delete
compares the network record's revision. So an attach racing a delete either lands
first (delete then sees it: 409) or finds the network gone (404); no NIC can point at
a deleted network. The price is that attaches to one network serialise on its record,
which is fine at the rate networks change. A VM record removed by its host (a deleted
VM) leaves a stale entry behind; it counts as detached, and delete cleans it up.

Free ids are picked at random (24-bit VNIs, 40-bit MACs: collisions are rare); after a
collision the taken ids are listed and a free one is chosen, so even a nearly full
space allocates correctly.
"""

from __future__ import annotations

import ipaddress
import json
import random
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from ucloud_common.keys import (MAC_PREFIX, NETWORK_PREFIX, VM_PREFIX, VXLAN_PREFIX, mac_key, name_from_key,
                                netname_key, network_key, vm_key, vxlan_key)
from ucloud_common.macs import free_mac_ops
from ucloud_common.models import NIC, VM, VNI_MAX, VNI_MIN, ModelError, Network, VMStatus
from ucloud_common.store import Compare, Conflict, Delete, Op, Put, Store, Unavailable

from .services import InvalidState, NotFound, ServiceError, get_vm

MAX_NICS = 8  # per VM
ATTEMPTS = 64  # compare-and-swap rounds before giving up (attaches to one network serialise)
MAC_BITS = 40  # 02:xx:xx:xx:xx:xx — locally administered, unicast
MAC_SPACE = (0, 2**MAC_BITS - 1)
VNI_SPACE = (VNI_MIN, VNI_MAX)

_rng = random.SystemRandom()


class Exhausted(ServiceError):
    """No free VXLAN id or MAC is left in the space (409)."""


# -- pure helpers ---------------------------------------------------------------------------


def mac_of(number: int) -> str:
    """A MAC from its low 40 bits: ``02:`` (locally administered, unicast) + 5 bytes."""
    return "02:" + ":".join(f"{b:02x}" for b in number.to_bytes(5, "big"))


def number_of_mac(mac: str) -> int:
    return int(mac.replace(":", "")[2:], 16)


def pick_free(space: tuple[int, int], taken: Iterable[int], rng: random.Random = _rng) -> int | None:
    """A random number in ``space`` (inclusive) not in ``taken``; None if there is none."""
    lo, hi = space
    taken = {t for t in taken if lo <= t <= hi}
    size = hi - lo + 1
    if len(taken) >= size:
        return None
    if len(taken) * 2 < size:  # mostly free: guess until a free one comes up (expected < 2 draws)
        while True:
            n = rng.randint(lo, hi)
            if n not in taken:
                return n
    return rng.choice([n for n in range(lo, hi + 1) if n not in taken])


def check_prefix(field: str, text: str | None, version: int) -> str:
    """``text`` as a normalised IPv``version`` network (``fd00:1::/64``, ``10.0.0.0/24``); "" for None."""
    if text is None:
        return ""
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ModelError(field, f"not a network prefix: {exc}") from None
    if net.version != version:
        raise ModelError(field, f"must be an IPv{version} prefix")
    shortest, longest = (8, 126) if version == 6 else (8, 30)
    if not shortest <= net.prefixlen <= longest:
        raise ModelError(field, f"prefix length must be between /{shortest} and /{longest}")
    return str(net)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def check_label(label: str) -> str:
    if _is_uuid(label):
        raise ModelError("network", "a label must not look like a network id (a UUID)")
    return label


def network_view(net: Network, vms: Iterable[str] | None = None) -> dict[str, Any]:
    """What a user sees of a network (``schemas.NetworkOut``)."""
    return {"id": net.id, "name": net.name, "owner": net.owner, "vni": net.vni,
            "ipv6_prefix": net.ipv6_prefix, "ipv4_subnet": net.ipv4_subnet, "created": net.created,
            "vms": sorted(net.attached if vms is None else vms)}


# -- reading -----------------------------------------------------------------------------------


def _read(store: Store, network_id: str) -> Network | None:
    entry = store.get(network_key(network_id))
    if entry is None:
        return None
    try:
        return Network.from_json(network_id, entry.value, entry.mod_revision)
    except ModelError as exc:
        raise RuntimeError(f"network record {network_id} is damaged: {exc}") from None


def get_network(store: Store, owner: str, ref: str, field: str = "network") -> Network:
    """The owner's network named by id or label; :class:`NotFound` otherwise (also for others')."""
    net: Network | None = None
    if ref and "/" not in ref:
        if _is_uuid(ref):
            net = _read(store, ref)
        if net is None or net.owner != owner:
            index = store.get(netname_key(owner, ref))
            net = _read(store, json.loads(index.value)["network"]) if index is not None else None
    if net is None or net.owner != owner:
        raise NotFound(f"no network {ref!r}", field)
    return net


def list_networks(store: Store, owner: str) -> list[dict[str, Any]]:
    """The owner's networks, oldest first, each with the ids of the VMs attached to it
    (read from the VM records, so a VM its host has deleted is not listed)."""
    entries, _ = store.list(NETWORK_PREFIX)
    nets = []
    for entry in entries:
        try:
            net = Network.from_json(name_from_key(entry.key, NETWORK_PREFIX), entry.value, entry.mod_revision)
        except ModelError:
            continue
        if net.owner == owner:
            nets.append(net)
    attached: dict[str, set[str]] = {net.id: set() for net in nets}
    if nets:
        for entry in store.list(VM_PREFIX)[0]:
            try:
                vm = VM.from_json(name_from_key(entry.key, VM_PREFIX), entry.value)
            except ModelError:
                continue
            for nic in vm.networks:
                if nic.network in attached and vm.owner == owner:
                    attached[nic.network].add(vm.id)
    return [network_view(net, attached[net.id]) for net in sorted(nets, key=lambda n: (n.created, n.id))]


# -- create and delete -------------------------------------------------------------------------


def create_network(store: Store, owner: str, label: str, *, ipv6_prefix: str | None = None,
                   ipv4_subnet: str | None = None, vni_space: tuple[int, int] = VNI_SPACE,
                   now: Callable[[], float] = time.time) -> Network:
    """A new network with a VXLAN id nobody else holds; 409 if the label is taken."""
    label = check_label(label)
    v6 = check_prefix("ipv6_prefix", ipv6_prefix, 6)
    v4 = check_prefix("ipv4_subnet", ipv4_subnet, 4)
    name_key = netname_key(owner, label)
    taken: set[int] = set()
    for _ in range(ATTEMPTS):
        vni = pick_free(vni_space, taken)
        if vni is None:
            raise Exhausted(f"no free VXLAN id left in {vni_space[0]}..{vni_space[1]}", "network")
        net = Network(id=str(uuid.uuid4()), owner=owner, name=label, vni=vni, ipv6_prefix=v6, ipv4_subnet=v4,
                      created=round(now(), 3))
        pointer = json.dumps({"network": net.id}).encode()
        try:
            revision = store.txn(
                [Compare(network_key(net.id), 0), Compare(vxlan_key(vni), 0), Compare(name_key, 0)],
                [Put(network_key(net.id), net.to_json()), Put(vxlan_key(vni), pointer), Put(name_key, pointer)])
            return replace(net, mod_revision=revision)
        except Conflict as exc:
            if name_key in exc.keys:
                raise InvalidState(f"you already have a network named {label!r}", "network") from None
            taken = {int(name_from_key(e.key, VXLAN_PREFIX)) for e in store.list(VXLAN_PREFIX)[0]
                     if name_from_key(e.key, VXLAN_PREFIX).isdigit()}
    raise Unavailable(f"could not allocate a VXLAN id in {ATTEMPTS} attempts")


def _nic_truly_on(store: Store, vm_id: str, network_id: str) -> tuple[bool, int]:
    """Whether VM ``vm_id`` has a NIC on the network, and the VM record's revision (0: gone)."""
    entry = store.get(vm_key(vm_id))
    if entry is None:
        return False, 0
    try:
        vm = VM.from_json(vm_id, entry.value, entry.mod_revision)
    except ModelError:
        return False, entry.mod_revision
    return any(nic.network == network_id for nic in vm.networks), entry.mod_revision


def delete_network(store: Store, owner: str, ref: str) -> str:
    """Remove the network, its VXLAN id and label; 409 while a VM is attached. Returns its id.

    Entries of VMs deleted meanwhile by their host are dropped (and their MACs freed),
    comparing that those VM records are still as seen.
    """
    for _ in range(ATTEMPTS):
        net = get_network(store, owner, ref)
        compares = [Compare(network_key(net.id), net.mod_revision)]
        ops: list[Op] = [Delete(network_key(net.id)), Delete(vxlan_key(net.vni)),
                         Delete(netname_key(owner, net.name))]
        busy = []
        for vm_id, mac in sorted(net.attached.items()):
            on, revision = _nic_truly_on(store, vm_id, net.id)
            if on:
                busy.append(vm_id)
                continue
            compares.append(Compare(vm_key(vm_id), revision))
            ops.extend(free_mac_ops(store, mac, vm_id, compares))
        if busy:
            raise InvalidState(f"network {net.name!r} still has VMs attached: {', '.join(busy)} "
                               f"(detach them first)", "network")
        try:
            store.txn(compares, ops)
            return net.id
        except Conflict:
            continue
    raise Unavailable(f"network {ref} kept changing during {ATTEMPTS} attempts")


# -- attach and detach -------------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    vm: VM
    network: Network
    mac: str


def attach(store: Store, owner: str, vm_id: str, ref: str, *, mac_space: tuple[int, int] = MAC_SPACE) -> Attachment:
    """Give the VM a NIC on the network with a MAC nobody else holds.

    One transaction writes the VM record (``networks`` + an event), the network's
    ``attached`` and ``/v1/mac/<mac>``, comparing all three; the VM's host then
    hot-plugs the NIC (or adds it at the next start).
    """
    taken: set[int] = set()
    for _ in range(ATTEMPTS):
        net = get_network(store, owner, ref)
        vm = get_vm(store, owner, vm_id, "vmid")
        if vm.status is VMStatus.REQUESTED_DELETE:
            raise InvalidState(f"VM {vm_id} is being deleted", "vmid")
        existing = [nic.mac for nic in vm.networks if nic.network == net.id]
        if existing:
            raise InvalidState(f"VM {vm_id} is already attached to network {net.name!r} (mac {existing[0]})",
                               "network")
        if len(vm.networks) >= MAX_NICS:
            raise InvalidState(f"VM {vm_id} already has {MAX_NICS} NICs, the most a VM can have", "vmid")
        number = pick_free(mac_space, taken)
        if number is None:
            raise Exhausted("no free MAC address left", "network")
        mac = mac_of(number)
        new_vm = vm.with_event(f"NIC {mac} on network {net.name} attached",
                               networks=vm.networks + (NIC(net.id, mac),))
        new_net = replace(net, attached={**net.attached, vm.id: mac})
        record = json.dumps({"vm": vm.id, "network": net.id}).encode()
        try:
            store.txn([Compare(vm_key(vm.id), vm.mod_revision), Compare(network_key(net.id), net.mod_revision),
                       Compare(mac_key(mac), 0)],
                      [Put(vm_key(vm.id), new_vm.to_json()), Put(network_key(net.id), new_net.to_json()),
                       Put(mac_key(mac), record)])
            return Attachment(new_vm, new_net, mac)
        except Conflict as exc:
            if mac_key(mac) in exc.keys:
                taken = {number_of_mac(name_from_key(e.key, MAC_PREFIX)) for e in store.list(MAC_PREFIX)[0]
                         if name_from_key(e.key, MAC_PREFIX).startswith("02:")}
            _backoff()
    raise Unavailable(f"VM {vm_id} or network {ref} kept changing during {ATTEMPTS} attempts")


def detach(store: Store, owner: str, vm_id: str, ref: str) -> Attachment:
    """Remove the VM's NIC on the network and free its MAC, in one transaction."""
    for _ in range(ATTEMPTS):
        net = get_network(store, owner, ref)
        vm = get_vm(store, owner, vm_id, "vmid")
        nics = [nic for nic in vm.networks if nic.network == net.id]
        if not nics:
            raise InvalidState(f"VM {vm_id} is not attached to network {net.name!r}", "network")
        mac = nics[0].mac
        new_vm = vm.with_event(f"NIC {mac} on network {net.name} detached",
                               networks=tuple(nic for nic in vm.networks if nic.network != net.id))
        new_net = replace(net, attached={k: v for k, v in net.attached.items() if k != vm.id})
        compares = [Compare(vm_key(vm.id), vm.mod_revision), Compare(network_key(net.id), net.mod_revision)]
        ops: list[Op] = [Put(vm_key(vm.id), new_vm.to_json()), Put(network_key(net.id), new_net.to_json())]
        for nic in nics:
            ops.extend(free_mac_ops(store, nic.mac, vm.id, compares))
        try:
            store.txn(compares, ops)
            return Attachment(new_vm, new_net, mac)
        except Conflict:
            _backoff()
    raise Unavailable(f"VM {vm_id} or network {ref} kept changing during {ATTEMPTS} attempts")


def release_vm_ops(store: Store, vm: VM, compares: list[Compare]) -> list[Op]:
    """Ops (and compares, appended) that drop a VM being deleted from its networks and free its
    MACs — for a delete that removes the VM record itself, in the same transaction."""
    ops: list[Op] = []
    for nic in vm.networks:
        net = _read(store, nic.network)
        if net is not None and vm.id in net.attached:
            compares.append(Compare(network_key(net.id), net.mod_revision))
            ops.append(Put(network_key(net.id),
                           replace(net, attached={k: v for k, v in net.attached.items() if k != vm.id}).to_json()))
        ops.extend(free_mac_ops(store, nic.mac, vm.id, compares))
    return ops


def _backoff() -> None:
    time.sleep(_rng.uniform(0.001, 0.02))
