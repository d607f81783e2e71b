"""``ucloud config show|save``: see which URL and credentials the CLI would use and where each
came from (flag, environment, file, default), and keep them in ``~/.ucloud``."""

from __future__ import annotations

from pathlib import Path

import click

from .cli_config import KEYS, USER_FILE, save
from .cli_context import cli_context
from .cli_output import console, print_json


@click.group("config")
def config_group() -> None:
    """The CLI's own configuration (~/.ucloud)."""


def _masked(seed: str) -> str:
    return f"{seed[:4]}… ({len(seed)} characters)" if seed else ""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="as JSON (the seed masked)")
def show(as_json: bool) -> None:
    """The values in effect and their sources (the seed masked)."""
    cfg = cli_context().config()
    values = {k: getattr(cfg, k) for k in KEYS}
    values["seed"] = _masked(values["seed"])
    if as_json:
        print_json({"values": values, "sources": dict(cfg.sources), "file": str(cfg.file) if cfg.file else None})
        return
    out = console()
    for key in KEYS:
        out.print(f"{key:8} {values[key] or '-':40} [dim]{cfg.sources.get(key, 'not set')}[/]", markup=True)


@config_group.command("save")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), required=False)
def save_command(path: Path | None) -> None:
    """Write the values in effect to PATH (default ~/.ucloud), readable only by you.

    e.g. ``ucloud --config var/devcloud/credentials.json config save`` after ``make up``."""
    cfg = cli_context().config()
    cfg.credentials()  # refuse to save a config that cannot be used
    target = path or Path.home() / USER_FILE
    save(target, cfg.as_file())
    click.echo(f"saved to {target}")
