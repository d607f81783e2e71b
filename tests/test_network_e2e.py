"""Networks end to end (issue 7): two ``ucloud-vm`` hosts on this machine, each with its own
network namespace (``host_netns``) on a veth underlay, the scheduler and ``ucloud-api``
(gunicorn) as real processes, real QEMU guests. The guests talk over the VXLAN; what a
user would check is checked through the guests' serial consoles (IPv6 link-local ping).

Placement is forced by capacity: h1 has room for one VM only, and is the only host up
while VM A is created; B and C wait for h2, which has room for both.

    A (alice, h1) ──N1── B (alice, h2)        C (bob, h2) ──N2
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from ucloud_common import accounts
from ucloud_common.etcd_process import free_port
from ucloud_common.keys import alive_key, mac_key
from ucloud_common.models import VMStatus
from ucloud_common.store import Store
from ucloud_vm import process
from ucloud_vm.netplan import bridge_name, device_id, tap_name, vxlan_name
from ucloud_vm.nics import qemu_nics
from ucloud_vm.paths import VmPaths
from ucloud_vm.qmp import QMP

from netns_harness import Underlay, fdb_peers, links
from vm_harness import BIN, BOOT_TIMEOUT, MARKER, Proc, record, short_dir, start_scheduler, start_vm_daemon, \
    stop_host_vms, wait_for, wait_status

pytestmark = pytest.mark.slow

PING_TIMEOUT = 90.0  # DAD, first packets over a fresh VXLAN, a busy machine


def link_local(mac: str) -> str:
    """The guest's IPv6 link-local address (EUI-64 from its MAC, as the Linux default)."""
    b = [int(x, 16) for x in mac.split(":")]
    b[0] ^= 0x02
    words = [(b[0] << 8) | b[1], (b[2] << 8) | 0xFF, 0xFE00 | b[3], (b[4] << 8) | b[5]]
    return "fe80::" + ":".join(f"{w:x}" for w in words)


class Http:
    """One user of the real ``ucloud-api`` over HTTP."""

    def __init__(self, port: int, store: Store, realm: str, name: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        _, seed = accounts.create_user(store, realm, name)
        self.creds = {"realm": realm, "name": name, "seed": seed}

    def call(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(self.base + path, method=method,
                                         data=json.dumps({**self.creds, **body}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def ok(self, path: str, body: dict[str, Any]) -> Any:
        status, reply = self.call("POST", path, body)
        assert status in (200, 201, 202), (path, status, reply)
        return reply


class Console:
    """A guest's serial console (the VM's ``serial.sock``): run a shell command, get its output."""

    def __init__(self, paths: VmPaths) -> None:
        self.paths = paths
        self.n = 0

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        self.n += 1
        tag = f"END{self.n}X"
        # the marker is computed by the shell, so the echoed command line never matches it
        line = f"{command}; echo {tag[:3]}$(({self.n}))X rc=$?\n".encode()
        want = f"{tag} rc=".encode()
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.paths.serial_sock))
            sock.settimeout(timeout)
            sock.sendall(b"\n" + line)
            got = b""
            deadline = time.monotonic() + timeout
            while want not in got or not got.split(want, 1)[1].split(b"\n", 1)[1:]:
                assert time.monotonic() < deadline, f"console: no answer to {command!r}: {got[-500:]!r}"
                chunk = sock.recv(4096)
                assert chunk, "console closed"
                got += chunk
        before, after = got.split(want, 1)
        return int(after.split(b"\n", 1)[0].strip() or b"-1"), before.decode(errors="replace")

    def ping(self, address: str, count: int = 1) -> bool:
        code, _ = self.run(f"ping -6 -c {count} -W 2 {address}%eth0 >/dev/null 2>&1; test $? = 0", 30)
        return code == 0

    def network_state(self) -> str:
        """What the guest sees (for a failure message)."""
        return self.run("ip link; ip -6 addr; ip -6 neigh", 30)[1]

    def has_address(self, address: str) -> bool:
        return address in self.run("ip -6 addr show dev eth0", 30)[1]


class NetCloud:
    def __init__(self, etcd: Any, guest_image: Path, underlay: Underlay) -> None:
        self.base = short_dir("ucnet-")
        self.underlay = underlay
        self.endpoints = list(etcd.endpoints)
        self.store = Store(etcd.endpoints, timeout=5.0, retry_for=15.0)
        self.store.delete_prefix("/v1/")
        (self.base / "images").mkdir()
        shutil.copyfile(guest_image, self.base / "images" / "ucloud-guest.raw")
        self.procs: list[Proc] = []
        self.hosts: dict[str, Proc] = {}
        self.metrics_ports: dict[str, int] = {}
        self.procs.append(start_scheduler(self.endpoints, self.base))
        self.port = free_port()
        env = {**os.environ, "UCLOUD_ETCD_ENDPOINTS": ",".join(self.endpoints),
               "UCLOUD_ENV_FILE": str(self.base / "none.env"), "UCLOUD_API_BIND": f"127.0.0.1:{self.port}",
               "UCLOUD_API_WORKERS": "1"}
        self.procs.append(Proc([str(BIN / "ucloud-api")], env, self.base / "api.log"))
        wait_for(self._api_up, 60, "ucloud-api to listen")

    def _api_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def start_host(self, name: str, ram: str) -> None:
        i = int(name[1:]) - 1
        self.metrics_ports[name] = free_port()
        proc = start_vm_daemon(self.endpoints, self.base, name, UCLOUD_HOST_NETNS=self.underlay.hosts[i],
                               UCLOUD_HOST_ADDRESS=self.underlay.addresses[i], UCLOUD_HOST_RAM=ram,
                               UCLOUD_VM_RESYNC_SECONDS="5",
                               UCLOUD_VM_METRICS_BIND=f"127.0.0.1:{self.metrics_ports[name]}")
        self.procs.append(proc)
        self.hosts[name] = proc
        wait_for(lambda: self.store.get(alive_key(name)), 60, f"host {name} to be alive")

    def metric(self, host: str, line_start: str) -> float:
        """A sample of the host daemon's Prometheus ``/metrics`` (0 if absent)."""
        url = f"http://127.0.0.1:{self.metrics_ports[host]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(line_start):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def metric_or_none(self, host: str, line_start: str) -> float | None:
        try:
            return self.metric(host, line_start)
        except OSError:
            return None

    def paths(self, host: str, vm_id: str) -> VmPaths:
        return VmPaths.of(self.base / host, vm_id)

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-3000:]}" for p in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
        for host in self.hosts:  # the daemons leave QEMU and the watchdog running, by design
            stop_host_vms(self.base / host)
        self.store.delete_prefix("/v1/")
        self.store.close()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def cloud(etcd, guest_image: Path) -> Iterator[NetCloud]:
    underlay = Underlay(2, net=232)
    try:
        c = NetCloud(etcd, guest_image, underlay)
        try:
            yield c
        finally:
            c.close()
    finally:
        underlay.remove()


def booted(paths: VmPaths) -> str:
    try:
        text = paths.serial_log.read_bytes()
    except OSError:
        return ""
    return text.decode(errors="replace") if MARKER in text else ""


def qemu_devices(paths: VmPaths) -> set[str]:
    with QMP(str(paths.qmp)).connect(5) as qmp:
        return qemu_nics(qmp)[0]


def test_two_hosts_one_network_hotplug_isolation_detach_delete(cloud: NetCloud) -> None:
    alice = Http(cloud.port, cloud.store, "test", "alice")
    bob = Http(cloud.port, cloud.store, "test", "bob")
    specs = {"cpu": 1, "ram": "128MiB", "hdd": "1GiB", "ssd": 0}
    ns1, ns2 = cloud.underlay.hosts

    cloud.start_host("h1", ram="200MiB")  # room for one VM
    vm_a = alice.ok("/vm/create", {"specs": specs})["id"]
    wait_status(cloud.store, vm_a, VMStatus.RUNNING, BOOT_TIMEOUT)
    vm_b = alice.ok("/vm/create", {"specs": specs})["id"]
    vm_c = bob.ok("/vm/create", {"specs": specs})["id"]

    n1 = alice.ok("/network/create", {"network": "n1"})
    n2 = bob.ok("/network/create", {"network": "n2"})
    assert n1["vni"] != n2["vni"]
    # B and C are not placed yet (h1 is full): their NICs are there when they start
    mac_b = alice.ok("/network/attach", {"vmid": vm_b, "network": "n1"})["mac"]
    mac_c = bob.ok("/network/attach", {"vmid": vm_c, "network": "n2"})["mac"]
    status, reply = bob.call("POST", "/network/attach", {"vmid": vm_a, "network": "n2"})
    assert status == 404, reply  # bob cannot attach alice's VM

    cloud.start_host("h2", ram="400MiB")
    for vm_id in (vm_b, vm_c):
        vm = wait_status(cloud.store, vm_id, VMStatus.RUNNING, BOOT_TIMEOUT)
        assert vm.host_name == "h2"
    pa, pb, pc = cloud.paths("h1", vm_a), cloud.paths("h2", vm_b), cloud.paths("h2", vm_c)

    # A is running: its NIC on N1 is hot-plugged, without a reboot
    wait_for(lambda: booted(pa), BOOT_TIMEOUT, "VM A to boot")
    pid_a = process.find(pa).pid
    mac_a = alice.ok("/network/attach", {"vmid": vm_a, "network": "n1"})["mac"]
    wait_for(lambda: device_id(mac_a) in qemu_devices(pa), 60, "A's NIC to be hot-plugged")
    assert process.find(pa).pid == pid_a, "A was restarted instead of hot-plugged"
    assert {bridge_name(n1["vni"]), vxlan_name(n1["vni"]), tap_name(mac_a)} <= links(ns1)
    assert {tap_name(mac_b), tap_name(mac_c), bridge_name(n2["vni"])} <= links(ns2)
    assert not {tap_name(mac_a), tap_name(mac_b)} & links(""), "taps leaked into the root namespace"
    addr1, addr2 = cloud.underlay.addresses
    # each host learns of the other's VM on N1 from the records, on its own time
    wait_for(lambda: fdb_peers(ns1, vxlan_name(n1["vni"])) == {addr2}, 30, "h1 to flood N1 to h2 only")
    wait_for(lambda: fdb_peers(ns2, vxlan_name(n1["vni"])) == {addr1}, 30, "h2 to flood N1 to h1 only")
    assert fdb_peers(ns2, vxlan_name(n2["vni"])) == set()  # nobody else is on N2

    for paths, mac in ((pb, mac_b), (pc, mac_c)):  # booted with their NIC, which the guest brought up
        log = wait_for(lambda: booted(paths), BOOT_TIMEOUT, f"VM {paths.vm_id} to boot")
        assert f"UCLOUD-GUEST-NIC eth0 {mac}" in log
    con_a, con_b, con_c = Console(pa), Console(pb), Console(pc)
    # The guest brings a hot-plugged NIC up by itself (guest/nic-hotplug), as it does at boot.
    wait_for(lambda: f"UCLOUD-GUEST-NIC eth0 {mac_a}" in pa.serial_log.read_text(errors="replace"), 60,
             "guest A to bring its hot-plugged eth0 up", 1.0)
    for con, mac in ((con_a, mac_a), (con_b, mac_b), (con_c, mac_c)):
        wait_for(lambda: con.has_address(link_local(mac)), 60, f"{link_local(mac)} on eth0 of a guest", 1.0)

    # A (h1) and B (h2) on N1 reach each other across the hosts
    try:
        wait_for(lambda: con_a.ping(link_local(mac_b)), PING_TIMEOUT, "A to ping B over N1", 1.0)
        wait_for(lambda: con_b.ping(link_local(mac_a)), PING_TIMEOUT, "B to ping A over N1", 1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- guest A\n{con_a.network_state()}\n--- guest B\n"
                             f"{con_b.network_state()}\n{cloud.logs()}") from None
    assert cloud.metric("h1", 'ucloud_vm_nic_hotplugs_total{host="h1",op="plug"}') == 1  # A's NIC

    # a restarted daemon adopts A with its NIC as it is: nothing re-plugged, nothing removed
    cloud.hosts["h1"].stop()
    cloud.hosts["h1"].start()
    wait_for(lambda: cloud.metric_or_none("h1", "ucloud_vm_network_changes_total") is not None, 60,
             "the restarted h1 daemon to serve /metrics")
    time.sleep(2)  # its first network pass
    assert process.find(pa).pid == pid_a and tap_name(mac_a) in links(ns1)
    assert cloud.metric("h1", 'ucloud_vm_nic_hotplugs_total{host="h1",op="plug"}') == 0
    wait_for(lambda: con_a.ping(link_local(mac_b)), PING_TIMEOUT, "A to ping B after h1's daemon restarted", 1.0)

    # C, on another user's network (on the same host as B), reaches neither
    assert not con_c.ping(link_local(mac_b), count=2)
    assert not con_a.ping(link_local(mac_c), count=2)

    # a network with VMs attached is not deleted
    status, reply = alice.call("POST", "/network/delete", {"network": "n1"})
    assert status == 409, reply

    # detach B: its NIC is hot-unplugged, its tap is gone, A cannot reach it any more
    alice.ok("/network/detach", {"vmid": vm_b, "network": "n1"})
    # B was h2's last VM on N1: N1's bridge and VXLAN go from h2 with B's tap
    wait_for(lambda: not {tap_name(mac_b), bridge_name(n1["vni"]), vxlan_name(n1["vni"])} & links(ns2), 60,
             "B's tap and h2's N1 bridge and VXLAN to be removed")
    assert device_id(mac_b) not in qemu_devices(pb)
    wait_for(lambda: fdb_peers(ns1, vxlan_name(n1["vni"])) == set(), 30, "h1 to stop flooding N1 to h2")
    assert not con_a.ping(link_local(mac_b), count=2)
    assert record(cloud.store, vm_b).status is VMStatus.RUNNING
    assert cloud.metric("h2", 'ucloud_vm_nic_hotplugs_total{host="h2",op="unplug"}') == 1  # B's NIC
    assert cloud.metric("h2", 'ucloud_vm_network_changes_total{host="h2"}') > 0

    # detach A, then delete N1: its bridge and VXLAN are gone on every host
    alice.ok("/network/detach", {"vmid": vm_a, "network": "n1"})
    alice.ok("/network/delete", {"network": "n1"})
    for ns in (ns1, ns2):
        wait_for(lambda: not {bridge_name(n1["vni"]), vxlan_name(n1["vni"])} & links(ns), 60,
                 f"N1's bridge and VXLAN to be removed in {ns}")
    assert tap_name(mac_a) not in links(ns1)
    assert {bridge_name(n2["vni"]), vxlan_name(n2["vni"]), tap_name(mac_c)} <= links(ns2)  # N2 untouched

    # delete bob's VM C while it is still attached to N2: the host removes its tap and, C
    # being N2's last VM there, N2's bridge and VXLAN; C's MAC claim is freed with its record
    assert cloud.store.get(mac_key(mac_c)) is not None
    bob.ok("/vm/delete", {"vmid": vm_c})
    wait_for(lambda: record(cloud.store, vm_c) is None, 60, "C's record to be removed")
    assert cloud.store.get(mac_key(mac_c)) is None
    wait_for(lambda: not {tap_name(mac_c), bridge_name(n2["vni"]), vxlan_name(n2["vni"])} & links(ns2), 60,
             "C's tap and N2's bridge and VXLAN to be removed")
    bob.ok("/network/delete", {"network": "n2"})  # a deleted VM does not hold its network
