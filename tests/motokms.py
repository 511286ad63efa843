"""moto's server mode as a stand-in AWS KMS: a separate process on a free loopback port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenproxy_sandbox.launcher import HelperProcess, executable, free_port

# moto accepts any credentials; these keep boto3 from looking for real ones.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "eu-central-1",
    "AWS_DEFAULT_REGION": "eu-central-1",
}


class MotoKms(HelperProcess):
    """A running moto_server; ``endpoint`` is what TOKENPROXY_KMS_ENDPOINT takes."""

    name = "moto_server"

    def __init__(self, *, log: Path | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [executable("moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            log=log,
            env=FAKE_AWS_ENV,
        )
        self.wait_ready(self.endpoint + "/moto-api/", timeout=30.0)

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
