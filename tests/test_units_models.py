"""Sizes and records: the seed's JSON round-trips; bad values are refused, naming the field."""

import json

import pytest

from ucloud_common.models import VM, Allocation, Host, HostStatus, ModelError, Specs, VMStatus
from ucloud_common.units import GB, SizeError, format_size, parse_size

SEED_VM = {
    "owner": "ahmedbilal-admin",
    "specs": {"cpu": 20, "ram": 2, "hdd": 10, "ssd": 10},
    "hostname": "",
    "status": "REQUESTED_NEW",
}
SEED_HOST = {"cpu": 32, "ram": 128, "hdd": 1024, "ssd": 0, "status": "UP"}


@pytest.mark.parametrize("value, expected", [
    (2, 2 * GB), (0, 0), (1.5, 1_500_000_000), ("256MiB", 256 * 2**20), ("1.5GB", 1_500_000_000),
    ("2", 2 * GB), ("1GiB", 2**30), ("512 MiB", 512 * 2**20), ("10gb", 10 * GB), ("4096B", 4096),
    ("1TiB", 2**40), ("100MB", 10**8),
])
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value, words", [
    (-1, "negative"), ("-5GB", "cannot parse"), ("12XB", "unknown size unit"), ("GB", "cannot parse"),
    (None, "not NoneType"), (True, "boolean"), ([1], "not list"), (float("inf"), "finite"),
    ("1e3GB", "cannot parse"), (10**12, "too large"),
])
def test_parse_size_rejects(value, words):
    with pytest.raises(SizeError, match=words):
        parse_size(value)


@pytest.mark.parametrize("size", [0, 2 * GB, 256 * 2**20, 1_500_000_000, 2**30, 4097, 3 * 2**40])
def test_format_size_parses_back(size):
    assert parse_size(format_size(size)) == size


def test_seed_vm_round_trips():
    vm = VM.from_json("1", json.dumps(SEED_VM), mod_revision=7)
    assert vm.specs == Specs(cpu=20, ram=2 * GB, hdd=10 * GB, ssd=10 * GB)
    assert vm.status is VMStatus.REQUESTED_NEW and vm.mod_revision == 7 and vm.hostname == ""
    out = json.loads(vm.to_json())
    assert {k: out[k] for k in SEED_VM} == SEED_VM
    placed = VM.from_dict("1", {**SEED_VM, "hostname": "/v1/host/1"})
    assert placed.host_name == "1"


def test_vm_keeps_unknown_fields_and_units():
    data = {**SEED_VM, "specs": {"cpu": 1, "ram": "256MiB", "hdd": "1.5GB", "ssd": 0}, "future": {"x": 1}}
    vm = VM.from_dict("a", data)
    out = vm.to_dict()
    assert out["future"] == {"x": 1}
    assert out["specs"] == {"cpu": 1, "ram": "256MiB", "hdd": "1500MB", "ssd": 0}
    assert VM.from_dict("a", out) == vm


def test_vm_is_immutable_and_events_are_bounded():
    vm = VM.from_dict("a", SEED_VM)
    with pytest.raises(AttributeError):
        vm.status = VMStatus.RUNNING  # type: ignore[misc]
    for i in range(50):
        vm = vm.with_event(f"event {i}", now=float(i))
    assert len(vm.events) == 20 and vm.events[-1].message == "event 49"


def test_seed_host_round_trips():
    host = Host.from_json("1", json.dumps(SEED_HOST), mod_revision=3)
    assert host.capacity == Specs(32, 128 * GB, 1024 * GB, 0) and host.status is HostStatus.UP
    out = json.loads(host.to_json())
    assert {k: out[k] for k in SEED_HOST} == SEED_HOST


@pytest.mark.parametrize("specs, field", [
    ({"cpu": -1, "ram": 1, "hdd": 1, "ssd": 0}, "specs.cpu"),
    ({"cpu": "two", "ram": 1, "hdd": 1, "ssd": 0}, "specs.cpu"),
    ({"cpu": 1.5, "ram": 1, "hdd": 1, "ssd": 0}, "specs.cpu"),
    ({"cpu": 1, "ram": "1XB", "hdd": 1, "ssd": 0}, "specs.ram"),
    ({"cpu": 1, "ram": 1, "hdd": -2, "ssd": 0}, "specs.hdd"),
    ({"cpu": 1, "ram": 1, "hdd": 1, "ssd": [1]}, "specs.ssd"),
    ({"cpu": 1, "ram": 1, "hdd": 1, "gpu": 1}, "specs.gpu"),
    ("big", "specs"),
])
def test_bad_specs_name_the_field(specs, field):
    with pytest.raises(ModelError) as info:
        VM.from_dict("a", {**SEED_VM, "specs": specs})
    assert info.value.field == field


@pytest.mark.parametrize("data, field", [
    ({**SEED_VM, "status": "DANCING"}, "status"),
    ({**SEED_VM, "owner": 3}, "owner"),
    ({**SEED_VM, "hostname": None}, "hostname"),
])
def test_bad_vm_records(data, field):
    with pytest.raises(ModelError) as info:
        VM.from_dict("a", data)
    assert info.value.field == field


def test_seed_spelling_of_request_delete():
    assert VM.from_dict("a", {**SEED_VM, "status": "REQUEST_DELETE"}).status is VMStatus.REQUESTED_DELETE


def test_allocation_sums_its_vms():
    alloc = Allocation("h").with_vm("a", Specs(1, GB, GB, 0)).with_vm("b", Specs(2, GB, 0, GB))
    assert alloc.used == Specs(3, 2 * GB, GB, GB)
    again = Allocation.from_json("h", alloc.to_json())
    assert again.vms == alloc.vms and again.without_vm("a").used == Specs(2, GB, 0, GB)
