"""The `ucloud` command line."""

import click

from .cli_admin import admin


@click.group()
def main() -> None:
    """ucloud: a small VM cloud."""


main.add_command(admin)
