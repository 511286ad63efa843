"""Known-answer, round-trip and tamper tests for vault.crypto."""

from __future__ import annotations

from typing import NamedTuple

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from vault.crypto import (
    FORMAT_V1,
    KEY_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    Sealer,
    blind_index,
    dek_aad,
    derive_subkey,
    new_key,
    open_sealed,
    record_aad,
    seal,
)
from vault.errors import DecryptionFailed


class GcmVector(NamedTuple):
    """One AES-256-GCM known answer."""

    key: bytes
    iv: bytes
    pt: bytes
    aad: bytes
    ct: bytes
    tag: bytes


def _hex_vector(*fields: str) -> GcmVector:
    return GcmVector(*(bytes.fromhex(field) for field in fields))


# Five vectors, fields in GcmVector order. The first four are from NIST CAVP
# gcmEncryptExtIV256.rsp ("The Galois/Counter Mode (GCM) and GMAC" validation files,
# gcmtestvectors.zip), [Keylen = 256] [IVlen = 96] [PTlen = 128] [Taglen = 128]:
# [AADlen = 128] Count = 0 and Count = 1, [AADlen = 160] Count = 0, [AADlen = 384] Count = 0.
# The fifth is McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", Test Case 16
# (AES-256, 60-byte plaintext, 20-byte AAD), which also covers a partial final block.
# Each was checked against cryptography's AESGCM before being written here.
GCM_VECTORS = [
    pytest.param(
        _hex_vector(
            "92e11dcdaa866f5ce790fd24501f92509aacf4cb8b1339d50c9c1240935dd08b",
            "ac93a1a6145299bde902f21a",
            "2d71bcfa914e4ac045b2aa60955fad24",
            "1e0889016f67601c8ebea4943bc23ad6",
            "8995ae2e6df3dbf96fac7b7137bae67f",
            "eca5aa77d51d4a0a14d9c51e1da474ab",
        ),
        id="nist-aad128-count0",
    ),
    pytest.param(
        _hex_vector(
            "7da3bccaffb3464178ca7c722379836db50ce0bfb47640b9572163865332e486",
            "c04fd2e701c3dc62b68738b3",
            "fd671cab1ee21f0df6bb610bf94f0e69",
            "fec0311013202e4ffdc4204926ae0ddf",
            "6be61b17b7f7d494a7cdf270562f37ba",
            "5e702a38323fe1160b780d17adad3e96",
        ),
        id="nist-aad128-count1",
    ),
    pytest.param(
        _hex_vector(
            "83688deb4af8007f9b713b47cfa6c73e35ea7a3aa4ecdb414dded03bf7a0fd3a",
            "0b459724904e010a46901cf3",
            "33d893a2114ce06fc15d55e454cf90c3",
            "794a14ccd178c8ebfd1379dc704c5e208f9d8424",
            "cc66bee423e3fcd4c0865715e9586696",
            "0fb291bd3dba94a1dfd8b286cfb97ac5",
        ),
        id="nist-aad160-count0",
    ),
    pytest.param(
        _hex_vector(
            "e4fed339c7b0cd267305d11ab0d5c3273632e8872d35bdc367a1363438239a35",
            "0365882cf75432cfd23cbd42",
            "fff39a087de39a03919fbd2f2fa5f513",
            "8a97d2af5d41160ac2ff7dd8ba098e7aa4d618f0f455957d6a6d0801796747ba"
            "57c32dfbaaaf15176528fe3a0e4550c9",
            "8d9e68f03f7e5f4a0ffaa7650d026d08",
            "3554542c478c0635285a61d1b51f6afa",
        ),
        id="nist-aad384-count0",
    ),
    pytest.param(
        _hex_vector(
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            "cafebabefacedbaddecaf888",
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
            "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
            "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            "76fc6ece0f4e1768cddf8853bb2d551b",
        ),
        id="mcgrew-viega-tc16",
    ),
]

_KEY = bytes(range(KEY_BYTES))
_AAD = record_aad("vtok_card_abc", "card", "dek_1")


@pytest.fixture(name="sealed")
def fixture_sealed() -> bytes:
    """A blob sealed under _KEY with _AAD."""
    return seal(_KEY, b"4242424242424242", _AAD)


def _assert_opaque(excinfo: pytest.ExceptionInfo[DecryptionFailed]) -> None:
    error = excinfo.value
    assert str(error) == "ciphertext failed authentication"
    assert error.__cause__ is None
    assert error.__suppress_context__ is True


@pytest.mark.parametrize("vector", GCM_VECTORS)
def test_aesgcm_known_answers(vector: GcmVector) -> None:
    """The underlying AES-256-GCM matches the published vectors."""
    assert AESGCM(vector.key).encrypt(vector.iv, vector.pt, vector.aad) == vector.ct + vector.tag


@pytest.mark.parametrize("vector", GCM_VECTORS)
def test_envelope_known_answers(vector: GcmVector) -> None:
    """Our envelope is exactly format byte, nonce, ciphertext, tag, and opens back."""
    sealer = Sealer(vector.key)
    blob = sealer._seal_with_nonce(vector.iv, vector.pt, vector.aad)
    assert blob == FORMAT_V1 + vector.iv + vector.ct + vector.tag
    assert sealer.open(blob, vector.aad) == vector.pt
    assert open_sealed(vector.key, blob, vector.aad) == vector.pt


def test_seal_layout_and_fresh_nonces() -> None:
    """A sealed blob has the v1 layout and two seals of the same input differ."""
    first = seal(_KEY, b"same", _AAD)
    second = seal(_KEY, b"same", _AAD)
    assert first[:1] == FORMAT_V1
    assert len(first) == 1 + NONCE_BYTES + len(b"same") + TAG_BYTES
    assert first[1 : 1 + NONCE_BYTES] != second[1 : 1 + NONCE_BYTES]


def test_new_key_is_random_32_bytes() -> None:
    """new_key returns 32 bytes and does not repeat."""
    assert len(new_key()) == KEY_BYTES
    assert new_key() != new_key()


@given(plaintext=st.binary(max_size=4096), aad=st.binary(max_size=512))
def test_round_trip(plaintext: bytes, aad: bytes) -> None:
    """Any plaintext sealed with any aad opens back to itself."""
    assert open_sealed(_KEY, seal(_KEY, plaintext, aad), aad) == plaintext
    sealer = Sealer(_KEY)
    assert sealer.open(sealer.seal(plaintext, aad), aad) == plaintext


@given(data=st.data())
def test_every_flipped_bit_fails(data: st.DataObject) -> None:
    """Flipping any single bit anywhere in the blob makes opening fail."""
    blob = seal(_KEY, b"4242424242424242", _AAD)
    position = data.draw(st.integers(0, len(blob) - 1), label="position")
    bit = data.draw(st.integers(0, 7), label="bit")
    tampered = bytearray(blob)
    tampered[position] ^= 1 << bit
    with pytest.raises(DecryptionFailed) as excinfo:
        open_sealed(_KEY, bytes(tampered), _AAD)
    _assert_opaque(excinfo)


@given(data=st.data())
def test_every_replaced_byte_fails(data: st.DataObject) -> None:
    """Replacing any byte with any other value makes opening fail."""
    blob = seal(_KEY, b"4242424242424242", _AAD)
    position = data.draw(st.integers(0, len(blob) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != blob[position]), label="value")
    tampered = bytearray(blob)
    tampered[position] = value
    with pytest.raises(DecryptionFailed):
        open_sealed(_KEY, bytes(tampered), _AAD)


def test_every_truncation_fails(sealed: bytes) -> None:
    """A blob cut at any length, including below the header, fails."""
    for length in range(len(sealed)):
        with pytest.raises(DecryptionFailed) as excinfo:
            open_sealed(_KEY, sealed[:length], _AAD)
        _assert_opaque(excinfo)


def test_appended_bytes_fail(sealed: bytes) -> None:
    """Bytes appended after the tag make opening fail."""
    with pytest.raises(DecryptionFailed):
        open_sealed(_KEY, sealed + b"\x00", _AAD)


@pytest.mark.parametrize("fmt", [b"\x00", b"\x02", b"\xff"])
def test_wrong_format_byte_fails(sealed: bytes, fmt: bytes) -> None:
    """An unknown format byte is refused even though the rest is authentic."""
    with pytest.raises(DecryptionFailed) as excinfo:
        open_sealed(_KEY, fmt + sealed[1:], _AAD)
    _assert_opaque(excinfo)


def test_wrong_key_fails(sealed: bytes) -> None:
    """Another key cannot open the blob, and the failure hides the library's error."""
    with pytest.raises(DecryptionFailed) as excinfo:
        open_sealed(new_key(), sealed, _AAD)
    _assert_opaque(excinfo)


@pytest.mark.parametrize("length", [0, 16, 24, 31, 33, 64])
def test_wrong_key_length_fails(sealed: bytes, length: int) -> None:
    """A key of any length other than 32 bytes fails to open, opaquely."""
    with pytest.raises(DecryptionFailed) as excinfo:
        open_sealed(_KEY[:1] * length, sealed, _AAD)
    _assert_opaque(excinfo)


@pytest.mark.parametrize("length", [16, 24])
def test_seal_refuses_short_keys(length: int) -> None:
    """Sealing never silently downgrades to AES-128 or AES-192."""
    with pytest.raises(ValueError, match="32 bytes"):
        seal(bytes(length), b"x", b"")


def test_different_aad_fails(sealed: bytes) -> None:
    """Opening with different associated data fails."""
    with pytest.raises(DecryptionFailed) as excinfo:
        open_sealed(_KEY, sealed, _AAD + b"x")
    _assert_opaque(excinfo)


@pytest.mark.parametrize(
    "moved_to",
    [
        record_aad("vtok_card_xyz", "card", "dek_1"),
        record_aad("vtok_card_abc", "bank", "dek_1"),
        record_aad("vtok_card_abc", "card", "dek_2"),
    ],
    ids=["other-token", "other-kind", "other-dek"],
)
def test_moved_ciphertext_fails(sealed: bytes, moved_to: bytes) -> None:
    """A ciphertext copied to another token, kind or customer's DEK fails authentication."""
    with pytest.raises(DecryptionFailed) as excinfo:
        open_sealed(_KEY, sealed, moved_to)
    _assert_opaque(excinfo)


def test_record_aad_is_unambiguous() -> None:
    """Shifting characters between fields changes the associated data."""
    assert record_aad("ab", "c", "d") != record_aad("a", "bc", "d")
    assert record_aad("a", "b\x00c", "d") != record_aad("a", "b", "c\x00d")
    assert record_aad("t", "k", "d").startswith(b"tokenproxy/record/v1\x00")


def test_dek_aad_binds_id_and_version() -> None:
    """A wrapped DEK's associated data differs by id, by version and from record AAD."""
    assert dek_aad("dek_1", 1) != dek_aad("dek_1", 2)
    assert dek_aad("dek_1", 1) != dek_aad("dek_2", 1)
    assert dek_aad("dek_1", 1) != record_aad("dek_1", "", "")
    with pytest.raises(ValueError, match="kek_version"):
        dek_aad("dek_1", -1)


@given(domain=st.text(min_size=1, max_size=20), value=st.text(max_size=64))
def test_blind_index_deterministic(domain: str, value: str) -> None:
    """The same key, domain and value always give the same 64-char lowercase hex digest."""
    digest = blind_index(_KEY, domain, value)
    assert digest == blind_index(_KEY, domain, value)
    assert len(digest) == 64
    assert digest == digest.lower()
    int(digest, 16)


@given(value=st.text(max_size=64))
def test_blind_index_separates_domains_and_keys(value: str) -> None:
    """Another domain or another index key gives a different digest for the same value."""
    digest = blind_index(_KEY, "fingerprint", value)
    assert digest != blind_index(_KEY, "customer", value)
    assert digest != blind_index(_KEY, "idempotency", value)
    assert digest != blind_index(new_key(), "fingerprint", value)


def test_blind_index_domain_boundary() -> None:
    """Moving characters between domain and value changes the digest."""
    assert blind_index(_KEY, "ab", "c") != blind_index(_KEY, "a", "bc")


def test_derive_subkey_separates_labels() -> None:
    """HKDF subkeys are 32 bytes, stable per label, distinct across labels and masters."""
    master = new_key()
    assert len(derive_subkey(master, "index")) == KEY_BYTES
    assert derive_subkey(master, "index") == derive_subkey(master, "index")
    assert derive_subkey(master, "index") != derive_subkey(master, "other")
    assert derive_subkey(master, "index") != derive_subkey(new_key(), "index")


def test_sealer_repr_hides_key() -> None:
    """A Sealer in a log or traceback shows no key bytes."""
    assert _KEY.hex() not in repr(Sealer(_KEY))
    assert repr(Sealer(_KEY)) == "Sealer(<key redacted>)"
