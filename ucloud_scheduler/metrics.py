"""Prometheus metrics of one scheduler, served on ``settings.scheduler_metrics_bind``.

The counters are not kept twice: a collector reads the scheduler's plain
:class:`~ucloud_scheduler.scheduler.SchedulerStats` when scraped, and the
unplaceable-VMs gauge is computed then from the scheduler's view, so neither can
drift from what the scheduler logs. Only the placement latency needs a real
histogram (buckets are observed as placements commit). A registry of its own, not
the process-global one, so two schedulers in one test process never collide.

Several schedulers run at once, each serving its own ``/metrics``: sum them
(``sum(ucloud_scheduler_placements_total)``); the unplaceable gauge counts the VMs of
each scheduler's share, so the sum is the cluster's.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# (stats attribute, metric name without _total, help)
COUNTERS = (
    ("placements", "ucloud_scheduler_placements", "VMs placed from REQUESTED_NEW"),
    ("replacements", "ucloud_scheduler_replacements", "VMs re-placed off a dead host"),
    ("host_lost", "ucloud_scheduler_host_lost", "VMs marked HOST_LOST (disk local to a dead host)"),
    ("released", "ucloud_scheduler_releases", "allocations released after a VM record was deleted"),
    ("transactions", "ucloud_scheduler_transactions", "etcd transactions committed by the placement loop"),
    ("conflicts", "ucloud_scheduler_conflicts", "compare-and-swap conflicts (re-read and decided again)"),
    ("etcd_errors", "ucloud_scheduler_etcd_errors", "etcd calls of the scheduler that failed"),
    ("audit_fixes", "ucloud_scheduler_audit_fixes", "allocation records rewritten by the audit"),
    ("fencing_failures", "ucloud_scheduler_fencing_failures", "attempts to fence a dead host that failed"),
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class MetricsError(Exception):
    """``/metrics`` cannot be served (a bad ``host:port``, or the port is taken)."""


class _StatsCollector(Collector):
    def __init__(self, stats: Any, waiting: Callable[[], int]) -> None:
        self.stats = stats
        self.waiting = waiting

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        for attr, name, text in COUNTERS:
            yield CounterMetricFamily(name, text, value=getattr(self.stats, attr))
        yield GaugeMetricFamily("ucloud_scheduler_unplaceable_vms",
                                "VMs of this scheduler's share waiting in REQUESTED_NEW because no host fits",
                                value=self.waiting())


class SchedulerMetrics:
    def __init__(self, stats: Any, waiting: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(stats, waiting))
        self.latency = Histogram(
            "ucloud_scheduler_placement_latency_seconds",
            "From a VM first seen in REQUESTED_NEW to its placement committed in etcd",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.server: Any = None

    def serve(self, bind: str) -> tuple[str, int]:
        """Serve ``/metrics`` on ``bind`` (``host:port``; port 0 picks one); the address used."""
        host, _, port = bind.rpartition(":")
        if not port.isdigit() or int(port) > 65535:
            raise MetricsError(f"config: scheduler_metrics_bind {bind!r} is not host:port")
        try:
            server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1",
                                                registry=self.registry)
        except OSError as exc:
            raise MetricsError(f"cannot serve /metrics on {bind}: {exc.strerror or exc}") from None
        self.server = server
        address = server.server_address
        return str(address[0]), int(address[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
