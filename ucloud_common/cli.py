"""The `ucloud` command line: VMs, networks and hosts through the API, and operator commands.

Global flags (``--api``, ``--realm``, ``--name``, ``--seed``, ``--config``) go before the
command (``ucloud --config creds.json vm list``); how they combine with the environment
and ``~/.ucloud`` is in :mod:`.cli_config`. Every expected failure prints one line,
``ucloud: ...``, on stderr and exits 1 (:class:`.cli_context.UcloudGroup`).

The command groups are imported when used (:data:`COMMANDS`): ``ucloud vm list`` need not
load gRPC (``admin``) or the Ceph bindings (``image``), which cost a second or more.
"""

from __future__ import annotations

import importlib

import click

from .cli_context import CliContext, UcloudGroup

# name -> "module:attribute" of each command group, imported on first use
COMMANDS = {
    "admin": "ucloud_common.cli_admin:admin",
    "config": "ucloud_common.cli_config_commands:config_group",
    "host": "ucloud_common.cli_host:host",
    "image": "ucloud_common.cli_image:image",
    "network": "ucloud_common.cli_network:network",
    "vm": "ucloud_common.cli_vm:vm",
}


class LazyGroup(UcloudGroup):
    """A group whose subcommands live in :data:`COMMANDS` and are imported on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module, _, attribute = COMMANDS[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup)
@click.option("--api", metavar="URL", help="the API's URL [env UCLOUD_API_URL; default http://127.0.0.1:8080]")
@click.option("--realm", help="your realm [env UCLOUD_REALM]")
@click.option("--name", help="your user name [env UCLOUD_NAME]")
@click.option("--seed", help="your secret [env UCLOUD_SEED]")
@click.option("--config", "config_file", metavar="FILE",
              help="JSON config file [env UCLOUD_CLI_CONFIG; default ~/.ucloud, then the dev cloud's credentials]")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="seconds one API request may take")
@click.pass_context
def main(ctx: click.Context, api: str | None, realm: str | None, name: str | None, seed: str | None,
         config_file: str | None, timeout: float) -> None:
    """ucloud: a small VM cloud."""
    cli = CliContext({"api_url": api, "realm": realm, "name": name, "seed": seed}, config_file, timeout)
    ctx.obj = cli
    ctx.call_on_close(cli.close)
