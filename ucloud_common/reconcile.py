"""The daemons' control loop: list + watch from the list's revision + periodic resync,
feeding a de-duplicating queue of keys to an idempotent ``sync(key)``.

This is the Kubernetes controller pattern (DESIGN.md §3.3). An event only says *which
key* to look at; ``sync`` reads the current state and converges, so a missed,
repeated or reordered event is harmless. The pieces:

* :class:`WorkQueue` — pure, thread-safe: a key queued twice is handled once; a key
  re-queued while it is being handled is handled again afterwards (never
  concurrently); a failing key is retried with exponential backoff.
* :class:`Reconciler` — lists each prefix, keeps a cache of the latest entry per key
  (an informer), watches from the list's revision + 1, re-lists when the watch's
  revision was compacted, and re-lists every ``resync_seconds`` anyway. Keys that
  vanished between two lists are queued too, so deletes are never missed.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from .daemon import run_until
from .store import Compacted, Entry, Store, StoreError, Watch

log = logging.getLogger(__name__)


class WorkQueue:
    """De-duplicating delay queue of string keys with per-key exponential backoff."""

    def __init__(self, base_delay: float = 0.05, max_delay: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}  # key -> when it is due (the earliest wins)
        self._processing: set[str] = set()
        self._dirty: dict[str, float] = {}  # re-added while processing: due time afterwards
        self._failures: dict[str, int] = {}
        self._seq = itertools.count()
        self._clock = clock
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._closed = False

    def add(self, key: str, delay: float = 0.0) -> None:
        """Queue ``key`` to be handled in ``delay`` seconds (sooner if already due sooner)."""
        with self._cond:
            due = self._clock() + delay
            if key in self._processing:
                self._dirty[key] = min(due, self._dirty.get(key, due))
                return
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, next(self._seq), key))
            self._cond.notify()

    def retry(self, key: str) -> float:
        """Queue ``key`` again after a failure; returns the backoff delay used."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        delay = min(self.base_delay * (2 ** failures), self.max_delay)
        self.add(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """Reset ``key``'s backoff after a success."""
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    def get(self, timeout: float | None = None) -> str | None:
        """The next due key (now marked as processing), or None after ``timeout``/close."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while not self._closed:
                now = self._clock()
                while self._heap:
                    due, _, key = self._heap[0]
                    if self._due.get(key) != due:  # superseded by an earlier add
                        heapq.heappop(self._heap)
                        continue
                    if due > now:
                        break
                    heapq.heappop(self._heap)
                    del self._due[key]
                    self._processing.add(key)
                    return key
                wait = None if deadline is None else deadline - now
                if self._heap:
                    next_due = self._heap[0][0] - now
                    wait = next_due if wait is None else min(wait, next_due)
                if wait is not None and wait <= 0:
                    if deadline is not None and self._clock() >= deadline:
                        return None
                    continue
                self._cond.wait(wait)
            return None

    def done(self, key: str) -> None:
        """``key`` is handled; if it was re-added meanwhile, it becomes due again."""
        with self._cond:
            self._processing.discard(key)
            due = self._dirty.pop(key, None)
        if due is not None:
            self.add(key, max(0.0, due - self._clock()))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._due) + len(self._dirty)

    def pending(self) -> set[str]:
        with self._cond:
            return set(self._due) | set(self._dirty) | set(self._processing)


SyncResult = float | None  # seconds until the key should be looked at again, or None


@dataclass
class Reconciler:
    """Runs ``sync(key)`` for every key under ``prefixes`` whenever it may need it.

    ``key_map`` turns a changed etcd key into the queue keys to look at (default: the
    key itself), e.g. a host change can queue the VMs waiting for a host. ``sync``
    may return a number of seconds to be called again for that key (a timer); if it
    raises, the key is retried with backoff.
    """

    store: Store
    prefixes: Sequence[str]
    sync: Callable[[str], SyncResult]
    key_map: Callable[[str], Iterable[str]] = lambda key: (key,)
    resync_seconds: float = 30.0
    workers: int = 1
    name: str = "reconciler"
    on_event: Callable[[str, Entry | None], None] | None = None  # cache observer (called on list/watch)
    queue: WorkQueue = field(default_factory=WorkQueue)
    cache: dict[str, Entry] = field(default_factory=dict)
    revisions: dict[str, int] = field(default_factory=dict)
    syncs: int = 0
    errors: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._watches: dict[str, Watch] = {}
        self._cache_lock = threading.Lock()
        self._tombstones: dict[str, int] = {}  # key -> revision it was deleted at
        self._threads: list[threading.Thread] = []
        self.listed = threading.Event()  # set once every prefix has been listed

    # -- cache (informer) ---------------------------------------------------------------

    def _observe(self, key: str, entry: Entry | None, revision: int) -> None:
        """Record what ``key`` was at ``revision`` unless something newer is known already
        (a re-list taken just before a watch event must not undo it), then queue it."""
        with self._cache_lock:
            current = self.cache.get(key)
            known = max(current.mod_revision if current else 0, self._tombstones.get(key, 0))
            if revision < known:
                return
            if entry is None:
                self.cache.pop(key, None)
                self._tombstones[key] = revision
            else:
                self.cache[key] = entry
                self._tombstones.pop(key, None)
        if self.on_event:
            self.on_event(key, entry)
        for item in self.key_map(key):
            self.queue.add(item)

    def cached(self, prefix: str) -> list[Entry]:
        """A snapshot of the cached entries under ``prefix``."""
        with self._cache_lock:
            return [e for k, e in self.cache.items() if k.startswith(prefix)]

    def relist(self, prefix: str) -> int:
        """List ``prefix``, refresh the cache, queue every key (and every vanished one)."""
        entries, revision = self.store.list(prefix)
        with self._cache_lock:
            before = {k for k in self.cache if k.startswith(prefix)}
        seen = set()
        for entry in entries:
            seen.add(entry.key)
            self._observe(entry.key, entry, revision)
        for key in before - seen:
            self._observe(key, None, revision)
        with self._cache_lock:
            for key in [k for k, rev in self._tombstones.items() if rev <= revision and k.startswith(prefix)]:
                del self._tombstones[key]
        self.revisions[prefix] = max(revision, self.revisions.get(prefix, 0))
        return revision

    # -- threads ------------------------------------------------------------------------

    def _watch_loop(self, prefix: str) -> None:
        while not self._stop.is_set():
            try:
                watch = self.store.watch(prefix, self.revisions[prefix] + 1)
                self._watches[prefix] = watch
                if self._stop.is_set():
                    return
                for event in watch:
                    self.revisions[prefix] = event.mod_revision
                    if event.type == "delete":
                        self._observe(event.key, None, event.mod_revision)
                    else:
                        self._observe(event.key, event.entry(),
                                      event.mod_revision)
            except Compacted as exc:
                log.info("%s: watch on %s compacted (%s); re-listing", self.name, prefix, exc)
                self._relist_until_ok(prefix)
            except StoreError as exc:  # pragma: no cover - watch retries by itself
                log.warning("%s: watch on %s failed: %s", self.name, prefix, exc)
                self._stop.wait(1.0)

    def _relist_until_ok(self, prefix: str) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                self.relist(prefix)
                return
            except StoreError as exc:
                log.warning("%s: listing %s failed: %s", self.name, prefix, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.resync_seconds):
            for prefix in self.prefixes:
                self._relist_until_ok(prefix)

    def _worker(self) -> None:
        while not self._stop.is_set():
            key = self.queue.get(timeout=0.5)
            if key is None:
                continue
            try:
                again = self.sync(key)
            except Exception as exc:  # noqa: BLE001 - any failure of one key must not stop the loop
                self.errors += 1
                delay = self.queue.retry(key)
                log.warning("%s: sync %s failed (retry in %.2fs): %s", self.name, key, delay, exc,
                            exc_info=not isinstance(exc, StoreError))
            else:
                self.syncs += 1
                self.queue.forget(key)
                if again is not None:
                    self.queue.add(key, again)
            finally:
                self.queue.done(key)

    def start(self) -> "Reconciler":
        """List every prefix, then start watch, resync and worker threads."""
        for prefix in self.prefixes:
            self._relist_until_ok(prefix)
        self.listed.set()
        targets: list[tuple[str, Callable[[], None]]] = [
            (f"{self.name}-watch{p}", lambda p=p: self._watch_loop(p)) for p in self.prefixes]
        targets.append((f"{self.name}-resync", self._resync_loop))
        targets += [(f"{self.name}-worker{i}", self._worker) for i in range(self.workers)]
        for thread_name, target in targets:
            thread = threading.Thread(target=target, name=thread_name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.queue.close()
        for watch in list(self._watches.values()):
            watch.cancel()
        for thread in self._threads:
            thread.join(timeout)

    def run_forever(self, stop: threading.Event) -> None:
        """Start, block until ``stop`` is set, then stop."""
        run_until(stop, self.start, self.stop)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once the queue is empty and nothing is processing (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.queue.pending():
                return True
            time.sleep(0.02)
        return False
