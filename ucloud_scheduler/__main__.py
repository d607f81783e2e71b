"""`python -m ucloud_scheduler`: the same as the `ucloud-scheduler` command."""

from .main import main

main()
