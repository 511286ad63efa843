"""Finishing a card save that needed its holder: ``POST /v1/cards/confirm``.

Saving a card on a customer goes through the partner's off-session setup. When the
issuer wants the cardholder to authenticate (3-D Secure), ``POST /v1/cards`` answers
402 ``authentication_required`` with the partner's ``next_action`` and an opaque
``setup``, and issues no token. The checkout sends the shopper through
``next_action``; back on its ``return_url`` it posts ``{"setup": ...}`` here. The proxy
then asks the partner for the setup's state, never the checkout's word for it: only a
setup that succeeded, for the same payment method and the customer still mapped to the
customer_ref, becomes a token.
"""

from __future__ import annotations

from proxy.core.customers import PendingSetup, SaveRequest, open_pending, store_saved
from proxy.core.services import Services, partner_call, vault_call
from proxy.domain.decode import decode
from proxy.domain.errors import (
    AuthenticationRequired,
    Conflict,
    InvalidRequest,
    PartnerDeclined,
    PartnerError,
)
from proxy.domain.schemas import SETUP_MAX, CardConfirmRequestBody
from vault import Record, RecordNotFound


def parse_confirm_request(body: object) -> str:
    """The sealed setup from a ``POST /v1/cards/confirm`` body."""
    setup: object = decode(body, CardConfirmRequestBody).setup
    if not isinstance(setup, str) or not 1 <= len(setup) <= SETUP_MAX:
        raise InvalidRequest(
            "setup must be the string a 402 authentication_required answer gave.",
            code="invalid_setup",
            param="setup",
        )
    return setup


async def confirm_card_setup(
    services: Services, sealed: str, *, client: str | None, token: str | None = None
) -> Record:
    """Store the card of a pending setup once the partner reports the setup succeeded.

    402 ``authentication_required`` again while the shopper has not finished; 402
    ``setup_failed`` when authentication failed or the setup was abandoned; 409
    ``customer_changed`` when the customer was erased in between.
    """
    pending = open_pending(services, sealed, client)
    # The token the payment method and its setup name at the partner, when the setup
    # kept it; an idempotent confirm passes the same one (see proxy.core.create).
    token = token or pending.token
    setup = await partner_call(services, "get_setup", services.partner.get_setup(pending.intent))
    if setup.payment_method != pending.new.partner_reference or setup.customer != pending.customer:
        raise PartnerError(
            "The payment partner's setup does not match the card.", code="partner_bad_response"
        )
    if setup.status == "requires_action":
        raise AuthenticationRequired(setup=sealed, next_action=setup.next_action)
    if not setup.succeeded:
        raise PartnerDeclined(
            "The card was not saved: authentication failed or was abandoned.",
            code="setup_failed",
        )
    customer_ref = pending.new.customer_ref
    assert customer_ref is not None  # noqa: S101 - only customer cards are set up
    vault = services.vault
    async with services.locks.hold(customer_ref):
        if token is not None and (done := await _confirmed(services, token, pending)):
            # Confirmed before (another request, or a retry under a new key): the same
            # token, never a second one for the same payment method.
            return done
        mapped = await vault_call(
            services, "get_customer", vault.get_partner_customer(customer_ref)
        )
        if mapped is None or mapped.reference != pending.customer:
            raise Conflict(
                "The customer was erased while the card awaited authentication.",
                code="customer_changed",
            )
        return await store_saved(
            services,
            pending.new,
            pending.customer,
            setup,
            token=token,
            save=SaveRequest(actor=client),
            # The setup succeeded at the partner and cannot be made again: on a vault
            # failure keep the card saved there, so the checkout's retry can finish.
            undo_on_failure=False,
        )


async def _confirmed(services: Services, token: str, pending: PendingSetup) -> Record | None:
    """The record an earlier confirm stored for this setup under ``token``, if any."""
    try:
        record: Record = await vault_call(services, "get", services.vault.get(token))
    except RecordNotFound:
        return None
    if record.partner_reference != pending.new.partner_reference:
        raise Conflict("The token belongs to another payment method.", code="conflict")
    return record
