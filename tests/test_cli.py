"""The `ucloud` CLI against a real API: `ucloud-api` (gunicorn) on a free port over the session's
etcd, driven with click's CliRunner (and the installed console script where a real process
matters). Where the scheduler and a vm daemon would move a VM, the test writes the VM's
status to etcd itself (a compare-and-swap, as they do) and checks what the CLI shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli_harness import (CLI_EXE, api_url, base_env, cli, home, one_error_line,  # noqa: F401 (fixtures)
                         set_status, user)

from ucloud_common import accounts
from ucloud_common.cli import main
from ucloud_common.cli_config import CliConfigError, merge, parse_file, resolve
from ucloud_common.cli_wait import GOALS, Outcome, outcome, wait_for
from ucloud_common.client import ApiFailure, Unreachable
from ucloud_common.config import load_settings
from ucloud_common.etcd_process import free_port
from ucloud_common.keys import vm_key
from ucloud_common.models import VM, Host, HostStatus, Specs, VMStatus
from ucloud_common.store import Store


# -- configuration ---------------------------------------------------------------------------------


def test_config_precedence_flag_over_env_over_file(tmp_path: Path, home: Path):
    (home / ".ucloud").write_text(json.dumps({"api_url": "http://file:1", "realm": "rf", "name": "nf", "seed": "sf"}))
    env = {"UCLOUD_REALM": "re", "UCLOUD_SEED": "se", "UCLOUD_DEV_DIR": str(tmp_path / "dev")}
    cfg = resolve({"seed": "sflag"}, None, env, home)
    assert (cfg.api_url, cfg.realm, cfg.name, cfg.seed) == ("http://file:1", "re", "nf", "sflag")
    assert cfg.sources["seed"] == "flag --seed" and cfg.sources["realm"] == "env UCLOUD_REALM"
    assert cfg.sources["name"] == f"file {home / '.ucloud'}"

    # --config beats ~/.ucloud; an explicitly named file must exist
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"name": "nother"}))
    cfg = resolve({}, str(other), env, home)
    assert (cfg.name, cfg.api_url) == ("nother", "http://127.0.0.1:8080")
    with pytest.raises(CliConfigError, match="does not exist"):
        resolve({}, str(tmp_path / "missing.json"), env, home)


def test_dev_cloud_credentials_are_used_when_there_is_no_user_file(tmp_path: Path, home: Path):
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "credentials.json").write_text(json.dumps(
        {"api_url": "http://127.0.0.1:8080", "realm": "dev", "name": "dev", "seed": "s3cret"}))
    cfg = resolve({}, None, {"UCLOUD_DEV_DIR": str(dev)}, home)
    assert cfg.credentials().realm == "dev" and cfg.file == dev / "credentials.json"
    (home / ".ucloud").write_text(json.dumps({"realm": "mine", "name": "me", "seed": "x"}))
    assert resolve({}, None, {"UCLOUD_DEV_DIR": str(dev)}, home).realm == "mine"


def test_bad_config_files_are_refused_with_a_reason():
    with pytest.raises(CliConfigError, match="not valid JSON"):
        parse_file("realm = x", "f")
    with pytest.raises(CliConfigError, match="unknown key 'sede'"):
        parse_file('{"sede": "x"}', "f")
    with pytest.raises(CliConfigError, match="seed must be a string"):
        parse_file('{"seed": 5}', "f")
    with pytest.raises(CliConfigError, match="http://host:port"):
        merge({"api_url": "localhost:8080"}, {}, {}, None)
    with pytest.raises(CliConfigError, match="no name, seed given"):
        merge({"realm": "r"}, {}, {}, None).credentials()


def test_cli_variables_do_not_break_the_daemons_settings(tmp_path: Path):
    env = {"UCLOUD_API_URL": "http://x:1", "UCLOUD_REALM": "r", "UCLOUD_NAME": "n", "UCLOUD_SEED": "s",
           "UCLOUD_CLI_CONFIG": "/nowhere", "UCLOUD_API_WORKERS": "3"}
    assert load_settings(env=env, env_file=tmp_path / "none.env").api_workers == 3


def test_config_show_and_save_through_the_cli(tmp_path: Path, home: Path, base_env: dict[str, str]):
    config = tmp_path / "creds.json"
    config.write_text(json.dumps({"api_url": "http://127.0.0.1:9", "realm": "r1", "name": "n1", "seed": "abcdefgh"}))
    runner = CliRunner()
    result = runner.invoke(main, ["--config", str(config), "--name", "n2", "config", "show", "--json"],
                           env={**base_env, "UCLOUD_REALM": "r3"})
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["values"]["realm"] == "r3" and shown["values"]["name"] == "n2"
    assert shown["values"]["api_url"] == "http://127.0.0.1:9"
    assert "abcdefgh" not in result.stdout  # the seed is masked

    result = runner.invoke(main, ["--config", str(config), "config", "save"], env=base_env)
    assert result.exit_code == 0, result.output
    saved = home / ".ucloud"
    assert json.loads(saved.read_text())["seed"] == "abcdefgh"
    assert saved.stat().st_mode & 0o077 == 0  # it holds a secret

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    line = one_error_line(runner.invoke(main, ["--config", str(bad), "vm", "list"], env=base_env))
    assert "not valid JSON" in line and str(bad) in line


# -- VMs -----------------------------------------------------------------------------------------------


def test_vm_create_list_status_delete(cli, store: Store):
    result = cli("vm", "create", "--cpu", "2", "--ram", "256MiB", "--hdd", "1GB", "--name", "web-1")
    assert result.exit_code == 0, result.output
    vm_id = result.stdout.strip()
    record = store.get(vm_key(vm_id))
    assert record is not None
    vm = VM.from_json(vm_id, record.value)
    assert (vm.specs.cpu, vm.specs.ram, vm.specs.hdd, vm.name) == (2, 256 * 2**20, 10**9, "web-1")
    assert vm.owner == "acme/alice"

    listed = cli("vm", "list", "--json")
    assert listed.exit_code == 0
    assert [v["id"] for v in json.loads(listed.stdout)] == [vm_id]
    table = cli("vm", "list")
    assert table.exit_code == 0 and vm_id in table.stdout and "web-1" in table.stdout
    assert "REQUESTED_NEW" in table.stdout and "256MiB" in table.stdout

    status = cli("vm", "status", vm_id, "--json")
    assert status.exit_code == 0
    data = json.loads(status.stdout)
    assert data["status"] == "REQUESTED_NEW" and data["specs"]["cpu"] == 2
    shown = cli("vm", "status", vm_id)
    assert vm_id in shown.stdout and "2 vCPU" in shown.stdout

    deleted = cli("vm", "delete", vm_id)
    assert deleted.exit_code == 0 and deleted.stdout.strip() == f"{vm_id} DELETED"  # never placed: gone at once
    assert store.get(vm_key(vm_id)) is None
    assert json.loads(cli("vm", "list", "--json").stdout) == []

    other = cli("vm", "create", "--image", "debian-12", "--ssd", "2GiB", "--json")
    assert other.exit_code == 0
    other_id = json.loads(other.stdout)["id"]
    vm = VM.from_json(other_id, store.get(vm_key(other_id)).value)
    assert (vm.image, vm.specs.ssd, vm.specs.cpu) == ("debian-12", 2 * 2**30, 1)


def test_vm_actions_set_the_requested_status(cli, store: Store):
    vm_id = cli("vm", "create", "--ram", "128MiB").stdout.strip()
    set_status(store, vm_id, VMStatus.RUNNING, hostname="/v1/host/node1")
    result = cli("vm", "stop", vm_id)
    assert result.exit_code == 0 and result.stdout.strip() == f"{vm_id} REQUESTED_STOP"
    result = cli("vm", "delete", vm_id)
    assert result.exit_code == 0 and result.stdout.strip() == f"{vm_id} REQUESTED_DELETE"
    assert VM.from_json(vm_id, store.get(vm_key(vm_id)).value).status is VMStatus.REQUESTED_DELETE


def act_like_the_daemons(store: Store, *steps: tuple[VMStatus, dict[str, Any]]) -> threading.Thread:
    """A thread that waits for the first VM to appear, then moves it through ``steps`` (1 s apart),
    as the scheduler and a vm daemon would."""

    def run() -> None:
        deadline = time.monotonic() + 30
        while not (vms := store.list("/v1/vm/")[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        vm_id = vms[0].key.rsplit("/", 1)[-1]
        for status, changes in steps:
            time.sleep(1.0)
            set_status(store, vm_id, status, **changes)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_create_wait_follows_the_states_until_running(cli, store: Store):
    mover = act_like_the_daemons(store, (VMStatus.SCHEDULED_DEPLOY, {"hostname": "/v1/host/node7"}),
                                 (VMStatus.RUNNING, {}))
    try:
        result = cli("vm", "create", "--wait", "--timeout", "60")
    finally:
        mover.join()
    assert result.exit_code == 0, result.output
    vm_id = result.stdout.strip()
    assert VM.from_json(vm_id, store.get(vm_key(vm_id)).value).status is VMStatus.RUNNING
    progress = result.stderr
    assert f"created VM {vm_id}" in progress
    order = [progress.index(s) for s in ("REQUESTED_NEW", "SCHEDULED_DEPLOY on node7", "RUNNING on node7")]
    assert order == sorted(order), progress


def test_create_wait_reports_the_failure_reason(cli, store: Store):
    mover = act_like_the_daemons(store, (VMStatus.ERROR, {"hostname": "/v1/host/node7",
                                                          "reason": "qemu: could not open disk"}))
    try:
        result = cli("vm", "create", "--wait", "--timeout", "60")
    finally:
        mover.join()
    vm_id = store.list("/v1/vm/")[0][0].key.rsplit("/", 1)[-1]
    line = one_error_line_with_progress(result)
    assert line == f"ucloud: VM {vm_id} is ERROR: qemu: could not open disk"


def test_stop_wait_until_stopped(cli, store: Store):
    vm_id = cli("vm", "create").stdout.strip()
    set_status(store, vm_id, VMStatus.RUNNING, hostname="/v1/host/node1")

    def daemon() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            entry = store.get(vm_key(vm_id))
            if VM.from_json(vm_id, entry.value).status is VMStatus.REQUESTED_STOP:
                time.sleep(0.5)
                set_status(store, vm_id, VMStatus.STOPPED)
                return
            time.sleep(0.1)

    stopper = threading.Thread(target=daemon)
    stopper.start()
    try:
        result = cli("vm", "stop", vm_id, "--wait", "--timeout", "60")
    finally:
        stopper.join()
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{vm_id} STOPPED" and "REQUESTED_STOP" in result.stderr


def test_wait_times_out_with_the_last_status(cli):
    result = cli("vm", "create", "--wait", "--timeout", "1")
    line = one_error_line_with_progress(result)
    assert "timed out after 1 s" in line and "REQUESTED_NEW" in line


def one_error_line_with_progress(result: Result) -> str:
    """Like one_error_line, but --wait may have printed progress lines to stderr first."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output and result.stdout == ""
    return result.stderr.strip().splitlines()[-1]


def test_delete_wait_until_gone(cli, store: Store):
    vm_id = cli("vm", "create").stdout.strip()
    set_status(store, vm_id, VMStatus.RUNNING, hostname="/v1/host/node1")

    def daemon() -> None:  # the vm daemon removes the record once the disks are gone
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            entry = store.get(vm_key(vm_id))
            if entry and VM.from_json(vm_id, entry.value).status is VMStatus.REQUESTED_DELETE:
                time.sleep(0.5)
                store.delete(entry.key, entry.mod_revision)
                return
            time.sleep(0.1)

    remover = threading.Thread(target=daemon)
    remover.start()
    try:
        result = cli("vm", "delete", vm_id, "--wait", "--timeout", "60")
    finally:
        remover.join()
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{vm_id} deleted"


@pytest.mark.parametrize("status,expected", [
    ("REQUESTED_NEW", Outcome.WAITING), ("SCHEDULED_DEPLOY", Outcome.WAITING), ("KILLED", Outcome.WAITING),
    ("RUNNING", Outcome.DONE), ("ERROR", Outcome.FAILED), ("HOST_LOST", Outcome.FAILED), (None, Outcome.FAILED)])
def test_wait_outcome_for_create(status, expected):
    assert outcome(GOALS["create"], status) is expected


def test_wait_outcome_for_stop_and_delete():
    assert outcome(GOALS["stop"], "STOPPED") is Outcome.DONE
    assert outcome(GOALS["stop"], "REQUESTED_STOP") is Outcome.WAITING
    assert outcome(GOALS["delete"], None) is Outcome.DONE
    assert outcome(GOALS["delete"], "REQUESTED_DELETE") is Outcome.WAITING
    assert outcome(GOALS["delete"], "ERROR") is Outcome.FAILED


def test_wait_retries_an_api_that_cannot_answer_for_a_moment(capsys):
    """Unit test of the wait loop (a scripted status function stands in for the API)."""
    answers: list[Any] = [Unreachable("cannot reach the API at http://x (connection refused)"),
                          ApiFailure(503, "etcd is unavailable", "unavailable"),
                          {"id": "v", "status": "RUNNING", "hostname": "/v1/host/h", "reason": ""}]

    def status_of(vm_id: str) -> dict[str, Any]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_for(status_of, "v", GOALS["create"], timeout=30, interval=0.01)["status"] == "RUNNING"
    err = capsys.readouterr().err
    assert "(connection refused); retrying" in err and "etcd is unavailable" in err and "RUNNING on h" in err

    answers[:] = [ApiFailure(401, "unknown user or wrong seed", "unauthorized")]  # not transient: fails at once
    with pytest.raises(ApiFailure):
        wait_for(status_of, "v", GOALS["create"], timeout=30, interval=0.01)


# -- errors ----------------------------------------------------------------------------------------


def test_wrong_seed_is_one_line_401(cli):
    line = one_error_line(cli("vm", "list", UCLOUD_SEED="wrong"))
    assert line == "ucloud: unknown user or wrong seed (HTTP 401 unauthorized)"


def test_unknown_vm_is_one_line_404(cli, store: Store):
    line = one_error_line(cli("vm", "status", "no-such-vm"))
    assert "no VM 'no-such-vm'" in line and "HTTP 404" in line
    # another user's VM looks exactly like a missing one
    _, seed = accounts.create_user(store, "acme", "bob")
    vm_id = cli("vm", "create", UCLOUD_NAME="bob", UCLOUD_SEED=seed).stdout.strip()
    line = one_error_line(cli("vm", "delete", vm_id))
    assert f"no VM '{vm_id}'" in line and "HTTP 404" in line


def test_validation_errors(cli, store: Store):
    line = one_error_line(cli("vm", "create", "--ram", "1MiB"))  # parses, but the API refuses it
    assert line == "ucloud: specs.ram: must be at least 16MiB (HTTP 400 invalid)"
    line = one_error_line(cli("vm", "create", "--hdd", "0", "--ssd", "0"))
    assert "HTTP 400" in line and "disk" in line
    assert store.list("/v1/vm/")[0] == []  # nothing was written

    result = cli("vm", "create", "--ram", "5XB")  # refused before any request: a usage error
    assert result.exit_code == 2 and "unknown size unit" in result.stderr and "Traceback" not in result.output


def test_connection_refused(base_env: dict[str, str]):
    port = free_port()
    result = CliRunner().invoke(main, ["--api", f"http://127.0.0.1:{port}", "--realm", "r", "--name", "n",
                                       "--seed", "s", "vm", "list"], env=base_env)
    assert one_error_line(result) == f"ucloud: cannot reach the API at http://127.0.0.1:{port} (connection refused)"


def test_missing_credentials(api_url: str, base_env: dict[str, str]):
    result = CliRunner().invoke(main, ["--api", api_url, "vm", "list"], env=base_env)
    assert "no realm, name, seed given" in one_error_line(result)


def test_errors_from_the_installed_script(api_url: str, base_env: dict[str, str], user: dict[str, str]):
    """The real console script: one line on stderr and exit 1, no traceback."""
    env = {**os.environ, **base_env, "UCLOUD_API_URL": api_url, "UCLOUD_REALM": user["realm"],
           "UCLOUD_NAME": user["name"], "UCLOUD_SEED": "wrong"}
    done = subprocess.run([str(CLI_EXE), "vm", "status", "x"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == "ucloud: unknown user or wrong seed (HTTP 401 unauthorized)\n"


# -- hosts -----------------------------------------------------------------------------------------


def test_host_list_is_for_administrators(cli, store: Store):
    host = Host("node1", Specs(cpu=8, ram=16 * 2**30, hdd=500 * 10**9, ssd=0), status=HostStatus.UP,
                address="10.0.0.1")
    store.create(host.key, host.to_json())
    line = one_error_line(cli("host", "list"))
    assert "HTTP 403" in line and "administrators" in line

    _, seed = accounts.create_user(store, "ops", "root", admin=True)
    result = cli("host", "list", "--json", UCLOUD_REALM="ops", UCLOUD_NAME="root", UCLOUD_SEED=seed)
    assert result.exit_code == 0, result.output
    hosts = json.loads(result.stdout)
    assert [(h["name"], h["capacity"]["cpu"], h["alive"]) for h in hosts] == [("node1", 8, False)]
    table = cli("host", "list", UCLOUD_REALM="ops", UCLOUD_NAME="root", UCLOUD_SEED=seed)
    assert table.exit_code == 0 and "node1" in table.stdout and "10.0.0.1" in table.stdout
    assert "16GiB/16GiB" in table.stdout  # sizes shortened for people, not 16777216KiB


# -- the command tree --------------------------------------------------------------------------


def test_every_group_is_registered_and_loaded_only_when_used(base_env: dict[str, str]):
    result = CliRunner().invoke(main, ["--help"], env=base_env)
    assert result.exit_code == 0
    for group in ("admin", "config", "host", "image", "network", "vm"):
        assert f"  {group} " in result.stdout
    assert CliRunner().invoke(main, ["admin", "user", "create", "--help"]).exit_code == 0
    # `ucloud vm ...` does not pay for gRPC (admin talks to etcd) or the Ceph bindings (image)
    code = ("import sys; from ucloud_common.cli import main; main(['vm', '--help'], standalone_mode=False); "
            "print(sorted(m for m in ('grpc', 'rados', 'rbd', 'pyetcd') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
