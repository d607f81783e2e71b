"""How the ``ucloud`` CLI prints: rich tables for people, ``--json`` for scripts, one line
on stderr for errors.

A VM id is 36 characters and made to be copied, so tables never shorten a cell:
when stdout is not a terminal (a pipe, a test) the console is wide instead of 80
columns. The table builders are pure (data in, ``rich.table.Table`` out).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Iterable, Mapping

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

PIPE_WIDTH = 200

STATUS_STYLES = {
    "RUNNING": "green", "STOPPED": "yellow", "ERROR": "bold red", "HOST_LOST": "bold red", "KILLED": "red",
}


def console(stderr: bool = False) -> Console:
    """A console on click's current stdout/stderr (so CliRunner captures it)."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else PIPE_WIDTH
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def styled_status(status: str) -> str:
    style = STATUS_STYLES.get(status, "cyan" if status.startswith(("REQUESTED", "SCHEDULED")) else "")
    return f"[{style}]{status}[/]" if style else status


def host_of(hostname: str) -> str:
    """``/v1/host/node1`` -> ``node1``; ``""`` -> ``-``."""
    return hostname.rsplit("/", 1)[-1] if hostname else "-"


def age(created: float, now: float | None = None) -> str:
    seconds = max(0, int((time.time() if now is None else now) - created))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def size(value: Any) -> str:
    """The API's sizes are bare GB numbers or strings with a unit: show a unit always."""
    return f"{value}GB" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def vm_table(vms: Iterable[Mapping[str, Any]], now: float | None = None) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "NAME", "STATUS", "HOST", "CPU", "RAM", "HDD", "SSD", "IMAGE", "AGE"):
        table.add_column(column, no_wrap=True, overflow="ignore")
    for vm in vms:
        specs = vm.get("specs", {})
        table.add_row(vm["id"], escape(vm.get("vm_name") or "-"), styled_status(vm["status"]), host_of(vm.get("hostname", "")),
                      str(specs.get("cpu", "")), size(specs.get("ram", "")), size(specs.get("hdd", "")),
                      size(specs.get("ssd", "")), escape(vm.get("image", "")), age(vm.get("created", 0), now))
    return table


def vm_details(vm: Mapping[str, Any]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    specs = vm.get("specs", {})
    rows = [
        ("id", vm["id"]), ("name", escape(vm.get("vm_name") or "-")), ("status", styled_status(vm["status"])),
        ("host", host_of(vm.get("hostname", ""))), ("owner", vm.get("owner", "")), ("image", escape(vm.get("image", ""))),
        ("specs", f"{specs.get('cpu')} vCPU, {size(specs.get('ram'))} RAM, {size(specs.get('hdd'))} HDD, "
                  f"{size(specs.get('ssd'))} SSD"),
        ("created", clock(vm.get("created", 0))),
    ]
    if vm.get("reason"):
        rows.append(("reason", f"[red]{escape(vm['reason'])}[/]"))
    for key, value in rows:
        table.add_row(key, value)
    return table


def events_table(events: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("TIME", no_wrap=True)
    table.add_column("EVENT", overflow="fold")
    for event in events:
        table.add_row(clock(event.get("time", 0)), escape(str(event.get("message", ""))))
    return table


def approx(value: Any) -> str:
    """A size from the API (bytes as a bare GB number or a unit string) shortened for a table:
    a host's ``24684096KiB`` reads better as ``23.5GiB``."""
    from .units import SizeError, human_size, parse_size

    try:
        return human_size(parse_size(value))
    except (SizeError, TypeError, ValueError):
        return size(value)


def host_table(hosts: Iterable[Mapping[str, Any]]) -> Table:
    """Free is what can still be promised: capacity × overcommit − promised, so with a CPU
    overcommit it can exceed the capacity; the column header says so."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NAME", "STATUS", "ALIVE", "ADDRESS", "VMS", "CPU free*/cap", "RAM free*/cap",
                   "HDD free*/cap", "SSD free*/cap"):
        table.add_column(column, no_wrap=True, overflow="ignore")
    for host in hosts:
        cap, free = host.get("capacity", {}), host.get("free", {})
        alive = "[green]yes[/]" if host.get("alive") else "[red]no[/]"
        table.add_row(escape(host["name"]), host.get("status", ""), alive, escape(host.get("address", "")), str(host.get("vms", 0)),
                      f"{free.get('cpu')}/{cap.get('cpu')}",
                      *(f"{approx(free.get(r))}/{approx(cap.get(r))}" for r in ("ram", "hdd", "ssd")))
    table.caption = "* free = capacity × overcommit − promised"
    return table


def network_table(networks: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NAME", "ID", "VNI", "IPV6 PREFIX", "IPV4 SUBNET", "VMS"):
        table.add_column(column, no_wrap=True, overflow="ignore")
    for net in networks:
        table.add_row(escape(str(net.get("name", ""))), str(net.get("id", "")), str(net.get("vni", "")),
                      escape(str(net.get("ipv6_prefix") or "-")), escape(str(net.get("ipv4_subnet") or "-")),
                      " ".join(net.get("vms", [])) or "-")
    return table
