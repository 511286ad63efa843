"""A serving proxy in AWS KMS mode (moto's KMS server): keys renewed in the background."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_settings, running_proxy
from tests.motokms import FAKE_AWS_ENV, MotoKms
from vault import Kind, NewRecord, Vault
from vault.keys.kms import KmsKekProvider, init_kms_keyring

_POLLS = 150


@pytest.fixture
def moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoKms]:
    """A moto_server of this test's own, with fake AWS credentials in the environment."""
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    server = MotoKms(log=tmp_path / "moto.log")
    yield server
    server.stop()


async def test_disabled_key_stops_resolve_at_the_next_renewal_and_enabling_restores_it(
    tmp_path: Path, moto: MotoKms, client_keys: dict[str, str]
) -> None:
    """The server re-confirms its KEKs every refresh interval: refused when disabled, then back."""
    keymap = tmp_path / "keys" / "kms.json"
    key_id = moto.create_key()
    init_kms_keyring(keymap, moto.client(), key_id)
    seeder = await Vault.open(
        f"sqlite:///{tmp_path / 'vault.db'}",
        KmsKekProvider.from_file(keymap, endpoint_url=moto.endpoint),
    )
    try:
        stored = await seeder.put(
            NewRecord(kind=Kind.CARD, partner="stripe", partner_reference="pm_served_kms")
        )
    finally:
        await seeder.close()
    settings = make_settings(
        tmp_path,
        keymap,
        "http://127.0.0.1:9",
        {
            "TOKENPROXY_KEK_PROVIDER": "aws-kms",
            "TOKENPROXY_KMS_ENDPOINT": moto.endpoint,
            "TOKENPROXY_KMS_REFRESH_SECONDS": "1",
        },
    )
    async with running_proxy(tmp_path, client_keys, settings) as proxy:

        async def resolve_status() -> int:
            status, _, _ = await proxy.request(
                "GET", f"/v1/tokens/{stored.token}", client="billing"
            )
            return status

        async def until(status: int) -> list[int]:
            seen = []
            for _ in range(_POLLS):
                seen.append(await resolve_status())
                if seen[-1] == status:
                    break
                await asyncio.sleep(0.1)
            return seen

        assert await resolve_status() == 200
        moto.client().disable_key(KeyId=key_id)
        seen = await until(503)
        assert seen[-1] == 503, seen
        assert set(seen) <= {200, 503}  # served until the renewal, refused after
        moto.client().enable_key(KeyId=key_id)
        seen = await until(200)
        assert seen[-1] == 200, seen
