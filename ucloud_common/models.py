"""Typed, immutable records for what lives in etcd: VMs, hosts, allocations, networks.

The seed's JSON shapes are the contract (DESIGN.md §2): field names are kept, fields
are only ever added. Records are frozen dataclasses that remember the etcd
``mod_revision`` they were read at, so every write can be a compare-and-swap against
exactly what was read. Fields this version does not know are kept in ``extra`` and
written back untouched, so an older daemon never drops what a newer one added.

Changing a record means ``dataclasses.replace(record, ...)``; nothing mutates in place.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import Any, Mapping

from .keys import HOST_PREFIX, host_key, name_from_key
from .units import SizeError, format_size, parse_size

MAX_EVENTS = 20


class ModelError(ValueError):
    """A record or request that does not have the shape of the model. ``field`` names the culprit."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class VMStatus(str, Enum):
    """Where a VM is in its life cycle (DESIGN.md §2). Every REQUESTED_* has exactly one owner."""

    REQUESTED_NEW = "REQUESTED_NEW"  # scheduler places it
    SCHEDULED_DEPLOY = "SCHEDULED_DEPLOY"  # vm daemon of `hostname` starts it
    RUNNING = "RUNNING"
    REQUESTED_STOP = "REQUESTED_STOP"  # vm daemon stops it
    STOPPED = "STOPPED"
    REQUESTED_START = "REQUESTED_START"  # vm daemon starts it again on its host
    REQUESTED_REBOOT = "REQUESTED_REBOOT"  # vm daemon resets it
    REQUESTED_DELETE = "REQUESTED_DELETE"  # vm daemon (or api, if never placed) removes it
    KILLED = "KILLED"  # QEMU died; vm daemon restarts it
    ERROR = "ERROR"  # gave up; `reason` says why
    HOST_LOST = "HOST_LOST"  # its host died and its disk was local to that host

    @classmethod
    def parse(cls, value: object) -> "VMStatus":
        if value == "REQUEST_DELETE":  # the seed's spelling of REQUESTED_DELETE
            return cls.REQUESTED_DELETE
        try:
            return cls(value)
        except ValueError:
            raise ModelError("status", f"unknown VM status {value!r}") from None


class HostStatus(str, Enum):
    UP = "UP"
    DOWN = "DOWN"
    DRAINING = "DRAINING"  # an operator keeps new VMs off it

    @classmethod
    def parse(cls, value: object) -> "HostStatus":
        try:
            return cls(value)
        except ValueError:
            raise ModelError("status", f"unknown host status {value!r}") from None


RESOURCES = ("cpu", "ram", "hdd", "ssd")


@dataclass(frozen=True)
class Specs:
    """Resources: ``cpu`` is a count of vCPUs; ``ram``, ``hdd`` and ``ssd`` are bytes."""

    cpu: int = 0
    ram: int = 0
    hdd: int = 0
    ssd: int = 0

    @classmethod
    def from_dict(cls, data: object, where: str = "specs") -> "Specs":
        if not isinstance(data, Mapping):
            raise ModelError(where, "must be an object with cpu, ram, hdd and ssd")
        unknown = set(data) - set(RESOURCES)
        if unknown:
            raise ModelError(f"{where}.{sorted(unknown)[0]}", "unknown field")
        values: dict[str, int] = {}
        cpu = data.get("cpu", 0)
        if isinstance(cpu, bool) or not isinstance(cpu, int):
            if isinstance(cpu, float) and cpu.is_integer():
                cpu = int(cpu)
            else:
                raise ModelError(f"{where}.cpu", "must be a whole number of vCPUs")
        if cpu < 0:
            raise ModelError(f"{where}.cpu", "must not be negative")
        values["cpu"] = cpu
        for name in ("ram", "hdd", "ssd"):
            try:
                values[name] = parse_size(data.get(name, 0))
            except SizeError as exc:
                raise ModelError(f"{where}.{name}", str(exc)) from None
        return cls(**values)

    def to_dict(self) -> dict[str, int | str]:
        return {"cpu": self.cpu, "ram": format_size(self.ram),
                "hdd": format_size(self.hdd), "ssd": format_size(self.ssd)}

    def __add__(self, other: "Specs") -> "Specs":
        return Specs(*(getattr(self, r) + getattr(other, r) for r in RESOURCES))

    def __sub__(self, other: "Specs") -> "Specs":
        return Specs(*(getattr(self, r) - getattr(other, r) for r in RESOURCES))

    def fits_in(self, free: "Specs") -> bool:
        return all(getattr(self, r) <= getattr(free, r) for r in RESOURCES)


@dataclass(frozen=True)
class Event:
    """One line of a VM's short log: when (epoch seconds) and what happened."""

    time: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"time": round(self.time, 3), "message": self.message}

    @classmethod
    def from_dict(cls, data: object) -> "Event":
        if not isinstance(data, Mapping) or not isinstance(data.get("message"), str):
            raise ModelError("events", "each event needs a message")
        return cls(float(data.get("time", 0.0)), data["message"])


@dataclass(frozen=True)
class NIC:
    """A VM's network interface: which network (its id) and the MAC allocated to it."""

    network: str
    mac: str

    def to_dict(self) -> dict[str, str]:
        return {"network": self.network, "mac": self.mac}

    @classmethod
    def from_dict(cls, data: object) -> "NIC":
        if not isinstance(data, Mapping) or not isinstance(data.get("network"), str) \
                or not isinstance(data.get("mac"), str):
            raise ModelError("networks", "each NIC needs a network and a mac")
        return cls(data["network"], data["mac"])


def _frozen(extra: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(extra))


_VM_FIELDS = ("owner", "specs", "hostname", "status", "name", "image", "networks",
              "events", "reason", "created", "storage")


@dataclass(frozen=True)
class VM:
    """A VM record (``/v1/vm/<id>``), the seed's shape plus what the daemons need."""

    id: str
    owner: str
    specs: Specs
    hostname: str = ""  # the host's key, e.g. "/v1/host/node1"; "" until placed
    status: VMStatus = VMStatus.REQUESTED_NEW
    name: str = ""  # the user's label for it
    image: str = ""
    networks: tuple[NIC, ...] = ()
    events: tuple[Event, ...] = ()
    reason: str = ""  # why the last thing failed (or why it is not placed)
    created: float = 0.0
    storage: str = ""  # backend holding its disks once created: "file" (local to the host) or "rbd" (shared)
    extra: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))
    mod_revision: int = 0

    @property
    def host_name(self) -> str:
        """The bare host name of ``hostname`` ("node1"), or "" when unplaced."""
        return name_from_key(self.hostname, HOST_PREFIX) if self.hostname else ""

    def with_event(self, message: str, now: float | None = None, **changes: Any) -> "VM":
        """A copy with ``changes`` applied and ``message`` appended to the short log."""
        event = Event(time.time() if now is None else now, message)
        events = (self.events + (event,))[-MAX_EVENTS:]
        return replace(self, events=events, **changes)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.extra)
        data.update({
            "owner": self.owner,
            "specs": self.specs.to_dict(),
            "hostname": self.hostname,
            "status": self.status.value,
            "name": self.name,
            "image": self.image,
            "networks": [nic.to_dict() for nic in self.networks],
            "events": [event.to_dict() for event in self.events],
            "reason": self.reason,
            "created": self.created,
            "storage": self.storage,
        })
        return data

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, vm_id: str, data: object, mod_revision: int = 0) -> "VM":
        if not isinstance(data, Mapping):
            raise ModelError("vm", "record must be a JSON object")
        owner = data.get("owner")
        if not isinstance(owner, str):
            raise ModelError("owner", "must be a string")
        hostname = data.get("hostname", "")
        if not isinstance(hostname, str):
            raise ModelError("hostname", "must be a string")
        networks = data.get("networks") or []
        events = data.get("events") or []
        if not isinstance(networks, list) or not isinstance(events, list):
            raise ModelError("networks", "networks and events must be lists")
        return cls(
            id=vm_id,
            owner=owner,
            specs=Specs.from_dict(data.get("specs", {})),
            hostname=hostname,
            status=VMStatus.parse(data.get("status", VMStatus.REQUESTED_NEW.value)),
            name=str(data.get("name", "")),
            image=str(data.get("image", "")),
            networks=tuple(NIC.from_dict(n) for n in networks),
            events=tuple(Event.from_dict(e) for e in events),
            reason=str(data.get("reason", "")),
            created=float(data.get("created", 0.0) or 0.0),
            storage=str(data.get("storage", "")),
            extra=_frozen({k: v for k, v in data.items() if k not in _VM_FIELDS}),
            mod_revision=mod_revision,
        )

    @classmethod
    def from_json(cls, vm_id: str, raw: bytes | str, mod_revision: int = 0) -> "VM":
        return cls.from_dict(vm_id, _loads(raw), mod_revision)


_HOST_FIELDS = ("cpu", "ram", "hdd", "ssd", "status", "address", "lease_ttl")


@dataclass(frozen=True)
class Host:
    """A compute host (``/v1/host/<name>``): its capacity, status and underlay address."""

    name: str
    capacity: Specs
    status: HostStatus = HostStatus.UP
    address: str = ""  # underlay address other hosts use for VXLAN
    lease_ttl: int = 10  # seconds: how long after its last renewal the host has fenced itself
    extra: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))
    mod_revision: int = 0

    @property
    def key(self) -> str:
        return host_key(self.name)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.extra)
        data.update(self.capacity.to_dict())
        data["status"] = self.status.value
        data["address"] = self.address
        data["lease_ttl"] = self.lease_ttl
        return data

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, name: str, data: object, mod_revision: int = 0) -> "Host":
        if not isinstance(data, Mapping):
            raise ModelError("host", "record must be a JSON object")
        capacity = Specs.from_dict({r: data.get(r, 0) for r in RESOURCES}, where="host")
        return cls(
            name=name,
            capacity=capacity,
            status=HostStatus.parse(data.get("status", HostStatus.UP.value)),
            address=str(data.get("address", "")),
            lease_ttl=int(data.get("lease_ttl", 10)),
            extra=_frozen({k: v for k, v in data.items() if k not in _HOST_FIELDS}),
            mod_revision=mod_revision,
        )

    @classmethod
    def from_json(cls, name: str, raw: bytes | str, mod_revision: int = 0) -> "Host":
        return cls.from_dict(name, _loads(raw), mod_revision)


@dataclass(frozen=True)
class Allocation:
    """What the scheduler has promised on one host: the specs of each VM placed there.

    Kept per host (``/v1/alloc/<host>``) and written in the same transaction as the
    placement, so its ``mod_revision`` is the host's generation (as in Placement).
    """

    host: str
    vms: Mapping[str, Specs] = field(default_factory=lambda: _frozen({}))
    mod_revision: int = 0

    @property
    def used(self) -> Specs:
        total = Specs()
        for specs in self.vms.values():
            total = total + specs
        return total

    def with_vm(self, vm_id: str, specs: Specs) -> "Allocation":
        return replace(self, vms=_frozen({**self.vms, vm_id: specs}))

    def without_vm(self, vm_id: str) -> "Allocation":
        return replace(self, vms=_frozen({k: v for k, v in self.vms.items() if k != vm_id}))

    def to_dict(self) -> dict[str, Any]:
        used = self.used
        return {"used": used.to_dict(), "vms": {k: v.to_dict() for k, v in sorted(self.vms.items())}}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, host: str, raw: bytes | str, mod_revision: int = 0) -> "Allocation":
        data = _loads(raw)
        vms = data.get("vms", {}) if isinstance(data, Mapping) else {}
        return cls(host, _frozen({k: Specs.from_dict(v) for k, v in vms.items()}), mod_revision)


VNI_MIN = 1
VNI_MAX = 2**24 - 1  # VXLAN network identifiers are 24 bits; 0 is not used

_NETWORK_FIELDS = ("owner", "name", "vni", "ipv6_prefix", "ipv4_subnet", "created", "attached")


@dataclass(frozen=True)
class Network:
    """A user's network (``/v1/network/<id>``): a VXLAN segment that VM NICs join.

    ``vni`` is unique across the cloud (``/v1/vxlan/<vni>`` is created in the same
    transaction). ``attached`` maps VM id -> MAC of each NIC on this network; the API
    writes it in the same transaction as the VM record's ``networks``, so deleting a
    network can compare one revision. The VM records stay the truth for the hosts.
    """

    id: str
    owner: str
    name: str  # the user's label, unique per owner
    vni: int
    ipv6_prefix: str = ""  # e.g. "fd00:1::/64", "" for none
    ipv4_subnet: str = ""  # e.g. "10.0.0.0/24", "" for none
    created: float = 0.0
    attached: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    extra: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))
    mod_revision: int = 0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.extra)
        data.update({"owner": self.owner, "name": self.name, "vni": self.vni, "ipv6_prefix": self.ipv6_prefix,
                     "ipv4_subnet": self.ipv4_subnet, "created": self.created,
                     "attached": dict(sorted(self.attached.items()))})
        return data

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, network_id: str, data: object, mod_revision: int = 0) -> "Network":
        if not isinstance(data, Mapping):
            raise ModelError("network", "record must be a JSON object")
        owner, name, vni = data.get("owner"), data.get("name"), data.get("vni")
        if not isinstance(owner, str) or not isinstance(name, str):
            raise ModelError("owner", "owner and name must be strings")
        if isinstance(vni, bool) or not isinstance(vni, int) or not VNI_MIN <= vni <= VNI_MAX:
            raise ModelError("vni", f"must be a whole number in {VNI_MIN}..{VNI_MAX}")
        attached = data.get("attached") or {}
        if not isinstance(attached, Mapping) or not all(isinstance(v, str) for v in attached.values()):
            raise ModelError("attached", "must map VM ids to MACs")
        return cls(
            id=network_id, owner=owner, name=name, vni=vni,
            ipv6_prefix=str(data.get("ipv6_prefix", "") or ""),
            ipv4_subnet=str(data.get("ipv4_subnet", "") or ""),
            created=float(data.get("created", 0.0) or 0.0),
            attached=_frozen(dict(attached)),
            extra=_frozen({k: v for k, v in data.items() if k not in _NETWORK_FIELDS}),
            mod_revision=mod_revision,
        )

    @classmethod
    def from_json(cls, network_id: str, raw: bytes | str, mod_revision: int = 0) -> "Network":
        return cls.from_dict(network_id, _loads(raw), mod_revision)


def _loads(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError("record", f"not valid JSON: {exc}") from None
