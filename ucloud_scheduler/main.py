"""Entry point of `ucloud-scheduler`."""

from ucloud_common.daemon import connect_or_exit, load_or_exit


def main() -> None:
    settings = load_or_exit("ucloud-scheduler")
    connect_or_exit("ucloud-scheduler", settings)
    raise SystemExit("ucloud-scheduler: not implemented yet")
