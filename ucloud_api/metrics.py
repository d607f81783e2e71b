"""Prometheus ``/metrics`` of the API: requests, latency, etcd errors, and the cloud's VMs.

Two kinds of numbers, gathered in two ways, so that any gunicorn worker can answer a
scrape with the whole truth:

* **Per-request counters** (``ucloud_api_requests_total`` by endpoint, method and
  status; ``ucloud_api_request_duration_seconds``; ``ucloud_api_etcd_errors_total``)
  happen inside one worker process each. A scrape reaches one worker, so under
  ``api_workers`` > 1 these use ``prometheus_client``'s multiprocess mode: each worker
  writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` and the worker that
  answers the scrape sums them all (``MultiProcessCollector``). ``ucloud-api`` sets
  that directory up before forking (see :mod:`.main`). Computing these from etcd
  instead would cost an etcd write per request — far more than the request itself.
* **State of the cloud** (``ucloud_vms`` by status, ``ucloud_networks``) is read from
  etcd at scrape time by whichever worker answers: it is the same from every worker,
  can never drift from etcd, and needs no cross-process bookkeeping. If etcd does not
  answer, ``ucloud_api_etcd_up`` is 0 and the scrape still succeeds.

Without ``PROMETHEUS_MULTIPROC_DIR`` (the Flask test client, one process) the
counters live in this app's own registry. Endpoints are labelled by their route
(``/vm/status``), never by the raw path, so unknown paths cannot blow up the label set.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter as Tally
from typing import Iterator

import grpc
from flask import Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from ucloud_common.keys import NETWORK_PREFIX, VM_PREFIX
from ucloud_common.models import VMStatus
from ucloud_common.store import Store, StoreError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ClusterCollector(Collector):
    """VMs by status and the number of networks, read from etcd when scraped."""

    def __init__(self, store: Store, on_error: "Counter") -> None:
        self.store = store
        self.on_error = on_error

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("ucloud_api_etcd_up", "1 if etcd answered this scrape's reads, else 0")
        try:
            vms, _ = self.store.list(VM_PREFIX)
            nets, _ = self.store.list(NETWORK_PREFIX)
        except (StoreError, grpc.RpcError) as exc:
            self.on_error.labels(type(exc).__name__).inc()
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        counts = Tally({status.value: 0 for status in VMStatus})
        for entry in vms:
            counts[_status_of(entry.value)] += 1
        family = GaugeMetricFamily("ucloud_vms", "VMs in the cloud by status (from etcd, at scrape time)",
                                   labels=["status"])
        for status, count in sorted(counts.items()):
            family.add_metric([status], count)
        yield family
        yield GaugeMetricFamily("ucloud_networks", "Networks in the cloud (from etcd, at scrape time)",
                                value=len(nets))


def _status_of(raw: bytes) -> str:
    try:
        return VMStatus.parse(json.loads(raw).get("status", VMStatus.REQUESTED_NEW.value)).value
    except (ValueError, AttributeError):
        return "DAMAGED"


class ApiMetrics:
    """The API's metrics, one instance per app (so several apps in one test process never collide)."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("ucloud_api_requests", "HTTP requests answered, by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("ucloud_api_request_duration_seconds", "Time to answer a request, by endpoint",
                                 ["endpoint", "method"], buckets=BUCKETS, registry=self.registry)
        self.etcd_errors = Counter("ucloud_api_etcd_errors", "etcd calls that failed, by error",
                                   ["error"], registry=self.registry)
        self.cluster = ClusterCollector(store, self.etcd_errors)
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        if not self.multiprocess:
            self.registry.register(self.cluster)

    def exposition(self) -> bytes:
        """The text format of every metric: all workers' counters plus the cluster's state."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(self.cluster)
        return generate_latest(registry)

    def install(self, app: Flask) -> None:
        """Time and count every request of ``app`` (before any other hook runs)."""
        app.before_request_funcs.setdefault(None, []).insert(0, _start)

        @app.after_request
        def _observe(response: Response) -> Response:
            started = g.get("ucloud_started")
            endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
            self.requests.labels(endpoint, request.method, str(response.status_code)).inc()
            if started is not None:
                self.latency.labels(endpoint, request.method).observe(time.perf_counter() - started)
            return response


def use_multiprocess_dir(path: str) -> None:
    """Switch this process (and the workers it will fork) to multiprocess mode, files in ``path``.

    prometheus_client picks its value store when first imported, which has already
    happened here (``ucloud_api`` imports this module), so it is chosen again now that
    the variable is set. Stale files of an earlier run are removed, as the library asks.
    """
    from prometheus_client import values

    os.environ[MULTIPROC_ENV] = path
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))
    values.ValueClass = values.get_value_class()


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit hook: drop the live-gauge files of a dead worker (its counts stay)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def _start() -> None:
    g.ucloud_started = time.perf_counter()


def etcd_error(error: BaseException) -> None:
    """Count an etcd failure met while answering a request (called by the error handlers)."""
    metrics: ApiMetrics | None = current_app.extensions.get("ucloud_metrics")
    if metrics is not None:
        metrics.etcd_errors.labels(type(error).__name__).inc()


def metrics_response() -> Response:
    metrics: ApiMetrics = current_app.extensions["ucloud_metrics"]
    return Response(metrics.exposition(), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Content-Type": CONTENT_TYPE_LATEST})
