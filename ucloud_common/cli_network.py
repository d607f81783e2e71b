"""``ucloud network ...``: a user's private networks (VXLAN) and the VMs attached to them.

Networks are named by the user's label (``network`` in the API's bodies); a VM gets a
NIC on a network with ``attach`` (hot-plugged when it runs) and loses it with
``detach``. ``delete`` fails (409) while VMs are attached.
"""

from __future__ import annotations

import click

from .cli_context import cli_context
from .cli_output import console, print_json, records_table


@click.group()
def network() -> None:
    """Private networks."""


@network.command("create")
@click.argument("label")
def create(label: str) -> None:
    """Create a network called LABEL."""
    cli_context().client().network_create(label)
    click.echo(f"network {label} created")


@network.command("list")
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON")
def list_networks(as_json: bool) -> None:
    """Your networks."""
    answer = cli_context().client().network_list()
    networks = answer.get("networks", answer) if isinstance(answer, dict) else answer
    if as_json:
        print_json(networks)
    elif not networks:
        click.echo("no networks (create one: ucloud network create LABEL)")
    else:
        console().print(records_table(networks))


@network.command("attach")
@click.argument("vm_id")
@click.argument("label")
def attach(vm_id: str, label: str) -> None:
    """Give VM_ID a NIC on network LABEL."""
    cli_context().client().network_attach(vm_id, label)
    click.echo(f"{vm_id} attached to {label}")


@network.command("detach")
@click.argument("vm_id")
@click.argument("label")
def detach(vm_id: str, label: str) -> None:
    """Remove VM_ID's NIC on network LABEL."""
    cli_context().client().network_detach(vm_id, label)
    click.echo(f"{vm_id} detached from {label}")


@network.command("delete")
@click.argument("label")
def delete(label: str) -> None:
    """Delete network LABEL (no VM may be attached)."""
    cli_context().client().network_delete(label)
    click.echo(f"network {label} deleted")
