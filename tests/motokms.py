"""moto's server mode as a stand-in AWS KMS: a separate process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from proxy.sandbox import free_port

# moto accepts any credentials; these keep boto3 from looking for real ones.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "eu-central-1",
    "AWS_DEFAULT_REGION": "eu-central-1",
}


def _executable() -> str:
    beside = Path(sys.executable).with_name("moto_server")
    if beside.exists():
        return str(beside)
    found = shutil.which("moto_server")
    if found is None:
        raise RuntimeError("moto_server is not installed (pip install '.[dev]')")
    return found


class MotoKms:
    """A running moto_server; ``endpoint`` is what TOKENPROXY_KMS_ENDPOINT takes."""

    def __init__(self, *, log: Path | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        out: Any = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            [_executable(), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **FAKE_AWS_ENV},
        )
        if out is not subprocess.DEVNULL:
            out.close()
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1):  # noqa: S310
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not start in time")

    def client(self) -> Any:
        """A boto3 KMS client for this server."""
        import boto3

        return boto3.client("kms", endpoint_url=self.endpoint, region_name="eu-central-1")

    def create_key(self, alias: str | None = None) -> str:
        """A new symmetric KMS key; returns its alias when given, else its id."""
        client = self.client()
        key_id: str = client.create_key()["KeyMetadata"]["KeyId"]
        if alias:
            client.create_alias(AliasName=alias, TargetKeyId=key_id)
            return alias
        return key_id

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
