"""Fixtures shared by the CLI tests: a real `ucloud-api` (gunicorn) on a free port over the
session's etcd, a user, and `ucloud` run through click's CliRunner with an isolated
environment (empty HOME and dev-cloud dir, so no real ~/.ucloud leaks in)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner, Result

from ucloud_common import accounts
from ucloud_common.cli import main
from ucloud_common.keys import vm_key
from ucloud_common.models import VM, VMStatus
from ucloud_common.store import Conflict, Store

from api_harness import running_api

CLI_EXE = Path(sys.executable).parent / "ucloud"


@pytest.fixture(scope="module")
def api_url(etcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """ucloud-api as deployed (the console script, gunicorn), for every test of this module."""
    with running_api(etcd, tmp_path_factory.mktemp("api"), UCLOUD_API_WORKERS="1") as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty home and dev-cloud dir, so no real ~/.ucloud or var/devcloud leaks in."""
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture
def base_env(home: Path, tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(home), "UCLOUD_DEV_DIR": str(tmp_path / "devcloud"), "UCLOUD_CLI_CONFIG": "",
            "UCLOUD_API_URL": "", "UCLOUD_REALM": "", "UCLOUD_NAME": "", "UCLOUD_SEED": "", "COLUMNS": "200"}


@pytest.fixture
def user(store: Store) -> dict[str, str]:
    _, seed = accounts.create_user(store, "acme", "alice")
    return {"realm": "acme", "name": "alice", "seed": seed}


@pytest.fixture
def cli(api_url: str, user: dict[str, str], base_env: dict[str, str]):
    """Run `ucloud` as alice (credentials in the environment)."""
    env = {**base_env, "UCLOUD_API_URL": api_url, "UCLOUD_REALM": user["realm"], "UCLOUD_NAME": user["name"],
           "UCLOUD_SEED": user["seed"]}

    def run(*args: str, **extra_env: str) -> Result:
        return CliRunner().invoke(main, list(args), env={**env, **extra_env}, catch_exceptions=False)

    return run


def one_error_line(result: Result) -> str:
    """A failed command: exit code 1, nothing on stdout, exactly one line on stderr, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ucloud: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def set_status(store: Store, vm_id: str, status: VMStatus, **changes: Any) -> None:
    """What the scheduler / a vm daemon does to a VM record: a compare-and-swap."""
    while True:
        entry = store.get(vm_key(vm_id))
        assert entry is not None
        vm = VM.from_json(vm_id, entry.value, entry.mod_revision)
        new = vm.with_event(f"test: now {status.value}", status=status, **changes)
        try:
            store.update(entry.key, new.to_json(), entry.mod_revision)
            return
        except Conflict:
            continue
