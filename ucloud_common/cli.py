"""The \`ucloud\` command line."""

import click


@click.group()
def main() -> None:
    """ucloud: a small VM cloud."""
