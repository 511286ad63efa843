"""localstripe as a sandbox partner, run as a separate process (it is GPL: never imported)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

SANDBOX_API_KEY = "sk_test_localstripe"


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _executable() -> str:
    beside = Path(sys.executable).with_name("localstripe")
    if beside.exists():
        return str(beside)
    found = shutil.which("localstripe")
    if found is None:
        raise RuntimeError("localstripe is not installed (pip install '.[dev]')")
    return found


class Localstripe:
    """A running localstripe process on a free loopback port."""

    def __init__(self, port: int | None = None, *, log: Path | None = None) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        out: Any = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [_executable(), "--port", str(self.port), "--from-scratch"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if out is not subprocess.DEVNULL:
            out.close()
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"localstripe exited with {self.process.returncode}")
            try:
                request = urllib.request.Request(  # noqa: S310 - loopback URL we built
                    self.base_url + "/v1/customers",
                    headers={"Authorization": f"Bearer {SANDBOX_API_KEY}"},
                )
                with urllib.request.urlopen(request, timeout=1):  # noqa: S310
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("localstripe did not start in time")

    def stop(self) -> None:
        """Terminate the process and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=5)
