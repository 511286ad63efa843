"""Bank accounts: SEPA debit payment methods from an IBAN, tokenized as ``vtok_bank_…``.

The IBAN is validated (country, length per country, mod-97) before anything leaves
the process, travels only inside :class:`proxy.domain.hazmat.Iban`, and is sent to the
partner; the vault keeps country, bank code, last four, the masked form and the
partner's references, never the IBAN.
"""

from __future__ import annotations

from typing import Any

from proxy.core.customers import SaveRequest, partner_metadata, store_payment_method
from proxy.core.partner_sync import create_through_outbox
from proxy.core.services import Services, ensure_vault_up, partner_call
from proxy.core.views import created_view
from proxy.domain.bank import BankAccountRequest, national_bank_code, parse_bank_account_request
from vault import Kind, NewRecord, Record


async def tokenize_bank_account(
    services: Services, body: object, *, actor: str | None = None, origin: str | None = None
) -> dict[str, Any]:
    """Validate an IBAN, create a SEPA debit method at the partner, store it; return the token."""
    account = parse_bank_account_request(body)

    async def create(partner_key: str, token: str) -> dict[str, Any]:
        return await create_sepa_at_partner(services, account, partner_key, token=token)

    async def store(created: dict[str, Any], token: str, partner_key: str) -> Record:
        return await store_bank_account(
            services,
            account,
            created,
            token=token,
            actor=actor,
            origin=origin,
            outbox_key=partner_key,
        )

    record = await create_through_outbox(
        services, Kind.BANK, create=create, store=store, reference=_reference
    )
    return created_view(record)


def _reference(created: dict[str, Any]) -> str:
    return str(created["reference"])


async def create_sepa_at_partner(
    services: Services,
    account: BankAccountRequest,
    partner_key: str | None,
    *,
    token: str | None = None,
) -> dict[str, Any]:
    """The partner call for a bank account; returns the storable answer as a plain dict.

    With ``token`` the payment method names the vault token it is about to be stored under.
    """
    await ensure_vault_up(services)
    created = await partner_call(
        services,
        "create_sepa_debit",
        services.partner.create_sepa_debit(
            account,
            idempotency_key=partner_key,
            metadata=partner_metadata(token) if token else None,
        ),
    )
    fingerprint = created.fingerprint
    return {
        "reference": created.reference,
        # An idempotent request stores this dict in its key's row: the blind index only.
        "fingerprint_idx": (
            services.vault.fingerprint_index(Kind.BANK, fingerprint) if fingerprint else None
        ),
        "last4": created.last4,
        "livemode": created.livemode,
    }


async def store_bank_account(
    services: Services,
    account: BankAccountRequest,
    created: dict[str, Any],
    *,
    token: str | None,
    actor: str | None = None,
    origin: str | None = None,
    outbox_key: str | None = None,
) -> Record:
    """Seal the partner's answer under a new (or the reserved) token.

    With a customer_ref the account is saved on the customer with a mandate made from
    the shopper's acceptance; the mandate id (``mandate_…``) is kept for ``resolve``.
    """
    details = {
        "country": account.iban.country,
        # Ours, not the partner's: some partners (localstripe) report IBAN characters
        # 5-12 as the bank code, which with last4 can be nearly the whole account.
        "bank_code": national_bank_code(account.iban),
        "last4": created["last4"],
        "masked": account.iban.masked,
        # Set from the setup's mandate when saved on a customer; Stripe's sepa_debit
        # PaymentMethod carries none of its own.
        "mandate_reference": None,
    }
    # Test and live objects live apart at Stripe: resolve refuses the other mode's token.
    if isinstance(created.get("livemode"), bool):
        details["livemode"] = created["livemode"]
    record = await store_payment_method(
        services,
        NewRecord(
            kind=Kind.BANK,
            partner=services.partner.name,
            partner_reference=created["reference"],
            details=details,
            customer_ref=account.customer_ref,
            fingerprint_idx=created.get("fingerprint_idx"),
        ),
        token=token,
        save=SaveRequest(
            actor=actor, origin=origin, mandate=account.mandate, outbox_key=outbox_key
        ),
    )
    services.metrics.child(services.metrics.tokens_created, "bank").inc()
    return record
