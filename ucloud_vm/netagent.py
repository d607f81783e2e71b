"""The network loop of a vm daemon: keeps the host's bridges, VXLANs, taps and the running
VMs' NICs equal to what the records in etcd say.

Why its own loop: the host's network depends on more than the VM records the vm daemon
watches: a network's VXLAN id (``/v1/network/``) and the other hosts' underlay
addresses (``/v1/host/``) matter too, and another host's VM joining a network changes
this host's forwarding entries. So a :class:`~ucloud_common.reconcile.Reconciler`
follows all three prefixes, and every change (and every resync) queues the one key
``host-network``: one idempotent :meth:`NetworkAgent.converge` recomputes the whole
desired state from the cache (:func:`netplan.desired_state`), creates what is missing,
hot-plugs and unplugs the NICs of the VMs running here, then removes what is no longer
wanted. A tap whose NIC the guest has not released yet is only taken off its bridge (the
VM is cut off at once) and removed in a later pass, once QEMU let go of it; waiting for
one guest never holds up the rest of the host.

The vm daemon calls two hooks: :meth:`start_nics` before it starts a QEMU (the taps of
that VM are made to exist and opened) and :meth:`sync_vm` when a running VM's record
changed (hot-plug without waiting for the next loop).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter

from ucloud_common.config import Settings
from ucloud_common.keys import HOST_PREFIX, NETWORK_PREFIX, VM_PREFIX, name_from_key
from ucloud_common.models import VM, Host, ModelError, Network
from ucloud_common.reconcile import Reconciler
from ucloud_common.store import Entry, Store

from . import nics, process
from .network import HostNetwork
from .netns import netns_path
from .netplan import Desired, TapSpec, Underlay, VmNics, desired_state
from .paths import VmPaths
from .qemu_argv import NicArgs

log = logging.getLogger(__name__)

QUEUE_KEY = "host-network"
RETRY_SECONDS = 2.0


def vm_nics(vm: VM) -> VmNics:
    return VmNics(vm.id, vm.host_name, tuple((nic.network, nic.mac) for nic in vm.networks), vm.owner)


def network_records(entries: Iterable[Entry]) -> list[Network]:
    """The readable ``/v1/network/<id>`` records (a bad one is left out, and so its NICs)."""
    found: list[Network] = []
    for entry in entries:
        network_id = name_from_key(entry.key, NETWORK_PREFIX)
        try:
            found.append(Network.from_json(network_id, entry.value, entry.mod_revision))
        except ModelError as exc:
            log.warning("network %s: record cannot be read (%s); its NICs are left out", network_id, exc)
    return found


def host_addresses(entries: Iterable[Entry]) -> dict[str, str]:
    addresses: dict[str, str] = {}
    for entry in entries:
        name = name_from_key(entry.key, HOST_PREFIX)
        try:
            addresses[name] = Host.from_json(name, entry.value).address
        except ModelError:
            continue
    return addresses


def vm_records(entries: Iterable[Entry]) -> dict[str, VM]:
    vms: dict[str, VM] = {}
    for entry in entries:
        vm_id = name_from_key(entry.key, VM_PREFIX)
        try:
            vms[vm_id] = VM.from_json(vm_id, entry.value, entry.mod_revision)
        except ModelError:
            continue
    return vms


class NetworkMetrics:
    """Counters on the vm daemon's ``/metrics`` (its registry)."""

    def __init__(self, host: str, registry: CollectorRegistry) -> None:
        self.steps = Counter("ucloud_vm_network_changes", "Changes made to the host's bridges, VXLANs, "
                             "taps and forwarding entries", ["host"], registry=registry).labels(host)
        hotplug = Counter("ucloud_vm_nic_hotplugs", "NICs hot-plugged into / unplugged from running VMs",
                          ["host", "op"], registry=registry)
        self.plugged, self.unplugged = hotplug.labels(host, "plug"), hotplug.labels(host, "unplug")
        self.errors = Counter("ucloud_vm_network_errors", "Network convergence passes that failed",
                              ["host"], registry=registry).labels(host)


class NetworkAgent:
    """See the module docstring. ``start()`` / ``stop()``."""

    def __init__(self, store: Store, settings: Settings, host: str,
                 registry: CollectorRegistry | None = None) -> None:
        self.store = store
        self.host = host
        self.netns = settings.host_netns
        self.state_dir = Path(settings.state_dir)
        self.net = HostNetwork(self.netns, Underlay(settings.host_address, settings.vxlan_port,
                                                    settings.vxlan_underlay_device), owner=host)
        self.metrics = NetworkMetrics(host, registry or CollectorRegistry())
        self._lock = threading.RLock()
        self.reconciler = Reconciler(store, [VM_PREFIX, NETWORK_PREFIX, HOST_PREFIX], self._sync,
                                     key_map=lambda key: (QUEUE_KEY,),
                                     resync_seconds=settings.vm_resync_seconds, workers=1,
                                     name=f"ucloud-vm[{host}]-net")

    def start(self) -> "NetworkAgent":
        if self.netns and not netns_path(self.netns).exists():
            log.error("host_netns %r does not exist (create it with `ip netns add %s`): VMs with NICs "
                      "cannot start until it does", self.netns, self.netns)
        self.reconciler.start()
        return self

    def stop(self) -> None:
        self.reconciler.stop()

    # -- desired state ----------------------------------------------------------------------

    def desired(self, override: VM | None = None) -> Desired:
        """What this host should have, from the cached records (``override`` replaces the
        cached record of one VM: the daemon may hold a newer one)."""
        vms = vm_records(self.reconciler.cached(VM_PREFIX))
        if override is not None:
            vms[override.id] = override
        networks = network_records(self.reconciler.cached(NETWORK_PREFIX))
        return desired_state(self.host, (vm_nics(vm) for vm in vms.values()),
                             {n.id: n.vni for n in networks},
                             host_addresses(self.reconciler.cached(HOST_PREFIX)),
                             owners={n.id: n.owner for n in networks})

    def _qemu_running(self, vm_id: str) -> bool:
        return process.find(VmPaths.of(self.state_dir, vm_id)) is not None

    # -- the loop ---------------------------------------------------------------------------

    def _sync(self, _key: str) -> float | None:
        try:
            return None if self.converge() else RETRY_SECONDS
        except Exception:
            self.metrics.errors.inc()
            raise

    def _reconcile(self, desired: Desired, removals: bool = True, held: Iterable[str] = ()) -> None:
        self.metrics.steps.inc(len(self.net.reconcile(desired, removals=removals, held=held)))

    def _sync_nics(self, vm_id: str, wanted: list[TapSpec]) -> None:
        changes = nics.sync(str(VmPaths.of(self.state_dir, vm_id).qmp), self.netns, wanted)
        self.metrics.plugged.inc(len(changes.add_devices))
        self.metrics.unplugged.inc(len(changes.unplug))

    def converge(self) -> bool:
        """One full pass; True when everything converged (False: look again soon)."""
        with self._lock:
            desired = self.desired()
            for reason in desired.skipped:
                log.debug("network: %s", reason)
            self._reconcile(desired, removals=False)
            ok = True
            held: set[str] = set()
            for vm_id in self._local_vm_ids(desired):
                if self._qemu_running(vm_id):
                    try:
                        self._sync_nics(vm_id, desired.taps_of(vm_id))
                    except nics.NicError as exc:
                        log.info("VM %s: %s", vm_id, exc)
                        held |= exc.held
                        ok = False
                    except Exception as exc:  # noqa: BLE001 - one VM must not stop the rest
                        log.warning("VM %s: NICs not in sync yet: %s", vm_id, exc)
                        ok = False
            self._reconcile(desired, held=held)
            return ok

    def _local_vm_ids(self, desired: Desired) -> set[str]:
        """VMs with a NIC here, and VMs with local state (whose NICs may have to go)."""
        ids = {tap.vm_id for tap in desired.taps.values()}
        vms_dir = self.state_dir / "vms"
        if vms_dir.is_dir():
            ids |= {p.name for p in vms_dir.iterdir() if p.is_dir()}
        return ids

    # -- hooks for the vm daemon --------------------------------------------------------------

    def start_nics(self, vm: VM) -> list[NicArgs]:
        """Make ``vm``'s taps exist and open them: the NICs for its QEMU command line. The
        caller passes the fds (``NicArgs.fd``) to QEMU and closes them afterwards."""
        with self._lock:
            desired = self.desired(override=vm)
            self._reconcile(desired, removals=False)
            return nics.start_args(nics.open_fds(self.netns, desired.taps_of(vm.id)))

    def sync_vm(self, vm: VM) -> None:
        """Hot-plug/unplug a running VM's NICs to match ``vm.networks`` (raises to be retried)."""
        try:
            with self._lock:
                desired = self.desired(override=vm)
                self._reconcile(desired, removals=False)
                self._sync_nics(vm.id, desired.taps_of(vm.id))
        except nics.NicError as exc:  # an unplug the guest has not acknowledged: the loop retries
            log.info("VM %s: %s", vm.id, exc)
        finally:
            self.reconciler.queue.add(QUEUE_KEY)  # removals (a tap whose NIC just went) in the loop
