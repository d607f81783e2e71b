"""Property-based fuzz of every endpoint in ``/openapi.json`` (schemathesis): never a 5xx.

Cases are generated from the spec the app serves, both fitting it (positive) and
breaking it (negative). To get past authentication, half of the cases carry a real
user's credentials (in the body fields and headers the case already has) and half
of them name a real VM (and a real network) of that user, so deletes, actions,
attaches and detaches reach etcd too. Every 4xx must have the one error shape.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from ucloud_api import create_app, networks, services
from ucloud_common import accounts
from ucloud_common.models import Specs
from ucloud_common.units import GB

MAX_EXAMPLES = 30  # per operation and mode: 14 operations x 2 modes stay within ~40 s


@pytest.fixture
def app(settings, store) -> Iterator[Any]:
    application = create_app(settings)
    yield application
    application.extensions["ucloud"].close()


def _operations(app: Any) -> list[Any]:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def test_every_endpoint_is_fuzzed(app):
    labels = {op.label for op in _operations(app)}
    assert labels == {"POST /vm/create", "POST /vm/delete", "GET /vm/status", "GET /vm/list",
                      "POST /vm/action", "GET /host/list", "GET /healthz", "GET /metrics", "POST /network/create",
                      "GET /network/list", "POST /network/attach", "POST /network/detach", "POST /network/delete",
                      "GET /image/list", "POST /image/import"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_fuzz_finds_no_server_error(app, store, mode):
    _, seed = accounts.create_user(store, "fuzz", "alice")
    creds = {"realm": "fuzz", "name": "alice", "seed": seed}
    header_names = {"X-Ucloud-Realm": "realm", "X-Ucloud-Name": "name", "X-Ucloud-Seed": "seed"}
    client = app.test_client()
    failures: list[str] = []
    labels = itertools.count()

    for operation in _operations(app):

        @given(case=operation.as_strategy(generation_mode=mode), authenticate=st.booleans(), real_vm=st.booleans(),
               real_net=st.booleans())
        @hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck))
        def run(case: Any, authenticate: bool, real_vm: bool, real_net: bool) -> None:
            if authenticate:
                if isinstance(case.body, dict):
                    case.body.update({k: v for k, v in creds.items() if k in case.body})
                if case.headers:
                    case.headers.update({h: creds[f] for h, f in header_names.items() if h in case.headers})
            if real_vm:
                vm_id, _ = services.create_vm(store, "fuzz/alice", Specs(1, GB, GB, 0), image="img")
                if isinstance(case.body, dict):
                    case.body.update({k: vm_id for k in ("id", "vmid") if k in case.body})
                if case.query and "id" in case.query:
                    case.query["id"] = vm_id
            if real_net and isinstance(case.body, dict) and "network" in case.body:
                net = networks.create_network(store, "fuzz/alice", f"net-{next(labels)}")
                case.body["network"] = net.id if real_vm else net.name
            response = case.call(app=app)
            if response.status_code >= 500:
                failures.append(f"{response.status_code} for {case.as_curl_command()}: {response.text[:300]}")
            elif response.status_code >= 400:
                error = response.json()["error"]
                assert error["status"] == response.status_code and {"code", "field", "message"} <= set(error)

        try:
            run()
        except Unsatisfiable:  # nothing to break in an operation without inputs
            assert mode is GenerationMode.NEGATIVE and operation.label in ("GET /healthz", "GET /metrics")
    assert not failures, "\n".join(failures[:10])
    assert client.get("/healthz").status_code == 200
