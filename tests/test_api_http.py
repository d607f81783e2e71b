"""ucloud-api as it is deployed: the `ucloud-api` console script (gunicorn) over real HTTP.

The server is started as a subprocess on a free loopback port and stopped by its pid.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ucloud_common import accounts
from ucloud_common.etcd_process import free_port
from ucloud_common.store import Store

from api_harness import EXE, api_env, running_api

@pytest.fixture
def server(etcd, store: Store, tmp_path: Path) -> Iterator[int]:
    with running_api(etcd, tmp_path) as port:
        yield port


def call(conn: http.client.HTTPConnection, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, http.client.HTTPResponse]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    payload = response.read()
    return response.status, json.loads(payload) if payload else None, response


def test_seed_calls_over_http(server, store):
    seed_user = accounts.User("user_realm", "username", accounts.hash_seed("user_seed"))
    store.create(accounts.user_key("user_realm", "username"), seed_user.to_json())
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)  # one keep-alive connection

    status, body, response = call(conn, "POST", "/vm/create", {
        "name": "username", "realm": "user_realm", "seed": "user_seed",
        "specs": {"cpu": 16, "ram": 256, "hdd": 2000, "ssd": 256}})
    assert status == 201 and response.getheader("Server") == "gunicorn"
    vm_id = body["id"]

    status, body, _ = call(conn, "GET", "/vm/status", {"id": vm_id, "name": "username", "realm": "user_realm",
                                                       "seed": "user_seed"})
    assert status == 200 and body["status"] == "REQUESTED_NEW" and body["owner"] == "user_realm/username"
    headers = {"X-Ucloud-Realm": "user_realm", "X-Ucloud-Name": "username", "X-Ucloud-Seed": "user_seed"}
    status, same, _ = call(conn, "GET", f"/vm/status?id={vm_id}", headers=headers)
    assert status == 200 and same == body

    status, body, _ = call(conn, "POST", "/vm/delete", {"name": "username", "realm": "user_realm",
                                                        "seed": "user_seed", "vmid": vm_id})
    assert status == 202 and body == {"id": vm_id, "status": "DELETED"}
    status, body, _ = call(conn, "GET", f"/vm/status?id={vm_id}", headers=headers)
    assert status == 404 and body["error"]["field"] == "id"

    status, body, _ = call(conn, "GET", "/healthz")
    assert status == 200 and body["etcd"] == "ok"
    status, body, _ = call(conn, "GET", "/openapi.json")
    assert status == 200 and "/vm/create" in body["paths"]
    conn.close()


def test_limits_over_http(server):
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    status, body, _ = call(conn, "POST", "/vm/create", b"{" + b" " * 70_000 + b"}")
    assert status == 413 and body["error"]["field"] == "body"
    conn.close()

    # a chunked body (no Content-Length) past the limit is refused too
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    conn.request("POST", "/vm/create", body=iter([b"{" + b" " * 40_000, b" " * 40_000 + b"}"]),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "too_large"
    conn.close()

    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    status, body, _ = call(conn, "PUT", "/vm/create", {})
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    conn.close()


def test_unreachable_etcd_stops_at_start(tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    result = subprocess.run([str(EXE)], env=api_env([dead], free_port(), tmp_path, UCLOUD_ETCD_RETRY_FOR="0.5",
                                                    UCLOUD_ETCD_TIMEOUT="0.5"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"ucloud-api: cannot reach etcd at {dead} (set UCLOUD_ETCD_ENDPOINTS)")


def test_metrics_sum_every_worker(etcd, store, tmp_path):
    """Requests answered by either of the two workers show up in every scrape, whichever
    worker answers it (prometheus_client's multiprocess mode)."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale")  # an earlier run's file is removed at start
    with running_api(etcd, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)) as port:
        sent = 0
        while sent < 400:  # new connections until both workers have answered some
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            assert call(conn, "GET", "/healthz")[0] == 200
            conn.close()
            sent += 1
            pids = {p.name.split("_")[1] for p in metrics_dir.glob("counter_*.db")}
            if sent >= 20 and len(pids) >= 2:
                break
        assert len(pids) == 2, "one worker answered every request"
        for _ in range(6):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            text = response.read().decode()
            conn.close()
            assert response.status == 200 and response.getheader("Content-Type").startswith("text/plain")
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for family in text_string_to_metric_families(text) for s in family.samples}
            key = ("ucloud_api_requests_total", (("endpoint", "/healthz"), ("method", "GET"), ("status", "200")))
            assert samples[key] == sent
            assert samples[("ucloud_api_etcd_up", ())] == 1
    assert not (metrics_dir / "counter_1.db").exists()


def test_json_logs_are_one_object_per_line(etcd, store, tmp_path):
    """With ``log_json`` every line ucloud-api writes — ours and gunicorn's — is a JSON object."""
    with running_api(etcd, tmp_path, UCLOUD_LOG_JSON="true", UCLOUD_LOG_LEVEL="DEBUG") as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        status, _, _ = call(conn, "GET", "/healthz")
        assert status == 200
    lines = [line for line in (tmp_path / "api.log").read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # fails on any plain-text line
    assert any(r["logger"] == "gunicorn.error" and "Booting worker" in r["message"] for r in records)
    assert any(r["logger"] == "gunicorn.access" and "/healthz" in r["message"] for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
