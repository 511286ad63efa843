"""Fixtures of the use-case tests."""

from __future__ import annotations

import pytest

from proxy.core.services import Services
from proxy.infra.metrics import Metrics
from proxy.partners.stripe import StripePartner
from vault import IdempotencyStore, Vault


@pytest.fixture
def services(vault: Vault, stripe_partner: StripePartner) -> Services:
    """The use cases' dependencies over the test's vault and localstripe, as create_app
    wires them."""
    return Services(
        vault=vault,
        partner=stripe_partner,
        metrics=Metrics(),
        idempotency=IdempotencyStore(vault),
    )
