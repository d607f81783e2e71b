"""The pure planning of a host's networks (ucloud_vm/netplan.py): desired state from records,
steps from the kernel's state, and a running QEMU's NIC changes. Table-driven, no root."""

from __future__ import annotations

import pytest

from ucloud_vm.netplan import (Actual, BridgeSpec, Desired, Step, TapSpec, TapState, Underlay, VmNics,
                               VxlanState, desired_state, device_id, device_of_netdev, is_managed, netdev_id,
                               nic_changes, plan, tap_name, tap_of_device)

MAC1, MAC2, MAC3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"
ADDR = {"h1": "10.9.0.1", "h2": "10.9.0.2", "h3": "10.9.0.3"}
UNDER = Underlay("10.9.0.1", 4789)


def test_names_fit_the_kernel_and_come_only_from_ids() -> None:
    assert tap_name("52:54:00:AB:cd:01") == "uct525400abcd01"
    assert len(tap_name(MAC1)) == 15 and len("ucbr16777215") <= 15
    assert netdev_id(MAC1) == "net525400000001" and device_id(MAC1) == "nic525400000001"
    assert device_of_netdev(netdev_id(MAC1)) == device_id(MAC1) and tap_of_device(device_id(MAC1)) == tap_name(MAC1)
    assert is_managed("ucbr7") and is_managed("ucvx16777215") and is_managed(tap_name(MAC1))
    assert not is_managed("eth0") and not is_managed("ucbrx") and not is_managed("uctnotamac00000")


@pytest.mark.parametrize("vms, vnis, bridges, taps, skipped", [
    # no VM here: nothing
    ([VmNics("a", "h2", (("n1", MAC1),))], {"n1": 7}, {}, set(), 0),
    # one VM here alone on its network: bridge without peers, one tap
    ([VmNics("a", "h1", (("n1", MAC1),))], {"n1": 7}, {"ucbr7": frozenset()}, {tap_name(MAC1)}, 0),
    # a VM on h2 on the same network: h2 becomes a peer; h3's VM on another network does not
    ([VmNics("a", "h1", (("n1", MAC1),)), VmNics("b", "h2", (("n1", MAC2),)),
      VmNics("c", "h3", (("n2", MAC3),))],
     {"n1": 7, "n2": 8}, {"ucbr7": frozenset({"10.9.0.2"})}, {tap_name(MAC1)}, 0),
    # two NICs of one VM on two networks
    ([VmNics("a", "h1", (("n1", MAC1), ("n2", MAC2)))], {"n1": 7, "n2": 8},
     {"ucbr7": frozenset(), "ucbr8": frozenset()}, {tap_name(MAC1), tap_name(MAC2)}, 0),
    # unknown network, bad VXLAN id, not a MAC: skipped with a reason, never a bad name
    ([VmNics("a", "h1", (("gone", MAC1), ("n1", "x; rm -rf /"), ("n2", MAC3)))], {"n1": 7, "n2": True},
     {}, set(), 3),
    # an unplaced VM is nobody's peer
    ([VmNics("a", "h1", (("n1", MAC1),)), VmNics("b", "", (("n1", MAC2),))], {"n1": 7},
     {"ucbr7": frozenset()}, {tap_name(MAC1)}, 0),
])
def test_desired_state(vms, vnis, bridges, taps, skipped) -> None:
    desired = desired_state("h1", vms, vnis, ADDR)
    assert {name: spec.peers for name, spec in desired.bridges.items()} == bridges
    assert set(desired.taps) == taps
    assert len(desired.skipped) == skipped


def test_desired_state_never_bridges_two_owners() -> None:
    vms = [VmNics("a", "h1", (("n1", MAC1), ("n2", MAC2)), owner="alice"),
           VmNics("b", "h2", (("n1", MAC3),), owner="bob")]
    desired = desired_state("h1", vms, {"n1": 7, "n2": 8}, ADDR, owners={"n1": "alice", "n2": "bob"})
    assert set(desired.taps) == {tap_name(MAC1)} and len(desired.skipped) == 1
    assert desired.bridges["ucbr7"].peers == frozenset()  # bob's NIC on alice's network is no peer


def _desired(peers: frozenset[str] = frozenset()) -> Desired:
    tap = TapSpec(tap_name(MAC1), "ucbr7", "a", "n1", MAC1)
    return Desired({"ucbr7": BridgeSpec(7, peers)}, {tap.name: tap})


def _converged(peers: frozenset[str] = frozenset()) -> Actual:
    return Actual({"ucbr7": True}, {"ucvx7": VxlanState(7, "10.9.0.1", 4789, "ucbr7", peers)},
                  {tap_name(MAC1): TapState("ucbr7")})


T1 = tap_name(MAC1)


@pytest.mark.parametrize("desired, actual, steps", [
    # from nothing: bridge, VXLAN with its peer, tap; in that order
    (_desired(frozenset({"10.9.0.2"})), Actual(), [
        Step("add_bridge", "ucbr7"), Step("set_up", "ucbr7"),
        Step("add_vxlan", "ucvx7", vni=7), Step("set_master", "ucvx7", master="ucbr7"), Step("set_up", "ucvx7"),
        Step("fdb_add", "ucvx7", peer="10.9.0.2"),
        Step("add_tap", T1), Step("set_master", T1, master="ucbr7"), Step("set_up", T1)]),
    # converged: nothing to do (idempotent)
    (_desired(frozenset({"10.9.0.2"})), _converged(frozenset({"10.9.0.2"})), []),
    # a peer left, another came
    (_desired(frozenset({"10.9.0.3"})), _converged(frozenset({"10.9.0.2"})),
     [Step("fdb_add", "ucvx7", peer="10.9.0.3"), Step("fdb_del", "ucvx7", peer="10.9.0.2")]),
    # the last VM left: tap, then VXLAN, then bridge go
    (Desired(), _converged(), [Step("delete", T1), Step("delete", "ucvx7"), Step("delete", "ucbr7")]),
    # a VXLAN made with another port is replaced; a tap that is down is brought up
    (_desired(), Actual({"ucbr7": True}, {"ucvx7": VxlanState(7, "10.9.0.1", 8472, "ucbr7", frozenset())},
                        {T1: TapState("ucbr7", up=False)}),
     [Step("delete", "ucvx7"), Step("add_vxlan", "ucvx7", vni=7), Step("set_master", "ucvx7", master="ucbr7"),
      Step("set_up", "ucvx7"), Step("set_up", T1)]),
])
def test_plan(desired, actual, steps) -> None:
    assert plan(desired, actual, UNDER) == steps


def test_plan_takes_a_held_tap_off_its_bridge_and_removes_it_later() -> None:
    actual = _converged()
    # the guest has not released the NIC: cut off at once, the tap stays for its QEMU
    assert plan(Desired(), actual, UNDER, held={T1}) == [
        Step("unbridge", T1), Step("delete", "ucvx7"), Step("delete", "ucbr7")]
    after = Actual({}, {}, {T1: TapState("")})
    assert plan(Desired(), after, UNDER, held={T1}) == []
    assert plan(Desired(), after, UNDER) == [Step("delete", T1)]  # released: removed


def test_plan_without_removals_only_creates() -> None:
    actual = Actual({"ucbr9": True}, {}, {tap_name(MAC2): TapState("ucbr9")})
    steps = plan(_desired(), actual, UNDER, removals=False)
    assert steps and not any(s.op == "delete" for s in steps)
    assert [s.op for s in plan(_desired(), actual, UNDER)][-2:] == ["delete", "delete"]


@pytest.mark.parametrize("wanted, devices, netdevs, unplug, drop, add_net, add_dev", [
    ([MAC1], [], [], (), (), [MAC1], [MAC1]),  # hot-plug
    ([MAC1], [device_id(MAC1)], [netdev_id(MAC1)], (), (), [], []),  # in sync
    ([], [device_id(MAC1)], [netdev_id(MAC1)], (device_id(MAC1),), (netdev_id(MAC1),), [], []),  # unplug
    ([MAC1], [], [netdev_id(MAC1)], (), (), [], [MAC1]),  # backend left from a half plug
    ([], ["disk-boot", "virtio0"], ["hostnet0"], (), (), [], []),  # ids that are not ours: untouched
])
def test_nic_changes(wanted, devices, netdevs, unplug, drop, add_net, add_dev) -> None:
    taps = [TapSpec(tap_name(m), "ucbr7", "a", "n1", m) for m in wanted]
    changes = nic_changes(taps, devices, netdevs)
    assert changes.unplug == unplug and changes.drop == drop
    assert [t.mac for t in changes.add_netdevs] == add_net
    assert [t.mac for t in changes.add_devices] == add_dev
    assert bool(changes) == bool(unplug or drop or add_net or add_dev)
