"""Entry point of `ucloud-vm`."""

from ucloud_common.daemon import connect_or_exit, load_or_exit


def main() -> None:
    settings = load_or_exit("ucloud-vm")
    connect_or_exit("ucloud-vm", settings)
    raise SystemExit("ucloud-vm: not implemented yet")
