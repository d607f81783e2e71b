"""Accounts: salted seed hashes, constant-time checks, the admin CLI, the API's credential cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ucloud_api.auth import CredentialCache
from ucloud_common import accounts
from ucloud_common.keys import USER_PREFIX


def test_hash_and_verify():
    seed = accounts.new_seed()
    assert len(seed) >= 32  # 192 bits, URL-safe
    stored = accounts.hash_seed(seed)
    assert seed not in stored and stored.startswith("pbkdf2_sha256$1000$")
    assert accounts.verify_seed(seed, stored)
    assert not accounts.verify_seed(seed + "x", stored)
    assert not accounts.verify_seed("", stored)
    assert accounts.hash_seed(seed) != stored  # a fresh salt each time
    for broken in ("", "nonsense", "md5$1$a$b", "pbkdf2_sha256$0$a$b", "pbkdf2_sha256$x$a$b", "pbkdf2_sha256$10$!$!"):
        assert not accounts.verify_seed(seed, broken)
    # parameters are read back from the record: stronger hashes made later still verify
    assert accounts.verify_seed(seed, accounts.hash_seed(seed, iterations=5000))


@pytest.mark.parametrize("value, ok", [
    ("alice", True), ("user_realm", True), ("a", True), ("0ps.team-1", True), ("a" * 64, True),
    ("a" * 65, False), ("Alice", False), ("_x", False), ("a/b", False), ("", False), ("a b", False), (5, False),
])
def test_names(value, ok):
    assert accounts.valid_name(value) is ok
    if ok:
        assert accounts.owner_id(value, "bob") == f"{value}/bob"
    else:
        with pytest.raises(accounts.AccountError) as info:
            accounts.owner_id(value, "bob")
        assert info.value.field == "realm"


def test_create_and_authenticate(store):
    user, seed = accounts.create_user(store, "r1", "alice")
    raw = store.get(f"{USER_PREFIX}r1/alice").value
    assert seed.encode() not in raw and set(json.loads(raw)) == {"hash", "admin", "created"}
    assert user.owner == "r1/alice" and not user.is_admin("ucloud-admin")
    assert accounts.authenticate(store, "r1", "alice", seed) == accounts.get_user(store, "r1", "alice")
    assert accounts.authenticate(store, "r1", "alice", "wrong") is None
    assert accounts.authenticate(store, "r1", "nobody", seed) is None
    assert accounts.authenticate(store, "R1", "alice", seed) is None
    assert accounts.authenticate(store, "r1", "alice", None) is None
    assert accounts.authenticate(store, "r1", "alice", "x" * 10_000) is None
    with pytest.raises(accounts.UserExists):
        accounts.create_user(store, "r1", "alice")
    assert accounts.authenticate(store, "r1", "alice", seed) is not None  # not overwritten

    admin, _ = accounts.create_user(store, "ops", "root", admin=True)
    assert admin.is_admin("ucloud-admin")
    realm_admin, _ = accounts.create_user(store, "ucloud-admin", "root")
    assert realm_admin.is_admin("ucloud-admin") and not realm_admin.is_admin("")


def test_credential_cache_expires_and_is_bounded():
    now = [100.0]
    cache = CredentialCache(ttl=5.0, max_entries=3, clock=lambda: now[0])
    user = accounts.User("r1", "alice", "hash")
    cache.put("r1", "alice", "s", user)
    assert cache.get("r1", "alice", "s") is user
    assert cache.get("r1", "alice", "other") is None
    now[0] += 5.1
    assert cache.get("r1", "alice", "s") is None
    for i in range(4):
        cache.put("r1", f"u{i}", "s", user)
    assert len(cache._entries) <= 3
    assert CredentialCache(ttl=0).get("r1", "alice", "s") is None


def _cli(args: list[str], endpoints: tuple[str, ...], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UCLOUD_ETCD_ENDPOINTS": ",".join(endpoints), "UCLOUD_ENV_FILE": str(tmp_path / "none.env")}
    exe = Path(sys.executable).parent / "ucloud"
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=60)


def test_admin_user_create_cli(etcd, store, tmp_path):
    result = _cli(["admin", "user", "create", "--realm", "r1", "--name", "alice"], etcd.endpoints, tmp_path)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert set(printed) == {"realm", "name", "seed"} and printed["realm"] == "r1" and printed["name"] == "alice"
    assert accounts.authenticate(store, "r1", "alice", printed["seed"]) is not None
    assert printed["seed"].encode() not in store.get(f"{USER_PREFIX}r1/alice").value

    again = _cli(["admin", "user", "create", "--realm", "r1", "--name", "alice"], etcd.endpoints, tmp_path)
    assert again.returncode == 1 and "already exists" in again.stderr and again.stdout == ""

    bad = _cli(["admin", "user", "create", "--realm", "R 1", "--name", "alice"], etcd.endpoints, tmp_path)
    assert bad.returncode == 2 and "--realm" in bad.stderr

    admin = _cli(["admin", "user", "create", "--realm", "ops", "--name", "root", "--admin"], etcd.endpoints, tmp_path)
    assert admin.returncode == 0
    assert accounts.get_user(store, "ops", "root").admin is True
