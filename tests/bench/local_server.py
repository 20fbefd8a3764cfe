"""A server process of the harness's own (moto, the keep-alive proxy) on a free 127.0.0.1 port:
started, waited for until it answers, stopped."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable

READY_PATH = "/moto-api/data.json"
"""moto's own API: it answers once moto is up (through the proxy too)."""


class LocalServer:
    """`argv(port)` started on a free port; returns once `READY_PATH` answers."""

    def __init__(self, argv: Callable[[int], list[str]], *, name: str, start_timeout_s: float):
        with socket.socket() as probe:  # a free port (moto's CLI has no port 0)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            argv(port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                with urllib.request.urlopen(self.url + READY_PATH, timeout=5):
                    return
            except (urllib.error.URLError, OSError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"{name} did not start on {self.url}") from None
                time.sleep(0.1)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
