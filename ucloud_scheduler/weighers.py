"""Placement weighers: rank the hosts that passed every filter; the highest total wins.

Each weigher is a plain function of one host and one request returning a score in
[0, 1], so several can be summed without one drowning the others (Nova normalises its
weights for the same reason). Which weighers run is ``settings.scheduler_weighers``.

* ``spread`` (the default) prefers the host that is emptiest *after* the VM lands:
  VMs spread out, a dead host takes few VMs with it, noisy neighbours are rarer.
* ``pack`` prefers the fullest host: whole hosts stay free for big VMs or can be
  switched off.
"""

from __future__ import annotations

from typing import Callable, Mapping

from ucloud_common.models import Specs

from .filters import HostState

Weigher = Callable[[HostState, Specs], float]


def free_fraction(host: HostState, want: Specs) -> float:
    """Mean share of ``limit`` still free after placing ``want``, over the resources the
    host offers at all (a host without SSDs is not "full" of SSD). Unrolled: it runs for
    every candidate host of every VM."""
    used, limit = host.used, host.limit
    total = 0.0
    count = 0
    cap = limit.cpu
    if cap > 0:
        total += max(cap - used.cpu - want.cpu, 0) / cap
        count += 1
    cap = limit.ram
    if cap > 0:
        total += max(cap - used.ram - want.ram, 0) / cap
        count += 1
    cap = limit.hdd
    if cap > 0:
        total += max(cap - used.hdd - want.hdd, 0) / cap
        count += 1
    cap = limit.ssd
    if cap > 0:
        total += max(cap - used.ssd - want.ssd, 0) / cap
        count += 1
    return total / count if count else 0.0


def spread(host: HostState, want: Specs) -> float:
    """Emptier hosts first."""
    return free_fraction(host, want)


def pack(host: HostState, want: Specs) -> float:
    """Fuller hosts first."""
    return 1.0 - free_fraction(host, want)


WEIGHERS: Mapping[str, Weigher] = {
    "spread": spread,
    "pack": pack,
}
