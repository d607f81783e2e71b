"""This scheduler's membership: ``/v1/scheduler/<id>``, attached to its own etcd lease.

The key exists only while the scheduler renews its lease, so the other schedulers see
a member die (SIGKILL, power loss, partition) within ``ttl`` seconds and take over its
share of the work (see :mod:`ucloud_scheduler.shard`). A clean stop revokes the lease,
so the hand-over is immediate.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from ucloud_common.keys import scheduler_key
from ucloud_common.store import Store, StoreError

log = logging.getLogger(__name__)

MEMBER_TTL = 5  # seconds a dead scheduler keeps its share before the others take it


def new_member_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Membership:
    """Register, keep renewing (re-registering if the lease was lost), revoke on stop."""

    def __init__(self, store: Store, member_id: str | None = None, ttl: int = MEMBER_TTL) -> None:
        self.store = store
        self.id = member_id or new_member_id()
        self.key = scheduler_key(self.id)
        self.ttl = ttl
        self.lease = 0
        self.registrations = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _register(self) -> None:
        self.lease = self.store.grant_lease(self.ttl)
        value = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        self.store.put(self.key, value.encode(), lease=self.lease)  # on a fresh lease: depends on nothing read
        self.registrations += 1

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if self.store.keep_alive(self.lease) <= 0:
                    log.warning("scheduler lease %x expired; registering again", self.lease)
                    self._register()
            except StoreError as exc:
                log.warning("cannot renew scheduler lease: %s", exc)

    def start(self) -> "Membership":
        self._register()
        self._thread = threading.Thread(target=self._renew_loop, name="scheduler-lease", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if self.lease:
            try:
                self.store.revoke_lease(self.lease)
            except StoreError as exc:
                log.info("could not revoke scheduler lease (it will expire): %s", exc)
