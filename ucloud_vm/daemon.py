"""The vm daemon: one per compute host, running the VMs that the scheduler placed on it.

It wires the pieces together (each in its own module):

* :mod:`host` registers ``/v1/host/<name>`` and keeps ``/v1/alive/<name>`` on a lease;
  each renewal feeds the host's :mod:`watchdog` process, and a lease that cannot be
  renewed in time makes the daemon (or, if it is frozen, the watchdog) SIGKILL every VM.
* a :class:`~ucloud_common.reconcile.Reconciler` over ``/v1/vm/`` calls :meth:`VmDaemon.sync`
  for every VM key that changed (and for every VM with local state, at start and on
  each resync); ``sync`` reads the record, observes the QEMU process, asks the pure
  :func:`lifecycle.decide` what to do and applies it — each transition a
  compare-and-swap that adds an event to the VM's log.
* a :class:`~monitor.Watcher` thread per running QEMU reports its death the instant it
  happens; the report only records *how* it ended and queues the VM's key, so the
  reaction (KILLED, notify, restart with back-off) goes through the same ``sync``.
* disks come from ``storage.open_backend(settings)`` (file or RBD); a storage failure
  sets that VM to ERROR with the reason and the daemon goes on serving the others.

NICs: :meth:`VmDaemon.nic_args` gives the ``-netdev``/``-device`` pairs for a VM at QEMU
start and :meth:`VmDaemon.sync_nics` is called on every record change of a running VM
(hot-plug). They call the network layer (:mod:`netagent`), which also runs its own loop
over VMs, networks and hosts for the host's bridges, VXLANs and taps.

Stopping the daemon (SIGTERM) leaves every QEMU running: a restarted daemon adopts them
(pid file + cmdline check + QMP) and reuses the still-live lease.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections import Counter as Tally
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from ucloud_common.config import Settings
from ucloud_common.daemon import run_until
from ucloud_common.keys import VM_PREFIX, host_key, name_from_key, vm_key
from ucloud_common.macs import free_mac_ops
from ucloud_common.models import VM, ModelError, VMStatus
from ucloud_common.reconcile import Reconciler
from ucloud_common.storage import Disk, DiskBusy, StorageBackend, StorageError, open_backend
from ucloud_common.store import Compare, Conflict, Delete, Op, Store, StoreError

from . import accel, process, watchdog
from .guest_image import BUILT_IMAGE, ensure_default_image
from .host import LeaseKeeper, detect_capacity, register_host
from .lifecycle import Action, Decision, Exit, Observed, Policy, decide, recent_restarts
from .metrics import VmMetrics
from .monitor import Watcher
from .netagent import NetworkAgent
from .notify import Notifier
from .paths import VmPaths, local_vm_ids
from .qemu_argv import NicArgs, QemuConfig, build_argv
from .qmp import QMPError, run_command

log = logging.getLogger(__name__)

POWERDOWN_REPEAT = 3.0  # seconds between presses of a stopping VM's ACPI power button
NOT_VALID_RETRY = 1.0  # seconds: look again at a VM that cannot start while the lease is not valid
DISK_BUSY_RETRY = 3.0  # seconds: try again to delete a disk a just-killed QEMU still holds


class VmDaemon:
    """See the module docstring. ``start()`` / ``stop()``; ``run(stop_event)`` for the CLI."""

    def __init__(self, store: Store, settings: Settings, name: str) -> None:
        self.store = store
        self.settings = settings
        self.name = name
        self.host_key = host_key(name)
        self.state_dir = Path(settings.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.backend: StorageBackend = open_backend(settings)
        self.policy = Policy(stop_timeout=settings.vm_stop_timeout, restart_max=settings.vm_restart_max,
                             restart_window=settings.vm_restart_window)
        self.notifier = Notifier(settings.notify_command, settings.notify_webhook)
        self.metrics = VmMetrics(name, self._status_counts)
        self.accel = "tcg"
        self._lock = threading.Lock()
        self._watchers: dict[str, Watcher] = {}
        self._exits: dict[str, Exit] = {}
        self._powerdown: dict[str, float] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.lease = LeaseKeeper(settings, name, self.state_dir / "lease", fence=self._fence,
                                 on_deadline=self._feed_watchdog)
        self.reconciler = Reconciler(store, [VM_PREFIX], self.sync, resync_seconds=settings.vm_resync_seconds,
                                     workers=4, name=f"ucloud-vm[{name}]")
        self.metrics_address: tuple[str, int] | None = None
        self.network = NetworkAgent(store, settings, name, registry=self.metrics.registry)

    # -- start / stop ---------------------------------------------------------------------

    def start(self) -> "VmDaemon":
        if self.settings.vm_metrics_bind:
            self.metrics_address = self.metrics.serve(self.settings.vm_metrics_bind)
            log.info("metrics on http://%s:%d/metrics", *self.metrics_address)
        try:
            ensure_default_image(self.settings, self.backend)
        except StorageError as exc:
            log.error("default image %r is not available: %s", self.settings.default_image, exc)
        image = self._default_image_path()
        self.accel = accel.choose(self.settings.qemu_accel, self.settings.qemu_binary, self.state_dir, image)
        log.info("host %s: QEMU accelerator %s, storage %s", self.name, self.accel, self.backend.name)
        self.lease.start()  # the alive key first: a new host record never looks like a dead host
        register_host(self.store, self.name, detect_capacity(self.settings), self.settings.host_address,
                      self.settings.host_lease_ttl)
        self.network.start()
        self.reconciler.start()
        for vm_id in local_vm_ids(self.state_dir):  # adoption, and VMs whose record is gone
            self.reconciler.queue.add(vm_key(vm_id))
        thread = threading.Thread(target=self._local_resync_loop, name="local-resync", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop the daemon; every QEMU keeps running (a restarted daemon adopts it)."""
        self._stop.set()
        self.reconciler.stop()
        self.network.stop()
        with self._lock:
            watchers = list(self._watchers.values())
            self._watchers.clear()
        for watcher in watchers:
            watcher.stop()
        self.lease.stop()
        self.metrics.close()
        self.notifier.wait(2.0)
        for thread in self._threads:
            thread.join(2)

    def run(self, stop: threading.Event) -> None:
        run_until(stop, self.start, self.stop)

    def _local_resync_loop(self) -> None:
        while not self._stop.wait(self.settings.vm_resync_seconds):
            for vm_id in local_vm_ids(self.state_dir):
                self.reconciler.queue.add(vm_key(vm_id))

    def _default_image_path(self) -> Path | None:
        return BUILT_IMAGE if BUILT_IMAGE.is_file() else None

    # -- fencing --------------------------------------------------------------------------

    def _feed_watchdog(self, deadline: float) -> None:
        watchdog.feed(self.state_dir, deadline)
        watchdog.ensure_running(self.state_dir)

    def _fence(self, reason: str) -> None:
        killed = watchdog.fence_all(self.state_dir)
        log.error("host %s: fenced (%s): killed %d VM(s): %s", self.name, reason, len(killed),
                  ", ".join(killed) or "none")

    # -- observing ------------------------------------------------------------------------

    def paths(self, vm_id: str) -> VmPaths:
        return VmPaths.of(self.state_dir, vm_id)

    def _restarts(self, paths: VmPaths) -> tuple[float, ...]:
        try:
            return tuple(float(t) for t in json.loads(paths.restarts.read_text()))
        except (OSError, ValueError, TypeError):
            return ()

    def _record_restart(self, paths: VmPaths, now: float) -> None:
        kept = recent_restarts(self._restarts(paths), now, self.policy.restart_window) + (now,)
        paths.restarts.write_text(json.dumps(list(kept)))

    def observe(self, vm_id: str) -> Observed:
        """What runs here for ``vm_id``; adopts (starts watching) a QEMU nobody watches yet."""
        paths = self.paths(vm_id)
        found = process.find(paths)
        if found is not None:
            self._watch(vm_id, paths, found.pid, child=False)
        with self._lock:
            exit_ = self._exits.get(vm_id) if found is None else None
            powerdown = self._powerdown.get(vm_id)
        return Observed(running=found is not None, exit=exit_, powerdown_sent=powerdown,
                        restarts=self._restarts(paths), has_local_state=paths.dir.is_dir())

    def _watch(self, vm_id: str, paths: VmPaths, pid: int, child: bool) -> None:
        with self._lock:
            current = self._watchers.get(vm_id)
            if current is not None and current.pid == pid:
                return
            watcher = Watcher(vm_id, paths, pid, child, self._on_exit)
            self._watchers[vm_id] = watcher
        if not child:
            log.info("VM %s: adopted QEMU pid %d", vm_id, pid)
        watcher.start()

    def _on_exit(self, vm_id: str, pid: int, exit_: Exit) -> None:
        """A watcher saw QEMU ``pid`` end: remember how, and look at the VM at once."""
        self.metrics.qemu_exits.inc()
        with self._lock:
            watcher = self._watchers.get(vm_id)
            if watcher is not None and watcher.pid == pid:
                del self._watchers[vm_id]
            self._exits[vm_id] = exit_
        log.info("VM %s: QEMU pid %d ended: %s", vm_id, pid, exit_.cause)
        self.reconciler.queue.add(vm_key(vm_id))

    def _status_counts(self) -> dict[str, int]:
        counts: Tally[str] = Tally()
        for entry in self.reconciler.cached(VM_PREFIX):
            try:
                data = json.loads(entry.value)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("hostname") == self.host_key:
                counts[str(data.get("status", ""))] += 1
        return dict(counts)

    # -- the reconcile step ---------------------------------------------------------------

    def sync(self, key: str) -> float | None:
        vm_id = name_from_key(key, VM_PREFIX)
        try:
            entry = self.store.get(key)
        except StoreError:
            self.metrics.etcd_errors.inc()
            raise
        vm: VM | None = None
        if entry is not None:
            try:
                vm = VM.from_json(vm_id, entry.value, entry.mod_revision)
            except ModelError as exc:
                log.error("VM %s: record cannot be read (%s); left alone", vm_id, exc)
                return None
        observed = self.observe(vm_id)
        decision = decide(vm, self.host_key, observed, time.time(), self.policy)
        if decision.action is not Action.NOTHING:
            log.debug("VM %s: %s %s", vm_id, decision.action.value, decision.message)
        try:
            return self.apply(vm_id, vm, decision)
        except Conflict:
            return 0.0  # the record changed under us: decide again on the new one
        except StoreError:
            self.metrics.etcd_errors.inc()
            raise

    def apply(self, vm_id: str, vm: VM | None, decision: Decision) -> float | None:
        action = decision.action
        paths = self.paths(vm_id)
        if action in (Action.NOTHING,):
            if vm is not None and vm.hostname == self.host_key and vm.status is VMStatus.RUNNING:
                try:
                    self.sync_nics(vm)
                except QMPError as exc:  # QEMU busy or just died (its watcher tells us then)
                    log.info("VM %s: NICs not synced yet: %s", vm_id, exc)
                    return 1.0
            return None
        if action is Action.WAIT:
            if vm is not None and vm.status is VMStatus.REQUESTED_STOP:
                # Press the power button again while waiting: a press before the guest's
                # acpid was up (a guest still booting) is lost, as on real hardware.
                self._press_power_button(vm_id, paths)
                return min(decision.delay or POWERDOWN_REPEAT, POWERDOWN_REPEAT)
            return decision.delay
        if action is Action.CLEANUP:
            return self._cleanup(vm_id, vm, decision.message)
        assert vm is not None
        if action is Action.START:
            return self._start(vm, paths, decision)
        if action is Action.MARK_RUNNING:
            self._write(vm, decision.message, status=VMStatus.RUNNING, reason="")
            return None
        if action is Action.RESET:
            try:
                run_command(str(paths.qmp), "system_reset")
            except QMPError as exc:
                log.warning("VM %s: reset failed (%s); will look again", vm_id, exc)
                return 1.0
            self._write(vm, decision.message, status=VMStatus.RUNNING, reason="")
            return None
        if action is Action.POWERDOWN:
            self._press_power_button(vm_id, paths)
            with self._lock:
                self._powerdown[vm_id] = time.time()
            log.info("VM %s: ACPI power button pressed; hard stop in %gs", vm_id, self.policy.stop_timeout)
            return min(decision.delay or POWERDOWN_REPEAT, POWERDOWN_REPEAT)
        if action is Action.HARD_STOP:
            self._kill(vm_id)
            if vm.status is VMStatus.REQUESTED_STOP:
                self._write(vm, decision.message, status=VMStatus.STOPPED, reason="")
            else:
                log.warning("VM %s: %s", vm_id, decision.message)
            return None
        if action is Action.MARK_STOPPED:
            with self._lock:
                self._powerdown.pop(vm_id, None)
                self._exits.pop(vm_id, None)
            self._write(vm, decision.message, status=VMStatus.STOPPED, reason="")
            return None
        if action is Action.MARK_KILLED:
            self._write(vm, f"QEMU died: {decision.message}", status=VMStatus.KILLED, reason=decision.message)
            self._notify(vm, "vm_killed", decision.message)
            return None
        if action is Action.GIVE_UP:
            self._write(vm, decision.message, status=VMStatus.ERROR, reason=decision.message)
            self._notify(vm, "vm_error", decision.message)
            return None
        if action is Action.DELETE:
            return self._delete(vm, paths)
        raise AssertionError(f"unhandled action {action}")  # pragma: no cover

    # -- actions --------------------------------------------------------------------------

    def _write(self, vm: VM, message: str, **changes: Any) -> VM:
        """Compare-and-swap ``vm`` with ``changes`` and an event (raises Conflict)."""
        new = vm.with_event(message, **changes)
        revision = self.store.update(vm_key(vm.id), new.to_json(), vm.mod_revision)
        log.info("VM %s: %s -> %s: %s", vm.id, vm.status.value, new.status.value, message)
        return replace(new, mod_revision=revision)

    def _error(self, vm: VM, reason: str) -> None:
        log.error("VM %s: %s", vm.id, reason)
        self._write(vm, reason, status=VMStatus.ERROR, reason=reason)
        self._notify(vm, "vm_error", reason)

    def _notify(self, vm: VM, event: str, message: str) -> None:
        self.notifier.notify({"event": event, "vm": vm.id, "name": vm.name, "owner": vm.owner,
                              "host": self.name, "message": message, "time": time.time()})

    def _disks(self, vm: VM) -> list[Disk]:
        image = vm.image or self.settings.default_image
        disks = [self.backend.create_disk(vm.id, "boot", vm.specs.hdd, image)]
        if vm.specs.ssd > 0:
            disks.append(self.backend.create_disk(vm.id, "ssd", vm.specs.ssd, None))
        return disks

    def nic_args(self, vm: VM) -> Sequence[NicArgs]:
        """The NICs of ``vm`` for its QEMU command line: the network layer's hook (none without it)."""
        return self.network.start_nics(vm)

    def sync_nics(self, vm: VM) -> None:
        """Make a running VM's NICs match ``vm.networks`` (hot-plug): the network layer's hook."""
        self.network.sync_vm(vm)

    def _start(self, vm: VM, paths: VmPaths, decision: Decision) -> float | None:
        if not self.lease.valid():
            log.info("VM %s: not started while this host's lease is not valid", vm.id)
            return NOT_VALID_RETRY
        try:
            disks = self._disks(vm)
        except StorageError as exc:
            self._error(vm, f"storage: {exc}")
            return None
        restart = bool(decision.extra.get("restart"))
        if restart:
            self._record_restart(paths, time.time())
            self.metrics.restarts.inc()
        elif vm.status is VMStatus.REQUESTED_START:
            paths.restarts.unlink(missing_ok=True)  # a person asked: the crash-loop count starts over
        nics = tuple(self.nic_args(vm))
        tap_fds = [nic.fd for nic in nics if nic.fd is not None]
        try:
            argv = build_argv(QemuConfig(vm_id=vm.id, cpu=vm.specs.cpu, ram=vm.specs.ram, disks=disks,
                                         paths=paths, accel=self.accel, binary=self.settings.qemu_binary,
                                         nics=nics))
            with self._lock:
                self._exits.pop(vm.id, None)
                self._powerdown.pop(vm.id, None)
            try:
                qemu = process.start(argv, paths, pass_fds=tap_fds)
            except (process.StartError, OSError, ValueError) as exc:
                self._error(vm, f"QEMU did not start: {exc}")
                return None
        finally:
            for fd in tap_fds:  # QEMU has its own copies now
                os.close(fd)
        self._watch(vm.id, paths, qemu.pid, child=True)
        try:
            state = run_command(str(paths.qmp), "query-status", wait=5.0)
        except QMPError as exc:
            log.warning("VM %s: QMP did not answer after start (%s); will look again", vm.id, exc)
            return 0.5
        if state.get("status") != "running":
            log.warning("VM %s: QEMU reports %s after start", vm.id, state.get("status"))
        message = f"{decision.message} (QEMU pid {qemu.pid}, {self.accel})"
        self._write(vm, message, status=VMStatus.RUNNING, reason="", storage=self.backend.name)
        return None

    def _press_power_button(self, vm_id: str, paths: VmPaths) -> None:
        try:
            run_command(str(paths.qmp), "system_powerdown")
        except QMPError as exc:
            log.info("VM %s: ACPI powerdown not sent (%s)", vm_id, exc)

    def _kill(self, vm_id: str) -> None:
        found = process.find(self.paths(vm_id))
        if found is not None:
            if not process.kill_verified(vm_id, found.pid):
                raise RuntimeError(f"QEMU pid {found.pid} of VM {vm_id} did not die")

    def _forget(self, vm_id: str) -> None:
        with self._lock:
            watcher = self._watchers.pop(vm_id, None)
            self._exits.pop(vm_id, None)
            self._powerdown.pop(vm_id, None)
        if watcher is not None:
            watcher.stop()

    def _delete(self, vm: VM, paths: VmPaths) -> float | None:
        self._kill(vm.id)
        try:
            self.backend.delete_disks(vm.id)
        except DiskBusy as exc:
            # The QEMU just killed may still hold the disk (an RBD watch outlives its client
            # by up to ~30 s): the deletion stays requested and is tried again.
            reason = f"storage: disk still busy, deletion retried: {exc}"
            if vm.reason != reason:
                self._write(vm, reason, reason=reason)
            log.info("VM %s: %s", vm.id, reason)
            return DISK_BUSY_RETRY
        except StorageError as exc:
            self._error(vm, f"storage: deleting the disks failed: {exc}")
            return None
        self._forget(vm.id)
        shutil.rmtree(paths.dir, ignore_errors=True)
        compares = [Compare(vm_key(vm.id), vm.mod_revision)]
        ops: list[Op] = [Delete(vm_key(vm.id))]
        for nic in vm.networks:  # its MACs are free again, in the same transaction
            ops.extend(free_mac_ops(self.store, nic.mac, vm.id, compares))
        self.store.txn(compares, ops)
        log.info("VM %s: deleted (QEMU stopped, disks and record removed)", vm.id)
        return None

    def _cleanup(self, vm_id: str, vm: VM | None, why: str) -> float | None:
        """Stop a VM that should not run here; remove what is local to it."""
        self._kill(vm_id)
        self._forget(vm_id)
        if vm is None:
            try:
                self.backend.delete_disks(vm_id)
            except DiskBusy as exc:
                log.info("VM %s: record gone, disks still busy, retried: %s", vm_id, exc)
                return DISK_BUSY_RETRY
            except StorageError as exc:
                log.error("VM %s: record gone, but its disks could not be removed: %s", vm_id, exc)
                return None
        shutil.rmtree(self.paths(vm_id).dir, ignore_errors=True)
        log.warning("VM %s: %s; stopped it here and removed its local state", vm_id, why)
        return None
