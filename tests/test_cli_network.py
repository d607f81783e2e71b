"""`ucloud network ...` against the real API (issue 7's endpoints) and etcd."""

from __future__ import annotations

import json

from cli_harness import api_url, base_env, cli, home, one_error_line, user  # noqa: F401 (fixtures)

from ucloud_common.store import Store


def test_network_create_list_attach_detach_delete(cli, store: Store):
    created = cli("network", "create", "backend", "--ipv6-prefix", "fd00:1::/64", "--json")
    assert created.exit_code == 0, created.output
    net = json.loads(created.stdout)
    assert net["name"] == "backend" and net["vni"] > 0
    result = cli("network", "create", "frontend")
    assert result.exit_code == 0 and result.stdout.startswith("network frontend created: id ")

    listed = json.loads(cli("network", "list", "--json").stdout)
    assert sorted(n["name"] for n in listed) == ["backend", "frontend"]
    assert next(n for n in listed if n["name"] == "backend")["ipv6_prefix"] == "fd00:1::/64"

    vm_id = cli("vm", "create").stdout.strip()
    attached = cli("network", "attach", vm_id, "backend", "--json")
    assert attached.exit_code == 0, attached.output
    assert json.loads(attached.stdout)["network"] == net["id"]
    table = cli("network", "list")
    assert table.exit_code == 0 and vm_id in table.stdout and "fd00:1::/64" in table.stdout

    line = one_error_line(cli("network", "delete", "backend"))  # a VM is attached
    assert "HTTP 409" in line

    detached = cli("network", "detach", vm_id, "backend")
    assert detached.exit_code == 0 and detached.stdout.strip() == f"{vm_id} detached from backend"
    deleted = cli("network", "delete", "backend")
    assert deleted.exit_code == 0 and deleted.stdout.strip() == "network backend deleted"
    assert [n["name"] for n in json.loads(cli("network", "list", "--json").stdout)] == ["frontend"]


def test_network_errors_are_one_line(cli):
    line = one_error_line(cli("network", "attach", "no-such-vm", "nonet"))
    assert "HTTP 404" in line
    line = one_error_line(cli("network", "create", "bad label!"))
    assert "HTTP 400" in line and "network" in line
