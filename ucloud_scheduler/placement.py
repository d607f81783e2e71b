"""Choosing a host for a VM: filters, then weighers, as a pipeline over plain data.

``choose`` walks hosts in the order it is given, drops each host the first failing
filter rejects (counting the reason), weighs the survivors and returns the best one —
or, if none survives, a :class:`Rejection` whose reason a user can act on
(``"no host fits: 3 lack ram, 1 is down"``).

Like Kubernetes (``percentageOfNodesToScore``) and Nomad (its limit iterator), it can
stop after ``candidates`` feasible hosts instead of weighing all of them: with a
random starting point that keeps the cost per VM flat at a thousand hosts, and a
best-of-N sample spreads almost as well as a full scan. Only when nothing fits is
every host looked at, so the reason counts are complete.

:class:`HostTable` is the private copy one batch of VMs is planned against: each pick
adds to the picked host's usage, so two VMs of one batch never share the last free
gigabyte. Nothing here reads etcd; the daemon commits the plan as one compare-and-swap.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence

from ucloud_common.config import Settings
from ucloud_common.models import Specs

from .filters import FILTERS, Filter, HostState
from .weighers import WEIGHERS, Weigher

MAX_BATCH = 40  # placements per transaction; etcd allows 128 compares (a move compares 3 keys)

_PLURAL = {"is": "are", "lacks": "lack", "has": "have", "was": "were"}


class PolicyError(ValueError):
    """A scheduler setting that cannot work; the message is one line for the operator."""


@dataclass(frozen=True)
class Overcommit:
    """How many times its capacity a host may be promised, per resource."""

    cpu: float = 1.0
    ram: float = 1.0
    hdd: float = 1.0
    ssd: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "Overcommit":
        ratios = cls(settings.overcommit_cpu, settings.overcommit_ram,
                     settings.overcommit_hdd, settings.overcommit_ssd)
        for name in ("cpu", "ram", "hdd", "ssd"):
            value = getattr(ratios, name)
            if not math.isfinite(value) or value <= 0:
                raise PolicyError(f"config: overcommit_{name} must be a positive number, got {value!r}")
        return ratios

    def limit(self, capacity: Specs) -> Specs:
        """The most that may be promised on a host of ``capacity`` (rounded down)."""
        return Specs(math.floor(capacity.cpu * self.cpu), math.floor(capacity.ram * self.ram),
                     math.floor(capacity.hdd * self.hdd), math.floor(capacity.ssd * self.ssd))


@dataclass(frozen=True)
class Policy:
    """Which filters and weighers run, in order, and how many feasible hosts to weigh."""

    filters: tuple[tuple[str, Filter], ...]
    weighers: tuple[tuple[str, Weigher], ...]
    candidates: int = 0  # 0: weigh every feasible host

    @classmethod
    def named(cls, filters: Sequence[str], weighers: Sequence[str], candidates: int = 0) -> "Policy":
        unknown = [n for n in filters if n not in FILTERS]
        if unknown:
            raise PolicyError(f"config: scheduler_filters: unknown filter {unknown[0]!r} "
                              f"(known: {', '.join(FILTERS)})")
        if "fits_resources" not in filters:
            raise PolicyError("config: scheduler_filters must include fits_resources, "
                              "or hosts would be promised more than they have")
        unknown = [n for n in weighers if n not in WEIGHERS]
        if unknown:
            raise PolicyError(f"config: scheduler_weighers: unknown weigher {unknown[0]!r} "
                              f"(known: {', '.join(WEIGHERS)})")
        if candidates < 0:
            raise PolicyError(f"config: scheduler_candidates must be 0 (all) or more, got {candidates}")
        return cls(tuple((n, FILTERS[n]) for n in filters), tuple((n, WEIGHERS[n]) for n in weighers),
                   candidates)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Policy":
        return cls.named(settings.scheduler_filters, settings.scheduler_weighers,
                         settings.scheduler_candidates)


def check_batch(size: int) -> int:
    if not 1 <= size <= MAX_BATCH:
        raise PolicyError(f"config: scheduler_batch must be between 1 and {MAX_BATCH}, got {size}")
    return size


@dataclass(frozen=True)
class Choice:
    host: str
    score: float


@dataclass(frozen=True)
class Rejection:
    reason: str  # "no host fits: 3 lack ram, 1 is down"
    counts: Mapping[str, int]  # reason phrase -> how many hosts gave it


def _plural(phrase: str, count: int) -> str:
    if count == 1:
        return phrase
    verb, _, rest = phrase.partition(" ")
    return f"{_PLURAL.get(verb, verb)} {rest}".rstrip()


def summarize(counts: Mapping[str, int]) -> str:
    """``{"lacks ram": 3, "is down": 1}`` -> ``"no host fits: 3 lack ram, 1 is down"``."""
    if not counts:
        return "no host fits: no hosts are registered"
    parts = [f"{n} {_plural(phrase, n)}" for phrase, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return "no host fits: " + ", ".join(parts)


def choose(want: Specs, hosts: Iterable[HostState], policy: Policy) -> Choice | Rejection:
    """The best host for ``want`` among ``hosts`` (in the order given; ties go to the first)."""
    filters = [f for _, f in policy.filters]
    weighers = [w for _, w in policy.weighers]
    limit = policy.candidates
    reasons: Counter[str] = Counter()
    best: HostState | None = None
    best_score = -math.inf
    found = 0
    for host in hosts:
        for accept in filters:
            why = accept(host, want)
            if why is not None:
                reasons[why] += 1
                break
        else:
            score = 0.0
            for weigh in weighers:
                score += weigh(host, want)
            if score > best_score:
                best, best_score = host, score
            found += 1
            if found == limit:
                break
    if best is None:
        return Rejection(summarize(reasons), dict(reasons))
    return Choice(best.name, best_score)


class HostTable:
    """The hosts one batch is planned against: ``preferred`` are scanned first (each
    scheduler prefers its own share of the hosts, so concurrent schedulers rarely
    promise on the same host at once), then ``others``. Picks add to usage privately."""

    def __init__(self, preferred: Sequence[HostState], others: Sequence[HostState] = ()) -> None:
        self._groups = (preferred, others)
        self._taken: dict[str, Specs] = {}

    def __len__(self) -> int:
        return sum(len(g) for g in self._groups)

    def scan(self, start: int = 0) -> Iterator[HostState]:
        """Every host once: each group rotated to begin at ``start`` (mod its size)."""
        taken = self._taken
        for group in self._groups:
            size = len(group)
            first = start % size if size else 0
            for i in range(size):
                host = group[(first + i) % size]
                extra = taken.get(host.name)
                yield host if extra is None else host.with_used(host.used + extra)

    def take(self, name: str, want: Specs) -> None:
        self._taken[name] = self._taken.get(name, Specs()) + want

    def place(self, want: Specs, policy: Policy, start: int = 0) -> Choice | Rejection:
        """Choose a host for ``want`` and, if one is found, count it as used there."""
        result = choose(want, self.scan(start), policy)
        if isinstance(result, Choice):
            self.take(result.host, want)
        return result
