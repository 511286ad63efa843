"""Card tokenization: validate, hand the card to the partner, seal the partner's answer."""

from __future__ import annotations

from datetime import date
from typing import Any

from proxy.core.customers import SaveRequest, partner_metadata, store_payment_method
from proxy.core.partner_sync import create_through_outbox
from proxy.core.services import Services, ensure_vault_up, partner_call
from proxy.core.views import created_view
from proxy.domain.requests import CardRequest, parse_card_request
from proxy.partners.ports import PartnerCard
from vault import Kind, NewRecord, Record


async def tokenize_card(
    services: Services, body: object, *, today: date, actor: str | None = None
) -> dict[str, Any]:
    """Validate a card, hand it to the partner, store the partner's reference; return the token.

    Without an Idempotency-Key the partner call still carries a per-request partner key,
    so the proxy's own retries cannot create a second payment method.
    """
    card = parse_card_request(body, today=today)

    async def create(partner_key: str, token: str) -> PartnerCard:
        return await create_at_partner(services, card, partner_key, token=token)

    async def store(created: PartnerCard, token: str, partner_key: str) -> Record:
        return await store_card(
            services, card, created, token=token, actor=actor, outbox_key=partner_key
        )

    record = await create_through_outbox(
        services, Kind.CARD, create=create, store=store, reference=_reference
    )
    return created_view(record)


def _reference(created: PartnerCard) -> str:
    return created.reference


async def create_at_partner(
    services: Services, card: CardRequest, partner_key: str, *, token: str | None
) -> PartnerCard:
    """The partner call for a card, timed and counted; refused while the vault is down.

    With ``token`` the payment method names the vault token it is about to be stored under.
    """
    await ensure_vault_up(services)
    return await partner_call(
        services,
        "create_card",
        services.partner.create_card(
            card,
            idempotency_key=partner_key,
            metadata=partner_metadata(token) if token else None,
        ),
    )


async def store_card(
    services: Services,
    card: CardRequest,
    created: PartnerCard,
    *,
    token: str | None = None,
    actor: str | None = None,
    fingerprint_idx: str | None = None,
    outbox_key: str | None = None,
) -> Record:
    """Seal the partner's answer into the vault under a new (or the given) token.

    With a customer_ref the card is first saved on the customer's partner customer for
    off-session charges (which may need the cardholder: AuthenticationRequired).
    ``fingerprint_idx`` stands in for ``created.fingerprint`` when only its blind index
    was kept (an idempotent request resuming from its stored partner answer).
    ``outbox_key`` names the outbox row written before the partner call.
    """
    # The expiry alone is not card data, and billing needs it to act before a card expires.
    details: dict[str, Any] = {
        # The partner's brand (Stripe names no maestro; co-badged cards carry a
        # display_brand); our IIN guess only where the partner named none.
        "brand": created.partner_brand or card.brand,
        "last4": card.number.last4,
        "masked": card.number.masked,
        "exp_month": created.exp_month or card.exp_month,
        "exp_year": created.exp_year or card.exp_year,
    }
    details.update(
        (name, value)
        for name, value in (
            ("display_brand", created.display_brand),
            ("funding", created.funding),
            ("country", created.country),
            ("livemode", created.livemode),
        )
        if value is not None
    )
    record = await store_payment_method(
        services,
        NewRecord(
            kind=Kind.CARD,
            partner=services.partner.name,
            partner_reference=created.reference,
            details=details,
            customer_ref=card.customer_ref,
            metadata=card.metadata,
            fingerprint=created.fingerprint,
            fingerprint_idx=fingerprint_idx,
        ),
        token=token,
        save=SaveRequest(actor=actor, return_url=card.return_url, outbox_key=outbox_key),
    )
    services.metrics.child(services.metrics.tokens_created, "card").inc()
    return record
