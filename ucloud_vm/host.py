"""This compute host in etcd: its record (capacity, status, address) and its liveness lease.

* ``/v1/host/<name>`` is created if absent, else updated — both compare-and-swap — with
  the capacity detected from the machine (CPUs, MemTotal, free space of the state
  dir), each overridable in settings. An operator's ``DRAINING`` is kept.
* ``/v1/alive/<name>`` is attached to an etcd lease of ``host_lease_ttl`` seconds that
  :class:`LeaseKeeper` renews every quarter TTL. The lease id is kept in the state dir,
  so a restarted daemon reuses the still-live lease and the host never looks dead
  because its daemon restarted.
* Self-fencing (DESIGN.md §3.5): etcd expires the lease ``ttl`` seconds after it last
  received a renewal, which is no earlier than ``ttl`` seconds after that renewal was
  *sent*. So from each successful renewal the keeper derives a fence deadline — send
  time + ttl - margin — and (a) feeds it to the host's watchdog process, (b) kills
  every VM itself when the deadline passes without a newer renewal. Either way the VMs
  are dead before the scheduler can see the host gone and start them elsewhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ucloud_common.config import Settings
from ucloud_common.keys import alive_key, host_key
from ucloud_common.models import Host, HostStatus, Specs
from ucloud_common.store import Conflict, Store, StoreError
from ucloud_common.units import parse_size

log = logging.getLogger(__name__)


def host_name(settings: Settings, override: str | None = None) -> str:
    return override or settings.host_name or socket.gethostname()


def mem_total(meminfo: str) -> int:
    """MemTotal in bytes from the text of ``/proc/meminfo``."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            value, unit = line.split()[1:3]
            return int(value) * {"kB": 1024}.get(unit, 1)
    raise ValueError("no MemTotal in /proc/meminfo")


def detect_capacity(settings: Settings) -> Specs:
    """What this host offers: detected, unless set in settings (``host_cpu`` etc.)."""
    state_dir = Path(settings.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    cpu = settings.host_cpu or os.cpu_count() or 1
    ram = parse_size(settings.host_ram) if settings.host_ram else mem_total(Path("/proc/meminfo").read_text())
    hdd = parse_size(settings.host_hdd) if settings.host_hdd else shutil.disk_usage(state_dir).free
    ssd = parse_size(settings.host_ssd) if settings.host_ssd else 0
    return Specs(cpu=cpu, ram=ram, hdd=hdd, ssd=ssd)


def register_host(store: Store, name: str, capacity: Specs, address: str, lease_ttl: int) -> Host:
    """Create or update ``/v1/host/<name>`` (compare-and-swap, retried on conflict)."""
    key = host_key(name)
    for _ in range(20):
        entry = store.get(key)
        if entry is None:
            host = Host(name=name, capacity=capacity, status=HostStatus.UP, address=address, lease_ttl=lease_ttl)
            try:
                revision = store.create(key, host.to_json())
            except Conflict:
                continue
            log.info("registered host %s: %s", name, host.to_dict())
            return replace(host, mod_revision=revision)
        current = Host.from_json(name, entry.value, entry.mod_revision)
        status = HostStatus.UP if current.status is HostStatus.DOWN else current.status
        wanted = replace(current, capacity=capacity, address=address, lease_ttl=lease_ttl, status=status)
        if wanted.to_dict() == current.to_dict():
            return current
        try:
            revision = store.update(key, wanted.to_json(), current.mod_revision)
        except Conflict:
            continue
        log.info("updated host %s: %s", name, wanted.to_dict())
        return replace(wanted, mod_revision=revision)
    raise StoreError(f"could not write {key}: it kept changing")


class LeaseKeeper:
    """Keeps ``/v1/alive/<name>`` alive on a lease, and fences the host if it cannot.

    ``on_deadline(deadline)`` is called after every successful renewal with the new
    fence deadline (``time.monotonic()`` seconds); ``fence(reason)`` is called once when
    the deadline passes without a renewal. ``valid()`` says whether VMs may be started.
    """

    def __init__(self, settings: Settings, name: str, lease_file: Path,
                 fence: Callable[[str], None], on_deadline: Callable[[float], None] = lambda d: None) -> None:
        self.settings = settings
        self.name = name
        self.ttl = settings.host_lease_ttl
        self.interval = max(0.2, self.ttl / 4)
        self.margin = max(1.0, self.ttl * 0.2)
        self.lease_file = lease_file
        self._fence = fence
        self._on_deadline = on_deadline
        # Its own connection, with short timeouts and no long retries: a renewal that takes
        # longer than the interval is a failed renewal, not something to wait for.
        self.store = Store(settings.etcd_endpoints, timeout=min(settings.etcd_timeout, self.interval),
                           retry_for=0.0)
        self.lease_id = 0
        self.deadline = 0.0  # monotonic: fence at this time unless renewed
        self.fenced = False
        self.renewals = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- the lease ------------------------------------------------------------------------

    def _saved_lease(self) -> int:
        try:
            return int(self.lease_file.read_text().strip())
        except (OSError, ValueError):
            return 0

    def acquire(self) -> int:
        """Reuse the saved lease if etcd still has it, else grant a new one; put the alive key."""
        sent = time.monotonic()
        lease = self._saved_lease()
        if lease and self.store.keep_alive(lease) > 0:
            log.info("host %s: reusing live lease %x", self.name, lease)
        else:
            if lease:
                log.info("host %s: saved lease %x has expired; granting a new one", self.name, lease)
            lease = self.store.grant_lease(self.ttl)
            tmp = self.lease_file.with_suffix(".tmp")
            tmp.write_text(f"{lease}\n")
            os.replace(tmp, self.lease_file)
        self.store.put(alive_key(self.name), f'{{"lease":{lease}}}'.encode(), lease=lease)
        self.lease_id = lease
        self._renewed(sent)
        self.fenced = False
        return lease

    def _renewed(self, sent: float) -> None:
        self.deadline = sent + self.ttl - self.margin
        self.renewals += 1
        self._on_deadline(self.deadline)

    def renew_once(self) -> bool:
        """One renewal; True if the lease is alive. An expired lease is re-acquired."""
        sent = time.monotonic()
        try:
            ttl = self.store.keep_alive(self.lease_id)
        except StoreError as exc:
            log.warning("host %s: lease renewal failed (%s); fence in %.1fs", self.name, exc,
                        self.deadline - time.monotonic())
            return False
        if ttl > 0:
            if self.fenced:
                # Renewed after fencing: the lease outlived us (e.g. etcd kept it). Fine.
                self.fenced = False
            self._renewed(sent)
            return True
        log.warning("host %s: lease %x has expired", self.name, self.lease_id)
        self.check_fence(force=True)
        try:
            self.acquire()
            log.info("host %s: new lease %x; alive again", self.name, self.lease_id)
            return True
        except StoreError as exc:
            log.warning("host %s: cannot get a new lease: %s", self.name, exc)
            return False

    def valid(self) -> bool:
        """True while the lease is known to be live (VMs may be started)."""
        return not self.fenced and time.monotonic() < self.deadline

    def check_fence(self, force: bool = False) -> bool:
        """Fence once if the deadline has passed (or ``force``); True if fenced now."""
        if self.fenced:
            return False
        if not force and time.monotonic() < self.deadline:
            return False
        self.fenced = True
        reason = (f"lease not renewed for {self.ttl - self.margin:.1f}s of its {self.ttl}s TTL"
                  if not force else "lease expired")
        log.error("host %s: FENCING: %s; killing every VM on this host before the lease can expire",
                  self.name, reason)
        self._fence(reason)
        return True

    # -- threads ------------------------------------------------------------------------

    def _renew_loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.renew_once()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _fence_loop(self) -> None:
        while not self._stop.wait(0.05):
            self.check_fence()

    def start(self) -> "LeaseKeeper":
        self.acquire()
        for target, name in ((self._renew_loop, "lease-renew"), (self._fence_loop, "lease-fence")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop renewing (the lease then runs out on its own, and the watchdog fences)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self.store.close()
