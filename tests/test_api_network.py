"""The /network endpoints (issue 7, API side) through the Flask test client, on the real etcd.

Create/list/attach/detach/delete as a user would see them, the records the hosts read,
ownership (another user's VM or network is a 404), 409s, validation that writes nothing,
and concurrent creates and attaches getting distinct VXLAN ids and MACs by CAS.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import replace
from typing import Any, Callable

import pytest

from ucloud_api import networks, services
from ucloud_common import accounts
from ucloud_common.keys import MAC_PREFIX, NETWORK_PREFIX, VXLAN_PREFIX, mac_key, network_key, vm_key, vxlan_key
from ucloud_common.models import VM, ModelError, Network, VMStatus
from ucloud_common.store import Store

from test_api import app, client  # noqa: F401 (the same app and client fixtures)

MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def make_user(store: Store, realm: str, name: str) -> dict[str, str]:
    _, seed = accounts.create_user(store, realm, name)
    return {"realm": realm, "name": name, "seed": seed}


@pytest.fixture
def alice(store: Store) -> dict[str, str]:
    return make_user(store, "r1", "alice")


@pytest.fixture
def bob(store: Store) -> dict[str, str]:
    return make_user(store, "r2", "bob")


def new_vm(client: Any, creds: dict[str, str]) -> str:
    response = client.post("/vm/create", json={**creds, "specs": {"cpu": 1, "ram": "64MiB", "hdd": "1GiB", "ssd": 0}})
    assert response.status_code == 201, response.json
    return str(response.json["id"])


def new_net(client: Any, creds: dict[str, str], label: str, **extra: Any) -> dict[str, Any]:
    response = client.post("/network/create", json={**creds, "network": label, **extra})
    assert response.status_code == 201, response.json
    return dict(response.json)


def post(client: Any, path: str, creds: dict[str, str], **body: Any) -> Any:
    return client.post(path, json={**creds, **body})


def read_vm(store: Store, vm_id: str) -> VM:
    entry = store.get(vm_key(vm_id))
    assert entry is not None
    return VM.from_json(vm_id, entry.value, entry.mod_revision)


def read_net(store: Store, net_id: str) -> Network:
    entry = store.get(network_key(net_id))
    assert entry is not None
    return Network.from_json(net_id, entry.value, entry.mod_revision)


def keys_under(store: Store, prefix: str) -> list[str]:
    return [e.key for e in store.list(prefix)[0]]


def test_network_life_cycle(client, store, alice):
    created = new_net(client, alice, "backend", ipv6_prefix="fd00:1::/64", ipv4_subnet="10.1.0.0/24")
    net_id, vni = created["id"], created["vni"]
    assert created["name"] == "backend" and 1 <= vni <= 2**24 - 1

    # the records the hosts read
    net = read_net(store, net_id)
    assert (net.owner, net.name, net.vni, net.ipv6_prefix, net.ipv4_subnet) == \
        ("r1/alice", "backend", vni, "fd00:1::/64", "10.1.0.0/24")
    assert json.loads(store.get(vxlan_key(vni)).value) == {"network": net_id}
    raw = json.loads(store.get(network_key(net_id)).value)
    assert {"owner", "name", "vni", "created"} <= set(raw)

    vm_id = new_vm(client, alice)
    response = post(client, "/network/attach", alice, vmid=vm_id, network="backend")  # by label
    assert response.status_code == 202, response.json
    mac = response.json["mac"]
    assert response.json["network"] == net_id and MAC_RE.fullmatch(mac)
    assert int(mac[:2], 16) & 0b11 == 0b10  # locally administered, unicast
    vm = read_vm(store, vm_id)
    assert [n.to_dict() for n in vm.networks] == [{"network": net_id, "mac": mac}]
    assert json.loads(store.get(vm_key(vm_id)).value)["networks"] == [{"network": net_id, "mac": mac}]
    assert "attached" in vm.events[-1].message
    assert json.loads(store.get(mac_key(mac)).value) == {"vm": vm_id, "network": net_id}
    status = client.get(f"/vm/status?id={vm_id}", headers=headers(alice)).json
    assert status["networks"] == [{"network": net_id, "mac": mac}]

    listed = client.get("/network/list", headers=headers(alice)).json["networks"]
    assert [(n["id"], n["name"], n["vni"], n["vms"]) for n in listed] == [(net_id, "backend", vni, [vm_id])]

    # attaching again is a 409; deleting while attached is a 409 and changes nothing
    again = post(client, "/network/attach", alice, vmid=vm_id, network=net_id)  # by id
    assert again.status_code == 409 and again.json["error"]["field"] == "network"
    busy = post(client, "/network/delete", alice, network="backend")
    assert busy.status_code == 409 and vm_id in busy.json["error"]["message"]
    assert store.get(network_key(net_id)) is not None and store.get(vxlan_key(vni)) is not None

    response = post(client, "/network/detach", alice, vmid=vm_id, network=net_id)
    assert response.status_code == 202 and response.json["mac"] == mac
    assert read_vm(store, vm_id).networks == ()
    assert store.get(mac_key(mac)) is None
    not_attached = post(client, "/network/detach", alice, vmid=vm_id, network=net_id)
    assert not_attached.status_code == 409

    response = post(client, "/network/delete", alice, network="backend")
    assert response.status_code == 202 and response.json == {"id": net_id, "status": "DELETED"}
    assert keys_under(store, NETWORK_PREFIX) == [] and keys_under(store, VXLAN_PREFIX) == []
    assert client.get("/network/list", headers=headers(alice)).json == {"networks": []}
    # the label is free again
    assert new_net(client, alice, "backend")["id"] != net_id


def headers(creds: dict[str, str]) -> dict[str, str]:
    return {"X-Ucloud-Realm": creds["realm"], "X-Ucloud-Name": creds["name"], "X-Ucloud-Seed": creds["seed"]}


def test_ownership(client, store, alice, bob):
    a_net = new_net(client, alice, "shared-name")["id"]
    b_net = new_net(client, bob, "shared-name")["id"]  # labels are per user
    a_vm, b_vm = new_vm(client, alice), new_vm(client, bob)
    assert [n["id"] for n in client.get("/network/list", headers=headers(bob)).json["networks"]] == [b_net]

    cases = [
        ("/network/attach", {"vmid": b_vm, "network": a_net}, "vmid"),      # bob's VM on alice's net
        ("/network/attach", {"vmid": a_vm, "network": b_net}, "network"),   # alice's VM on bob's net (by id)
        ("/network/delete", {"network": b_net}, "network"),
        ("/network/detach", {"vmid": a_vm, "network": b_net}, "network"),
        ("/network/attach", {"vmid": "no-such-vm", "network": a_net}, "vmid"),
        ("/network/delete", {"network": "nonexistent"}, "network"),
    ]
    for path, body, field in cases:
        response = post(client, path, alice, **body)
        assert response.status_code == 404, (path, body, response.json)
        assert response.json["error"]["field"] == field
    # "shared-name" resolves to each user's own network
    response = post(client, "/network/attach", alice, vmid=a_vm, network="shared-name")
    assert response.status_code == 202 and response.json["network"] == a_net
    # bob cannot detach alice's VM, nor delete her network
    assert post(client, "/network/detach", bob, vmid=a_vm, network="shared-name").status_code == 404
    assert read_vm(store, a_vm).networks[0].network == a_net
    assert read_vm(store, b_vm).networks == ()


@pytest.mark.parametrize("body, field", [
    ({}, "network"),
    ({"network": ""}, "network"),
    ({"network": "has space"}, "network"),
    ({"network": "a/b"}, "network"),
    ({"network": 7}, "network"),
    ({"network": "x" * 65}, "network"),
    ({"network": "123e4567-e89b-12d3-a456-426614174000"}, "network"),  # a label that looks like an id
    ({"network": "n", "ipv6_prefix": "10.0.0.0/8"}, "ipv6_prefix"),
    ({"network": "n", "ipv6_prefix": "fd00::1/64"}, "ipv6_prefix"),  # host bits set
    ({"network": "n", "ipv6_prefix": "fd00::/127"}, "ipv6_prefix"),
    ({"network": "n", "ipv4_subnet": "fd00::/64"}, "ipv4_subnet"),
    ({"network": "n", "ipv4_subnet": "10.0.0.0/33"}, "ipv4_subnet"),
    ({"network": "n", "ipv4_subnet": "banana"}, "ipv4_subnet"),
    ({"network": "n", "ipv4_subnet": 10}, "ipv4_subnet"),
    ({"network": "n", "vni": 5}, "vni"),  # the VXLAN id is allocated, not chosen
])
def test_create_validation(client, store, alice, body, field):
    response = client.post("/network/create", json={**alice, **body})
    assert response.status_code == 400, response.json
    assert response.json["error"]["field"] == field
    assert keys_under(store, NETWORK_PREFIX) == [] and keys_under(store, VXLAN_PREFIX) == []


@pytest.mark.parametrize("path, body, field", [
    ("/network/attach", {"network": "n"}, "vmid"),
    ("/network/attach", {"vmid": "x"}, "network"),
    ("/network/attach", {"vmid": "x", "network": "n", "mac": "02:00:00:00:00:01"}, "mac"),
    ("/network/detach", {"vmid": 1, "network": "n"}, "vmid"),
    ("/network/delete", {"network": ["n"]}, "network"),
])
def test_attach_detach_delete_validation(client, alice, path, body, field):
    response = client.post(path, json={**alice, **body})
    assert response.status_code == 400 and response.json["error"]["field"] == field


def test_credentials_and_body_errors(client, store, alice):
    assert client.post("/network/create", json={"network": "n"}).status_code == 401
    wrong = client.post("/network/create", json={**alice, "seed": "wrong", "network": "n"})
    assert wrong.status_code == 401 and wrong.json["error"]["field"] == "seed"
    assert client.get("/network/list").status_code == 401
    assert client.post("/network/create", data="network=n", content_type="text/plain").status_code == 415
    assert client.post("/network/create", data="{", content_type="application/json").status_code == 400
    assert client.get("/network/create").status_code == 405
    assert keys_under(store, NETWORK_PREFIX) == []


def test_duplicate_label_is_409(client, store, alice):
    first = new_net(client, alice, "web")
    response = client.post("/network/create", json={**alice, "network": "web"})
    assert response.status_code == 409 and response.json["error"]["field"] == "network"
    assert keys_under(store, NETWORK_PREFIX) == [network_key(first["id"])]
    assert keys_under(store, VXLAN_PREFIX) == [vxlan_key(first["vni"])]


def test_attach_refused_for_a_vm_being_deleted(client, store, alice):
    net = new_net(client, alice, "n")
    vm_id = new_vm(client, alice)
    vm = read_vm(store, vm_id)
    store.update(vm_key(vm_id), replace(vm, hostname="/v1/host/h1", status=VMStatus.REQUESTED_DELETE).to_json(),
                 vm.mod_revision)
    response = post(client, "/network/attach", alice, vmid=vm_id, network=net["id"])
    assert response.status_code == 409 and response.json["error"]["field"] == "vmid"
    assert keys_under(store, MAC_PREFIX) == []


def test_deleting_an_unplaced_vm_frees_its_nics(client, store, alice):
    net = new_net(client, alice, "n")
    vm_id = new_vm(client, alice)
    mac = post(client, "/network/attach", alice, vmid=vm_id, network="n").json["mac"]
    response = post(client, "/vm/delete", alice, vmid=vm_id)
    assert response.status_code == 202 and response.json["status"] == "DELETED"
    assert store.get(mac_key(mac)) is None and read_net(store, net["id"]).attached == {}
    assert post(client, "/network/delete", alice, network="n").status_code == 202


def test_vm_removed_by_its_host_counts_as_detached(client, store, alice):
    """A placed VM is deleted by its host's daemon, which removes the record; the network's
    bookkeeping then names a VM that is gone: delete must not 409 forever, and frees the MAC."""
    net = new_net(client, alice, "n")
    vm_id = new_vm(client, alice)
    mac = post(client, "/network/attach", alice, vmid=vm_id, network="n").json["mac"]
    store.delete(vm_key(vm_id), read_vm(store, vm_id).mod_revision)  # as the vm daemon would
    assert client.get("/network/list", headers=headers(alice)).json["networks"][0]["vms"] == []
    assert post(client, "/network/delete", alice, network=net["id"]).status_code == 202
    assert store.get(mac_key(mac)) is None and keys_under(store, NETWORK_PREFIX) == []


def test_a_vm_on_several_networks(client, store, alice):
    vm_id = new_vm(client, alice)
    macs = [post(client, "/network/attach", alice, vmid=vm_id, network=new_net(client, alice, f"n{i}")["id"]
                 ).json["mac"] for i in range(networks.MAX_NICS)]
    assert len(set(macs)) == networks.MAX_NICS
    extra = new_net(client, alice, "one-too-many")
    response = post(client, "/network/attach", alice, vmid=vm_id, network=extra["id"])
    assert response.status_code == 409 and response.json["error"]["field"] == "vmid"
    assert [n.mac for n in read_vm(store, vm_id).networks] == macs


def run_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    results: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_concurrent_creates_get_distinct_vnis(store):
    """Eight creates race for a space of eight VXLAN ids: each gets its own; the ninth finds none."""
    space = (100, 107)
    results = run_threads(8, lambda i: networks.create_network(store, "r1/alice", f"net{i}", vni_space=space))
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sorted(r.vni for r in results) == list(range(100, 108))
    assert sorted(int(k.rsplit("/", 1)[1]) for k in keys_under(store, VXLAN_PREFIX)) == list(range(100, 108))
    with pytest.raises(networks.Exhausted):
        networks.create_network(store, "r1/alice", "net9", vni_space=space)
    assert len(keys_under(store, NETWORK_PREFIX)) == 8


def test_concurrent_creates_through_the_api(client, store, alice):
    results = run_threads(6, lambda i: client.post("/network/create", json={**alice, "network": f"n{i}"}))
    assert [r.status_code for r in results] == [201] * 6
    assert len({r.json["vni"] for r in results}) == 6


def test_concurrent_attaches_get_distinct_macs(store):
    """Eight VMs attach to one network at once, with room for exactly eight MACs."""
    owner = "r1/alice"
    net = networks.create_network(store, owner, "n")
    vm_ids = [services.create_vm(store, owner, services.check_specs({"cpu": 1, "ram": "64MiB", "hdd": "1GiB"}),
                                 image="img")[0] for _ in range(8)]
    space = (0x10, 0x17)
    results = run_threads(8, lambda i: networks.attach(store, owner, vm_ids[i], "n", mac_space=space))
    assert not [r for r in results if isinstance(r, Exception)], results
    macs = sorted(r.mac for r in results)
    assert macs == [networks.mac_of(n) for n in range(0x10, 0x18)]
    assert sorted(read_vm(store, v).networks[0].mac for v in vm_ids) == macs
    assert dict(read_net(store, net.id).attached) == {r.vm.id: r.mac for r in results}
    assert sorted(k[len(MAC_PREFIX):] for k in keys_under(store, MAC_PREFIX)) == macs
    # detach and delete race with each other: whatever order, the end is consistent
    results = run_threads(8, lambda i: networks.detach(store, owner, vm_ids[i], net.id))
    assert not [r for r in results if isinstance(r, Exception)], results
    assert keys_under(store, MAC_PREFIX) == [] and read_net(store, net.id).attached == {}


def test_attach_racing_delete_never_leaves_a_dangling_nic(store):
    owner = "r1/alice"
    for round_ in range(4):
        net = networks.create_network(store, owner, f"n{round_}")
        vm_id = services.create_vm(store, owner, services.check_specs({"cpu": 1, "ram": "64MiB", "hdd": "1GiB"}),
                                   image="img")[0]
        ops = [lambda: networks.attach(store, owner, vm_id, net.id),
               lambda: networks.delete_network(store, owner, net.id)]
        results = run_threads(2, lambda i: ops[i]())
        nics = read_vm(store, vm_id).networks
        if store.get(network_key(net.id)) is None:  # delete won: the attach saw the network gone
            assert nics == () and isinstance(results[0], services.NotFound)
        else:  # attach won: the delete saw it
            assert [n.network for n in nics] == [net.id] and isinstance(results[1], services.InvalidState)


def test_pure_helpers():
    assert networks.mac_of(0) == "02:00:00:00:00:00"
    assert networks.mac_of(2**40 - 1) == "02:ff:ff:ff:ff:ff"
    assert networks.number_of_mac("02:00:00:00:01:00") == 256
    assert networks.pick_free((1, 3), {1, 3}) == 2
    assert networks.pick_free((1, 3), {1, 2, 3}) is None
    assert networks.check_prefix("p", "fd00:1:0::/64", 6) == "fd00:1::/64"
    assert networks.check_prefix("p", None, 4) == ""


def test_network_record_round_trip():
    net = Network(id="n1", owner="r1/alice", name="web", vni=42, ipv6_prefix="fd00::/64", created=1.5,
                  attached={"vm1": "02:00:00:00:00:01"})
    data = {**net.to_dict(), "future_field": {"kept": True}}
    again = Network.from_json("n1", json.dumps(data), mod_revision=7)
    assert again.to_dict() == data and again.mod_revision == 7 and again.attached == {"vm1": "02:00:00:00:00:01"}
    for bad in ({"vni": 0}, {"vni": 2**24}, {"vni": "5"}, {"owner": None}, {"attached": ["vm1"]}):
        with pytest.raises(ModelError):
            Network.from_dict("n1", {**net.to_dict(), **bad})
