"""The `ucloud` command line."""

import click

from .cli_admin import admin
from .cli_image import image


@click.group()
def main() -> None:
    """ucloud: a small VM cloud."""


main.add_command(admin)
main.add_command(image)
