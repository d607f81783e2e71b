"""Running ``ucloud-api`` as it is deployed — the console script (gunicorn) as a subprocess on a
free loopback port, stopped by its pid — for every test module that talks HTTP to it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from ucloud_common.etcd_process import free_port

EXE = Path(sys.executable).parent / "ucloud-api"


def api_env(endpoints: tuple[str, ...] | list[str], port: int, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "UCLOUD_ETCD_ENDPOINTS": ",".join(endpoints), "UCLOUD_API_BIND": f"127.0.0.1:{port}",
            "UCLOUD_API_WORKERS": "2", "UCLOUD_ENV_FILE": str(tmp_path / "none.env"), **extra}


@contextlib.contextmanager
def running_api(etcd: Any, tmp_path: Path, **env: str) -> Iterator[int]:
    """``ucloud-api`` (2 workers) on a free port until the block ends; stopped by pid."""
    port = free_port()
    log = open(tmp_path / "api.log", "wb")
    proc = subprocess.Popen([str(EXE)], env=api_env(etcd.endpoints, port, tmp_path, **env),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60  # a busy 2-core machine
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "api.log").read_text()
                assert time.monotonic() < deadline, "ucloud-api did not start listening"
                time.sleep(0.1)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            log.close()
