"""Telling the administrator: the event as JSON to a command's stdin and to a webhook (a real
HTTP server on loopback); a failing command or an unreachable webhook is only logged."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from ucloud_common.etcd_process import free_port
from ucloud_vm.notify import Notifier


def test_command_and_webhook_get_the_event(tmp_path: Path) -> None:
    received: list[bytes] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    out = tmp_path / "events.jsonl"
    try:
        notifier = Notifier(["tee", "-a", str(out)], f"http://127.0.0.1:{server.server_port}/hook")
        event = {"event": "vm_killed", "vm": "v1", "host": "h1", "message": "QEMU killed by signal 9"}
        notifier.notify(event)
        notifier.wait()
    finally:
        server.shutdown()
        server.server_close()
    assert json.loads(out.read_text()) == event
    assert [json.loads(body) for body in received] == [event]


def test_failures_are_logged_not_raised(caplog) -> None:
    caplog.set_level(logging.ERROR)
    notifier = Notifier(["false"], f"http://127.0.0.1:{free_port()}/nobody-listens")
    notifier.notify({"event": "vm_error", "vm": "v1", "host": "h1", "message": "crash loop"})
    notifier.wait()
    assert "notify_command false exited with 1" in caplog.text
    assert "notify_webhook" in caplog.text
