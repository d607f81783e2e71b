"""What every daemon does at start: load settings, set up logging, reach etcd — or stop
with one clear line saying why (a bad key, a wrong type, an unreachable etcd)."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Callable

from .config import ConfigError, Settings, load_settings
from .logs import setup_logging
from .store import Store, Unavailable


class StartupError(SystemExit):
    """Raised to stop a daemon at start; the message is the one line the operator sees."""


def fail(name: str, message: str) -> "StartupError":
    print(f"{name}: {message}", file=sys.stderr)
    return StartupError(2)


def load_or_exit(name: str, **overrides: Any) -> Settings:
    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        raise fail(name, str(exc)) from None
    setup_logging(settings.log_level, settings.log_json, name)
    return settings


def connect_or_exit(name: str, settings: Settings) -> Store:
    """A store whose cluster answered once, or exit: a daemon is useless without etcd."""
    store = Store(settings.etcd_endpoints, timeout=settings.etcd_timeout, retry_for=settings.etcd_retry_for)
    try:
        store.revision()
    except Unavailable:
        store.close()
        raise fail(name, f"cannot reach etcd at {', '.join(settings.etcd_endpoints)} "
                         f"(set UCLOUD_ETCD_ENDPOINTS)") from None
    return store


def stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT, for a daemon's main loop to end cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_until(stop: threading.Event, start: Callable[[], object], finish: Callable[[], object]) -> None:
    """``start()``, block until ``stop`` is set (SIGTERM/SIGINT, see :func:`stop_event`), then
    ``finish()`` — also when waiting ends in an error. Polls once a second so that the main
    thread stays responsive to signals."""
    start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        finish()
