"""User accounts: ``(realm, name)`` plus a secret ``seed``, kept under ``/v1/user/<realm>/<name>``.

The seed is never stored. An account record holds only a salted hash of it::

    {"hash": "pbkdf2_sha256$1000$<salt b64>$<digest b64>", "admin": false, "created": 1732460000.0}

Why these parameters. A slow KDF (scrypt, high-iteration PBKDF2) exists to make
*guessing low-entropy passwords* expensive. Our seeds are not passwords: they are
192 random bits made by :func:`new_seed` and shown once, so an attacker holding the
whole user table still has 2**192 candidates, and stretching by 1,000 adds only ~10
bits to that. What stretching *would* cost is every API request: the seed travels with
each call (the seed's API has no sessions), and scrypt at n=2**14 is ~50 ms of CPU —
more than the whole budget of a request. So: PBKDF2-HMAC-SHA256 with 1,000
iterations (~0.4 ms), a 16-byte random salt per account, and a constant-time compare.
The algorithm and its parameters are stored in the hash string, so they can be raised
later without breaking existing accounts (``verify_seed`` reads them back).

The API adds a short-lived in-process cache of verified credentials on top
(``ucloud_api.auth``), so a busy client costs neither the hash nor the etcd read.

Names: realm and name are ``[a-z0-9][a-z0-9_.-]{0,63}``: they become etcd key
segments and the VM ``owner`` (``realm/name``), so no ``/`` and nothing a shell or a
path could misread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from .keys import USER_PREFIX
from .store import Conflict, Store

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
NAME_PATTERN = "^" + NAME_RE.pattern + "$"  # for JSON Schema / OpenAPI
SEED_BYTES = 24  # 192 random bits
MAX_SEED_LENGTH = 256  # longer "seeds" are refused before any hashing
HASH_ALGORITHM = "pbkdf2_sha256"
HASH_ITERATIONS = 1000
SALT_BYTES = 16


class AccountError(ValueError):
    """A bad realm or name (``field`` names which), or an account that already exists."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class UserExists(AccountError):
    pass


@dataclass(frozen=True)
class User:
    """An account as read from etcd (never holds the seed)."""

    realm: str
    name: str
    seed_hash: str
    admin: bool = False
    created: float = 0.0
    mod_revision: int = 0

    @property
    def owner(self) -> str:
        return owner_id(self.realm, self.name)

    def is_admin(self, admin_realm: str) -> bool:
        """Administrators: users flagged ``admin`` and every user of the admin realm."""
        return self.admin or (bool(admin_realm) and self.realm == admin_realm)

    def to_json(self) -> bytes:
        return json.dumps({"hash": self.seed_hash, "admin": self.admin, "created": self.created},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, realm: str, name: str, raw: bytes, mod_revision: int = 0) -> "User":
        data: Any = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("hash"), str):
            raise AccountError("user", f"record of {realm}/{name} has no seed hash")
        return cls(realm, name, data["hash"], bool(data.get("admin", False)),
                   float(data.get("created", 0.0) or 0.0), mod_revision)


def valid_name(value: object) -> bool:
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


def check_name(field_name: str, value: object) -> str:
    if not valid_name(value):
        raise AccountError(field_name, f"must match {NAME_PATTERN} (lower-case letters, digits, '_', '.', '-')")
    return value  # type: ignore[return-value]


def owner_id(realm: str, name: str) -> str:
    """The VM record's ``owner`` for a user: ``"realm/name"``."""
    return f"{check_name('realm', realm)}/{check_name('name', name)}"


def user_key(realm: str, name: str) -> str:
    return f"{USER_PREFIX}{check_name('realm', realm)}/{check_name('name', name)}"


def new_seed() -> str:
    """A fresh secret: 192 random bits, URL-safe text (32 characters)."""
    return secrets.token_urlsafe(SEED_BYTES)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_seed(seed: str, *, salt: bytes | None = None, iterations: int = HASH_ITERATIONS) -> str:
    """``pbkdf2_sha256$<iterations>$<salt>$<digest>`` for ``seed`` (see the module docstring)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", seed.encode(), salt, iterations)
    return f"{HASH_ALGORITHM}${iterations}${_b64(salt)}${_b64(digest)}"


# Compared against when the user does not exist, so a miss costs the same as a wrong seed.
_DUMMY_HASH = hash_seed("no such user", salt=b"\0" * SALT_BYTES)


def verify_seed(seed: str, stored: str) -> bool:
    """Whether ``seed`` hashes to ``stored``, compared in constant time."""
    try:
        algorithm, iterations, salt, digest = stored.split("$")
        if algorithm != HASH_ALGORITHM or not 1 <= int(iterations) <= 10_000_000:
            return False
        expected = _unb64(digest)
        actual = hashlib.pbkdf2_hmac("sha256", seed.encode(), _unb64(salt), int(iterations))
    except (ValueError, UnicodeError):
        return False
    return hmac.compare_digest(actual, expected)


def get_user(store: Store, realm: str, name: str) -> User | None:
    entry = store.get(user_key(realm, name))
    if entry is None:
        return None
    return User.from_json(realm, name, entry.value, entry.mod_revision)


def authenticate(store: Store, realm: object, name: object, seed: object) -> User | None:
    """The user whose credentials these are, or None (unknown user, bad name or wrong seed).

    Takes the same time whether the user exists or not (a dummy hash is checked).
    """
    if not (valid_name(realm) and valid_name(name) and isinstance(seed, str)) or len(seed) > MAX_SEED_LENGTH:
        return None
    user = get_user(store, realm, name)  # type: ignore[arg-type]
    ok = verify_seed(seed, user.seed_hash if user else _DUMMY_HASH)
    return user if ok and user is not None else None


def create_user(store: Store, realm: str, name: str, *, admin: bool = False) -> tuple[User, str]:
    """Create an account; return it and its seed (the only time the seed exists in clear).

    Raises :class:`UserExists` if the account is already there (it is never overwritten).
    """
    key = user_key(realm, name)
    seed = new_seed()
    user = User(realm, name, hash_seed(seed), admin, round(time.time(), 3))
    try:
        revision = store.create(key, user.to_json())
    except Conflict:
        raise UserExists("name", f"user {realm}/{name} already exists") from None
    return User(realm, name, user.seed_hash, admin, user.created, revision), seed
