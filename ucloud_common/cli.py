"""The `ucloud` command line: VMs, networks and hosts through the API, and operator commands.

Global flags (``--api``, ``--realm``, ``--name``, ``--seed``, ``--config``) go before the
command (``ucloud --config creds.json vm list``); how they combine with the environment
and ``~/.ucloud`` is in :mod:`.cli_config`. Every expected failure prints one line,
``ucloud: ...``, on stderr and exits 1 (:class:`.cli_context.UcloudGroup`).
"""

import click

from .cli_admin import admin
from .cli_config_commands import config_group
from .cli_context import CliContext, UcloudGroup
from .cli_host import host
from .cli_image import image
from .cli_network import network
from .cli_vm import vm


@click.group(cls=UcloudGroup)
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


main.add_command(admin)
main.add_command(image)
main.add_command(vm)
main.add_command(network)
main.add_command(host)
main.add_command(config_group)
