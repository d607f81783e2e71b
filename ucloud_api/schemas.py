"""Request and response models: the API's contract, and the source of ``/openapi.json``.

Requests are strict: an unknown field, a string where a number belongs (``"cpu": "16"``)
or a missing field is a 400 naming the field, before anything is read or written.
The first three bodies are the seed's, verbatim; credentials (``name``, ``realm``,
``seed``) may instead travel in the ``X-Ucloud-Name``/``-Realm``/``-Seed`` headers, so
they are optional here and checked by ``auth``.

Sizes are the seed's bare numbers of GB (``"ram": 256``) or strings with a unit
(``"512MiB"``); they are parsed by ``ucloud_common.units`` (through ``Specs.from_dict``)
and bounded by :func:`ucloud_api.services.check_specs`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictInt, StrictStr, WithJsonSchema
from pydantic_core import PydanticCustomError

from ucloud_common.accounts import MAX_SEED_LENGTH, NAME_PATTERN
from ucloud_common.units import SizeError, parse_size

HEADER_REALM = "X-Ucloud-Realm"
HEADER_NAME = "X-Ucloud-Name"
HEADER_SEED = "X-Ucloud-Seed"
HEADER_IDEMPOTENCY = "Idempotency-Key"

MAX_CPU = 1024
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
IMAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
SIZE_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*[A-Za-z]*\s*$"


def _size(value: Any) -> Any:
    try:
        parse_size(value)
    except SizeError as exc:
        raise PydanticCustomError("size", str(exc)) from None
    except (OverflowError, ValueError):  # e.g. 1e308 GB: parse_size overflows before its own bound check
        raise PydanticCustomError("size", "size is too large") from None
    return value


Size = Annotated[
    Any,
    PlainValidator(_size),
    WithJsonSchema({
        "anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": SIZE_PATTERN}],
        "description": "bare number = GB (the seed's form), or a string with a unit: "
                       "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB",
        "examples": [256, "512MiB", "1.5GB"],
    }),
]
Name = Annotated[StrictStr, Field(pattern=NAME_PATTERN, max_length=64)]
Seed = Annotated[StrictStr, Field(min_length=1, max_length=MAX_SEED_LENGTH)]
VmId = Annotated[StrictStr, Field(min_length=1, max_length=128, description="the VM's id, as returned by /vm/create")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Credentials(Strict):
    """A user's credentials in the body (the seed's form); or use the X-Ucloud-* headers."""

    name: Optional[Name] = Field(None, description="user name (or header X-Ucloud-Name)")
    realm: Optional[Name] = Field(None, description="user realm (or header X-Ucloud-Realm)")
    seed: Optional[Seed] = Field(None, description="user secret (or header X-Ucloud-Seed)")


class SpecsIn(Strict):
    """What the VM gets: vCPUs and sizes. All four are required (``"ssd": 0`` for none)."""

    cpu: StrictInt = Field(ge=1, le=MAX_CPU, description="number of vCPUs")
    ram: Size
    hdd: Size
    ssd: Size


class CreateVM(Credentials):
    """``POST /vm/create``: the seed's body, plus an optional image and label."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "username", "realm": "user_realm", "seed": "user_seed",
        "specs": {"cpu": 16, "ram": 256, "hdd": 2000, "ssd": 256}}]})

    specs: SpecsIn
    image: Optional[Annotated[StrictStr, Field(pattern=IMAGE_PATTERN)]] = Field(
        None, description="image to boot (default: the cloud's default_image)")
    vm_name: Optional[Annotated[StrictStr, Field(pattern=LABEL_PATTERN)]] = Field(
        None, description="a label for the VM (the record's `name`)")


class DeleteVM(Credentials):
    """``POST /vm/delete``: the seed's body."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "username", "realm": "user_realm", "seed": "user_seed", "vmid": "id_of_virtual_machine"}]})

    vmid: VmId


class StatusBody(Credentials):
    """``GET /vm/status`` with a JSON body (the seed's form), credentials in the same body."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "id_of_virtual_machine", "name": "username", "realm": "user_realm", "seed": "user_seed"}]})

    id: VmId


class StatusQuery(Strict):
    """``GET /vm/status?id=...`` (credentials in the X-Ucloud-* headers)."""

    id: VmId


class VMAction(Credentials):
    """``POST /vm/action``: ask the VM's host to start, stop or reboot it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "username", "realm": "user_realm", "seed": "user_seed",
        "vmid": "id_of_virtual_machine", "action": "stop"}]})

    vmid: VmId
    action: Literal["start", "stop", "reboot"]


NetworkRef = Annotated[StrictStr, Field(pattern=LABEL_PATTERN, description="the network's id or its label")]


class CreateNetwork(Credentials):
    """``POST /network/create``: a network (a VXLAN segment) with a label unique among yours."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "username", "realm": "user_realm", "seed": "user_seed", "network": "backend",
        "ipv6_prefix": "fd00:1::/64"}]})

    network: Annotated[StrictStr, Field(pattern=LABEL_PATTERN, description="a label for the network")]
    ipv6_prefix: Optional[Annotated[StrictStr, Field(max_length=64)]] = Field(
        None, description="an IPv6 prefix for the network, e.g. fd00:1::/64 (/8../126)")
    ipv4_subnet: Optional[Annotated[StrictStr, Field(max_length=32)]] = Field(
        None, description="an IPv4 subnet for the network, e.g. 10.0.0.0/24 (/8../30)")


class NetworkVM(Credentials):
    """``POST /network/attach`` and ``/network/detach``: one of your VMs and one of your networks."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "username", "realm": "user_realm", "seed": "user_seed",
        "vmid": "id_of_virtual_machine", "network": "backend"}]})

    vmid: VmId
    network: NetworkRef


class DeleteNetwork(Credentials):
    """``POST /network/delete``: a network of yours with no VM attached."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "username", "realm": "user_realm", "seed": "user_seed", "network": "backend"}]})

    network: NetworkRef


# -- responses (for the spec; the handlers build plain dicts of the same shape) ---------------


class ErrorDetail(BaseModel):
    field: Optional[str]
    message: str


class ErrorBody(BaseModel):
    status: int
    code: str
    field: Optional[str] = Field(description="the request field, parameter or header at fault, if any")
    message: str
    details: list[ErrorDetail] = Field(default_factory=list, description="every problem found (400 only)")


class Error(BaseModel):
    """The one error shape, for every 4xx and 5xx."""

    error: ErrorBody


class Created(BaseModel):
    id: str


class Accepted(BaseModel):
    id: str
    status: str = Field(description="REQUESTED_* for the daemons, or DELETED when removed at once")


class EventOut(BaseModel):
    time: float
    message: str


class SpecsOut(BaseModel):
    cpu: int
    ram: int | str
    hdd: int | str
    ssd: int | str


class NicOut(BaseModel):
    network: str
    mac: str


class VMOut(BaseModel):
    id: str
    vm_name: str
    owner: str
    status: str
    hostname: str = Field(description="the host's key (/v1/host/<name>), empty until placed")
    specs: SpecsOut
    image: str
    reason: str = Field(description="why the last thing failed, or why the VM is not placed")
    events: list[EventOut]
    created: float
    networks: list[NicOut] = Field(description="the VM's NICs: network id and MAC")


class VMList(BaseModel):
    vms: list[VMOut]


class HostOut(BaseModel):
    name: str
    status: str
    alive: bool
    address: str
    capacity: SpecsOut
    promised: SpecsOut = Field(description="what the scheduler has promised on this host")
    free: SpecsOut = Field(description="capacity x overcommit - promised, never below 0")
    vms: int


class HostList(BaseModel):
    hosts: list[HostOut]


class ImageList(BaseModel):
    images: list[str] = Field(description="names of the images a VM can boot (`image` in /vm/create)")
    default: str = Field(description="the image a VM boots when it names none")


class ImageImported(BaseModel):
    name: str
    size: int = Field(description="bytes received")


class Health(BaseModel):
    status: Literal["ok"]
    etcd: Literal["ok"]
    revision: int


class NetworkCreated(BaseModel):
    id: str
    name: str
    vni: int = Field(description="the VXLAN id, unique in the cloud")


class NetworkOut(BaseModel):
    id: str
    name: str
    owner: str
    vni: int
    ipv6_prefix: str
    ipv4_subnet: str
    created: float
    vms: list[str] = Field(description="ids of your VMs with a NIC on this network")


class NetworkList(BaseModel):
    networks: list[NetworkOut]


class NetworkDeleted(BaseModel):
    id: str
    status: Literal["DELETED"]


class NicChange(BaseModel):
    vmid: str
    network: str = Field(description="the network's id")
    mac: str = Field(description="the NIC's MAC address")
    status: str = Field(description="the VM's status (its host hot-plugs the NIC when it runs)")
