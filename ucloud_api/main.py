"""Entry point of `ucloud-api`: the Flask app served by gunicorn, configured in code.

gunicorn's ``BaseApplication`` is used directly, so there is no shell wrapper and no
gunicorn config file: the bind address and the worker count come from the settings
(``api_bind``, ``api_workers``). Workers are ``gthread`` workers with
:data:`THREADS` threads each: a request spends most of its time waiting for etcd
(gRPC releases the GIL), so a few threads per process overlap those waits, and
HTTP keep-alive works (gunicorn's sync worker closes every connection).

The app is created in each worker after the fork (no ``preload_app``), because gRPC
channels do not survive a fork. The master only checks once that etcd answers, so a
wrong ``etcd_endpoints`` stops the daemon at start with one clear line.

Metrics: the master prepares ``PROMETHEUS_MULTIPROC_DIR`` before forking (the one
given in the environment, emptied; else a private temporary directory removed when
the master exits), so ``/metrics`` from any worker sums all workers (see :mod:`.metrics`).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from ucloud_common.config import Settings
from ucloud_common.daemon import connect_or_exit, load_or_exit
from ucloud_common.logs import JsonFormatter

THREADS = 4


class JsonLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's own log (start, workers, errors, access) as one JSON object per line, like
    the rest of ucloud when ``log_json`` is on: gunicorn installs its own handlers, so the
    root logger's formatter never reaches its lines."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())


class ApiServer(BaseApplication):  # type: ignore[misc]
    """gunicorn, configured from :class:`Settings` instead of a command line or file."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        debug = self.settings.log_level.upper() == "DEBUG"
        options: dict[str, Any] = {
            "bind": [self.settings.api_bind],
            "workers": self.settings.api_workers,
            "worker_class": "gthread",
            "threads": THREADS,
            "keepalive": 30,
            "timeout": max(30, int(self.settings.etcd_retry_for * 2)),
            "graceful_timeout": 10,
            "loglevel": self.settings.log_level.lower(),
            "accesslog": "-" if debug else None,
            "proc_name": "ucloud-api",
            "preload_app": False,
            "control_socket_disable": True,  # gunicorn 23+: no shared ~/.gunicorn socket between instances
            "child_exit": _child_exit,
        }
        if self.settings.log_json:
            options["logger_class"] = JsonLogger
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from .app import create_app

        return create_app(self.settings)


def _child_exit(server: Any, worker: Any) -> None:
    from .metrics import worker_exited

    worker_exited(worker.pid)


def prepare_metrics_dir() -> None:
    """Put every worker's metrics in one directory (see the module docstring)."""
    from .metrics import MULTIPROC_ENV, use_multiprocess_dir

    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        path = tempfile.mkdtemp(prefix="ucloud-api-metrics-")
        master = os.getpid()
        # workers inherit atexit handlers: only the master removes the directory
        atexit.register(lambda: os.getpid() == master and shutil.rmtree(path, ignore_errors=True))
    os.makedirs(path, exist_ok=True)
    use_multiprocess_dir(path)


def main() -> None:
    settings = load_or_exit("ucloud-api")
    if settings.api_workers < 1:
        raise SystemExit("ucloud-api: config: api_workers must be at least 1")
    connect_or_exit("ucloud-api", settings).close()
    prepare_metrics_dir()
    logging.getLogger(__name__).info("serving on %s with %d workers", settings.api_bind, settings.api_workers)
    ApiServer(settings).run()
