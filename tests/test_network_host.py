"""A host's network plumbing for real (ucloud_vm/network.py, netns.py): bridges, VXLANs and
taps made in network namespaces that the test makes (two hosts on a veth underlay),
converged idempotently, carrying traffic between the hosts, and removed when unused."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from ucloud_vm import netns
from ucloud_vm.netplan import Underlay as UnderlaySpec
from ucloud_vm.netplan import VmNics, desired_state, tap_name
from ucloud_vm.network import HostNetwork, NetworkError

from netns_harness import Underlay, ip, links

MAC1, MAC2, MAC3 = "52:54:00:0a:00:01", "52:54:00:0a:00:02", "52:54:00:0a:00:03"


@pytest.fixture
def underlay() -> Iterator[Underlay]:
    u = Underlay(2)
    yield u
    u.remove()


def host_desired(host: str, vms: list[VmNics], u: Underlay):
    return desired_state(host, vms, {"n1": 101, "n2": 102}, dict(zip(["h1", "h2"], u.addresses)))


def test_reconcile_creates_idempotently_and_removes_when_unused(underlay: Underlay) -> None:
    ns1 = underlay.hosts[0]
    net = HostNetwork(ns1, UnderlaySpec(underlay.addresses[0], 4789))
    vms = [VmNics("a", "h1", (("n1", MAC1), ("n2", MAC3))), VmNics("b", "h2", (("n1", MAC2),))]

    steps = net.reconcile(host_desired("h1", vms, underlay))
    assert steps, "nothing was created"
    have = links(ns1)
    assert {"ucbr101", "ucvx101", tap_name(MAC1), "ucbr102", "ucvx102", tap_name(MAC3)} <= have
    assert not ({"ucbr101", "ucvx101"} & links("")), "created in the wrong namespace"
    details = ip("-d", "link", "show", "ucvx101", netns=ns1)
    assert "vxlan id 101" in details and f"local {underlay.addresses[0]}" in details
    assert "dstport 4789" in details and "nolearning" in details and "dev ul0" in details
    fdb = ip("-j", "-d", "link", "show", "master", "ucbr101", netns=ns1)
    assert "ucvx101" in fdb and tap_name(MAC1) in fdb
    # unicast flooding to the only other host with a VM on n1; none for n2 (no peer)
    assert f"00:00:00:00:00:00 dst {underlay.addresses[1]}" in subprocess.run(
        ["bridge", "-n", ns1, "fdb", "show", "dev", "ucvx101"], capture_output=True, text=True).stdout
    assert "dst" not in subprocess.run(["bridge", "-n", ns1, "fdb", "show", "dev", "ucvx102"],
                                       capture_output=True, text=True).stdout

    assert net.reconcile(host_desired("h1", vms, underlay)) == []  # converged: nothing to do

    # VM a leaves n2: its tap, the VXLAN and the bridge of n2 go; n1 stays
    vms[0] = VmNics("a", "h1", (("n1", MAC1),))
    net.reconcile(host_desired("h1", vms, underlay))
    have = links(ns1)
    assert "ucbr102" not in have and "ucvx102" not in have and tap_name(MAC3) not in have
    assert {"ucbr101", "ucvx101", tap_name(MAC1)} <= have

    # the last VM is gone: nothing of ours is left, the underlay is untouched
    net.reconcile(host_desired("h1", vms[1:], underlay))
    assert links(ns1) == {"lo", "ul0"}


def test_two_daemons_sharing_a_namespace_do_not_remove_each_others_interfaces(underlay: Underlay) -> None:
    """Each host tags what it makes (alias ucloud:<host>); another host in the same namespace
    neither counts it as its own nor removes it, and a clash on a name is a clear error."""
    ns1 = underlay.hosts[0]
    spec = UnderlaySpec(underlay.addresses[0], 4789)
    mine, other = HostNetwork(ns1, spec, owner="h1"), HostNetwork(ns1, spec, owner="hx")
    vms = [VmNics("a", "h1", (("n1", MAC1),))]
    mine.reconcile(host_desired("h1", vms, underlay))
    assert "alias ucloud:h1" in ip("-d", "link", "show", "ucbr101", netns=ns1)

    assert other.reconcile(host_desired("h1", [], underlay)) == []  # sees nothing of its own
    assert {"ucbr101", "ucvx101", tap_name(MAC1)} <= links(ns1)
    with pytest.raises(NetworkError, match="belongs to ucloud:h1"):
        other.reconcile(host_desired("h1", [VmNics("b", "h1", (("n1", MAC2),))], underlay))
    assert mine.reconcile(host_desired("h1", vms, underlay)) == []  # still converged, untouched

    mine.reconcile(host_desired("h1", [], underlay))
    assert links(ns1) == {"lo", "ul0"}


def test_a_tap_still_held_by_qemu_is_cut_off_then_removed(underlay: Underlay) -> None:
    ns1 = underlay.hosts[0]
    net = HostNetwork(ns1, UnderlaySpec(underlay.addresses[0], 4789))
    net.reconcile(host_desired("h1", [VmNics("a", "h1", (("n1", MAC1),))], underlay))
    fd = netns.open_tap(ns1, tap_name(MAC1))  # as QEMU holds it
    try:
        net.reconcile(host_desired("h1", [], underlay), held={tap_name(MAC1)})
        assert links(ns1) == {"lo", "ul0", tap_name(MAC1)}
        assert "master" not in ip("link", "show", tap_name(MAC1), netns=ns1)
    finally:
        os.close(fd)
    net.reconcile(host_desired("h1", [], underlay))
    assert links(ns1) == {"lo", "ul0"}


def _veth_end(host_ns: str, bridge: str, name: str, address: str) -> None:
    """A stand-in VM NIC: a veth on the bridge, its other end in a namespace of its own."""
    ip("netns", "add", name)
    ip("link", "add", f"v{name[-6:]}", "type", "veth", "peer", "name", "eth0", "netns", name, netns=host_ns)
    ip("link", "set", f"v{name[-6:]}", "master", bridge, "up", netns=host_ns)
    ip("addr", "add", f"{address}/24", "dev", "eth0", netns=name)
    ip("link", "set", "eth0", "up", netns=name)


def _ping(netns_name: str, address: str) -> bool:
    done = subprocess.run(["ip", "netns", "exec", netns_name, "busybox", "ping", "-c", "1", "-W", "2", address],
                          capture_output=True, timeout=30)
    return done.returncode == 0


def test_vxlan_carries_traffic_between_hosts_only_on_the_same_network(underlay: Underlay) -> None:
    (ns1, ns2), (a1, a2) = underlay.hosts, underlay.addresses
    nets = [HostNetwork(ns, UnderlaySpec(addr, 4789)) for ns, addr in ((ns1, a1), (ns2, a2))]
    vms = [VmNics("a", "h1", (("n1", MAC1),)), VmNics("b", "h2", (("n1", MAC2),)),
           VmNics("c", "h2", (("n2", MAC3),))]
    for host, net in zip(["h1", "h2"], nets):
        net.reconcile(host_desired(host, vms, underlay))
    ends = [f"{ns1}-e1", f"{ns2}-e2", f"{ns2}-e3"]
    try:
        _veth_end(ns1, "ucbr101", ends[0], "192.168.77.1")
        _veth_end(ns2, "ucbr101", ends[1], "192.168.77.2")
        _veth_end(ns2, "ucbr102", ends[2], "192.168.77.3")  # same subnet, other network
        assert _ping(ends[0], "192.168.77.2"), "no traffic over the VXLAN between the hosts"
        assert not _ping(ends[0], "192.168.77.3"), "traffic crossed into another network"
    finally:
        for name in ends:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def test_tap_fd_opened_from_another_namespace(underlay: Underlay) -> None:
    ns1 = underlay.hosts[0]
    netns.create_tap(ns1, "uct000000000001")
    assert "uct000000000001" in links(ns1) and "uct000000000001" not in links("")
    fd = netns.open_tap(ns1, "uct000000000001")
    try:
        # attached: the persistent tap now has a reader, its carrier comes up when set up
        ip("link", "set", "uct000000000001", "up", netns=ns1)
        assert "LOWER_UP" in ip("link", "show", "uct000000000001", netns=ns1)
    finally:
        os.close(fd)
    assert "NO-CARRIER" in ip("link", "show", "uct000000000001", netns=ns1)


def test_host_netns_setting_is_checked(tmp_path) -> None:
    from ucloud_common.config import ConfigError, load_settings

    assert load_settings(env={"UCLOUD_HOST_NETNS": "h1"}, env_file=tmp_path / "none").host_netns == "h1"
    with pytest.raises(ConfigError, match="host_netns"):
        load_settings(env={"UCLOUD_HOST_NETNS": "../etc"}, env_file=tmp_path / "none")
    with pytest.raises(netns.NetnsError, match="no-such-ns"):
        netns.open_tap("no-such-ns", "uct000000000009")


def test_qemu_gets_taps_at_start_and_by_hotplug_and_keeps_an_unreleased_one(underlay: Underlay) -> None:
    """A bare QEMU (paused with -S: no guest to acknowledge an unplug) in the root namespace,
    its taps in the host's namespace: one inherited at start, one hot-plugged over QMP."""
    import shutil
    import signal
    import tempfile

    from ucloud_vm import nics
    from ucloud_vm.netplan import device_id
    from ucloud_vm.qmp import QMP

    ns1 = underlay.hosts[0]
    net = HostNetwork(ns1, UnderlaySpec(underlay.addresses[0], 4789))
    one = host_desired("h1", [VmNics("a", "h1", (("n1", MAC1),))], underlay)
    two = host_desired("h1", [VmNics("a", "h1", (("n1", MAC1), ("n2", MAC2)))], underlay)
    net.reconcile(one)
    run_dir = Path(tempfile.mkdtemp(prefix="ucq-", dir="/tmp"))
    qmp_path = str(run_dir / "qmp.sock")
    opened = nics.open_fds(ns1, one.taps_of("a"))
    (nic,) = nics.start_args(opened)
    argv = ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-machine", "pc", "-accel", "tcg", "-S",
            "-qmp", f"unix:{qmp_path},server=on,wait=off", "-netdev", nic.netdev,
            "-device", f"virtio-net-pci,netdev={nic.netdev_id},mac={nic.mac},id={nic.device_id}"]
    qemu = subprocess.Popen(argv, pass_fds=[fd for _, fd in opened], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    nics.close_fds(fd for _, fd in opened)
    try:
        with QMP(qmp_path).connect(wait=30):
            pass
        ip("link", "set", tap_name(MAC1), "up", netns=ns1)
        assert "LOWER_UP" in ip("link", "show", tap_name(MAC1), netns=ns1)  # QEMU holds it

        net.reconcile(two)
        changes = nics.sync(qmp_path, ns1, two.taps_of("a"))
        assert [t.mac for t in changes.add_devices] == [MAC2] and not changes.unplug
        assert "LOWER_UP" in ip("link", "show", tap_name(MAC2), netns=ns1)
        assert not nics.sync(qmp_path, ns1, two.taps_of("a"))  # in sync: nothing to do

        only_two = host_desired("h1", [VmNics("a", "h1", (("n2", MAC2),))], underlay)
        with pytest.raises(nics.NicError) as raised:
            nics.sync(qmp_path, ns1, only_two.taps_of("a"), unplug_wait=1.0)
        assert raised.value.held == {tap_name(MAC1)}
        with QMP(qmp_path).connect() as qmp:
            assert device_id(MAC1) in nics.qemu_nics(qmp)[0]  # the guest never let go
        net.reconcile(only_two, held=raised.value.held)
        assert tap_name(MAC1) in links(ns1) and "ucbr101" not in links(ns1)
        assert "master" not in ip("link", "show", tap_name(MAC1), netns=ns1)
    finally:
        qemu.send_signal(signal.SIGKILL)
        qemu.wait(10)
        shutil.rmtree(run_dir, ignore_errors=True)
    net.reconcile(only_two)  # QEMU is gone: so is the tap
    assert tap_name(MAC1) not in links(ns1) and tap_name(MAC2) in links(ns1)
