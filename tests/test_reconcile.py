"""The reconcile loop: a de-duplicating work queue with backoff, and list + watch + resync
against a real etcd."""

from __future__ import annotations

import threading
import time

from ucloud_common.reconcile import Reconciler, WorkQueue
from ucloud_common.store import Store


class FakeClock:
    """Time for the pure queue tests (the queue takes its clock as a parameter)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_queue_deduplicates_and_orders_by_due_time():
    clock = FakeClock()
    q = WorkQueue(clock=clock)
    q.add("b", delay=1.0)
    q.add("a")
    q.add("a")
    q.add("b", delay=5.0)  # a later add does not postpone an earlier one
    assert len(q) == 2
    assert q.get(timeout=0) == "a"
    q.done("a")
    assert q.get(timeout=0) is None  # b is not due yet
    clock.now += 1.0
    assert q.get(timeout=0) == "b"
    q.done("b")
    assert len(q) == 0


def test_key_readded_while_processing_runs_again_after_done_never_concurrently():
    clock = FakeClock()
    q = WorkQueue(clock=clock)
    q.add("k")
    assert q.get(timeout=0) == "k"
    q.add("k")  # changed while being handled
    assert q.get(timeout=0) is None  # not handed out twice at once
    q.done("k")
    assert q.get(timeout=0) == "k"


def test_retry_backs_off_exponentially_and_forget_resets():
    clock = FakeClock()
    q = WorkQueue(base_delay=0.1, max_delay=1.0, clock=clock)
    delays = []
    q = WorkQueue(base_delay=0.1, max_delay=1.0, clock=clock)
    for _ in range(6):
        delays.append(q.retry("k"))
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    q.forget("k")
    assert q.retry("k") == 0.1 and q.failures("k") == 1


def test_get_blocks_until_an_add_from_another_thread():
    q = WorkQueue()
    threading.Timer(0.1, lambda: q.add("late")).start()
    assert q.get(timeout=5) == "late"
    q.close()
    assert q.get(timeout=5) is None


def test_reconciler_lists_watches_and_sees_deletes(store: Store):
    store.put("/v1/r/a", b"1")
    store.put("/v1/r/b", b"1")
    calls: list[tuple[str, bytes | None]] = []
    lock = threading.Lock()

    def sync(key: str) -> None:
        entry = store.get(key)
        with lock:
            calls.append((key, entry.value if entry else None))

    rec = Reconciler(store, ["/v1/r/"], sync, resync_seconds=3600, name="t").start()
    try:
        assert rec.wait_idle(10)
        assert sorted(calls) == [("/v1/r/a", b"1"), ("/v1/r/b", b"1")]
        calls.clear()
        store.put("/v1/r/c", b"2")
        store.delete("/v1/r/a", store.get("/v1/r/a").mod_revision)
        deadline = time.monotonic() + 10
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(calls) == [("/v1/r/a", None), ("/v1/r/c", b"2")]
        assert sorted(rec.cache) == ["/v1/r/b", "/v1/r/c"]
    finally:
        rec.stop()


def test_reconciler_retries_a_failing_key_and_resync_finds_missed_deletes(store: Store):
    store.put("/v1/r/x", b"1")
    attempts: list[str] = []

    def sync(key: str) -> None:
        attempts.append(key)
        if len(attempts) < 3:
            raise RuntimeError("transient")

    rec = Reconciler(store, ["/v1/r/"], sync, resync_seconds=0.3, name="t")
    rec.queue.base_delay = 0.01
    rec.start()
    try:
        deadline = time.monotonic() + 10
        while len(attempts) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert attempts[:3] == ["/v1/r/x"] * 3 and rec.errors == 2
        # A delete the watch never delivered (we cancel the watch first) is found by the resync.
        for watch in rec._watches.values():
            watch.cancel()
        time.sleep(0.1)
        store.delete("/v1/r/x", store.get("/v1/r/x").mod_revision)
        deadline = time.monotonic() + 10
        while "/v1/r/x" in rec.cache and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "/v1/r/x" not in rec.cache
    finally:
        rec.stop()
