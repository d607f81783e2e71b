"""Who is calling: credentials from the body (the seed's form) or the X-Ucloud-* headers.

The seed's API sends the secret with every request, so checking it is on every
request's path. :mod:`ucloud_common.accounts` keeps that check cheap (PBKDF2 with
1,000 iterations, ~0.4 ms: the seeds are 192 random bits, see its docstring), and
:class:`CredentialCache` removes it from the hot path: a successful check is
remembered for ``ttl`` seconds (default 5) in this worker process, keyed by a SHA-256
of realm, name and seed, so neither the seed nor its hash is kept. Without the cache
every request pays an etcd read of the account plus the hash (about 1 ms of a
~2-3 ms request); with it a busy client pays them once per 5 s. The price is that a
deleted account or a changed seed keeps working for at most ``ttl`` seconds in each
worker — short enough for revocation, long enough for a benchmark or a polling CLI.
Failures are never cached, and the cache is bounded (cleared when full).
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Callable

from flask import request

from ucloud_common.accounts import User, authenticate
from ucloud_common.store import Store

from .errors import ApiError
from .schemas import HEADER_NAME, HEADER_REALM, HEADER_SEED, Credentials

CACHE_TTL = 5.0
CACHE_MAX = 10_000


class CredentialCache:
    """Verified credentials -> User, for ``ttl`` seconds. Thread-safe, bounded."""

    def __init__(self, ttl: float = CACHE_TTL, max_entries: int = CACHE_MAX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[bytes, tuple[float, User]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(realm: str, name: str, seed: str) -> bytes:
        return hashlib.sha256(f"{realm}\0{name}\0{seed}".encode()).digest()

    def get(self, realm: str, name: str, seed: str) -> User | None:
        if self.ttl <= 0:
            return None
        key = self._key(realm, name, seed)
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[0] < self._clock():
            with self._lock:
                self._entries.pop(key, None)
            return None
        return hit[1]

    def put(self, realm: str, name: str, seed: str, user: User) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[self._key(realm, name, seed)] = (self._clock() + self.ttl, user)


class Authenticator:
    """Checks credentials against ``/v1/user/`` through a :class:`CredentialCache`."""

    def __init__(self, store: Store, cache: CredentialCache | None = None) -> None:
        self.store = store
        self.cache = cache or CredentialCache()

    def check(self, realm: str, name: str, seed: str) -> User | None:
        user = self.cache.get(realm, name, seed)
        if user is None:
            user = authenticate(self.store, realm, name, seed)
            if user is not None:
                self.cache.put(realm, name, seed, user)
        return user

    def user_for(self, body: Credentials | None) -> User:
        """The calling user: each credential from the body if given, else its header; 401 if
        one is missing or they do not match an account."""
        given = body or Credentials()
        values = {
            "realm": given.realm if given.realm is not None else request.headers.get(HEADER_REALM),
            "name": given.name if given.name is not None else request.headers.get(HEADER_NAME),
            "seed": given.seed if given.seed is not None else request.headers.get(HEADER_SEED),
        }
        headers = {"realm": HEADER_REALM, "name": HEADER_NAME, "seed": HEADER_SEED}
        for field in ("name", "realm", "seed"):
            if not values[field]:
                raise ApiError(401, f"credentials missing: give name, realm and seed in the body or the "
                                    f"{HEADER_NAME}/{HEADER_REALM}/{HEADER_SEED} headers ({field} is missing)",
                               field=field if body is not None else headers[field])
        user = self.check(values["realm"], values["name"], values["seed"])  # type: ignore[arg-type]
        if user is None:
            raise ApiError(401, "unknown user or wrong seed", field="seed")
        return user
