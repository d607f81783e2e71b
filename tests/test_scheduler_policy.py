"""Pure placement logic of the scheduler: filters, weighers, choosing, reasons, sharding,
the batch transaction and the audit's plan. Table-driven, no etcd."""

from __future__ import annotations

from collections import Counter
from types import MappingProxyType

import pytest

from ucloud_common.config import load_settings
from ucloud_common.keys import alive_key, alloc_key, host_key, vm_key
from ucloud_common.models import Allocation, HostStatus, Specs, VM, VMStatus
from ucloud_common.store import Compare, Put
from ucloud_common.units import GB
from ucloud_scheduler.actions import MarkLost, Place, Release, SetReason, TxnBuilder, Unplace
from ucloud_scheduler.audit import Fix, expected_allocations, plan_fixes
from ucloud_scheduler.filters import HostState, fits_resources, host_alive, host_up
from ucloud_scheduler.placement import (Choice, HostTable, Overcommit, Policy, PolicyError, Rejection,
                                        check_batch, choose, summarize)
from ucloud_scheduler.shard import owner
from ucloud_scheduler.weighers import pack, spread

BIG = Specs(8, 32 * GB, 500 * GB, 100 * GB)


def state(name: str = "h", *, status: HostStatus = HostStatus.UP, alive: bool = True,
          limit: Specs = BIG, used: Specs = Specs()) -> HostState:
    return HostState(name, status, alive, limit, limit, used)


DEFAULT = Policy.named(["host_up", "host_alive", "fits_resources"], ["spread"])


# -- filters -----------------------------------------------------------------------------------

@pytest.mark.parametrize("host, want, expected", [
    (state(), Specs(1, GB), None),
    (state(status=HostStatus.DOWN), Specs(1, GB), "is down"),
    (state(status=HostStatus.DRAINING), Specs(1, GB), "is draining"),
])
def test_host_up(host, want, expected):
    assert host_up(host, want) == expected


@pytest.mark.parametrize("alive, expected", [(True, None), (False, "is not alive")])
def test_host_alive(alive, expected):
    assert host_alive(state(alive=alive), Specs()) == expected


@pytest.mark.parametrize("used, want, expected", [
    (Specs(), Specs(1, GB, 10 * GB), None),
    (Specs(7, 31 * GB, 490 * GB, 100 * GB), Specs(1, GB, 10 * GB), None),  # exactly full is allowed
    (Specs(8), Specs(1), "lacks cpu"),
    (Specs(0, 32 * GB), Specs(0, 1), "lacks ram"),
    (Specs(), Specs(9, 33 * GB), "lacks cpu and ram"),
    (Specs(), Specs(0, 0, 501 * GB, 101 * GB), "lacks hdd and ssd"),
])
def test_fits_resources(used, want, expected):
    assert fits_resources(state(used=used), want) == expected


# -- weighers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("used, want, expected", [
    (Specs(), Specs(), 1.0),
    (Specs(4, 16 * GB, 250 * GB, 50 * GB), Specs(), 0.5),
    (Specs(4, 16 * GB, 250 * GB, 50 * GB), Specs(4, 16 * GB, 250 * GB, 50 * GB), 0.0),
    (Specs(8, 32 * GB, 500 * GB, 100 * GB), Specs(1), 0.0),  # never below zero
])
def test_spread_is_the_free_share_after_placing(used, want, expected):
    assert spread(state(used=used), want) == pytest.approx(expected)
    assert pack(state(used=used), want) == pytest.approx(1 - expected)


def test_weighers_ignore_resources_a_host_does_not_offer():
    no_ssd = state(limit=Specs(4, 8 * GB, 100 * GB, 0), used=Specs(2, 4 * GB, 50 * GB, 0))
    assert spread(no_ssd, Specs()) == pytest.approx(0.5)
    assert spread(state(limit=Specs()), Specs()) == 0.0


# -- choosing ------------------------------------------------------------------------------------

def test_spread_picks_the_emptiest_and_pack_the_fullest_host():
    hosts = [state("a", used=Specs(4, 16 * GB)), state("b", used=Specs(1, 2 * GB)), state("c", used=Specs(6, 24 * GB))]
    assert choose(Specs(1, GB), hosts, DEFAULT) == Choice("b", pytest.approx(spread(hosts[1], Specs(1, GB))))
    packing = Policy.named(["fits_resources"], ["pack"])
    assert choose(Specs(1, GB), hosts, packing).host == "c"
    assert choose(Specs(3, GB), hosts, packing).host == "a"  # c has no room for 3 vCPUs


def test_ties_go_to_the_first_host_in_scan_order():
    hosts = [state("x"), state("y")]
    assert choose(Specs(1), hosts, DEFAULT).host == "x"
    assert choose(Specs(1), list(reversed(hosts)), DEFAULT).host == "y"


def test_candidates_limit_weighs_only_the_first_feasible_hosts():
    hosts = [state("full", used=BIG), state("half", used=Specs(4, 16 * GB)), state("empty")]
    assert choose(Specs(1), hosts, Policy.named(["fits_resources"], ["spread"], candidates=1)).host == "half"
    assert choose(Specs(1), hosts, Policy.named(["fits_resources"], ["spread"], candidates=0)).host == "empty"


def test_a_rejection_counts_each_host_once_under_its_first_failing_filter():
    hosts = [state("a", used=Specs(0, 32 * GB)), state("b", used=Specs(0, 31 * GB)), state("c", used=Specs(0, 32 * GB)),
             state("d", status=HostStatus.DOWN, used=Specs(0, 32 * GB)), state("e", alive=False)]
    result = choose(Specs(1, 2 * GB), hosts, DEFAULT)
    assert isinstance(result, Rejection)
    assert result.counts == {"lacks ram": 3, "is down": 1, "is not alive": 1}
    assert result.reason == "no host fits: 3 lack ram, 1 is down, 1 is not alive"


@pytest.mark.parametrize("counts, text", [
    ({}, "no host fits: no hosts are registered"),
    ({"lacks ram": 1}, "no host fits: 1 lacks ram"),
    ({"lacks ram": 3, "is down": 1}, "no host fits: 3 lack ram, 1 is down"),
    ({"is down": 2, "lacks cpu and ram": 2}, "no host fits: 2 are down, 2 lack cpu and ram"),
])
def test_summarize(counts, text):
    assert summarize(counts) == text


def test_a_batch_never_gives_the_last_room_of_a_host_twice():
    table = HostTable([state("only", limit=Specs(2, 4 * GB, 10 * GB))])
    assert isinstance(table.place(Specs(1, 2 * GB), DEFAULT), Choice)
    assert isinstance(table.place(Specs(1, 2 * GB), DEFAULT), Choice)
    third = table.place(Specs(1, 2 * GB), DEFAULT)
    assert isinstance(third, Rejection) and third.reason == "no host fits: 1 lacks cpu and ram"


def test_table_scans_preferred_hosts_first_each_group_rotated():
    table = HostTable([state("p0"), state("p1"), state("p2")], [state("o0"), state("o1")])
    assert [h.name for h in table.scan(1)] == ["p1", "p2", "p0", "o1", "o0"]
    assert [h.name for h in HostTable([], [state("o0")]).scan(5)] == ["o0"]


def test_policy_and_settings_errors_name_the_key():
    with pytest.raises(PolicyError, match="unknown filter 'gpu'"):
        Policy.named(["gpu", "fits_resources"], ["spread"])
    with pytest.raises(PolicyError, match="must include fits_resources"):
        Policy.named(["host_up"], ["spread"])
    with pytest.raises(PolicyError, match="unknown weigher 'random'"):
        Policy.named(["fits_resources"], ["random"])
    with pytest.raises(PolicyError, match="scheduler_candidates"):
        Policy.named(["fits_resources"], ["spread"], -1)
    for size in (0, 41):
        with pytest.raises(PolicyError, match="scheduler_batch"):
            check_batch(size)
    assert check_batch(1) == 1 and check_batch(40) == 40
    with pytest.raises(PolicyError, match="overcommit_ram"):
        Overcommit.from_settings(load_settings(env={}, env_file="/nonexistent", overcommit_ram=0))
    policy = Policy.from_settings(load_settings(env={}, env_file="/nonexistent", scheduler_weighers=["pack"]))
    assert [n for n, _ in policy.filters] == ["host_up", "host_alive", "fits_resources"]
    assert [n for n, _ in policy.weighers] == ["pack"]


def test_overcommit_limit_rounds_down():
    oc = Overcommit(cpu=4.0, ram=1.5, hdd=1.0, ssd=0.5)
    assert oc.limit(Specs(3, 3, 7, 5)) == Specs(12, 4, 7, 2)
    host = state(limit=oc.limit(Specs(2, 4 * GB)), used=Specs(7, 6 * GB))
    assert fits_resources(host, Specs(1, 0)) is None
    assert fits_resources(host, Specs(2, 0)) == "lacks cpu"


# -- sharding ------------------------------------------------------------------------------------

def test_rendezvous_owner_is_stable_balanced_and_moves_only_the_dead_members_share():
    keys = [f"/v1/vm/{i}" for i in range(3000)]
    three = {k: owner(k, ["a", "b", "c"]) for k in keys}
    assert three == {k: owner(k, ["c", "a", "b"]) for k in keys}  # order of members does not matter
    shares = Counter(three.values())
    assert all(800 < n < 1200 for n in shares.values()), shares
    two = {k: owner(k, ["a", "c"]) for k in keys}
    assert all(two[k] == three[k] for k in keys if three[k] != "b")
    assert owner("/v1/vm/x", []) == ""


# -- the batch transaction ---------------------------------------------------------------------

def vm(vm_id: str, rev: int, **kw) -> VM:
    return VM(id=vm_id, owner="alice", specs=Specs(1, GB, 10 * GB), mod_revision=rev, **kw)


def test_placements_compare_every_record_they_write_and_share_a_host_compare():
    existing = Allocation("h1", MappingProxyType({"old": Specs(1, GB)}), mod_revision=7)
    builder = TxnBuilder({"h1": existing}, now=100.0)
    assert builder.add(Place(vm("a", 11), "h1"))
    assert builder.add(Place(vm("b", 12), "h1"))
    assert builder.add(Place(vm("c", 13), "h2"))
    compares, ops = builder.build()
    assert set(compares) == {Compare(vm_key("a"), 11), Compare(vm_key("b"), 12), Compare(vm_key("c"), 13),
                             Compare(alloc_key("h1"), 7), Compare(alloc_key("h2"), 0)}
    written = {op.key: op.value for op in ops if isinstance(op, Put)}
    assert set(written) == {vm_key("a"), vm_key("b"), vm_key("c"), alloc_key("h1"), alloc_key("h2")}
    placed = VM.from_json("a", written[vm_key("a")])
    assert placed.hostname == host_key("h1") and placed.status is VMStatus.SCHEDULED_DEPLOY
    assert placed.events[-1].message == "placed on h1"
    assert set(Allocation.from_json("h1", written[alloc_key("h1")]).vms) == {"old", "a", "b"}
    vms, allocs = builder.records(42)
    assert {v.mod_revision for v in vms} == {42} and {a.mod_revision for a in allocs} == {42}


def test_move_release_reason_and_lost_actions():
    dead = Allocation("dead", MappingProxyType({"m": Specs(1, GB, 10 * GB), "gone": Specs(1)}), mod_revision=3)
    builder = TxnBuilder({"dead": dead}, now=1.0)
    moving = vm("m", 5, hostname=host_key("dead"), status=VMStatus.RUNNING, storage="rbd")
    assert builder.add(Place(moving, "live", source="dead", message="moved"))
    assert builder.add(Release("gone", "dead"))
    assert builder.add(SetReason(vm("w", 6), "no host fits: 1 lacks ram"))
    assert builder.add(MarkLost(vm("l", 8, hostname=host_key("dead"), status=VMStatus.RUNNING), "lost it"))
    assert not builder.add(Unplace(vm("m", 5), "dead", "x"))  # one decision per VM per transaction
    assert builder.add(Release("never-listed", "dead"))  # nothing to release: accepted, no-op
    compares, ops = builder.build()
    assert Compare(vm_key("gone"), 0) in compares  # released only if the VM is really gone
    assert Compare(alloc_key("dead"), 3) in compares and Compare(alloc_key("live"), 0) in compares
    written = {op.key: op.value for op in ops}
    assert vm_key("gone") not in written
    assert dict(Allocation.from_json("dead", written[alloc_key("dead")]).vms) == {}
    assert set(Allocation.from_json("live", written[alloc_key("live")]).vms) == {"m"}
    assert VM.from_json("w", written[vm_key("w")]).reason == "no host fits: 1 lacks ram"
    lost = VM.from_json("l", written[vm_key("l")])
    assert lost.status is VMStatus.HOST_LOST and lost.hostname == host_key("dead") and lost.reason == "lost it"


def test_unplace_returns_the_vm_to_waiting_and_frees_the_dead_host():
    dead = Allocation("dead", MappingProxyType({"m": Specs(1, GB, 10 * GB)}), mod_revision=3)
    builder = TxnBuilder({"dead": dead}, now=1.0)
    assert builder.add(Unplace(vm("m", 5, hostname=host_key("dead"), status=VMStatus.RUNNING), "dead",
                               "no host fits: 2 lack ram"))
    _, ops = builder.build()
    written = {op.key: op.value for op in ops}
    back = VM.from_json("m", written[vm_key("m")])
    assert (back.status, back.hostname, back.reason) == (VMStatus.REQUESTED_NEW, "", "no host fits: 2 lack ram")
    assert dict(Allocation.from_json("dead", written[alloc_key("dead")]).vms) == {}


def test_builder_stops_at_etcds_compare_limit_and_keeps_the_rest_for_later():
    builder = TxnBuilder({}, now=1.0, max_compares=5)
    assert builder.add(Place(vm("a", 1), "h1"))  # 2 compares
    assert builder.add(Place(vm("b", 1), "h2"))  # 4
    assert builder.add(Place(vm("c", 1), "h1"))  # 5: h1 is compared already
    assert not builder.add(Place(vm("d", 1), "h3"))
    assert len(builder) == 3 and builder.compare_count() == 5


# -- the audit's plan --------------------------------------------------------------------------

def test_audit_plan_rewrites_only_what_differs_from_the_vms():
    vms = [vm("a", 1, hostname=host_key("h1")), vm("b", 1, hostname=host_key("h1"), status=VMStatus.STOPPED),
           vm("c", 1, hostname=host_key("h2")), vm("w", 1)]
    expected = expected_allocations(vms)
    assert {h: set(v) for h, v in expected.items()} == {"h1": {"a", "b"}, "h2": {"c"}}
    good = Allocation("h1", MappingProxyType(dict(expected["h1"])), mod_revision=4)
    stale = Allocation("h2", MappingProxyType({"c": Specs(1, GB, 10 * GB), "deleted": Specs(2)}), mod_revision=5)
    orphan = Allocation("gone", MappingProxyType({"x": Specs(1)}), mod_revision=6)
    empty_live = Allocation("h3", MappingProxyType({"y": Specs(1)}), mod_revision=7)
    fixes = plan_fixes({"h1": good, "h2": stale, "gone": orphan, "h3": empty_live, "bad": None},
                       {"h1": 4, "h2": 5, "gone": 6, "h3": 7, "bad": 8}, expected, hosts=["h1", "h2", "h3", "bad"])
    by_host = {f.host: f for f in fixes}
    assert set(by_host) == {"h2", "gone", "h3", "bad"}
    assert dict(by_host["h2"].wanted.vms) == dict(expected["h2"]) and by_host["h2"].revision == 5
    assert by_host["gone"] == Fix("gone", 6, None)  # no VMs and no host: deleted
    assert dict(by_host["h3"].wanted.vms) == {} and by_host["bad"].revision == 8
    assert plan_fixes({"h2": stale}, {"h2": 5}, {"h2": expected["h2"]}, hosts=["h2"], skip=["h2"]) == []
    created = plan_fixes({}, {}, expected, hosts=[])
    assert {f.host: f.revision for f in created} == {"h1": 0, "h2": 0}


def test_moves_off_a_dead_host_commit_only_while_its_liveness_key_is_absent():
    dead = Allocation("dead", MappingProxyType({"m": Specs(1, GB, 10 * GB), "u": Specs(1, GB, 10 * GB)}), 3)
    builder = TxnBuilder({"dead": dead}, now=1.0, max_compares=7)
    on_dead = dict(hostname=host_key("dead"), status=VMStatus.RUNNING)
    assert builder.add(Place(vm("m", 5, **on_dead), "live", source="dead", from_dead=True))  # VM, 2 allocs, alive
    assert builder.add(MarkLost(vm("l", 6, **on_dead), "lost"))  # + VM: dead's alive compare is shared
    assert builder.add(Unplace(vm("u", 7, **on_dead), "dead", "no host fits: 1 is down"))  # + VM = 6
    assert not builder.add(MarkLost(vm("x", 8, hostname=host_key("dead2"), status=VMStatus.RUNNING), "lost"))
    compares, _ = builder.build()
    assert compares.count(Compare(alive_key("dead"), 0)) == 1 and len(compares) == builder.compare_count() == 6
    plain = TxnBuilder({}, now=1.0)
    assert plain.add(Place(vm("n", 5, hostname=host_key("h")), "live", source="h"))  # not a rescue
    assert all(not c.key.startswith("/v1/alive/") for c in plain.build()[0])
