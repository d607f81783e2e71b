"""``/metrics`` of the API through the Flask test client (one process), on the real etcd.

(Summing over several gunicorn workers is tested over HTTP in ``test_api_http.py``.)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ucloud_api import create_app
from ucloud_common import accounts
from ucloud_common.config import load_settings
from ucloud_common.keys import vm_key
from ucloud_common.models import VM, Specs, VMStatus
from ucloud_common.store import Store
from ucloud_common.units import GB


def scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True)) for s in family.samples}


def requests_of(samples: dict, endpoint: str, method: str, status: str) -> float:
    key = ("ucloud_api_requests_total", (("endpoint", endpoint), ("method", method), ("status", status)))
    return samples.get(key, 0.0)


def etcd_errors(samples: dict) -> float:
    return sum(v for (name, _), v in samples.items() if name == "ucloud_api_etcd_errors_total")


@pytest.fixture
def app(settings: Any, store: Store) -> Iterator[Any]:
    application = create_app(settings)
    yield application
    application.extensions["ucloud"].close()


def test_requests_latency_and_vms_by_status(app, store):
    client = app.test_client()
    _, seed = accounts.create_user(store, "r1", "alice")
    creds = {"realm": "r1", "name": "alice", "seed": seed}
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    assert client.get("/no/such/thing").status_code == 404
    assert client.get("/vm/list").status_code == 401
    for _ in range(2):
        body = {**creds, "specs": {"cpu": 1, "ram": "64MiB", "hdd": "1GiB", "ssd": 0}}
        assert client.post("/vm/create", json=body).status_code == 201
    assert client.post("/network/create", json={**creds, "network": "n"}).status_code == 201
    running = VM(id="vm-running", owner="r1/alice", specs=Specs(1, GB, GB, 0), hostname="/v1/host/h1",
                 status=VMStatus.RUNNING)
    store.create(vm_key(running.id), running.to_json())
    store.create(vm_key("vm-stopped"), replace(running, id="vm-stopped", status=VMStatus.STOPPED).to_json())

    samples = scrape(client)
    assert requests_of(samples, "/healthz", "GET", "200") == 3
    assert requests_of(samples, "unmatched", "GET", "404") == 1  # raw paths never become labels
    assert requests_of(samples, "/vm/list", "GET", "401") == 1
    assert requests_of(samples, "/vm/create", "POST", "201") == 2
    assert samples[("ucloud_api_request_duration_seconds_count", (("endpoint", "/healthz"), ("method", "GET")))] == 3
    assert samples[("ucloud_api_request_duration_seconds_sum", (("endpoint", "/healthz"), ("method", "GET")))] > 0
    vms = {labels[0][1]: value for (name, labels), value in samples.items() if name == "ucloud_vms"}
    assert vms["REQUESTED_NEW"] == 2 and vms["RUNNING"] == 1 and vms["STOPPED"] == 1 and vms["KILLED"] == 0
    assert samples[("ucloud_networks", ())] == 1 and samples[("ucloud_api_etcd_up", ())] == 1

    # the scrape itself is counted from the next one on
    assert requests_of(scrape(client), "/metrics", "GET", "200") == 1


def test_etcd_errors_are_counted(etcd_factory, tmp_path):
    cluster = etcd_factory(1)
    settings = load_settings(env={}, env_file=tmp_path / "no.env", etcd_endpoints=list(cluster.endpoints),
                             etcd_retry_for=0.5, etcd_timeout=0.5)
    app = create_app(settings)
    client = app.test_client()
    try:
        samples = scrape(client)
        assert samples[("ucloud_api_etcd_up", ())] == 1
        assert not [k for k in samples if k[0] == "ucloud_api_etcd_errors_total"]
        cluster.stop()
        assert client.get("/healthz").status_code == 503
        headers = {"X-Ucloud-Realm": "r", "X-Ucloud-Name": "n", "X-Ucloud-Seed": "s"}
        assert client.get("/vm/list", headers=headers).status_code == 503
        samples = scrape(client)  # still answers, without the cluster's state
        assert samples[("ucloud_api_etcd_up", ())] == 0
        assert not [k for k in samples if k[0] == "ucloud_vms"]
        assert etcd_errors(samples) == 2  # /healthz and /vm/list
        assert requests_of(samples, "/healthz", "GET", "503") == 1
        assert etcd_errors(scrape(client)) == 3  # + the first scrape's own read (counted after it was sent)
    finally:
        app.extensions["ucloud"].close()
