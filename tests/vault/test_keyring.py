"""Tests for the key ring file, its fail-closed loading, rotation, retirement and providers."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vault.crypto import KEY_BYTES, dek_aad, new_key
from vault.errors import DecryptionFailed, KeyInUse, KeyRingError
from vault.keys.ring import (
    KEYRING_FORMAT,
    KekProvider,
    KeyRing,
    KeyState,
    LocalKekProvider,
    init_keyring,
    retire_key,
    rotate_keyring,
)

_ROTATIONS_PER_PROCESS = 10


@pytest.fixture(name="ring_path")
def fixture_ring_path(tmp_path: Path) -> Path:
    """Where a key ring will live, in a directory that does not exist yet."""
    return tmp_path / "secrets" / "keyring.json"


@pytest.fixture(name="ring")
def fixture_ring(ring_path: Path) -> KeyRing:
    """A freshly initialised key ring with version 1 active."""
    return init_keyring(ring_path)


@pytest.fixture(name="provider")
def fixture_provider(ring: KeyRing) -> LocalKekProvider:
    """A local KEK provider over the fresh key ring."""
    return LocalKekProvider.from_file(ring.path)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def _valid_doc() -> dict[str, Any]:
    """A well-formed document: version 1 decrypt-only, version 2 active."""
    return {
        "format": KEYRING_FORMAT,
        "active": 2,
        "index_key": _b64(new_key()),
        "keys": [
            {
                "version": 1,
                "created_at": "2024-01-01T00:00:00Z",
                "state": "decrypt_only",
                "key": _b64(new_key()),
            },
            {
                "version": 2,
                "created_at": "2024-06-01T00:00:00Z",
                "state": "active",
                "key": _b64(new_key()),
            },
        ],
    }


def _secrets_in(doc: dict[str, Any]) -> list[str]:
    """Every base64 key string a document holds."""
    found = [doc["index_key"]] if isinstance(doc.get("index_key"), str) else []
    found += [k["key"] for k in doc.get("keys", []) if isinstance(k.get("key"), str)]
    return found


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def _load_error(path: Path, secrets: list[str]) -> str:
    """Expect KeyRingError from ``path``; check it names the file, is one line, leaks nothing."""
    with pytest.raises(KeyRingError) as excinfo:
        KeyRing.load(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert "\n" not in message
    for secret in secrets:
        assert secret not in message
        assert secret[:16] not in message
    return message


def test_init_creates_private_file(ring_path: Path) -> None:
    """init_keyring creates a 0600 file in a new 0700 directory with version 1 active."""
    ring = init_keyring(ring_path)
    assert stat.S_IMODE(ring_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ring_path.parent.stat().st_mode) == 0o700
    assert ring.active_version == 1
    assert [(i.version, i.state) for i in ring.versions()] == [(1, KeyState.ACTIVE)]
    assert len(ring.kek(1)) == KEY_BYTES
    assert len(ring.index_key) == KEY_BYTES
    assert ring.kek(1) != ring.index_key
    assert sorted(os.listdir(ring_path.parent)) == ["keyring.json", "keyring.json.lock"]


def test_init_refuses_overwrite(ring: KeyRing) -> None:
    """init_keyring refuses an existing file and leaves it untouched."""
    before = ring.path.read_bytes()
    with pytest.raises(KeyRingError, match="already exists"):
        init_keyring(ring.path)
    assert ring.path.read_bytes() == before


def test_load_round_trips(ring: KeyRing) -> None:
    """Loading the file gives back the same keys and versions."""
    again = KeyRing.load(ring.path)
    assert again.kek(1) == ring.kek(1)
    assert again.index_key == ring.index_key
    assert again.versions() == ring.versions()


def test_load_missing_file(tmp_path: Path) -> None:
    """A missing file fails closed."""
    assert "does not exist" in _load_error(tmp_path / "nope.json", [])


def test_load_directory(tmp_path: Path) -> None:
    """A directory at the path fails closed."""
    assert "not a regular file" in _load_error(tmp_path, [])


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_load_group_or_world_access(ring_path: Path, mode: int) -> None:
    """A file that group or others may access fails closed, naming the mode."""
    doc = _valid_doc()
    _write(ring_path, json.dumps(doc), mode)
    message = _load_error(ring_path, _secrets_in(doc))
    assert f"mode {mode:04o} allows group or world access" in message


def test_load_unreadable(ring_path: Path) -> None:
    """A file this user cannot read fails closed."""
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    _write(ring_path, json.dumps(_valid_doc()), 0o000)
    assert "not readable" in _load_error(ring_path, [])


def test_load_invalid_json(ring_path: Path) -> None:
    """A file that is not JSON fails closed without echoing its content."""
    doc = _valid_doc()
    _write(ring_path, json.dumps(doc).replace(":", "=", 1))
    assert "not valid JSON" in _load_error(ring_path, _secrets_in(doc))


def test_load_truncated(ring_path: Path) -> None:
    """Half of a valid file is reported as truncated."""
    doc = _valid_doc()
    text = json.dumps(doc, indent=2)
    _write(ring_path, text[: len(text) // 2])
    assert "truncated" in _load_error(ring_path, _secrets_in(doc))


def test_load_empty(ring_path: Path) -> None:
    """An empty file fails closed."""
    _write(ring_path, "")
    assert "empty" in _load_error(ring_path, [])


def _mutated(**changes: Any) -> dict[str, Any]:
    doc = _valid_doc()
    doc.update(changes)
    return doc


def _with_key(position: int, **changes: Any) -> dict[str, Any]:
    doc = _valid_doc()
    doc["keys"][position].update(changes)
    return doc


def _two_active() -> dict[str, Any]:
    doc = _valid_doc()
    doc["keys"][0]["state"] = "active"
    return doc


def _active_retired() -> dict[str, Any]:
    doc = _valid_doc()
    doc["active"] = 1
    doc["keys"][0].update(state="retired", key=None)
    doc["keys"][1]["state"] = "active"
    return doc


def _duplicate_version() -> dict[str, Any]:
    doc = _valid_doc()
    doc["keys"][0]["version"] = 2
    return doc


def _extra_field() -> dict[str, Any]:
    doc = _valid_doc()
    doc["comment"] = "hi"
    return doc


def _missing_field() -> dict[str, Any]:
    doc = _valid_doc()
    del doc["index_key"]
    return doc


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(_mutated(format="tokenproxy-keyring/2"), "format tag", id="format-tag"),
        pytest.param(_mutated(index_key="not*base64!"), "index_key is not valid base64", id="b64"),
        pytest.param(_with_key(1, key="@@@@"), "key is not valid base64", id="key-b64"),
        pytest.param(
            _with_key(1, key=_b64(bytes(16))), "is 16 bytes, expected 32", id="16-byte-key"
        ),
        pytest.param(
            _mutated(index_key=_b64(bytes(16))), "is 16 bytes, expected 32", id="16-byte-index"
        ),
        pytest.param(_with_key(1, state="decrypt_only"), "no key has state 'active'", id="none"),
        pytest.param(_two_active(), "more than one key has state 'active'", id="two-active"),
        pytest.param(_active_retired(), "version 1 is retired", id="active-retired"),
        pytest.param(_mutated(active=7), "there is no version 7", id="active-missing"),
        pytest.param(_duplicate_version(), "version 2 appears more than once", id="dup"),
        pytest.param(_extra_field(), "unexpected field(s) 'comment'", id="extra-field"),
        pytest.param(_missing_field(), "missing field(s) index_key", id="missing-field"),
        pytest.param(_with_key(0, state="retired"), "retired key still holds", id="retired-key"),
        pytest.param(_with_key(0, version=True), "version is not a positive", id="bool-version"),
        pytest.param(_with_key(0, created_at="yesterday"), "created_at", id="bad-time"),
        pytest.param(_mutated(keys=[]), "keys is not a non-empty list", id="no-keys"),
    ],
)
def test_load_rejects_corrupt_content(ring_path: Path, doc: dict[str, Any], expected: str) -> None:
    """Each structural problem fails closed with its own message and no key material."""
    _write(ring_path, json.dumps(doc))
    assert expected in _load_error(ring_path, _secrets_in(_valid_doc()) + _secrets_in(doc))


def test_load_rejects_key_pasted_as_field_name(ring_path: Path) -> None:
    """An unexpected field named like a key is reported without echoing its name."""
    doc = _valid_doc()
    stray = _b64(new_key())
    doc[stray] = 1
    _write(ring_path, json.dumps(doc))
    assert "unexpected field" in _load_error(ring_path, [*_secrets_in(doc), stray])


def test_load_rejects_duplicate_names(ring_path: Path) -> None:
    """A JSON object that repeats a name is refused rather than silently resolved."""
    doc = _valid_doc()
    text = json.dumps(doc).replace('"active": 2', '"active": 2, "active": 1', 1)
    _write(ring_path, text)
    assert "duplicate field 'active'" in _load_error(ring_path, _secrets_in(doc))


def test_rotate_adds_active_version(ring: KeyRing) -> None:
    """Rotation adds version 2 as active and keeps version 1 decryptable."""
    rotated = rotate_keyring(ring.path)
    assert rotated.active_version == 2
    assert [(i.version, i.state) for i in rotated.versions()] == [
        (1, KeyState.DECRYPT_ONLY),
        (2, KeyState.ACTIVE),
    ]
    assert rotated.kek(1) == ring.kek(1)
    assert rotated.kek(2) != ring.kek(1)
    assert rotated.index_key == ring.index_key
    assert stat.S_IMODE(ring.path.stat().st_mode) == 0o600
    assert sorted(os.listdir(ring.path.parent)) == ["keyring.json", "keyring.json.lock"]


def test_unwrap_after_rotation(provider: LocalKekProvider) -> None:
    """A DEK wrapped under version 1 still unwraps after rotation; new wraps use version 2."""
    dek = new_key()
    version, wrapped = provider.wrap(dek, dek_aad("dek_1", 1))
    assert version == 1
    rotate_keyring(provider.ring.path)
    rotated = LocalKekProvider.from_file(provider.ring.path)
    assert rotated.unwrap(1, wrapped, dek_aad("dek_1", 1)) == dek
    new_version, _ = rotated.wrap(new_key(), dek_aad("dek_2", 2))
    assert new_version == rotated.active_version == 2


def test_retire_refused_while_in_use(ring: KeyRing) -> None:
    """Retiring a version that still wraps data keys is refused and changes nothing."""
    rotate_keyring(ring.path)
    before = ring.path.read_bytes()
    with pytest.raises(KeyInUse, match="still wraps 3 data key"):
        retire_key(ring.path, 1, in_use=3)
    assert ring.path.read_bytes() == before


def test_retire_refused_for_active(ring: KeyRing) -> None:
    """The active version cannot be retired even with no data keys."""
    with pytest.raises(KeyInUse, match="is active"):
        retire_key(ring.path, 1, in_use=0)


def test_retire_unknown_version(ring: KeyRing) -> None:
    """Retiring a version that does not exist is a KeyRingError, not KeyInUse."""
    with pytest.raises(KeyRingError, match="does not exist") as excinfo:
        retire_key(ring.path, 9, in_use=0)
    assert not isinstance(excinfo.value, KeyInUse)


def test_retire_destroys_key_material(provider: LocalKekProvider) -> None:
    """Retiring an unused version drops its key from the file; kek and unwrap then refuse it."""
    path = provider.ring.path
    old_kek = provider.ring.kek(1)
    _, wrapped = provider.wrap(new_key(), b"aad")
    rotate_keyring(path)
    retired = retire_key(path, 1, in_use=0)
    assert [(i.version, i.state) for i in retired.versions()] == [
        (1, KeyState.RETIRED),
        (2, KeyState.ACTIVE),
    ]
    with pytest.raises(KeyRingError, match="key version 1 is retired"):
        retired.kek(1)
    with pytest.raises(KeyRingError, match="key version 1 is retired"):
        LocalKekProvider(retired).unwrap(1, wrapped, b"aad")
    text = path.read_text(encoding="utf-8")
    assert _b64(old_kek) not in text
    assert json.loads(text)["keys"][0]["key"] is None
    assert retire_key(path, 1, in_use=0).versions() == retired.versions()


def _rotate_many(path: str, barrier: Any, results: Any) -> None:
    """Child process: wait for the sibling, then rotate and report each new version."""
    barrier.wait()
    results.put([rotate_keyring(path).active_version for _ in range(_ROTATIONS_PER_PROCESS)])


def test_concurrent_rotations_lose_nothing(ring: KeyRing) -> None:
    """Two processes rotating at once produce distinct consecutive versions, none lost."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_rotate_many, args=(str(ring.path), barrier, results)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    seen = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    created = sorted(seen[0] + seen[1])
    total = 2 * _ROTATIONS_PER_PROCESS
    assert created == list(range(2, total + 2))
    final = KeyRing.load(ring.path)
    assert final.active_version == total + 1
    assert [i.version for i in final.versions()] == list(range(1, total + 2))
    assert final.kek(1) == ring.kek(1)
    assert len({final.kek(v) for v in range(1, total + 2)}) == total + 1


def test_repr_hides_key_material(provider: LocalKekProvider) -> None:
    """repr of a ring or provider, even nested as in traceback locals, holds no key bytes."""
    ring = provider.ring
    _, _ = provider.wrap(new_key(), b"")  # populate the sealer cache
    secrets = [ring.kek(1), ring.index_key]
    shown = [repr(ring), str(ring), repr(provider), repr({"ring": ring, "p": provider})]
    for text in shown:
        for secret in secrets:
            assert _b64(secret) not in text
            assert secret.hex() not in text
            assert repr(secret) not in text
    assert "active=1" in repr(ring)
    assert str(ring.path) in repr(ring)


def test_key_material_not_picklable(ring: KeyRing) -> None:
    """A ring cannot be pickled, so keys cannot leak into caches or queues by accident."""
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(ring)


def test_local_provider_satisfies_protocol(provider: LocalKekProvider) -> None:
    """LocalKekProvider implements the KekProvider interface."""
    assert isinstance(provider, KekProvider)
    assert provider.index_key == provider.ring.index_key


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dek=st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES), aad=st.binary(max_size=128))
def test_wrap_unwrap_round_trip(provider: LocalKekProvider, dek: bytes, aad: bytes) -> None:
    """Any data key wrapped with any aad unwraps to itself under the returned version."""
    version, wrapped = provider.wrap(dek, aad)
    assert wrapped != dek
    assert provider.unwrap(version, wrapped, aad) == dek


def test_unwrap_wrong_aad_fails(provider: LocalKekProvider) -> None:
    """A wrapped DEK presented with another DEK's associated data fails."""
    _, wrapped = provider.wrap(new_key(), dek_aad("dek_1", 1))
    with pytest.raises(DecryptionFailed):
        provider.unwrap(1, wrapped, dek_aad("dek_2", 1))


def test_unwrap_wrong_version_fails(provider: LocalKekProvider) -> None:
    """A wrapped DEK presented under another existing version fails; an unknown one too."""
    _, wrapped = provider.wrap(new_key(), b"aad")
    rotated = LocalKekProvider.from_file(rotate_keyring(provider.ring.path).path)
    with pytest.raises(DecryptionFailed):
        rotated.unwrap(2, wrapped, b"aad")
    with pytest.raises(KeyRingError, match="key version 9 does not exist"):
        rotated.unwrap(9, wrapped, b"aad")


def test_wrap_refuses_wrong_dek_length(provider: LocalKekProvider) -> None:
    """Only 256-bit data keys are wrapped."""
    with pytest.raises(ValueError, match="32 bytes"):
        provider.wrap(bytes(16), b"")


def test_load_fifo_does_not_hang(tmp_path: Path) -> None:
    """A FIFO at the path is refused at once instead of blocking start-up."""
    fifo = tmp_path / "keyring.json"
    os.mkfifo(fifo, 0o600)
    assert "not a regular file" in _load_error(fifo, [])
