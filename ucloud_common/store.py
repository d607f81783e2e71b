"""A typed layer over etcd: reads that carry revisions, writes that are compare-and-swap.

Built on ``etcd-sdk-python`` (``pyetcd``, the maintained fork of ``etcd3``): it owns the
gRPC channels, endpoint failover and error mapping. On top of it this module adds
what the daemons need to be correct (DESIGN.md §3):

* ``get``/``list`` return :class:`Entry` values with their ``mod_revision``; ``list``
  reads a whole prefix at one revision (paged) and returns that revision, so a
  watch can start right after it.
* ``create`` (only if absent), ``update`` and ``delete`` (only if ``mod_revision`` is
  unchanged) and ``txn`` (several compares, several writes, atomically) raise
  :class:`Conflict` when the compare fails. There is a plain ``put`` for writes
  that do not depend on anything read (e.g. a key attached to a fresh lease).
* Every call is retried across endpoints until ``retry_for`` seconds have passed
  (etcd restarting, a member killed, a leader election); after that it raises
  :class:`Unavailable`. A conditional write whose reply was lost may have landed;
  its retry then reports :class:`Conflict`, and the caller re-reads and decides
  again, exactly as after any conflict (there is no "same bytes, must be mine"
  guess: two writers can write the same bytes).
* :class:`Watch` follows a prefix from a revision, resumes from the last revision it
  delivered when the stream breaks or etcd restarts, and raises :class:`Compacted`
  when that revision is gone, so the caller re-lists.

The pyetcd watcher (one callback thread per client, no resume) is not used: the
watch here drives pyetcd's own gRPC ``WatchStub`` directly.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar, Union

import grpc
import pyetcd
from pyetcd import etcdrpc, exceptions as etcd_exc
from pyetcd import transactions as etcd_txn
from pyetcd.utils import prefix_range_end

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRANSIENT = (
    etcd_exc.ConnectionFailedError,
    etcd_exc.ConnectionTimeoutError,
    etcd_exc.NoServerAvailableError,
    etcd_exc.InternalServerError,
)

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Reconnect quickly after etcd comes back, instead of gRPC's default backoff of up to 2 min.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Notice a silently dead server on long watch streams (etcd allows pings every 5 s).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]

PAGE_SIZE = 1000
_DELETE_EVENT = 1  # mvccpb.Event.EventType.DELETE


class StoreError(Exception):
    """Base of everything the store raises."""


class Conflict(StoreError):
    """A compare failed: the record changed (or appeared, or vanished) since it was read."""

    def __init__(self, keys: Sequence[str]) -> None:
        super().__init__(f"conflict on {', '.join(keys)}")
        self.keys = tuple(keys)


class Unavailable(StoreError):
    """No etcd endpoint answered within the retry window."""


class Compacted(StoreError):
    """The revision a watch wanted to resume from was compacted away: re-list."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest kept: {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class Entry:
    """One key as read: its value and the revisions needed to write it back safely."""

    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class Put:
    """Write ``value`` at ``key`` in a transaction (optionally attached to a lease)."""

    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    """Delete ``key`` in a transaction."""

    key: str


Op = Union[Put, Delete]


@dataclass(frozen=True)
class Compare:
    """Holds if ``key``'s ``mod_revision`` equals ``mod_revision`` (0: the key is absent)."""

    key: str
    mod_revision: int


@dataclass(frozen=True)
class WatchEvent:
    """A change seen by a watch. ``value`` is empty for deletes."""

    type: str  # "put" or "delete"
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    version: int = 0
    lease: int = 0

    def entry(self) -> Entry:
        """The key as it is after a put."""
        return Entry(self.key, self.value, self.mod_revision, self.create_revision, self.version, self.lease)


def _entry(kv: object) -> Entry:
    return Entry(
        key=kv.key.decode(),  # type: ignore[attr-defined]
        value=kv.value,  # type: ignore[attr-defined]
        mod_revision=kv.mod_revision,  # type: ignore[attr-defined]
        create_revision=kv.create_revision,  # type: ignore[attr-defined]
        version=kv.version,  # type: ignore[attr-defined]
        lease=kv.lease,  # type: ignore[attr-defined]
    )


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"host:port"`` -> ``("host", port)``; raises ValueError with a clear message."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"etcd endpoint {text!r} is not host:port")
    return host.strip("[]"), int(port)


class Store:
    """A connection to an etcd cluster (one or more ``host:port`` endpoints)."""

    def __init__(self, endpoints: Sequence[str], timeout: float = 5.0, retry_for: float = 15.0) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self.retry_for = retry_for
        eps = [pyetcd.Endpoint(*parse_endpoint(e), secure=False, time_retry=1, opts=_CHANNEL_OPTIONS)
               for e in endpoints]
        self._client = pyetcd.MultiEndpointEtcd3Client(eps, timeout=timeout, failover=True)
        self._lock = threading.Lock()  # pyetcd's endpoint switching is not thread-safe

    # -- plumbing ---------------------------------------------------------------------

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stub(self, name: str) -> object:
        with self._lock:
            return getattr(self._client, name)

    def _rpc(self, fn: Callable[[], T], what: str, *, retry: bool = True) -> T:
        """Run ``fn`` (one gRPC call), retrying on transient failures across endpoints.

        ``retry=False`` is for writes whose outcome would be ambiguous after a timeout.
        """
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            try:
                try:
                    return fn()
                except grpc.RpcError as exc:
                    with self._lock:
                        self._client._manage_grpc_errors(exc)  # marks the endpoint failed, maps the error
                    raise
            except _TRANSIENT as exc:
                if not retry or time.monotonic() + delay > deadline:
                    raise Unavailable(f"etcd {what} failed: {exc or type(exc).__name__} "
                                      f"(endpoints: {', '.join(self.endpoints)})") from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    # -- reads ------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        request = etcdrpc.RangeRequest(key=key.encode())
        response = self._rpc(lambda: self._stub("kvstub").Range(request, self.timeout), "get")
        return _entry(response.kvs[0]) if response.kvs else None

    def list(self, prefix: str) -> tuple[list[Entry], int]:
        """Every key under ``prefix`` as of one revision, and that revision."""
        start = prefix.encode()
        end = prefix_range_end(start)
        entries: list[Entry] = []
        revision = 0
        while True:
            request = etcdrpc.RangeRequest(key=start, range_end=end, limit=PAGE_SIZE, revision=revision)
            response = self._rpc(lambda: self._stub("kvstub").Range(request, self.timeout), "list")
            if not revision:
                revision = response.header.revision
            entries.extend(_entry(kv) for kv in response.kvs)
            if not response.more or not response.kvs:
                return entries, revision
            start = response.kvs[-1].key + b"\0"

    def revision(self) -> int:
        """The cluster's current revision."""
        request = etcdrpc.RangeRequest(key=b"\0", count_only=True)
        return self._rpc(lambda: self._stub("kvstub").Range(request, self.timeout), "revision").header.revision

    # -- writes -----------------------------------------------------------------------

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> int:
        """Apply ``ops`` atomically if every compare holds; return the new revision.

        Raises :class:`Conflict` naming the keys whose compare failed.
        """
        request = etcdrpc.TxnRequest(
            compare=[self._compare(c) for c in compares],
            success=[self._op(o) for o in ops],
            failure=[etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=c.key.encode()))
                     for c in compares],
        )
        response = self._rpc(lambda: self._stub("kvstub").Txn(request, self.timeout), "transaction")
        if response.succeeded:
            return response.header.revision
        failed = []
        for compare, result in zip(compares, response.responses):
            kvs = result.response_range.kvs
            now = kvs[0].mod_revision if kvs else 0
            if now != compare.mod_revision:
                failed.append(compare.key)
        raise Conflict(failed or [c.key for c in compares])

    def create(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write ``key`` only if it does not exist; return the revision of the write."""
        return self.txn([Compare(key, 0)], [Put(key, value, lease)])

    def update(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> int:
        """Write ``key`` only if it is still at ``mod_revision``; return the new revision."""
        if mod_revision <= 0:
            raise ValueError("update needs the mod_revision the record was read at")
        return self.txn([Compare(key, mod_revision)], [Put(key, value, lease)])

    def delete(self, key: str, mod_revision: int) -> int:
        """Delete ``key`` only if it is still at ``mod_revision``."""
        if mod_revision <= 0:
            raise ValueError("delete needs the mod_revision the record was read at")
        try:
            return self.txn([Compare(key, mod_revision)], [Delete(key)])
        except Conflict:
            if self.get(key) is None:  # gone either way (e.g. our first attempt's reply was lost)
                return 0
            raise

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Unconditional write, for values that depend on nothing read (e.g. a liveness key)."""
        request = etcdrpc.PutRequest(key=key.encode(), value=value, lease=lease)
        return self._rpc(lambda: self._stub("kvstub").Put(request, self.timeout), "put").header.revision

    def delete_prefix(self, prefix: str) -> int:
        """Remove every key under ``prefix`` (tests and ``make clean``; never in a daemon loop)."""
        request = etcdrpc.DeleteRangeRequest(key=prefix.encode(), range_end=prefix_range_end(prefix.encode()))
        return self._rpc(lambda: self._stub("kvstub").DeleteRange(request, self.timeout), "delete").header.revision

    @staticmethod
    def _compare(compare: Compare) -> object:
        return (etcd_txn.Mod(compare.key) == compare.mod_revision).build_message()  # type: ignore[operator]

    @staticmethod
    def _op(op: Op) -> object:
        if isinstance(op, Put):
            return etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(
                key=op.key.encode(), value=op.value, lease=op.lease))
        return etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=op.key.encode()))

    # -- leases -----------------------------------------------------------------------

    def grant_lease(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; returns its id."""
        request = etcdrpc.LeaseGrantRequest(TTL=ttl)
        return self._rpc(lambda: self._stub("leasestub").LeaseGrant(request, self.timeout), "lease grant").ID

    def keep_alive(self, lease_id: int) -> int:
        """Renew a lease once; returns the TTL it now has (0: it has already expired)."""
        def call() -> int:
            stream = self._stub("leasestub").LeaseKeepAlive(
                iter([etcdrpc.LeaseKeepAliveRequest(ID=lease_id)]), self.timeout)
            for response in stream:
                return response.TTL
            return 0
        return self._rpc(call, "lease keep-alive")

    def revoke_lease(self, lease_id: int) -> None:
        """Revoke a lease: every key attached to it is deleted at once."""
        request = etcdrpc.LeaseRevokeRequest(ID=lease_id)
        try:
            self._rpc(lambda: self._stub("leasestub").LeaseRevoke(request, self.timeout), "lease revoke")
        except grpc.RpcError as exc:  # NOT_FOUND: already expired
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise

    def lease_info(self, lease_id: int) -> tuple[int, list[str]]:
        """(remaining TTL, keys attached); TTL -1 means the lease does not exist."""
        request = etcdrpc.LeaseTimeToLiveRequest(ID=lease_id, keys=True)
        response = self._rpc(lambda: self._stub("leasestub").LeaseTimeToLive(request, self.timeout), "lease info")
        return response.TTL, [k.decode() for k in response.keys]

    def compact(self, revision: int) -> None:
        request = etcdrpc.CompactionRequest(revision=revision, physical=True)
        self._rpc(lambda: self._stub("kvstub").Compact(request, self.timeout), "compact")

    # -- watch ------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int) -> "Watch":
        """Follow changes under ``prefix`` from ``start_revision`` (inclusive)."""
        return Watch(self, prefix, start_revision)


class Watch:
    """An iterator of :class:`WatchEvent` under a prefix that survives etcd restarts.

    It remembers the revision of the last event it delivered and, when the stream
    breaks, opens a new one from the next revision (on any endpoint), so nothing is
    lost or repeated. If that revision was compacted it raises :class:`Compacted`.
    ``cancel()`` (from any thread) ends the iteration.
    """

    def __init__(self, store: Store, prefix: str, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix.encode()
        self.next_revision = start_revision
        self._cancelled = threading.Event()
        self._call: object = None
        self.reconnects = 0

    def cancel(self) -> None:
        self._cancelled.set()
        call = self._call
        if call is not None:
            call.cancel()  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[WatchEvent]:
        delay = 0.05
        while not self._cancelled.is_set():
            stream_done = threading.Event()
            try:
                for event in self._stream(stream_done):
                    delay = 0.05
                    yield event
            except grpc.RpcError as exc:
                if self._cancelled.is_set():
                    return
                log.info("watch on %s broke (%s); resuming from revision %d",
                         self._prefix.decode(), exc.code(), self.next_revision)
                with self._store._lock:
                    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        try:
                            self._store._client.endpoint_in_use.fail()
                            self._store._client._clear_old_stubs()
                        except Exception:  # pragma: no cover - defensive: pyetcd internals
                            pass
            except etcd_exc.NoServerAvailableError:
                pass
            finally:
                stream_done.set()
            if self._cancelled.is_set():
                return
            self.reconnects += 1
            self._cancelled.wait(delay)
            delay = min(delay * 2, 1.0)

    def _stream(self, stream_done: threading.Event) -> Iterator[WatchEvent]:
        create = etcdrpc.WatchCreateRequest(
            key=self._prefix, range_end=prefix_range_end(self._prefix),
            start_revision=self.next_revision, progress_notify=True)

        def requests() -> Iterator[object]:
            yield etcdrpc.WatchRequest(create_request=create)
            while not stream_done.wait(1.0):  # keep the send side open while the stream lives
                pass

        with self._store._lock:
            channel = self._store._client.channel
        call = etcdrpc.WatchStub(channel).Watch(requests())
        self._call = call
        if self._cancelled.is_set():
            call.cancel()
        for response in call:
            if response.compact_revision:
                call.cancel()
                raise Compacted(response.compact_revision)
            if response.canceled:
                raise_reason = response.cancel_reason or "watch canceled by server"
                log.info("watch on %s canceled by etcd: %s", self._prefix.decode(), raise_reason)
                return
            for ev in response.events:
                kv = ev.kv
                self.next_revision = kv.mod_revision + 1
                yield WatchEvent(
                    type="delete" if ev.type == _DELETE_EVENT else "put",
                    key=kv.key.decode(), value=kv.value, mod_revision=kv.mod_revision,
                    create_revision=kv.create_revision, version=kv.version, lease=kv.lease)
