"""Freeing a VM NIC's MAC claim (``/v1/mac/<mac>``), shared by the API (detach, deleting a
never-placed VM) and the vm daemon (removing a deleted VM's record): the claim is deleted
in the same transaction as the VM change, and only while it is still held by that VM."""

from __future__ import annotations

import json

from .keys import mac_key
from .store import Compare, Delete, Op, Store


def free_mac_ops(store: Store, mac: str, vm_id: str, compares: list[Compare]) -> list[Op]:
    """The ops that free ``mac`` if it is still held by ``vm_id`` (adding their compare)."""
    entry = store.get(mac_key(mac))
    if entry is None or json.loads(entry.value).get("vm") != vm_id:
        return []
    compares.append(Compare(mac_key(mac), entry.mod_revision))
    return [Delete(mac_key(mac))]
