"""Prometheus metrics of one vm daemon, served on ``settings.vm_metrics_bind`` (``host:port``).

A registry of its own (not the process-global one), so two daemons in one test process
never collide. The VMs-by-status gauge is computed when scraped, from the daemon's
informer cache, so it can never drift from what the daemon sees; the counters are
bumped where things happen (restarts, QEMU exits, etcd errors).
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _StatusCollector(Collector):
    def __init__(self, host: str, counts: Callable[[], Mapping[str, int]]) -> None:
        self.host = host
        self.counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("ucloud_vm_vms", "VMs placed on this host, by status", labels=["host", "status"])
        for status, count in sorted(self.counts().items()):
            family.add_metric([self.host, status], count)
        yield family


class VmMetrics:
    def __init__(self, host: str, counts: Callable[[], Mapping[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatusCollector(host, counts))
        self.restarts = Counter("ucloud_vm_restarts", "Automatic restarts of VMs whose QEMU died",
                                ["host"], registry=self.registry).labels(host)
        self.qemu_exits = Counter("ucloud_vm_qemu_exits", "QEMU processes seen exiting", ["host"],
                                  registry=self.registry).labels(host)
        self.etcd_errors = Counter("ucloud_vm_etcd_errors", "etcd calls of the daemon that failed",
                                   ["host"], registry=self.registry).labels(host)
        self.server: object | None = None

    def serve(self, bind: str) -> tuple[str, int]:
        """Serve ``/metrics`` on ``bind`` (``host:port``, port 0 picks one); the address used."""
        host, _, port = bind.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        self.server = server
        address = server.server_address
        return str(address[0]), int(address[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()  # type: ignore[attr-defined]
            self.server.server_close()  # type: ignore[attr-defined]
            self.server = None
