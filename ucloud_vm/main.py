"""Entry point of `ucloud-vm` (also `python -m ucloud_vm`): the per-host VM daemon.

Loads the settings, reaches etcd — or stops with one line saying why — then runs the
daemon (:mod:`ucloud_vm.daemon`) until SIGTERM/SIGINT, leaving its VMs running.
"""

from __future__ import annotations

import argparse

from ucloud_common.daemon import connect_or_exit, load_or_exit, stop_event

from .daemon import VmDaemon
from .host import host_name

NAME = "ucloud-vm"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=NAME, description="the ucloud per-host VM daemon")
    parser.add_argument("--hostname", help="this host's name in /v1/host/ (default: host_name, "
                                           "else the machine's hostname)")
    args = parser.parse_args(argv)
    settings = load_or_exit(NAME)
    store = connect_or_exit(NAME, settings)
    daemon = VmDaemon(store, settings, host_name(settings, args.hostname))
    try:
        daemon.run(stop_event())
    finally:
        store.close()


if __name__ == "__main__":
    main()
