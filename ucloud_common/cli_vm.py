"""``ucloud vm ...``: create, list, inspect, start/stop/reboot and delete VMs through the API.

Commands that change a VM print its id (stdout, so ``VM=$(ucloud vm create ...)``
works) and return at once; with ``--wait`` they follow the VM (progress on stderr,
see :mod:`.cli_wait`) and fail with the VM's reason if it fails.
"""

from __future__ import annotations

import uuid
from typing import Any

import click

from .cli_console import console_command
from .cli_context import cli_context
from .cli_output import console, events_table, print_json, vm_details, vm_table
from .cli_wait import GOALS, wait_for
from .units import SizeError, parse_size


class SizeType(click.ParamType):
    """A size as the API takes it (``256MiB``, ``1GB``, ``2`` = 2 GB), checked before sending."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            parse_size(str(value))
        except SizeError as exc:
            self.fail(str(exc), param, ctx)
        return str(value).strip()


SIZE = SizeType()

wait_option = click.option("--wait", is_flag=True, help="follow the VM until it gets there (or fails)")
timeout_option = click.option("--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
                              help="seconds --wait waits")
json_option = click.option("--json", "as_json", is_flag=True, help="print the API's JSON")


@click.group()
def vm() -> None:
    """Virtual machines."""


@vm.command("create")
@click.option("--cpu", type=click.IntRange(min=1), default=1, show_default=True, help="vCPUs")
@click.option("--ram", type=SIZE, default="256MiB", show_default=True, help="memory (e.g. 256MiB, 2GB)")
@click.option("--hdd", type=SIZE, default="1GB", show_default=True, help="HDD-class disk")
@click.option("--ssd", type=SIZE, default="0", show_default=True, help="SSD-class disk (0 = none)")
@click.option("--image", help="image to boot (default: the cloud's default image)")
@click.option("--name", "label", help="a label for the VM (not the user name: that is `ucloud --name`)")
@wait_option
@timeout_option
@json_option
def create(cpu: int, ram: str, hdd: str, ssd: str, image: str | None, label: str | None, wait: bool,
           timeout: float, as_json: bool) -> None:
    """Create a VM and print its id."""
    client = cli_context().client()
    specs = {"cpu": cpu, "ram": ram, "hdd": hdd, "ssd": ssd}
    # One key per invocation: a retry of this request (by requests or a proxy) makes no second VM.
    vm_id = client.vm_create(specs, image=image, vm_name=label, idempotency_key=str(uuid.uuid4()))
    record: Any = {"id": vm_id}
    if wait:
        console(stderr=True).print(f"created VM {vm_id}")
        record = wait_for(client.vm_status, vm_id, GOALS["create"], timeout)
    if as_json:
        print_json(record)  # with --wait: the VM as it is once RUNNING
    else:
        click.echo(vm_id)


@vm.command("list")
@json_option
def list_vms(as_json: bool) -> None:
    """Your VMs."""
    vms = cli_context().client().vm_list()
    if as_json:
        print_json(vms)
    elif not vms:
        click.echo("no VMs (create one: ucloud vm create --cpu 1 --ram 256MiB --hdd 1GB --wait)")
    else:
        console().print(vm_table(vms))


@vm.command("status")
@click.argument("vm_id")
@json_option
def status(vm_id: str, as_json: bool) -> None:
    """One VM: status, host, specs, the reason of the last failure and recent events."""
    record = cli_context().client().vm_status(vm_id)
    if as_json:
        print_json(record)
        return
    out = console()
    out.print(vm_details(record))
    if record.get("events"):
        out.print()
        out.print(events_table(record["events"]))


def _action(verb: str, vm_id: str, wait: bool, timeout: float) -> None:
    client = cli_context().client()
    answer = client.vm_delete(vm_id) if verb == "delete" else client.vm_action(vm_id, verb)
    if not wait:
        click.echo(f"{vm_id} {answer.get('status', '')}".rstrip())
        return
    if verb == "delete" and answer.get("status") == "DELETED":  # never placed: removed at once
        click.echo(f"{vm_id} deleted")
        return
    wait_for(client.vm_status, vm_id, GOALS[verb], timeout)
    click.echo(f"{vm_id} {'deleted' if verb == 'delete' else GOALS[verb].status}")


def _action_command(verb: str, doc: str) -> click.Command:
    @wait_option
    @timeout_option
    @click.argument("vm_id")
    def command(vm_id: str, wait: bool, timeout: float) -> None:
        _action(verb, vm_id, wait, timeout)

    command.__doc__ = doc
    return click.command(verb)(command)


for _verb, _doc in (("start", "Start a stopped VM (on its host)."), ("stop", "Stop a VM (ACPI power-off, then hard)."),
                    ("reboot", "Reset a running VM."), ("delete", "Delete a VM and its disks.")):
    vm.add_command(_action_command(_verb, _doc))

vm.add_command(console_command)
