"""Fixtures of the partner adapter tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, Localstripe

from proxy.partners.stripe import StripePartner
from tests.sandbox_front import reset_front


@pytest.fixture
async def partner(localstripe: Localstripe) -> AsyncIterator[StripePartner]:
    """The real adapter against the sandbox front, with no scripted fault left over."""
    await reset_front(localstripe)
    adapter = StripePartner(SANDBOX_API_KEY, api_base=localstripe.base_url)
    yield adapter
    await adapter.close()
    await reset_front(localstripe)
