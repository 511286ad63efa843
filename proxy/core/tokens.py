"""Reading tokens: the masked view, and what an off-session charge needs (resolve)."""

from __future__ import annotations

from typing import Any

from proxy.core.services import Services, vault_call
from proxy.core.views import masked_view, resolved_view
from proxy.domain.errors import Conflict, NotFound, TokenGone
from vault import Kind, Record, RecordNotFound


async def read_token(services: Services, token: str, *, resolve: bool) -> dict[str, Any]:
    """The masked view of a token, or with ``resolve`` what an off-session charge needs."""
    try:
        record = await vault_call(services, "get", services.vault.get(token))
    except RecordNotFound:
        raise NotFound("No such token.", param="token") from None
    if not resolve:
        return masked_view(record)
    refuse_if_gone(record)
    refuse_other_mode(services, record)
    # Resolving is use (the billing service is about to charge): retention counts
    # from here. Marks are batched in memory and flushed in one write.
    services.vault.mark_used(record)
    view = resolved_view(record)
    if (
        record.customer_ref is not None
        and record.kind in (Kind.CARD, Kind.BANK)
        and "partner_customer" not in view
    ):
        # Saved before records kept their partner customer: the mapping names it.
        customer = await vault_call(
            services, "get_customer", services.vault.get_partner_customer(record.customer_ref)
        )
        if customer is not None and customer.partner == record.partner:
            view["partner_customer"] = customer.reference
    return view


def refuse_other_mode(services: Services, record: Record) -> None:
    """409 for a token made in Stripe's other mode than the configured key's.

    Test and live objects live apart at Stripe (https://docs.stripe.com/keys#test-live-modes):
    a live key charging a test PaymentMethod (or the reverse) fails at the partner, after
    billing believed the token usable. Tokens stored before the mode was kept pass.
    """
    stored = record.details.get("livemode")
    current = getattr(services.partner, "livemode", None)
    if isinstance(stored, bool) and isinstance(current, bool) and stored != current:
        raise Conflict(
            "The token was made in the payment partner's "
            + ("live" if stored else "test")
            + " mode; the proxy's key acts in the other.",
            code="partner_mode_mismatch",
            param="token",
        )


def refuse_if_gone(record: Record) -> None:
    """TokenGone (410) for a token the partner can no longer charge."""
    if record.details.get("detached_at"):
        raise TokenGone(
            "The payment method was detached at the partner; it can no longer be charged.",
            param="token",
        )
    if record.kind is Kind.BANK and record.details.get("mandate_status") == "inactive":
        raise TokenGone(
            "The SEPA mandate of this bank account was revoked; it can no longer be debited.",
            code="mandate_revoked",
            param="token",
        )
