"""``ucloud admin ...``: operator commands that talk to etcd directly (no API, no credentials).

``ucloud admin user create --realm R --name N [--admin]`` prints ``{"realm", "name", "seed"}``
once; only a salted hash of the seed is stored (``ucloud_common.accounts``).
"""

from __future__ import annotations

import json
import sys

import click

from . import accounts
from .daemon import connect_or_exit, load_or_exit


@click.group()
def admin() -> None:
    """Operator commands (talk to etcd directly, with the settings of config/.env/environment)."""


@admin.group()
def user() -> None:
    """User accounts."""


@user.command("create")
@click.option("--realm", required=True, help="the user's realm ([a-z0-9][a-z0-9_.-]{0,63})")
@click.option("--name", required=True, help="the user's name (same rule as the realm)")
@click.option("--admin", "is_admin", is_flag=True, help="may use the admin endpoints (e.g. /host/list)")
def create_user(realm: str, name: str, is_admin: bool) -> None:
    """Create a user and print its seed once, as JSON."""
    for field_name, value in (("realm", realm), ("name", name)):
        if not accounts.valid_name(value):
            raise click.BadParameter(f"must match {accounts.NAME_PATTERN}", param_hint=f"--{field_name}")
    settings = load_or_exit("ucloud")
    store = connect_or_exit("ucloud", settings)
    try:
        _, seed = accounts.create_user(store, realm, name, admin=is_admin)
    except accounts.UserExists as exc:
        click.echo(f"ucloud: {exc.message}", err=True)
        sys.exit(1)
    finally:
        store.close()
    click.echo(json.dumps({"realm": realm, "name": name, "seed": seed}))
