"""Entry point of `ucloud-api`."""

from ucloud_common.daemon import connect_or_exit, load_or_exit


def main() -> None:
    settings = load_or_exit("ucloud-api")
    connect_or_exit("ucloud-api", settings)
    raise SystemExit("ucloud-api: not implemented yet")
