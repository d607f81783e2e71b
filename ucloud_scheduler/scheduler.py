"""The scheduler daemon: a thin loop around the placement pipeline.

``ucloud_common.reconcile.Reconciler`` lists and watches ``/v1/scheduler/``,
``/v1/host/``, ``/v1/alive/``, ``/v1/alloc/`` and ``/v1/vm/`` into a
:class:`~ucloud_scheduler.view.ClusterView` and queues keys; its ``key_map`` turns a
host, liveness or allocation change that may make room into the keys of the VMs
waiting for room, so those are retried exactly when it can help, never by polling.

One worker takes up to ``scheduler_batch`` due keys at a time and converges them:

* a VM in ``REQUESTED_NEW`` is placed (filters, weighers), or gets a reason;
* a VM that was deleted has its promise released;
* a host is marked ``DOWN`` when its liveness key is gone and ``UP`` when it returns;
  once the host's lease TTL has passed since its liveness key vanished, the scheduler
  that owns the host fences it once (:mod:`ucloud_scheduler.fencing`) and re-places its
  VMs whose disk is shared (``rbd``) or not yet created (``""``), or marks those with a
  local disk ``HOST_LOST`` — each move checked in etcd against the liveness key.

All VM decisions of a batch go to etcd as one transaction that compares every record
written (:mod:`ucloud_scheduler.actions`); on a conflict the scheduler re-reads the
records named and decides the whole batch again. Several schedulers share the keys
by rendezvous hashing over the live members (:mod:`ucloud_scheduler.shard`), and an
audit re-derives every allocation from the VMs at start and every resync period.
Counters are plain attributes (:class:`SchedulerStats`), served by
:mod:`ucloud_scheduler.metrics` on ``scheduler_metrics_bind``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence

from ucloud_common.config import Settings
from ucloud_common.daemon import run_until
from ucloud_common.keys import (ALIVE_PREFIX, ALLOC_PREFIX, HOST_PREFIX, SCHEDULER_PREFIX, VM_PREFIX,
                                host_key, vm_key)
from ucloud_common.models import HostStatus, VMStatus
from ucloud_common.reconcile import Reconciler
from ucloud_common.store import Conflict, Put, Store, StoreError

from .actions import Action, Forget, MarkLost, Place, Release, SetReason, TxnBuilder, Unplace, describe
from .audit import run_audit
from .fencing import Fencer, NoFencer
from .members import MEMBER_TTL, Membership
from .metrics import SchedulerMetrics
from .placement import Choice, Overcommit, Policy, check_batch
from .view import ClusterView, Snapshot, host_of, total

log = logging.getLogger(__name__)

# VMs that should be running somewhere: moved off a dead host. STOPPED, REQUESTED_STOP, ERROR
# and HOST_LOST stay where they are; REQUESTED_DELETE is finished elsewhere (see _rescue).
MOVABLE = frozenset({VMStatus.SCHEDULED_DEPLOY, VMStatus.RUNNING, VMStatus.KILLED,
                     VMStatus.REQUESTED_START, VMStatus.REQUESTED_REBOOT})
PREFIXES = (SCHEDULER_PREFIX, HOST_PREFIX, ALIVE_PREFIX, ALLOC_PREFIX, VM_PREFIX)
MAX_ATTEMPTS = 5  # conflicts in a row before a batch is handed back to the queue's backoff
FENCE_RETRY = 2.0  # seconds before trying a failed fencing again, doubled per failure in a row
FENCE_RETRY_MAX = 30.0  # fencing blocks the placement loop (up to ceph_timeout): not too often


@dataclass
class SchedulerStats:
    """Counters, as plain attributes, for logs and a later Prometheus exporter."""

    placements: int = 0  # VMs placed from REQUESTED_NEW
    replacements: int = 0  # VMs moved off a dead host
    unplaced: int = 0  # VMs sent back to waiting because nothing fit after their host died
    reasons_written: int = 0  # "no host fits" reasons recorded (only when they change)
    host_lost: int = 0  # VMs marked HOST_LOST
    released: int = 0  # allocations released after a VM was deleted
    transactions: int = 0
    conflicts: int = 0
    hosts_down: int = 0
    hosts_up: int = 0
    audit_fixes: int = 0
    fencing_failures: int = 0
    etcd_errors: int = 0  # etcd calls of the scheduler's own that failed (retried later)
    latency_count: int = 0  # placements measured from first sight to commit
    latency_sum: float = 0.0
    latency_max: float = 0.0


class Scheduler:
    """Places VMs. ``start()`` / ``stop()``, or ``run(stop_event)``."""

    def __init__(self, store: Store, settings: Settings, fencer: Fencer | None = None, *,
                 member_id: str | None = None, member_ttl: int = MEMBER_TTL, seed: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.settings = settings
        self.policy = Policy.from_settings(settings)
        self.batch = check_batch(settings.scheduler_batch)
        self.fencer = fencer or NoFencer()
        self.clock = clock
        self.membership = Membership(store, member_id, member_ttl)
        self.view = ClusterView(Overcommit.from_settings(settings), self.membership.id, clock)
        self.stats = SchedulerStats()
        self.metrics = SchedulerMetrics(self.stats, lambda: len(self.view.waiting))
        self.metrics_address: tuple[str, int] | None = None
        self._fenced: dict[str, float] = {}  # dead host -> the gone_since it was fenced for
        self._fence_failures: dict[str, tuple[int, float]] = {}  # dead host -> (failures in a row, next try)
        self._rng = random.Random(seed)
        self._changes: dict[str, str] = {}  # key -> what its last change meant, for key_map
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.reconciler = Reconciler(
            store, PREFIXES, sync=self._sync_one, key_map=self._key_map,
            resync_seconds=settings.scheduler_resync_seconds, workers=0, name="scheduler",
            on_event=self._on_event)

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> "Scheduler":
        if self.settings.scheduler_metrics_bind:
            self.metrics_address = self.metrics.serve(self.settings.scheduler_metrics_bind)
        self.membership.start()
        self.audit()
        self.reconciler.start()  # lists every prefix (queueing every key), then watches
        for name, target in (("scheduler-work", self._work_loop), ("scheduler-audit", self._audit_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("scheduler %s started: %d hosts, %d VMs of its share, %d schedulers", self.membership.id,
                 len(self.view.hosts), len(self.view.vms), self.view.member_count())
        return self

    def stop(self) -> None:
        self._stop.set()
        self.reconciler.stop()
        for thread in self._threads:
            thread.join(10)
        self.membership.stop()
        self.metrics.close()
        log.info("scheduler %s stopped: %s", self.membership.id,
                 " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in vars(self.stats).items()))

    def run(self, stop: threading.Event) -> None:
        run_until(stop, self.start, self.stop)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        return self.reconciler.wait_idle(timeout)

    def audit(self) -> None:
        try:
            result = run_audit(self.store)
        except StoreError as exc:
            self.stats.etcd_errors += 1
            log.warning("audit failed: %s", exc)
            return
        self.stats.audit_fixes += len(result.fixed)

    # -- what the reconcile loop calls ---------------------------------------------------------

    def _on_event(self, key: str, entry: object) -> None:
        try:
            change = self.view.apply(key, entry)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - a bad record must not stop the watch
            log.exception("cannot take in %s", key)
            return
        if change:
            self._changes[key] = change

    def _key_map(self, key: str) -> Iterable[str]:
        """Which queue keys a change of ``key`` concerns: only keys this scheduler owns, so a
        batch is made of work that is really ours (``process`` checks ownership again)."""
        change = self._changes.pop(key, None)
        owns = self.view.owns
        if key.startswith(VM_PREFIX):
            return (key,) if owns(key) else ()
        if key.startswith(ALLOC_PREFIX):
            return self._waiting_keys() if change else ()
        if key.startswith(HOST_PREFIX) or key.startswith(ALIVE_PREFIX):
            name = key[len(HOST_PREFIX):] if key.startswith(HOST_PREFIX) else key[len(ALIVE_PREFIX):]
            keys = [host_key(name)] if owns(host_key(name)) else []
            return keys + self._waiting_keys() if change else keys
        if key.startswith(SCHEDULER_PREFIX) and change:
            # Ownership moved: take in the VMs that are ours now (the view parses only its own)
            # and look once at everything that is ours (cheap for VMs that need nothing).
            cached = {e.key: e for e in self.reconciler.cached(VM_PREFIX)}
            for vm_id in self.view.listed_vm_ids():
                cached.setdefault(vm_key(vm_id), None)
            mine = [k for k in cached if owns(k)]
            for k in mine:
                entry = cached[k]
                if entry is not None:
                    self.view.apply(k, entry)
            return mine + [k for k in (host_key(h) for h in list(self.view.hosts)) if owns(k)]
        return ()

    def _waiting_keys(self) -> list[str]:
        return [vm_key(i) for i in list(self.view.waiting)]

    def _sync_one(self, key: str) -> float | None:
        return self.process([key]).get(key)

    def _work_loop(self) -> None:
        queue = self.reconciler.queue
        while not self._stop.is_set():
            first = queue.get(timeout=0.5)
            if first is None:
                continue
            keys = [first]
            while len(keys) < self.batch:
                more = queue.get(timeout=0)
                if more is None:
                    break
                keys.append(more)
            try:
                again = self.process(keys)
            except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the loop
                if isinstance(exc, StoreError) and not isinstance(exc, Conflict):
                    self.stats.etcd_errors += 1
                for key in keys:
                    queue.retry(key)
                log.warning("batch of %d keys failed (will retry): %s", len(keys), exc,
                            exc_info=not isinstance(exc, StoreError))
            else:
                for key in keys:
                    queue.forget(key)
                    delay = again.get(key)
                    if delay is not None:
                        queue.add(key, delay)
            finally:
                for key in keys:
                    queue.done(key)

    def _audit_loop(self) -> None:
        while not self._stop.wait(self.settings.scheduler_resync_seconds):
            self.audit()

    # -- converging keys -----------------------------------------------------------------------

    def process(self, keys: Sequence[str]) -> dict[str, float | None]:
        """Converge ``keys``; returns, per key, seconds until it should be looked at again."""
        again: dict[str, float | None] = {}
        vm_ids: list[str] = []
        rescues: dict[str, list[str]] = {}  # dead host key -> its VMs, looked after by the host's owner
        for key in keys:
            if key.startswith(VM_PREFIX):
                if self.view.owns(key):
                    vm_ids.append(key[len(VM_PREFIX):])
            elif key.startswith(HOST_PREFIX):
                again[key], rescues[key] = self._sync_host(key[len(HOST_PREFIX):])
        chosen = set(vm_ids)
        for ids in rescues.values():
            vm_ids += [i for i in ids if i not in chosen]
            chosen.update(ids)
        attempt = 0
        while vm_ids:
            try:
                again.update(self._sync_vms(vm_ids))
                break
            except Conflict as exc:
                attempt += 1
                self.stats.conflicts += 1
                self._refresh(exc.keys)
                if attempt >= MAX_ATTEMPTS:
                    raise
        for key, ids in rescues.items():  # look at the host again when its first VM needs it
            delays = [d for d in (again.get(vm_key(i)) for i in ids) if d is not None]
            if again.get(key) is not None:
                delays.append(again[key])  # type: ignore[arg-type]
            again[key] = min(delays) if delays else None
        return again

    def _refresh(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.view.apply(key, self.store.get(key))

    def _sync_vms(self, vm_ids: Sequence[str]) -> dict[str, float | None]:
        snap = self.view.snapshot()
        now = self.clock()
        builder = TxnBuilder(snap.allocs, time.time())
        again: dict[str, float | None] = {}
        for vm_id in vm_ids:
            key = vm_key(vm_id)
            action, again[key] = self._decide(vm_id, snap, now)
            if action is not None and not builder.add(action):
                again[key] = 0.0  # did not fit in this transaction: next one
        if not len(builder):
            return again
        self._check_limits(builder, snap)
        compares, ops = builder.build()
        # Read before the commit: the watch may echo the placement back before txn() returns.
        first_seen = {a.vm.id: self.view.first_seen(a.vm.id) for a in builder.actions if isinstance(a, Place)}
        writes = {op.key: op.value for op in ops if isinstance(op, Put)}
        self.view.expect(writes)
        try:
            revision = self.store.txn(compares, ops)
            self.stats.transactions += 1
            vms, allocs = builder.records(revision)
            self.view.record(vms, allocs)
        finally:
            self.view.forget(writes)
        self._count(builder.actions, first_seen, self.clock())
        if any(isinstance(a, (Release, Forget)) or (isinstance(a, (Place, Unplace)) and a.source)
               for a in builder.actions):
            # This freed room, and the watch's echo of our own write will be skipped: wake the waiting.
            for key in self._waiting_keys():
                self.reconciler.queue.add(key)
        return again

    def _decide(self, vm_id: str, snap: Snapshot, now: float) -> tuple[Action | None, float | None]:
        """What to do about one VM, and when to look at it again."""
        vm = self.view.vms.get(vm_id)
        if vm is None:
            host = self.view.alloc_of(vm_id)
            return (Release(vm_id, host) if host else None), None
        if vm.status is VMStatus.REQUESTED_NEW:
            result = snap.table.place(vm.specs, self.policy, self._rng.randrange(1 << 30))
            if isinstance(result, Choice):
                return Place(vm, result.host, source=host_of(vm)), None
            self.view.waiting.add(vm_id)
            return (SetReason(vm, result.reason) if vm.reason != result.reason else None), None
        source = host_of(vm)
        if source and (vm.status in MOVABLE or vm.status is VMStatus.REQUESTED_DELETE) \
                and not self.view.is_alive(source):
            if not self.view.owns(host_key(source)):
                return None, None  # the dead host's owner fences it once, then moves all its VMs
            return self._rescue(vm_id, source, snap, now)
        return None, None

    def _rescue(self, vm_id: str, source: str, snap: Snapshot, now: float) -> tuple[Action | None, float | None]:
        """A VM whose host is dead: wait out the host's lease TTL, then move it or declare it lost."""
        vm = self.view.vms[vm_id]
        host = self.view.hosts.get(source)
        ttl = host.lease_ttl if host else self.settings.host_lease_ttl
        wait = self.view.gone_since(source) + ttl - now
        if wait > 0:
            return None, wait  # the host may still be fencing itself
        deleting = vm.status is VMStatus.REQUESTED_DELETE
        if deleting and vm.storage in ("file", ""):
            return Forget(vm, source), None  # no disk any live host could remove
        if vm.storage == "file":
            return MarkLost(vm, f"host {source} died and this VM's disk was local to it (file storage): "
                                f"it cannot be moved"), None
        gone = self.view.gone_since(source)
        if self._fenced.get(source) != gone:  # once per death of the host, before its first VM moves
            failures, next_try = self._fence_failures.get(source, (0, now))
            if next_try > now:
                return None, next_try - now  # the last attempt failed: not again before then
            try:
                self.fencer.fence(source)
            except Exception as exc:  # noqa: BLE001 - any fencing failure means: not yet
                self.stats.fencing_failures += 1
                delay = min(FENCE_RETRY * 2 ** failures, FENCE_RETRY_MAX)
                self._fence_failures[source] = (failures + 1, now + delay)
                log.warning("cannot fence host %s (its VMs stay put; next try in %.0fs): %s", source, delay, exc)
                return None, delay
            self._fenced[source] = gone
            self._fence_failures.pop(source, None)
            log.info("host %s fenced; moving its VMs", source)
        result = snap.table.place(vm.specs, self.policy, self._rng.randrange(1 << 30))
        if isinstance(result, Choice) and deleting:  # a live host removes its shared disk, then the record
            message = f"host {source} lost its lease (host fenced); {result.host} finishes the deletion"
            return Place(vm, result.host, source=source, message=message, from_dead=True,
                         status=VMStatus.REQUESTED_DELETE), None
        if isinstance(result, Choice):
            message = (f"host {source} lost its lease ({ttl}s TTL passed, host fenced); "
                       f"re-placed on {result.host}")
            return Place(vm, result.host, source=source, message=message, from_dead=True), None
        if deleting:
            return None, FENCE_RETRY_MAX  # never back to waiting for a place: try again later
        self.view.waiting.add(vm_id)
        return Unplace(vm, source, result.reason), None

    def _check_limits(self, builder: TxnBuilder, snap: Snapshot) -> None:
        """Re-check at commit (as Nomad does) that no placement promises beyond a host's limit."""
        allocs = builder.allocations()
        for host in {a.host for a in builder.actions if isinstance(a, Place)}:
            state = snap.states.get(host)
            if state is None or not total(allocs[host]).fits_in(state.limit):
                raise RuntimeError(f"plan would promise more than host {host} may give; not written")

    def _count(self, actions: Sequence[Action], first_seen: dict[str, float | None], now: float) -> None:
        stats = self.stats
        for action in actions:
            if isinstance(action, Place):
                if action.source and action.vm.status is not VMStatus.REQUESTED_NEW:
                    stats.replacements += 1
                    log.info("VM %s: host %s is dead; re-placed on %s", action.vm.id, action.source, action.host)
                else:
                    stats.placements += 1
                    first = first_seen.get(action.vm.id)
                    if first is not None:
                        latency = max(0.0, now - first)
                        stats.latency_count += 1
                        stats.latency_sum += latency
                        stats.latency_max = max(stats.latency_max, latency)
                        self.metrics.latency.observe(latency)
            elif isinstance(action, Unplace):
                stats.unplaced += 1
                log.info("VM %s: host %s is dead and %s", action.vm.id, action.source, action.reason)
            elif isinstance(action, SetReason):
                stats.reasons_written += 1
                log.info("VM %s not placed: %s", action.vm.id, action.reason)
            elif isinstance(action, MarkLost):
                stats.host_lost += 1
                log.warning("VM %s: %s", action.vm.id, action.reason)
            elif isinstance(action, Forget):
                stats.released += 1
                log.info("VM %s: deleted while its host %s is dead; record and promise removed",
                         action.vm.id, action.source)
            elif isinstance(action, Release):
                stats.released += 1
        log.debug("committed %s", describe(list(actions)))

    def _sync_host(self, name: str) -> tuple[float | None, list[str]]:
        """Mark a host DOWN when its liveness key is gone, UP when it is back. For a dead host,
        also return the VMs placed on it: this scheduler (the host key's owner) fences the
        host once and moves them all, so no other scheduler's fencing can come late and cut
        off a VM that has already started again elsewhere."""
        if not self.view.owns(host_key(name)):
            return None, []
        host = self.view.hosts.get(name)
        alive = self.view.is_alive(name)
        if alive:
            self._fenced.pop(name, None)
            self._fence_failures.pop(name, None)
        status = None
        if host is not None and alive and host.status is HostStatus.DOWN:
            status = HostStatus.UP
        elif host is not None and not alive and host.status is HostStatus.UP:
            status = HostStatus.DOWN
        if host is not None and status is not None:
            changed = replace(host, status=status)
            try:
                revision = self.store.update(host.key, changed.to_json(), host.mod_revision)
            except Conflict:
                self._refresh([host.key])
                return 0.0, []
            self.view.record(hosts=[replace(changed, mod_revision=revision)])
            if status is HostStatus.DOWN:
                self.stats.hosts_down += 1
                log.warning("host %s: liveness key gone; marked DOWN", name)
            else:
                self.stats.hosts_up += 1
                log.info("host %s: alive again; marked UP", name)
        if alive:
            return None, []
        return None, self._vms_of(name)

    def _vms_of(self, name: str) -> list[str]:
        """The VMs placed on host ``name`` (per its allocation and the VM records), taken into
        the view from the reconciler's cache where another scheduler owns them."""
        alloc = self.view.allocs.get(name)
        ids = set(alloc.vms) if alloc else set()
        ids.update(self.view.vms_on(name))
        cache = self.reconciler.cache
        for vm_id in ids:
            if vm_id not in self.view.vms:
                entry = cache.get(vm_key(vm_id))
                if entry is not None:
                    self.view.take_in(entry.key, entry)
        return sorted(ids)
