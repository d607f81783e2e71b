"""Placement filters: one small, named policy each, answering "may this VM go on this host?".

As in Nova, a filter looks at one host and one request and nothing else; as in Nomad,
a host that is turned away gets a *reason*, so "why is my VM not placed?" has an
answer. A filter returns ``None`` when the host passes, or a short verb phrase in the
singular ("is down", "lacks ram") that :func:`ucloud_scheduler.placement.summarize`
counts into ``"no host fits: 3 lack ram, 1 is down"``.

Filters are plain functions over :class:`HostState`, a frozen snapshot of what the
scheduler knows about one host: they never read etcd and never mutate anything.
Which filters run, and in which order, is ``settings.scheduler_filters``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from ucloud_common.models import RESOURCES, HostStatus, Specs


@dataclass(frozen=True, slots=True)
class HostState:
    """One host as the scheduler sees it: capacity, what may be promised, what is promised."""

    name: str
    status: HostStatus
    alive: bool  # its /v1/alive/<name> key exists (the host's lease is live)
    capacity: Specs
    limit: Specs  # capacity x overcommit: the most that may ever be promised here
    used: Specs  # what the allocation record already promises

    def with_used(self, used: Specs) -> "HostState":
        return HostState(self.name, self.status, self.alive, self.capacity, self.limit, used)


Filter = Callable[[HostState, Specs], "str | None"]


def host_up(host: HostState, want: Specs) -> str | None:
    """Only hosts whose record says UP (not DOWN, not DRAINING) take new VMs."""
    if host.status is HostStatus.UP:
        return None
    return f"is {host.status.value.lower()}"


def host_alive(host: HostState, want: Specs) -> str | None:
    """Only hosts whose liveness key exists: the record may still say UP for a dead host."""
    return None if host.alive else "is not alive"


def fits_resources(host: HostState, want: Specs) -> str | None:
    """The VM fits in what is left of ``limit`` after everything already promised."""
    used, limit = host.used, host.limit
    if (used.cpu + want.cpu <= limit.cpu and used.ram + want.ram <= limit.ram
            and used.hdd + want.hdd <= limit.hdd and used.ssd + want.ssd <= limit.ssd):
        return None
    lacking = [r for r in RESOURCES if getattr(used, r) + getattr(want, r) > getattr(limit, r)]
    return "lacks " + " and ".join(lacking)


FILTERS: Mapping[str, Filter] = {
    "host_up": host_up,
    "host_alive": host_alive,
    "fits_resources": fits_resources,
}
