"""Building the KEK provider the settings name (local key ring file or AWS KMS)."""

from __future__ import annotations

from typing import Protocol

from proxy.infra.settings import Settings
from vault.errors import KeyRingError
from vault.keys.kms import KmsKekProvider, init_kms_keyring, kms_client
from vault.keys.ring import KekProvider, LocalKekProvider, init_keyring
from vault.rotation import KeyAdmin


class AdminProvider(KekProvider, KeyAdmin, Protocol):
    """A provider that can also rotate and retire its versions (both of ours can)."""


def load_provider(settings: Settings) -> AdminProvider:
    """Load the configured provider; KeyRingError (one line) when it cannot be used."""
    if settings.kek_provider == "aws-kms":
        return KmsKekProvider.from_file(
            settings.keyring_path,
            endpoint_url=settings.kms_endpoint,
            region=settings.kms_region,
            rotate_to=settings.kms_key_id,
        )
    return LocalKekProvider.from_file(settings.keyring_path)


def init_keys(settings: Settings) -> int:
    """Create the key ring (or KMS key map) the settings name; returns the active version."""
    if settings.kek_provider == "aws-kms":
        if not settings.kms_key_id:
            raise KeyRingError("TOKENPROXY_KMS_KEY_ID must name the KMS key for version 1")
        client = kms_client(endpoint_url=settings.kms_endpoint, region=settings.kms_region)
        init_kms_keyring(settings.keyring_path, client, settings.kms_key_id)
        return 1
    return init_keyring(settings.keyring_path).active_version
