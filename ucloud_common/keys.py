"""The etcd key layout, in one place (DESIGN.md §2). Every key lives under ``/v1/``."""

from __future__ import annotations

ROOT = "/v1/"
VM_PREFIX = "/v1/vm/"  # /v1/vm/<uuid>: the VM record (seed shape)
HOST_PREFIX = "/v1/host/"  # /v1/host/<name>: capacity, status, address (seed shape)
ALIVE_PREFIX = "/v1/alive/"  # /v1/alive/<name>: exists only while the host's lease lives
ALLOC_PREFIX = "/v1/alloc/"  # /v1/alloc/<name>: what the scheduler promised on that host
USER_PREFIX = "/v1/user/"  # /v1/user/<realm>/<name>: account, salted hash of the seed
NETWORK_PREFIX = "/v1/network/"  # /v1/network/<id>: a user's network
IMAGE_PREFIX = "/v1/image/"  # /v1/image/<name>: an image the VMs boot from
IDEMPOTENCY_PREFIX = "/v1/idempotency/"  # /v1/idempotency/<owner hash>/<key>: create retries
VXLAN_PREFIX = "/v1/vxlan/"  # /v1/vxlan/<vni>: which network holds that VXLAN id
MAC_PREFIX = "/v1/mac/"  # /v1/mac/<mac>: which VM NIC holds that MAC
SCHEDULER_PREFIX = "/v1/scheduler/"  # /v1/scheduler/<id>: a live scheduler, on its own lease
NETNAME_PREFIX = "/v1/netname/"  # /v1/netname/<realm>/<name>/<label>: a user's network label -> network id


def vm_key(vm_id: str) -> str:
    return VM_PREFIX + vm_id


def host_key(name: str) -> str:
    return HOST_PREFIX + name


def alive_key(name: str) -> str:
    return ALIVE_PREFIX + name


def alloc_key(name: str) -> str:
    return ALLOC_PREFIX + name


def name_from_key(key: str | bytes, prefix: str) -> str:
    """``/v1/host/node1`` -> ``node1``; raises ValueError for a key outside ``prefix``."""
    text = key.decode() if isinstance(key, bytes) else key
    if not text.startswith(prefix):
        raise ValueError(f"{text!r} is not under {prefix!r}")
    return text[len(prefix):]


def scheduler_key(member_id: str) -> str:
    return SCHEDULER_PREFIX + member_id


def network_key(network_id: str) -> str:
    return NETWORK_PREFIX + network_id


def vxlan_key(vni: int) -> str:
    return f"{VXLAN_PREFIX}{vni}"


def mac_key(mac: str) -> str:
    return MAC_PREFIX + mac


def netname_key(owner: str, label: str) -> str:
    """The index that makes a network label unique per owner (``owner`` is ``realm/name``)."""
    return f"{NETNAME_PREFIX}{owner}/{label}"
