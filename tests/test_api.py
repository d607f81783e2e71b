"""ucloud-api through the Flask test client, against the session's real etcd.

The seed's three calls verbatim; ownership; every validation case (and that nothing is
written); idempotent create; actions and their 409s; hosts; errors in one shape.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Iterator

import pytest

from ucloud_api import create_app, services
from ucloud_common import accounts
from ucloud_common.config import Settings
from ucloud_common.keys import IDEMPOTENCY_PREFIX, VM_PREFIX, alive_key, alloc_key, host_key, vm_key
from ucloud_common.models import VM, Allocation, Host, Specs, VMStatus
from ucloud_common.store import Store
from ucloud_common.units import GB

SEED_CREATE = {"name": "username", "realm": "user_realm", "seed": "user_seed",
               "specs": {"cpu": 16, "ram": 256, "hdd": 2000, "ssd": 256}}
SEED_DELETE = {"name": "username", "realm": "user_realm", "seed": "user_seed", "vmid": "id_of_virtual_machine"}
SEED_STATUS = {"id": "id_of_virtual_machine"}
SEED_HEADERS = {"X-Ucloud-Realm": "user_realm", "X-Ucloud-Name": "username", "X-Ucloud-Seed": "user_seed"}


def put_user(store: Store, realm: str, name: str, seed: str, admin: bool = False) -> dict[str, str]:
    """An account with a chosen seed (the seed page's ``user_seed``), written as the CLI would."""
    user = accounts.User(realm, name, accounts.hash_seed(seed), admin)
    store.create(accounts.user_key(realm, name), user.to_json())
    return {"realm": realm, "name": name, "seed": seed}


def headers_of(creds: dict[str, str]) -> dict[str, str]:
    return {"X-Ucloud-Realm": creds["realm"], "X-Ucloud-Name": creds["name"], "X-Ucloud-Seed": creds["seed"]}


@pytest.fixture
def app(settings: Settings, store: Store) -> Iterator[Any]:
    application = create_app(settings)
    yield application
    application.extensions["ucloud"].close()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def seed_user(store: Store) -> dict[str, str]:
    return put_user(store, "user_realm", "username", "user_seed")


@pytest.fixture
def alice(store: Store) -> dict[str, str]:
    _, seed = accounts.create_user(store, "r1", "alice")
    return {"realm": "r1", "name": "alice", "seed": seed}


@pytest.fixture
def bob(store: Store) -> dict[str, str]:
    _, seed = accounts.create_user(store, "r2", "bob")
    return {"realm": "r2", "name": "bob", "seed": seed}


def create(client: Any, creds: dict[str, str], **extra: Any) -> str:
    body = {**creds, "specs": {"cpu": 1, "ram": "256MiB", "hdd": "1GiB", "ssd": 0}, **extra}
    response = client.post("/vm/create", json=body)
    assert response.status_code == 201, response.json
    return response.json["id"]


def vm_count(store: Store) -> int:
    return len(store.list(VM_PREFIX)[0])


def assert_error(response: Any, status: int, field: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.json["error"]
    assert set(error) >= {"status", "code", "field", "message"}
    assert error["status"] == status and error["field"] == field, error
    assert error["message"]
    return error


def set_vm(store: Store, vm_id: str, **changes: Any) -> VM:
    """Change a VM record as a daemon would (CAS)."""
    entry = store.get(vm_key(vm_id))
    vm = VM.from_json(vm_id, entry.value, entry.mod_revision)
    new = replace(vm, **changes)
    store.update(vm_key(vm_id), new.to_json(), vm.mod_revision)
    return new


# -- the seed's three calls, verbatim --------------------------------------------------------


def test_seed_calls_verbatim(client, store, seed_user):
    response = client.post("/vm/create", json=SEED_CREATE)
    assert response.status_code == 201
    vm_id = response.json["id"]
    assert list(response.json) == ["id"]

    record = json.loads(store.get(vm_key(vm_id)).value)
    assert record["owner"] == "user_realm/username"
    assert record["specs"] == {"cpu": 16, "ram": 256, "hdd": 2000, "ssd": 256}
    assert record["hostname"] == "" and record["status"] == "REQUESTED_NEW"
    assert [e["message"] for e in record["events"]] == ["created"]
    assert record["created"] > 0

    # GET with the seed's JSON body: {"id"}; credentials in the same body or in headers
    status = client.get("/vm/status", json={**SEED_STATUS, "id": vm_id}, headers=SEED_HEADERS)
    assert status.status_code == 200
    in_body = client.open("/vm/status", method="GET", json={"id": vm_id, "name": "username",
                                                             "realm": "user_realm", "seed": "user_seed"})
    assert in_body.status_code == 200 and in_body.json == status.json
    view = status.json
    assert view["id"] == vm_id and view["status"] == "REQUESTED_NEW" and view["hostname"] == ""
    assert view["specs"] == SEED_CREATE["specs"] and view["reason"] == ""
    assert view["image"] == "ucloud-guest" and view["events"][0]["message"] == "created"

    deleted = client.post("/vm/delete", json={**SEED_DELETE, "vmid": vm_id})
    assert deleted.status_code == 202
    assert deleted.json == {"id": vm_id, "status": "DELETED"}  # never placed: removed at once
    assert store.get(vm_key(vm_id)) is None


def test_status_by_query_and_headers(client, alice):
    vm_id = create(client, alice, vm_name="web-1", image="debian-12")
    response = client.get(f"/vm/status?id={vm_id}", headers=headers_of(alice))
    assert response.status_code == 200
    assert response.json["vm_name"] == "web-1" and response.json["image"] == "debian-12"
    assert response.json["specs"] == {"cpu": 1, "ram": "256MiB", "hdd": "1GiB", "ssd": 0}
    assert_error(client.get("/vm/status", headers=headers_of(alice)), 400, "id")
    assert_error(client.get(f"/vm/status?id={vm_id}&id={vm_id}", headers=headers_of(alice)), 400, "id")
    assert_error(client.get(f"/vm/status?id={vm_id}", json={"id": vm_id}, headers=headers_of(alice)), 400, "id")
    assert_error(client.get(f"/vm/status?id={vm_id}&x=1", headers=headers_of(alice)), 400, "x")


def test_list_only_own_vms(client, alice, bob):
    mine = [create(client, alice) for _ in range(3)]
    create(client, bob)
    response = client.get("/vm/list", headers=headers_of(alice))
    assert response.status_code == 200
    assert [v["id"] for v in response.json["vms"]] == mine
    assert all(v["owner"] == "r1/alice" for v in response.json["vms"])
    in_body = client.open("/vm/list", method="GET", json=alice)
    assert [v["id"] for v in in_body.json["vms"]] == mine
    assert_error(client.get("/vm/list?all=1", headers=headers_of(alice)), 400, "all")


# -- accounts and ownership ------------------------------------------------------------------


def test_credentials_missing_or_wrong(client, store, alice):
    body = {"specs": {"cpu": 1, "ram": 1, "hdd": 1, "ssd": 0}}
    error = assert_error(client.post("/vm/create", json=body), 401, "name")
    assert "X-Ucloud-Seed" in error["message"]
    assert_error(client.post("/vm/create", json={**body, "name": "alice", "realm": "r1"}), 401, "seed")
    response = client.post("/vm/create", json={**body, **alice, "seed": "wrong"})
    assert_error(response, 401, "seed")
    assert "WWW-Authenticate" in response.headers
    assert_error(client.post("/vm/create", json={**body, **alice, "name": "nobody"}), 401, "seed")
    assert_error(client.get("/vm/list"), 401, "X-Ucloud-Name")
    assert_error(client.get("/vm/list", headers={**headers_of(alice), "X-Ucloud-Seed": "x"}), 401, "seed")
    assert_error(client.get("/vm/list", headers={**headers_of(alice), "X-Ucloud-Name": "Bad Name"}), 401, "seed")
    assert vm_count(store) == 0
    # headers work for a POST too, and the body's credentials win over the headers'
    assert client.post("/vm/create", json=body, headers=headers_of(alice)).status_code == 201
    bad_headers = {**headers_of(alice), "X-Ucloud-Seed": "wrong"}
    assert client.post("/vm/create", json={**body, **alice}, headers=bad_headers).status_code == 201


def test_other_users_vm_is_not_found(client, store, alice, bob):
    vm_id = create(client, alice)
    set_vm(store, vm_id, hostname=host_key("node1"), status=VMStatus.RUNNING)
    missing = "00000000-0000-4000-8000-000000000000"

    def as_bob(target: str) -> list[Any]:
        return [
            client.get(f"/vm/status?id={target}", headers=headers_of(bob)),
            client.post("/vm/action", json={**bob, "vmid": target, "action": "stop"}),
            client.post("/vm/delete", json={**bob, "vmid": target}),
        ]

    for theirs, nothing in zip(as_bob(vm_id), as_bob(missing)):
        assert theirs.status_code == nothing.status_code == 404
        a, b = theirs.json["error"], nothing.json["error"]
        assert a["message"].replace(vm_id, "X") == b["message"].replace(missing, "X")
        assert a["field"] == b["field"]
    assert client.get("/vm/list", headers=headers_of(bob)).json == {"vms": []}
    record = VM.from_json(vm_id, store.get(vm_key(vm_id)).value)
    assert record.status is VMStatus.RUNNING  # untouched
    assert client.get(f"/vm/status?id={vm_id}", headers=headers_of(alice)).status_code == 200


def test_malformed_vm_ids_are_not_found(client, alice):
    for bad in ("../user/r1/alice", "a b", "%00", "\u00e9"):
        response = client.get("/vm/status", json={"id": bad}, headers=headers_of(alice))
        assert_error(response, 404, "id")
    assert_error(client.get("/vm/status", json={"id": "x" * 200}, headers=headers_of(alice)), 400, "id")


# -- validation: 4xx naming the field, nothing written ------------------------------------------

GOOD_SPECS = {"cpu": 2, "ram": 4, "hdd": 20, "ssd": 0}


@pytest.mark.parametrize("change, field", [
    ({"specs": None}, "specs"),
    ({"specs": "big"}, "specs"),
    ({"specs": {"cpu": 2, "ram": 4, "hdd": 20}}, "specs.ssd"),
    ({"specs": {**GOOD_SPECS, "gpu": 1}}, "specs.gpu"),
    ({"color": "red"}, "color"),
    ({"specs": {**GOOD_SPECS, "cpu": "16"}}, "specs.cpu"),
    ({"specs": {**GOOD_SPECS, "cpu": 1.5}}, "specs.cpu"),
    ({"specs": {**GOOD_SPECS, "cpu": True}}, "specs.cpu"),
    ({"specs": {**GOOD_SPECS, "cpu": 0}}, "specs.cpu"),
    ({"specs": {**GOOD_SPECS, "cpu": -4}}, "specs.cpu"),
    ({"specs": {**GOOD_SPECS, "cpu": 100000}}, "specs.cpu"),
    ({"specs": {**GOOD_SPECS, "ram": 0}}, "specs.ram"),
    ({"specs": {**GOOD_SPECS, "ram": -1}}, "specs.ram"),
    ({"specs": {**GOOD_SPECS, "ram": "1MiB"}}, "specs.ram"),
    ({"specs": {**GOOD_SPECS, "ram": "12XB"}}, "specs.ram"),
    ({"specs": {**GOOD_SPECS, "ram": "1e3GB"}}, "specs.ram"),
    ({"specs": {**GOOD_SPECS, "ram": [4]}}, "specs.ram"),
    ({"specs": {**GOOD_SPECS, "ram": None}}, "specs.ram"),
    ({"specs": {**GOOD_SPECS, "ram": 10**9}}, "specs.ram"),
    ({"specs": {**GOOD_SPECS, "hdd": "5 bananas"}}, "specs.hdd"),
    ({"specs": {**GOOD_SPECS, "hdd": 10**7}}, "specs.hdd"),
    ({"specs": {**GOOD_SPECS, "hdd": -20}}, "specs.hdd"),
    ({"specs": {**GOOD_SPECS, "hdd": 0, "ssd": 0}}, "specs.hdd"),
    ({"specs": {**GOOD_SPECS, "ssd": "2PiB"}}, "specs.ssd"),
    ({"name": 5}, "name"),
    ({"realm": "Bad Realm"}, "realm"),
    ({"seed": ""}, "seed"),
    ({"vm_name": "no spaces please"}, "vm_name"),
    ({"vm_name": 7}, "vm_name"),
    ({"image": "../../etc/passwd"}, "image"),
])
def test_create_validation(client, store, alice, change, field):
    body = {**alice, "specs": GOOD_SPECS, **change}
    if change.get("specs") is None and "specs" in change:
        del body["specs"]
    error = assert_error(client.post("/vm/create", json=body), 400, field)
    assert field in error["message"]
    assert vm_count(store) == 0


@pytest.mark.parametrize("data, content_type, status, field", [
    ("{not json", "application/json", 400, "body"),
    ("", "application/json", 400, "body"),
    ("[1, 2]", "application/json", 400, "body"),
    ('"a string"', "application/json", 400, "body"),
    ("name=alice", "application/x-www-form-urlencoded", 415, "Content-Type"),
    ('{"specs": {}}', "text/plain", 415, "Content-Type"),
    ("\xff\xfe", "application/json", 400, "body"),
])
def test_create_rejects_non_json(client, store, data, content_type, status, field):
    assert_error(client.post("/vm/create", data=data, content_type=content_type), status, field)
    assert vm_count(store) == 0


def test_oversized_body_is_413(client, store, alice, settings):
    body = json.dumps({**alice, "specs": GOOD_SPECS, "vm_name": "x" * settings.api_max_body_bytes})
    assert_error(client.post("/vm/create", data=body, content_type="application/json"), 413, "body")
    assert vm_count(store) == 0


@pytest.mark.parametrize("specs, stored", [
    ({"cpu": 16, "ram": 256, "hdd": 2000, "ssd": 256}, {"cpu": 16, "ram": 256, "hdd": 2000, "ssd": 256}),
    ({"cpu": 1, "ram": "256MiB", "hdd": "64MiB", "ssd": 0}, {"cpu": 1, "ram": "256MiB", "hdd": "64MiB", "ssd": 0}),
    ({"cpu": 2, "ram": 1.5, "hdd": "10 GB", "ssd": "1TiB"}, {"cpu": 2, "ram": "1500MB", "hdd": 10, "ssd": "1TiB"}),
])
def test_create_accepts_sizes(client, store, alice, specs, stored):
    vm_id = create(client, alice, specs=specs)
    assert json.loads(store.get(vm_key(vm_id)).value)["specs"] == stored


@pytest.mark.parametrize("path, body, field", [
    ("/vm/delete", {}, "vmid"),
    ("/vm/delete", {"vmid": 5}, "vmid"),
    ("/vm/delete", {"vmid": "x", "force": True}, "force"),
    ("/vm/action", {"vmid": "x"}, "action"),
    ("/vm/action", {"vmid": "x", "action": "pause"}, "action"),
    ("/vm/action", {"action": "stop"}, "vmid"),
])
def test_delete_and_action_validation(client, alice, path, body, field):
    assert_error(client.post(path, json={**alice, **body}), 400, field)


# -- idempotency -----------------------------------------------------------------------------


def test_idempotent_create(client, store, alice, bob):
    body = {**alice, "specs": GOOD_SPECS}
    first = client.post("/vm/create", json=body, headers={"Idempotency-Key": "order-42"})
    again = client.post("/vm/create", json=body, headers={"Idempotency-Key": "order-42"})
    assert first.status_code == again.status_code == 201
    assert first.json == again.json
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert vm_count(store) == 1
    (record,) = store.list(IDEMPOTENCY_PREFIX)[0]
    assert record.lease  # expires with its lease

    different = {**body, "specs": {**GOOD_SPECS, "cpu": 3}}
    assert_error(client.post("/vm/create", json=different, headers={"Idempotency-Key": "order-42"}),
                 409, "Idempotency-Key")
    other_user = client.post("/vm/create", json={**bob, "specs": GOOD_SPECS}, headers={"Idempotency-Key": "order-42"})
    assert other_user.status_code == 201 and other_user.json != first.json
    without_key = client.post("/vm/create", json=body)
    assert without_key.json != first.json
    assert vm_count(store) == 3
    assert_error(client.post("/vm/create", json=body, headers={"Idempotency-Key": "k" * 300}), 400, "Idempotency-Key")
    assert vm_count(store) == 3


def test_idempotent_create_race(store):
    """Two creates with one key racing: the loser's transaction fails and it returns the winner's VM."""
    specs = Specs(1, GB, GB, 0)
    owner = "r1/alice"
    original_get = store.get
    raced = []

    def get_then_race(key: str):  # the other request writes right after our check
        result = original_get(key)
        if key.startswith(IDEMPOTENCY_PREFIX) and not raced:
            raced.append(None)
            raced[0] = services.create_vm(store, owner, specs, image="img", idempotency="k")
        return result

    store.get = get_then_race  # type: ignore[method-assign]
    try:
        vm_id, created = services.create_vm(store, owner, specs, image="img", idempotency="k")
    finally:
        store.get = original_get  # type: ignore[method-assign]
    assert raced == [(vm_id, True)] and created is False
    assert vm_count(store) == 1


# -- delete and actions ------------------------------------------------------------------------


def test_delete_placed_vm_requests_delete(client, store, alice):
    vm_id = create(client, alice)
    set_vm(store, vm_id, hostname=host_key("node1"), status=VMStatus.RUNNING)
    for _ in range(2):  # a retry changes nothing
        response = client.post("/vm/delete", json={**alice, "vmid": vm_id})
        assert response.status_code == 202
        assert response.json == {"id": vm_id, "status": "REQUESTED_DELETE"}
    vm = VM.from_json(vm_id, store.get(vm_key(vm_id)).value)
    assert vm.status is VMStatus.REQUESTED_DELETE and vm.hostname == host_key("node1")
    assert [e.message for e in vm.events] == ["created", "delete requested"]
    assert_error(client.post("/vm/action", json={**alice, "vmid": vm_id, "action": "start"}), 409, "action")


def test_delete_races_with_placement(client, store, alice):
    """The scheduler places the VM between our read and our delete: the CAS fails, we re-read
    and ask the host to delete it instead of removing a record a host now acts on."""
    vm_id = create(client, alice)
    app_store = client.application.extensions["ucloud"].store
    original_txn = app_store.txn

    def place_then_txn(compares, ops):
        if not getattr(place_then_txn, "done", False):
            place_then_txn.done = True  # type: ignore[attr-defined]
            set_vm(store, vm_id, hostname=host_key("node1"), status=VMStatus.SCHEDULED_DEPLOY)
        return original_txn(compares, ops)

    app_store.txn = place_then_txn
    try:
        response = client.post("/vm/delete", json={**alice, "vmid": vm_id})
    finally:
        del app_store.txn
    assert response.json["status"] == "REQUESTED_DELETE"
    vm = VM.from_json(vm_id, store.get(vm_key(vm_id)).value)
    assert vm.status is VMStatus.REQUESTED_DELETE and vm.hostname == host_key("node1")


@pytest.mark.parametrize("start, action, expected", [
    (VMStatus.RUNNING, "stop", VMStatus.REQUESTED_STOP),
    (VMStatus.KILLED, "stop", VMStatus.REQUESTED_STOP),
    (VMStatus.RUNNING, "reboot", VMStatus.REQUESTED_REBOOT),
    (VMStatus.STOPPED, "start", VMStatus.REQUESTED_START),
    (VMStatus.ERROR, "start", VMStatus.REQUESTED_START),  # retry after a crash loop or a storage outage
    (VMStatus.ERROR, "stop", VMStatus.REQUESTED_STOP),
    (VMStatus.REQUESTED_STOP, "stop", VMStatus.REQUESTED_STOP),  # already asked: no change
])
def test_actions(client, store, alice, start, action, expected):
    vm_id = create(client, alice)
    set_vm(store, vm_id, hostname=host_key("node1"), status=start)
    before = store.get(vm_key(vm_id)).mod_revision
    response = client.post("/vm/action", json={**alice, "vmid": vm_id, "action": action})
    assert response.status_code == 202
    assert response.json == {"id": vm_id, "status": expected.value}
    entry = store.get(vm_key(vm_id))
    vm = VM.from_json(vm_id, entry.value)
    assert vm.status is expected
    if start is expected:
        assert entry.mod_revision == before
    else:
        assert vm.events[-1].message == f"{action} requested"


@pytest.mark.parametrize("start, action", [
    (VMStatus.REQUESTED_NEW, "stop"), (VMStatus.REQUESTED_NEW, "start"), (VMStatus.STOPPED, "reboot"),
    (VMStatus.RUNNING, "start"), (VMStatus.STOPPED, "stop"), (VMStatus.REQUESTED_DELETE, "reboot"),
    (VMStatus.ERROR, "reboot"),
])
def test_action_that_does_not_fit_is_409(client, store, alice, start, action):
    vm_id = create(client, alice)
    if start is not VMStatus.REQUESTED_NEW:
        set_vm(store, vm_id, hostname=host_key("node1"), status=start)
    before = store.get(vm_key(vm_id)).mod_revision
    error = assert_error(client.post("/vm/action", json={**alice, "vmid": vm_id, "action": action}), 409, "action")
    assert f"cannot {action} a VM that is {start.value}" in error["message"]
    assert store.get(vm_key(vm_id)).mod_revision == before


# -- hosts (administrators) ----------------------------------------------------------------------


def test_host_list_for_admins_only(client, store, settings, alice):
    store.create(host_key("node1"), Host("node1", Specs(8, 32 * GB, 500 * GB, 0), address="10.0.0.1").to_json())
    store.create(host_key("node2"), Host("node2", Specs(4, 16 * GB, 100 * GB, 0)).to_json())
    alloc = Allocation("node1").with_vm("a", Specs(10, 8 * GB, 100 * GB, 0)).with_vm("b", Specs(2, 4 * GB, 50 * GB, 0))
    store.create(alloc_key("node1"), alloc.to_json())
    store.put(alive_key("node1"), b"1")
    admin = put_user(store, settings.admin_realm, "root", "admin-seed")
    flagged = put_user(store, "ops", "carol", "carol-seed", admin=True)

    assert_error(client.get("/host/list", headers=headers_of(alice)), 403, None)
    assert_error(client.get("/host/list"), 401, "X-Ucloud-Name")
    response = client.get("/host/list", headers=headers_of(admin))
    assert response.status_code == 200
    hosts = {h["name"]: h for h in response.json["hosts"]}
    node1 = hosts["node1"]
    assert node1["alive"] is True and hosts["node2"]["alive"] is False
    assert node1["status"] == "UP" and node1["address"] == "10.0.0.1" and node1["vms"] == 2
    assert node1["capacity"] == {"cpu": 8, "ram": 32, "hdd": 500, "ssd": 0}
    assert node1["promised"] == {"cpu": 12, "ram": 12, "hdd": 150, "ssd": 0}
    # cpu overcommit 4.0: 32 schedulable - 12 promised
    assert node1["free"] == {"cpu": 20, "ram": 20, "hdd": 350, "ssd": 0}
    assert hosts["node2"]["promised"] == {"cpu": 0, "ram": 0, "hdd": 0, "ssd": 0}
    assert client.open("/host/list", method="GET", json=flagged).status_code == 200


# -- errors, health, spec -------------------------------------------------------------------


def test_errors_have_one_shape(app, client):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret detail")

    assert_error(client.get("/no/such/path"), 404, None)
    response = client.get("/vm/create")
    assert_error(response, 405, None)
    assert "POST" in response.headers["Allow"]
    assert_error(client.delete("/vm/status"), 405, None)
    response = client.get("/boom")
    error = assert_error(response, 500, None)
    assert "secret detail" not in response.get_data(as_text=True) and error["code"] == "internal"


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json["status"] == "ok" and response.json["revision"] > 0


def test_etcd_down_is_503(etcd_factory, tmp_path):
    from ucloud_common.config import load_settings

    cluster = etcd_factory(1)
    settings = load_settings(env={}, env_file=tmp_path / "no.env", etcd_endpoints=list(cluster.endpoints),
                             etcd_retry_for=0.5, etcd_timeout=0.5)
    app = create_app(settings)
    client = app.test_client()
    try:
        assert client.get("/healthz").status_code == 200
        cluster.stop()
        response = client.get("/healthz")
        assert_error(response, 503, None)
        assert response.headers["Retry-After"]
        assert_error(client.get("/vm/list", headers={"X-Ucloud-Realm": "r", "X-Ucloud-Name": "n",
                                                     "X-Ucloud-Seed": "s"}), 503, None)
    finally:
        app.extensions["ucloud"].close()


def test_openapi_covers_every_endpoint(app, client):
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    served = {(rule.rule, method) for rule in app.url_map.iter_rules() for method in rule.methods
              if method not in ("HEAD", "OPTIONS") and rule.endpoint != "static"
              and rule.rule not in ("/openapi.json", "/docs")}
    assert served == documented
    create_body = spec["paths"]["/vm/create"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create_body == {"$ref": "#/components/schemas/CreateVM"}
    schema = spec["components"]["schemas"]["CreateVM"]
    assert schema["additionalProperties"] is False and schema["required"] == ["specs"]
    headers = {p["name"] for p in spec["paths"]["/vm/status"]["get"]["parameters"]}
    assert headers == {"id", "X-Ucloud-Name", "X-Ucloud-Realm", "X-Ucloud-Seed"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.mimetype == "text/html"
    page = docs.get_data(as_text=True)
    for path, _ in documented:
        assert path in page
    assert "<script>" in page and "://" not in page  # self-contained: nothing loaded from elsewhere
