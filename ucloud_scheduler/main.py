"""Entry point of `ucloud-scheduler` (also `python -m ucloud_scheduler`).

Loads the settings, checks the placement policy, reaches etcd — or stops with one line
saying why — then runs the scheduler until SIGTERM/SIGINT. Any number may run at once.
"""

from __future__ import annotations

from ucloud_common.daemon import connect_or_exit, fail, load_or_exit, stop_event

from .fencing import open_fencer
from .metrics import MetricsError
from .placement import Overcommit, Policy, PolicyError, check_batch
from .scheduler import Scheduler

NAME = "ucloud-scheduler"


def main() -> None:
    settings = load_or_exit(NAME)
    try:  # a bad policy is reported even when etcd is down
        Policy.from_settings(settings)
        check_batch(settings.scheduler_batch)
        Overcommit.from_settings(settings)
    except PolicyError as exc:
        raise fail(NAME, str(exc)) from None
    store = connect_or_exit(NAME, settings)
    scheduler = Scheduler(store, settings, open_fencer(settings))
    try:
        scheduler.run(stop_event())  # serves /metrics first: a bad bind stops it before anything runs
    except MetricsError as exc:
        raise fail(NAME, str(exc)) from None
    finally:
        store.close()


if __name__ == "__main__":
    main()
