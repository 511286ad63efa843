"""The AWS KMS provider against moto's server mode on loopback (a real HTTP KMS API)."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tokenproxy_sandbox.launcher import free_port

from proxy.cli.main import main
from tests.motokms import FAKE_AWS_ENV, MotoKms
from vault import (
    DecryptionFailed,
    KeyInUse,
    KeyRingError,
    KeyRingMismatch,
    Kind,
    NewRecord,
    Vault,
    VaultError,
)
from vault.crypto import dek_aad, new_key
from vault.keys.kms import KmsKekProvider, init_kms_keyring
from vault.keys.ring import KekProvider
from vault.rotation import key_status, retire_version, rewrap


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoKms]:
    """One moto_server for the module, with fake AWS credentials in the environment."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in FAKE_AWS_ENV.items():
            mp.setenv(name, value)
        server = MotoKms(log=tmp_path_factory.mktemp("moto") / "moto.log")
        yield server
        server.stop()


@pytest.fixture
def kms_ring(tmp_path: Path, moto: MotoKms) -> Path:
    """A KMS key map file whose version 1 is a fresh KMS key (by alias)."""
    path = tmp_path / "keys" / "kms-keyring.json"
    init_kms_keyring(path, moto.client(), moto.create_key(f"alias/tp-{tmp_path.name[-20:]}"))
    return path


def provider(path: Path, moto: MotoKms, rotate_to: str | None = None) -> KmsKekProvider:
    """A KMS provider over the moto endpoint."""
    return KmsKekProvider.from_file(path, endpoint_url=moto.endpoint, rotate_to=rotate_to)


def test_key_map_holds_no_key_material(kms_ring: Path, moto: MotoKms) -> None:
    """The file is 0600 and holds KMS key ids and a KMS ciphertext, not the index key."""
    keys = provider(kms_ring, moto)
    assert isinstance(keys, KekProvider)
    assert stat.S_IMODE(kms_ring.stat().st_mode) == 0o600
    text = kms_ring.read_text()
    assert base64.b64encode(keys.index_key).decode() not in text
    assert keys.index_key.hex() not in text
    doc = json.loads(text)
    assert doc["format"] == "tokenproxy-kms-keyring/1"
    assert doc["keys"][0]["kms_key_id"].startswith("alias/tp-")
    assert "key" not in doc["keys"][0]
    assert "index_key" not in repr(keys)


def test_wrap_unwrap_round_trip_and_context_binding(kms_ring: Path, moto: MotoKms) -> None:
    """KMS-wrapped DEKs unwrap with their AAD only; a flipped byte fails authentication."""
    keys = provider(kms_ring, moto)
    for _ in range(3):
        dek = new_key()
        version, wrapped = keys.wrap(dek, dek_aad("dek_a", 1))
        assert version == 1
        assert keys.unwrap(1, wrapped, dek_aad("dek_a", 1)) == dek
        with pytest.raises(DecryptionFailed):
            keys.unwrap(1, wrapped, dek_aad("dek_b", 1))
        flipped = bytearray(wrapped)
        flipped[len(flipped) // 2] ^= 1
        with pytest.raises(DecryptionFailed):
            keys.unwrap(1, bytes(flipped), dek_aad("dek_a", 1))
        with pytest.raises(KeyRingError, match="does not exist"):
            keys.unwrap(9, wrapped, dek_aad("dek_a", 9))


async def test_vault_rotate_rewrap_retire_with_kms(
    kms_ring: Path, moto: MotoKms, tmp_path: Path
) -> None:
    """With KMS: records survive rotation to a new KMS key, rewrap and retirement."""
    url = f"sqlite:///{tmp_path / 'vault.db'}"
    keys = provider(kms_ring, moto, rotate_to=moto.create_key())
    vault = await Vault.open(url, keys)
    server = Vault(vault.backend, provider(kms_ring, moto))
    try:
        stored = [
            await vault.put(
                NewRecord(
                    kind=Kind.CARD,
                    partner="stripe",
                    partner_reference=f"pm_kms_{i}",
                    customer_ref="cus-k" if i % 2 else None,
                )
            )
            for i in range(6)
        ]
        customer_idx = vault.index("customer", "cus-k")
        assert keys.rotate() == 2
        with pytest.raises(KeyInUse):
            await retire_version(vault, keys, 1)
        progress = await rewrap(vault, batch_size=2)
        assert (progress.rewrapped, progress.failed) == (4, 0)
        await retire_version(vault, keys, 1)
        assert [(s.version, s.state, s.deks) for s in await key_status(vault)] == [
            (1, "retired", 0),
            (2, "active", 4),
        ]
        for r in stored:
            assert await server.get(r.token) == r  # a server that started on version 1
        fresh = provider(kms_ring, moto)
        assert fresh.index_key == keys.index_key  # blind indexes survive the rotation
        assert Vault(vault.backend, fresh).index("customer", "cus-k") == customer_idx
        with pytest.raises(KeyRingError, match="retired"):
            fresh.unwrap(1, b"x" * 64, dek_aad("dek_a", 1))
    finally:
        await vault.close()


def test_key_material_never_reaches_the_logs(
    kms_ring: Path, moto: MotoKms, log_stream: io.StringIO
) -> None:
    """botocore's debug log of KMS responses (plaintext keys) is switched off."""
    logging.getLogger().setLevel(logging.DEBUG)
    keys = provider(kms_ring, moto)
    dek = new_key()
    version, wrapped = keys.wrap(dek, dek_aad("dek_log", 1))
    assert keys.unwrap(version, wrapped, dek_aad("dek_log", 1)) == dek
    logging.getLogger("tests.probe").debug("kms-log-probe")
    logged = log_stream.getvalue()
    assert "kms-log-probe" in logged  # the buffer is live, so the absence below means something
    for secret in (dek, keys.index_key):
        assert base64.b64encode(secret).decode() not in logged
        assert secret.hex() not in logged


def test_rotate_refuses_the_same_kms_key(kms_ring: Path, moto: MotoKms) -> None:
    """Rotating needs a different KMS key than the active version's."""
    active_key = json.loads(kms_ring.read_text())["keys"][0]["kms_key_id"]
    with pytest.raises(KeyRingError, match="already"):
        provider(kms_ring, moto, rotate_to=active_key).rotate()
    with pytest.raises(KeyRingError, match="TOKENPROXY_KMS_KEY_ID"):
        provider(kms_ring, moto).rotate()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(format="tokenproxy-keyring/1"), "format tag"),
        (lambda d: d.update(active=2), "active is 2"),
        (lambda d: d["keys"][0].pop("kms_key_id"), "missing field(s) kms_key_id"),
        (lambda d: d.update(index_key_wrapped="!!"), "not valid base64"),
        (lambda d: d.update(index_key_wrapped=base64.b64encode(b"x" * 40).decode()), "KMS"),
    ],
)
def test_bad_key_map_fails_closed(
    kms_ring: Path, moto: MotoKms, change: object, expected: str
) -> None:
    """A damaged key map stops loading with one line naming the file and problem."""
    doc = json.loads(kms_ring.read_text())
    change(doc)  # type: ignore[operator]
    kms_ring.write_text(json.dumps(doc))
    with pytest.raises(KeyRingError) as info:
        provider(kms_ring, moto)
    message = str(info.value)
    assert "kms-keyring.json" in message
    assert expected in message
    assert "\n" not in message


def test_unreachable_kms_fails_closed(kms_ring: Path) -> None:
    """When KMS cannot be reached, loading fails with our one line, not botocore's text."""
    with pytest.raises(KeyRingError, match="KMS refused to decrypt the index key"):
        KmsKekProvider.from_file(kms_ring, endpoint_url=f"http://127.0.0.1:{free_port()}")


def test_cli_with_kms_provider(
    tmp_path: Path,
    moto: MotoKms,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """keys init / rotate / list / rewrap / retire work with TOKENPROXY_KEK_PROVIDER=aws-kms."""
    monkeypatch.setenv("TOKENPROXY_KEK_PROVIDER", "aws-kms")
    monkeypatch.setenv("TOKENPROXY_KMS_ENDPOINT", moto.endpoint)
    monkeypatch.setenv("TOKENPROXY_KMS_KEY_ID", moto.create_key())
    monkeypatch.setenv("TOKENPROXY_KEYRING", str(tmp_path / "kms.json"))
    monkeypatch.setenv("TOKENPROXY_CLIENTS", str(tmp_path / "clients.json"))
    monkeypatch.setenv("TOKENPROXY_VAULT_URL", f"sqlite:///{tmp_path / 'vault.db'}")
    assert main(["keys", "init"]) == 0
    assert main(["clients", "add", "billing", "--scopes", "resolve"]) == 0
    assert main(["keys", "rotate"]) == 2  # same KMS key as version 1: refused
    assert "already" in capsys.readouterr().err
    monkeypatch.setenv("TOKENPROXY_KMS_KEY_ID", moto.create_key())
    assert main(["keys", "rotate"]) == 0
    assert main(["keys", "rewrap"]) == 0
    assert main(["keys", "retire", "1"]) == 0
    capsys.readouterr()
    assert main(["keys", "list"]) == 0
    out = capsys.readouterr().out
    assert "retired" in out
    assert "rewrap remaining: 0" in out
    assert main(["audit", "verify"]) == 0
    # init, client add, the refused rotate (a failure event), rotate, rewrap, retire
    assert "6 events" in capsys.readouterr().out


def test_vault_error_tree_covers_kms_failures() -> None:
    """KMS failures surface as vault errors the proxy already renders (503, never text)."""
    assert issubclass(KeyRingError, VaultError)
    assert issubclass(DecryptionFailed, VaultError)


async def test_kms_check_values_recognise_their_own_key_map_only(
    kms_ring: Path, moto: MotoKms, tmp_path: Path
) -> None:
    """A KMS key map is checked like a local ring: another index key or KMS key is refused."""
    url = f"sqlite:///{tmp_path / 'vault.db'}"
    keys = provider(kms_ring, moto, rotate_to=moto.create_key())
    vault = await Vault.open(url, keys)
    try:
        await vault.put(NewRecord(kind=Kind.CARD, partner="stripe", partner_reference="pm_c"))
        assert keys.rotate() == 2
        await vault.check_key_ring()  # records version 2's check value
    finally:
        await vault.close()
    await (await Vault.open(url, provider(kms_ring, moto))).close()
    # Same KMS key for version 1, but a map made by another `keys init`: its own index key.
    doc = json.loads(kms_ring.read_text())  # noqa: ASYNC240 - a test's setup step
    other = tmp_path / "other" / "kms.json"
    init_kms_keyring(other, moto.client(), doc["keys"][0]["kms_key_id"])
    with pytest.raises(KeyRingMismatch, match="index key"):
        await Vault.open(url, provider(other, moto))
    # The right index key, but version 2 pointed at another KMS key.
    doc["keys"][1]["kms_key_id"] = moto.create_key()
    moved = tmp_path / "moved" / "kms.json"
    moved.parent.mkdir()
    moved.write_text(json.dumps(doc))
    moved.chmod(0o600)
    # KMS refuses to decrypt under the other key (AWS: IncorrectKeyException, moto: access
    # denied): either way the start is refused, naming the file and the version.
    with pytest.raises(KeyRingError, match=f"key ring {moved}.*key version 2"):
        await Vault.open(url, provider(moved, moto), source=f"key ring {moved}")


def test_kms_check_value_needs_the_version_key_and_the_index_key(
    kms_ring: Path, moto: MotoKms
) -> None:
    """A KMS check value matches its own version only; a flipped byte never matches."""
    keys = provider(kms_ring, moto, rotate_to=moto.create_key())
    keys.rotate()
    one, two = keys.check_value(1), keys.check_value(2)
    assert keys.matches_check(1, one)
    assert keys.matches_check(2, two)
    assert not keys.matches_check(2, one)
    flipped = bytearray(one)
    flipped[len(flipped) // 2] ^= 1
    assert not keys.matches_check(1, bytes(flipped))


async def test_kms_outage_after_start_stops_nothing(tmp_path: Path) -> None:
    """With KMS gone after start, tokenize and resolve go on: data keys wrap locally.

    A rotation made elsewhere that this process cannot unlock yet leaves it on the version
    it holds.
    """
    with pytest.MonkeyPatch.context() as mp:
        for name, value in FAKE_AWS_ENV.items():
            mp.setenv(name, value)
        own = MotoKms(log=tmp_path / "moto.log")
        try:
            path = tmp_path / "keys" / "kms-keyring.json"
            init_kms_keyring(path, own.client(), own.create_key())
            keys = KmsKekProvider.from_file(path, endpoint_url=own.endpoint)
            vault = await Vault.open(f"sqlite:///{tmp_path / 'vault.db'}", keys)
            before = await vault.put(card("pm_before"))
            # Another process rotates to a new KMS key just before KMS goes away.
            other = KmsKekProvider.from_file(
                path, endpoint_url=own.endpoint, rotate_to=own.create_key()
            )
            assert other.rotate() == 2
        finally:
            own.stop()
        try:
            assert keys.is_local(keys.active_version)
            keys.renew()  # unreachable: says nothing about the key, so it stays unlocked
            # Version 2 cannot be unlocked now: the map in force stays, and so does version 1.
            assert not await vault.refresh_keys(force=True)
            assert keys.active_version == 1
            after = await vault.put(card("pm_after", customer_ref="cus-outage"))
            # A fresh cache: every data key is unwrapped again, with KMS still down.
            reader = Vault(vault.backend, keys)
            assert await reader.get(before.token) == before
            assert await reader.get(after.token) == after
        finally:
            await vault.close()


async def test_disabled_kms_key_stops_tokenize_and_resolve_at_renewal(
    kms_ring: Path, moto: MotoKms, tmp_path: Path
) -> None:
    """A KMS key disabled in AWS locks its version at the next renewal, and unlocks on enable."""
    keys = provider(kms_ring, moto)
    vault = await Vault.open(f"sqlite:///{tmp_path / 'vault.db'}", keys)
    try:
        stored = await vault.put(card("pm_disable"))
        assert await vault.get(stored.token) == stored
        key_id = moto.client().describe_key(KeyId=keys.kms_key_id(1))["KeyMetadata"]["KeyId"]
        moto.client().disable_key(KeyId=key_id)
        # Until the renewal, the key unlocked at start still serves (no KMS call per request).
        assert await vault.get(stored.token) == stored
        await vault.renew_keys()
        with pytest.raises(KeyRingError, match="locked"):
            await vault.get(stored.token)  # the cached data key went with its KEK
        with pytest.raises(KeyRingError, match="locked"):
            await vault.put(card("pm_refused"))
        moto.client().enable_key(KeyId=key_id)
        await vault.renew_keys()
        assert await vault.get(stored.token) == stored
        assert (await vault.put(card("pm_again"))).partner_reference == "pm_again"
    finally:
        await vault.close()


async def test_per_dek_kms_versions_still_open_off_the_loop(
    kms_ring: Path, moto: MotoKms, tmp_path: Path
) -> None:
    """A version made before local wrapping (no kek_wrapped) still wraps each data key at KMS."""
    doc = json.loads(kms_ring.read_text())  # noqa: ASYNC240 - a test's setup step
    del doc["keys"][0]["kek_wrapped"]
    kms_ring.write_text(json.dumps(doc))  # noqa: ASYNC240 - a test's setup step
    keys = provider(kms_ring, moto, rotate_to=moto.create_key())
    assert not keys.is_local(1)
    vault = await Vault.open(f"sqlite:///{tmp_path / 'vault.db'}", keys)
    try:
        old = await vault.put(card("pm_per_dek"))
        assert await Vault(vault.backend, keys).get(old.token) == old
        assert keys.rotate() == 2
        assert keys.is_local(2)
        progress = await rewrap(vault, batch_size=10)
        assert (progress.rewrapped, progress.failed) == (1, 0)
        assert await Vault(vault.backend, provider(kms_ring, moto)).get(old.token) == old
    finally:
        await vault.close()


def card(reference: str, *, customer_ref: str | None = None) -> NewRecord:
    """A card record with the given partner reference."""
    return NewRecord(
        kind=Kind.CARD, partner="stripe", partner_reference=reference, customer_ref=customer_ref
    )


async def test_kms_version_rotated_by_another_process_is_unlocked_and_read(
    kms_ring: Path, moto: MotoKms, tmp_path: Path
) -> None:
    """A record under a KMS version another process added: the vault reloads, unlocks, reads."""
    running = await Vault.open(f"sqlite:///{tmp_path / 'vault.db'}", provider(kms_ring, moto))
    try:
        env = {
            **os.environ,
            **FAKE_AWS_ENV,
            "TOKENPROXY_KEK_PROVIDER": "aws-kms",
            "TOKENPROXY_KMS_ENDPOINT": moto.endpoint,
            "TOKENPROXY_KMS_KEY_ID": moto.create_key(),
            "TOKENPROXY_KEYRING": str(kms_ring),
            "TOKENPROXY_VAULT_URL": f"sqlite:///{tmp_path / 'vault.db'}",
        }
        rotate = "import sys; from proxy.cli.main import main; sys.exit(main(['keys', 'rotate']))"
        done = subprocess.run(  # noqa: ASYNC221 - the other process must finish first
            [sys.executable, "-c", rotate], env=env, check=False, timeout=120, capture_output=True
        )
        assert done.returncode == 0, done.stderr.decode()[-500:]
        other = Vault(running.backend, provider(kms_ring, moto))
        stored = await other.put(card("pm_rotated_elsewhere"))
        assert running.keys.active_version == 1
        assert await running.get(stored.token) == stored
        assert running.keys.active_version == 2
        assert running.keys.is_local(2)
    finally:
        await running.close()
