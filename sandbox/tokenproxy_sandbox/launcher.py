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


def executable(name: str) -> str:
    """The console script ``name`` installed beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (make venv installs it)")
    return found


class HelperProcess:
    """A helper server run as a separate process on loopback, polled until it answers."""

    name = "helper"

    def __init__(
        self, argv: list[str], *, log: Path | None, env: dict[str, str] | None = None
    ) -> None:
        out: Any = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        if out is not subprocess.DEVNULL:
            out.close()

    def wait_ready(self, request: urllib.request.Request | str, timeout: float) -> None:
        """Poll ``request`` until it succeeds; stop and raise if the process dies or is slow."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(request, timeout=1):  # noqa: S310 - loopback URL
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not start in time")

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


class Localstripe(HelperProcess):
    """A running localstripe process on a free loopback port, behind the Stripe-rules front.

    ``base_url`` is the front (``tokenproxy_sandbox.front``): what the proxy, the tests and
    a billing service in the dev stack talk to. ``upstream_url`` is localstripe itself.
    """

    name = "localstripe"

    def __init__(self, port: int | None = None, *, log: Path | None = None) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        upstream_port = free_port()
        self.upstream_url = f"http://127.0.0.1:{upstream_port}"
        super().__init__(
            [executable("localstripe"), "--port", str(upstream_port), "--from-scratch"],
            log=log,
            env={"PYTHONUNBUFFERED": "1"},
        )
        self.front = HelperProcess(
            [
                sys.executable,
                "-m",
                "tokenproxy_sandbox.front",
                "--port",
                str(self.port),
                "--upstream",
                self.upstream_url,
            ],
            log=log,
        )
        self.front.name = "localstripe front"
        try:
            for helper, url in ((self, self.upstream_url), (self.front, self.base_url)):
                helper.wait_ready(
                    urllib.request.Request(  # noqa: S310 - loopback URL we built
                        url + "/v1/customers",
                        headers={"Authorization": f"Bearer {SANDBOX_API_KEY}"},
                    ),
                    timeout=20.0,
                )
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the front and localstripe."""
        self.front.stop()
        super().stop()
