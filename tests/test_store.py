"""The store against a real etcd: compare-and-swap, transactions, leases, a watch that
survives restarts and compaction, and a 3-member cluster that loses a member."""

from __future__ import annotations

import threading
import time

import pytest

from ucloud_common.reconcile import Reconciler
from ucloud_common.store import Compacted, Compare, Conflict, Delete, Put, Store


def test_create_update_delete_are_compare_and_swap(store: Store):
    rev = store.create("/v1/t/a", b"1")
    with pytest.raises(Conflict):
        store.create("/v1/t/a", b"other")
    new_rev = store.update("/v1/t/a", b"2", rev)
    assert new_rev > rev
    with pytest.raises(Conflict) as info:
        store.update("/v1/t/a", b"3", rev)  # stale revision
    assert info.value.keys == ("/v1/t/a",)
    with pytest.raises(Conflict):
        store.delete("/v1/t/a", rev)
    entry = store.get("/v1/t/a")
    assert entry.value == b"2" and entry.mod_revision == new_rev
    store.delete("/v1/t/a", new_rev)
    assert store.get("/v1/t/a") is None


def test_two_writers_race_one_wins_loser_rereads_and_succeeds(store: Store, etcd):
    store.create("/v1/t/counter", b"0")
    barrier = threading.Barrier(2)
    outcomes: dict[str, list[str]] = {"w1": [], "w2": []}

    def writer(name: str) -> None:
        client = Store(etcd.endpoints)
        entry = client.get("/v1/t/counter")  # both read the same revision
        barrier.wait()
        while True:
            try:
                client.update("/v1/t/counter", str(int(entry.value) + 1).encode(), entry.mod_revision)
                outcomes[name].append("won")
                return
            except Conflict:
                outcomes[name].append("conflict")
                entry = client.get("/v1/t/counter")  # re-read and decide again

    threads = [threading.Thread(target=writer, args=(n,)) for n in outcomes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    first_tries = sorted(o[0] for o in outcomes.values())
    assert first_tries == ["conflict", "won"]  # exactly one won the race
    assert all(o[-1] == "won" for o in outcomes.values())  # the loser succeeded after re-reading
    assert store.get("/v1/t/counter").value == b"2"  # no lost update


def test_multi_key_transaction_is_all_or_nothing(store: Store):
    ra = store.create("/v1/t/a", b"a")
    rb = store.create("/v1/t/b", b"b")
    store.update("/v1/t/b", b"b2", rb)  # b moves on
    with pytest.raises(Conflict) as info:
        store.txn([Compare("/v1/t/a", ra), Compare("/v1/t/b", rb), Compare("/v1/t/c", 0)],
                  [Put("/v1/t/a", b"x"), Delete("/v1/t/b"), Put("/v1/t/c", b"c")])
    assert info.value.keys == ("/v1/t/b",)
    assert store.get("/v1/t/a").value == b"a" and store.get("/v1/t/c") is None
    rb2 = store.get("/v1/t/b").mod_revision
    store.txn([Compare("/v1/t/a", ra), Compare("/v1/t/b", rb2), Compare("/v1/t/c", 0)],
              [Put("/v1/t/a", b"x"), Delete("/v1/t/b"), Put("/v1/t/c", b"c")])
    assert store.get("/v1/t/a").value == b"x" and store.get("/v1/t/b") is None
    assert store.get("/v1/t/c").value == b"c"


def test_list_is_one_revision_across_pages(store: Store):
    for i in range(2500):  # more than two pages
        store.put(f"/v1/t/{i:05d}", b"v")
    entries, revision = store.list("/v1/t/")
    assert len(entries) == 2500 and [e.key for e in entries] == sorted(e.key for e in entries)
    assert all(e.mod_revision <= revision for e in entries)
    assert store.list("/v1/nothing/") == ([], store.revision())


def test_lease_keys_vanish_when_revoked_or_expired(store: Store):
    lease = store.grant_lease(2)
    store.put("/v1/alive/h1", b"1", lease=lease)
    ttl, keys = store.lease_info(lease)
    assert 0 < ttl <= 2 and keys == ["/v1/alive/h1"]
    assert store.keep_alive(lease) == 2
    store.revoke_lease(lease)
    assert store.get("/v1/alive/h1") is None

    short = store.grant_lease(2)
    store.put("/v1/alive/h2", b"1", lease=short)
    deadline = time.monotonic() + 10
    while store.get("/v1/alive/h2") is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.get("/v1/alive/h2") is None
    assert store.keep_alive(short) == 0  # an expired lease cannot be renewed


def collect(watch, into: list, stop_after: int) -> threading.Thread:
    def run() -> None:
        try:
            for event in watch:
                into.append(event)
                if len(into) >= stop_after:
                    return
        except Compacted as exc:
            into.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_watch_resumes_after_etcd_restart_exactly_once(etcd_factory):
    cluster = etcd_factory(1)
    watcher_store = Store(cluster.endpoints, retry_for=30)
    writer_store = Store(cluster.endpoints, retry_for=30)
    writer_store.put("/v1/w/before", b"0")
    _, revision = watcher_store.list("/v1/w/")
    events: list = []
    watch = watcher_store.watch("/v1/w/", revision + 1)
    thread = collect(watch, events, stop_after=100)

    writer_store.put("/v1/w/first", b"0")  # the watch is live before the restart
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [e.key for e in events] == ["/v1/w/first"]

    member = cluster.members[0]
    member.stop()
    time.sleep(0.5)  # the stream breaks while etcd is down
    member.start()
    member.wait_listening()
    for i in range(99):
        writer_store.put(f"/v1/w/{i:03d}", str(i).encode())
    thread.join(30)
    watch.cancel()
    keys = [e.key for e in events]
    assert keys == ["/v1/w/first"] + [f"/v1/w/{i:03d}" for i in range(99)]  # all, once, in order
    assert watch.reconnects >= 1
    revisions = [e.mod_revision for e in events]
    assert revisions == sorted(set(revisions))


def test_watch_from_compacted_revision_raises_and_reconciler_converges(store: Store):
    for i in range(10):
        store.put(f"/v1/c/{i}", b"old")
    old_revision = store.revision()
    store.put("/v1/c/3", b"new")
    store.delete("/v1/c/4", store.get("/v1/c/4").mod_revision)
    store.compact(store.revision())
    events: list = []
    collect(store.watch("/v1/c/", old_revision), events, stop_after=1).join(10)
    assert len(events) == 1 and isinstance(events[0], Compacted)

    # A reconciler whose cache is at the old revision re-lists and converges.
    seen: dict[str, bytes | None] = {}
    lock = threading.Lock()

    def sync(key: str) -> None:
        entry = store.get(key)
        with lock:
            seen[key] = entry.value if entry else None

    rec = Reconciler(store, ["/v1/c/"], sync, resync_seconds=3600, name="test")
    rec.revisions["/v1/c/"] = old_revision - 1  # as if it had been listed long ago
    from ucloud_common.store import Entry
    rec.cache["/v1/c/4"] = Entry("/v1/c/4", b"old", old_revision - 2, 0, 0)
    rec.listed.set()
    thread = threading.Thread(target=rec._watch_loop, args=("/v1/c/",), daemon=True)
    worker = threading.Thread(target=rec._worker, daemon=True)
    thread.start()
    worker.start()
    deadline = time.monotonic() + 10
    while (seen.get("/v1/c/3") != b"new" or "/v1/c/4" not in seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    rec.stop()
    assert seen["/v1/c/3"] == b"new" and seen["/v1/c/4"] is None
    assert "/v1/c/4" not in rec.cache and len(rec.cached("/v1/c/")) == 9


def test_three_member_cluster_survives_sigkill_of_a_member(etcd_factory):
    cluster = etcd_factory(3)
    store = Store(cluster.endpoints, timeout=2.0, retry_for=20)
    store.create("/v1/ha/a", b"0")
    for victim in cluster.members[:1]:
        victim.kill()
    for i in range(50):
        entry = store.get("/v1/ha/a")
        store.update("/v1/ha/a", str(i + 1).encode(), entry.mod_revision)
    assert store.get("/v1/ha/a").value == b"50"
    # A client that only knew the dead member's endpoint first still works through the others.
    reordered = Store([cluster.members[0].endpoint] + [m.endpoint for m in cluster.members[1:]], retry_for=20)
    assert reordered.get("/v1/ha/a").value == b"50"
    reordered.put("/v1/ha/b", b"1")
    # The member comes back and catches up.
    cluster.members[0].start()
    cluster.members[0].wait_listening()
    solo = Store([cluster.members[0].endpoint], retry_for=20)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        entry = solo.get("/v1/ha/b")
        if entry is not None:
            break
        time.sleep(0.2)
    assert solo.get("/v1/ha/b").value == b"1"
