"""``ucloud network ...``: a user's private networks (VXLAN segments) and the VMs on them.

A network is named by its label (or its id) wherever the API takes ``network``; a VM
gets a NIC on a network with ``attach`` (hot-plugged when it runs, present at next
start otherwise) and loses it with ``detach``. ``delete`` fails (409) while VMs are
attached.
"""

from __future__ import annotations

import click

from .cli_context import cli_context
from .cli_output import console, network_table, print_json

json_option = click.option("--json", "as_json", is_flag=True, help="print the API's JSON")


@click.group()
def network() -> None:
    """Private networks."""


@network.command("create")
@click.argument("label")
@click.option("--ipv6-prefix", help="an IPv6 prefix for the network, e.g. fd00:1::/64")
@click.option("--ipv4-subnet", help="an IPv4 subnet for the network, e.g. 10.0.0.0/24")
@json_option
def create(label: str, ipv6_prefix: str | None, ipv4_subnet: str | None, as_json: bool) -> None:
    """Create a network called LABEL; prints its id and VXLAN id."""
    options = {k: v for k, v in (("ipv6_prefix", ipv6_prefix), ("ipv4_subnet", ipv4_subnet)) if v}
    answer = cli_context().client().network_create(label, **options)
    if as_json:
        print_json(answer)
    else:
        click.echo(f"network {answer.get('name', label)} created: id {answer.get('id')}, vni {answer.get('vni')}")


@network.command("list")
@json_option
def list_networks(as_json: bool) -> None:
    """Your networks and the VMs on them."""
    networks = cli_context().client().network_list()["networks"]
    if as_json:
        print_json(networks)
    elif not networks:
        click.echo("no networks (create one: ucloud network create LABEL)")
    else:
        console().print(network_table(networks))


@network.command("attach")
@click.argument("vm_id")
@click.argument("network_name", metavar="NETWORK")
@json_option
def attach(vm_id: str, network_name: str, as_json: bool) -> None:
    """Give VM_ID a NIC on NETWORK (label or id)."""
    answer = cli_context().client().network_attach(vm_id, network_name)
    if as_json:
        print_json(answer)
    else:
        click.echo(f"{vm_id} attached to {network_name} (MAC {answer.get('mac')}, VM {answer.get('status')})")


@network.command("detach")
@click.argument("vm_id")
@click.argument("network_name", metavar="NETWORK")
@json_option
def detach(vm_id: str, network_name: str, as_json: bool) -> None:
    """Remove VM_ID's NIC on NETWORK (label or id)."""
    answer = cli_context().client().network_detach(vm_id, network_name)
    if as_json:
        print_json(answer)
    else:
        click.echo(f"{vm_id} detached from {network_name}")


@network.command("delete")
@click.argument("network_name", metavar="NETWORK")
def delete(network_name: str) -> None:
    """Delete NETWORK (label or id); refused while a VM is attached."""
    cli_context().client().network_delete(network_name)
    click.echo(f"network {network_name} deleted")
