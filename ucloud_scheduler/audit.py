"""The self-healing audit: every allocation record must equal the sum of its VMs.

Placements keep allocations right as they happen, but a scheduler can die between a
VM's deletion and the release of its promise, or an operator can edit a record. So
at start and periodically the scheduler re-derives every allocation from the VM
records — a VM counts on the host its ``hostname`` names, in whatever status (a
stopped VM keeps its promise) — and rewrites the records that differ.

Why a compare-and-swap on the allocation alone is enough: the allocations are listed
*before* the VMs. A VM only moves onto or off a host in a transaction that also
writes that host's allocation, so if an allocation is still at the revision listed
when the fix is written, no VM moved onto or off its host since; VMs deleted
meanwhile are correctly dropped. Anything else makes the compare fail, and the fix
waits for the next audit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

from ucloud_common.keys import ALLOC_PREFIX, HOST_PREFIX, VM_PREFIX, alloc_key
from ucloud_common.models import Allocation, ModelError, Specs, VM
from ucloud_common.store import Compare, Conflict, Delete, Put, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fix:
    host: str
    revision: int  # the allocation's mod_revision as listed (0: none)
    wanted: Allocation | None  # None: delete the record (no VMs, no host)


@dataclass
class AuditResult:
    fixed: list[str] = field(default_factory=list)  # hosts whose allocation was rewritten
    conflicts: int = 0  # fixes skipped because the record changed meanwhile
    skipped_hosts: list[str] = field(default_factory=list)  # hosts with unreadable VMs: left alone


def expected_allocations(vms: Iterable[VM]) -> dict[str, dict[str, Specs]]:
    """Host name -> {VM id: specs} of every VM whose ``hostname`` names that host."""
    out: dict[str, dict[str, Specs]] = {}
    for vm in vms:
        if vm.hostname:
            name = vm.hostname[len(HOST_PREFIX):] if vm.hostname.startswith(HOST_PREFIX) else vm.hostname
            out.setdefault(name, {})[vm.id] = vm.specs
    return out


def plan_fixes(allocs: Mapping[str, Allocation | None], revisions: Mapping[str, int],
               expected: Mapping[str, Mapping[str, Specs]], hosts: Iterable[str],
               skip: Iterable[str] = ()) -> list[Fix]:
    """The records to rewrite. ``allocs[h]`` is None for a record that could not be read."""
    host_set, skipped = set(hosts), set(skip)
    fixes: list[Fix] = []
    for name in sorted(set(allocs) | set(expected)):
        if name in skipped:
            continue
        want = dict(expected.get(name, {}))
        current = allocs.get(name)
        if name in allocs and current is not None and dict(current.vms) == want:
            continue
        if name not in allocs and not want:
            continue
        if not want and name not in host_set:
            fixes.append(Fix(name, revisions.get(name, 0), None))
        else:
            fixes.append(Fix(name, revisions.get(name, 0), Allocation(name, MappingProxyType(want))))
    return fixes


def run_audit(store: Store) -> AuditResult:
    """List allocations, then hosts and VMs, and rewrite every allocation that differs."""
    result = AuditResult()
    alloc_entries, _ = store.list(ALLOC_PREFIX)  # first: see the module docstring
    host_entries, _ = store.list(HOST_PREFIX)
    vm_entries, _ = store.list(VM_PREFIX)
    allocs: dict[str, Allocation | None] = {}
    revisions: dict[str, int] = {}
    for entry in alloc_entries:
        name = entry.key[len(ALLOC_PREFIX):]
        revisions[name] = entry.mod_revision
        try:
            allocs[name] = Allocation.from_json(name, entry.value, entry.mod_revision)
        except (ModelError, AttributeError, TypeError) as exc:
            log.warning("allocation %s is unreadable (%s); rewriting it", entry.key, exc)
            allocs[name] = None
    vms: list[VM] = []
    skip: set[str] = set()
    for entry in vm_entries:
        try:
            vms.append(VM.from_json(entry.key[len(VM_PREFIX):], entry.value, entry.mod_revision))
        except ModelError as exc:
            hostname = _raw_hostname(entry.value)
            if hostname is None:
                log.error("audit skipped: VM %s is unreadable (%s) and its host unknown", entry.key, exc)
                result.skipped_hosts.append("*")
                return result
            if hostname:
                skip.add(hostname[len(HOST_PREFIX):] if hostname.startswith(HOST_PREFIX) else hostname)
    result.skipped_hosts = sorted(skip)
    hosts = [e.key[len(HOST_PREFIX):] for e in host_entries]
    for fix in plan_fixes(allocs, revisions, expected_allocations(vms), hosts, skip):
        key = alloc_key(fix.host)
        op = Delete(key) if fix.wanted is None else Put(key, fix.wanted.to_json())
        try:
            store.txn([Compare(key, fix.revision)], [op])
        except Conflict:
            result.conflicts += 1
            continue
        result.fixed.append(fix.host)
        log.warning("audit: allocation of host %s did not match its VMs; rewritten", fix.host)
    return result


def _raw_hostname(raw: bytes) -> str | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    hostname = data.get("hostname", "") if isinstance(data, dict) else None
    return hostname if isinstance(hostname, str) else None
