"""Telling the administrator that a VM died: the daemon's log, a command, a webhook.

``notify_command`` is an argument list run with the event as JSON on its stdin (e.g.
``["/usr/local/bin/page-oncall"]`` or ``["mail", "-s", "ucloud", "root"]``); a non-empty
``notify_webhook`` is POSTed the same JSON. Both run in a background thread with a
timeout, so a slow mail server or web hook never delays restarting the VM; a failure
of either is logged, never raised.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
from typing import Any, Sequence

import requests

log = logging.getLogger(__name__)

TIMEOUT = 10.0  # seconds for the command or the webhook


class Notifier:
    def __init__(self, command: Sequence[str] = (), webhook: str = "") -> None:
        self.command = tuple(command)
        self.webhook = webhook
        self._threads: list[threading.Thread] = []

    def notify(self, event: dict[str, Any]) -> None:
        """Log ``event`` and hand it to the command and webhook (in the background)."""
        log.warning("NOTIFY %s: VM %s on %s: %s", event.get("event"), event.get("vm"), event.get("host"),
                    event.get("message"))
        payload = json.dumps(event, sort_keys=True).encode()
        for target, name in ((self._run_command, "notify-command"), (self._post, "notify-webhook")):
            thread = threading.Thread(target=target, args=(payload,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._threads = [t for t in self._threads if t.is_alive()]

    def _run_command(self, payload: bytes) -> None:
        if not self.command:
            return
        try:
            done = subprocess.run(list(self.command), input=payload, capture_output=True, timeout=TIMEOUT,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("notify_command %s failed: %s", self.command[0], exc)
            return
        if done.returncode != 0:
            log.error("notify_command %s exited with %d: %s", self.command[0], done.returncode,
                      done.stderr.decode(errors="replace").strip()[-300:])

    def _post(self, payload: bytes) -> None:
        if not self.webhook:
            return
        try:
            response = requests.post(self.webhook, data=payload, timeout=TIMEOUT,
                                     headers={"Content-Type": "application/json"})
            if response.status_code >= 400:
                log.error("notify_webhook %s answered %d", self.webhook, response.status_code)
        except requests.RequestException as exc:
            log.error("notify_webhook %s failed: %s", self.webhook, exc)

    def wait(self, timeout: float = TIMEOUT) -> None:
        """Wait for notifications in flight (tests, shutdown)."""
        for thread in list(self._threads):
            thread.join(timeout)
