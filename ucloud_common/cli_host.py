"""``ucloud host list``: the compute hosts, their capacity and what is free (administrators only;
the API answers 403 to anyone else)."""

from __future__ import annotations

import click

from .cli_context import cli_context
from .cli_output import console, host_table, print_json


@click.group()
def host() -> None:
    """Compute hosts (administrators)."""


@host.command("list")
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON")
def list_hosts(as_json: bool) -> None:
    """Every host: status, whether it is alive, VMs, free/capacity (after overcommit)."""
    hosts = cli_context().client().host_list()
    if as_json:
        print_json(hosts)
    elif not hosts:
        click.echo("no hosts registered (start ucloud-vm on a compute host)")
    else:
        console().print(host_table(hosts))
