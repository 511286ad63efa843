"""Idempotent token creation: the Idempotency-Key header, Stripe's semantics.

* Same key + same body: the first answer again (status and body byte for byte), with
  ``Idempotent-Replayed: true``.
* Same key + another body: ``422 idempotency_key_reused`` (422 rather than 409: the
  request itself is wrong and retrying it can never succeed; 409 is kept for the
  transient "still in flight" case, which a retry later resolves).
* Key still being processed: ``409 idempotency_key_in_use``.
* Validation errors (400/422) are answered before the key is recorded, as Stripe
  does: fixing the body and retrying with the same key works.
* Every final answer given after the key is recorded is stored and replayed: 201, and
  any client error the request ends in, wherever it arises (a decline when the card is
  created, a decline when it is attached to the customer's partner customer, a value
  refused after the partner answered). Transient failures (partner unreachable or
  timing out, vault down, 408/409/429) are not stored: the key is released and the
  retry runs again, with the same partner idempotency key, so it completes the first
  attempt rather than repeating it.
* A replay carries the first answer's status, bytes, Content-Type and error headers.
* A key whose customer was erased: ``410 idempotency_key_erased`` until the key would
  have expired (the erased answer is never replayed, and the request is not run
  again: the partner would hand back the payment method the erasure detached). A
  request the erasure overtakes mid-flight answers the same, and a record it wrote
  for the erased customer is deleted again: its token was never handed out.

Crash recovery: the partner's answer and the token to use are stored (sealed) before
the vault write, so a retry after the process died between the two finishes the
write; one that died during the partner call repeats it with the same partner key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import structlog

from proxy.core.cards import create_at_partner, store_card
from proxy.core.customers import delete_token
from proxy.core.services import Services, vault_call
from proxy.core.views import created_view
from proxy.domain.errors import (
    IdempotencyKeyErased,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidRequest,
    NotFound,
    ProxyError,
    ServiceUnavailable,
)
from proxy.domain.requests import parse_card_request
from proxy.partners.ports import PartnerCard
from vault import (
    Claim,
    IdempotencyBusy,
    IdempotencyErased,
    IdempotencyMismatch,
    IdempotencyStore,
    Kind,
    Record,
    RecordNotFound,
    Replay,
    token_kind,
)

_log = structlog.get_logger("tokenproxy.idempotency")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Answer:
    """A response to send as is: status, JSON bytes, extra headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    # The token a fresh answer hands out, for the request's log line; never stored.
    token: str | None = None

    def encode(self) -> bytes:
        """The answer as the idempotency store keeps it (sealed, opaque to the vault).

        JSON of status, body and (when any) headers: the form every version of the
        proxy has stored, so replicas of two versions read each other's rows while an
        upgrade rolls out, and a key in flight across the upgrade still replays.
        """
        stored: dict[str, Any] = {"status": self.status, "body": self.body.decode()}
        if self.headers:
            stored["headers"] = self.headers
        return json.dumps(stored).encode()

    @classmethod
    def decode(cls, stored: bytes) -> Answer:
        """The answer :meth:`encode` made."""
        doc = json.loads(stored)
        headers = {str(k): str(v) for k, v in doc.get("headers", {}).items()}
        return cls(int(doc["status"]), str(doc["body"]).encode(), headers)


def idempotency_key(values: list[str]) -> str | None:
    """The Idempotency-Key from the header's values: None when absent; 400 unless 1-255
    printable ASCII characters in one header."""
    if not values:
        return None
    key = values[0]
    if (
        len(values) > 1
        or not 1 <= len(key) <= MAX_KEY_LENGTH
        or not all(" " <= ch <= "~" for ch in key)
    ):
        raise InvalidRequest(
            "Idempotency-Key must be one header of 1 to 255 printable ASCII characters.",
            code="invalid_idempotency_key",
            param=HEADER,
        )
    return key


def _store(services: Services) -> IdempotencyStore:
    if services.idempotency is None:
        raise ServiceUnavailable("Idempotency keys are not available.", code="vault_unavailable")
    return services.idempotency


async def tokenize_card_once(
    services: Services,
    *,
    client: str,
    key: str,
    raw: bytes,
    body: object,
    today: date,
    request_id: str,
) -> Answer:
    """Tokenize a card at most once per (client, key); replay the stored answer after that."""
    card = parse_card_request(body, today=today)

    async def partner_step(partner_key: str, token: str) -> dict[str, Any]:
        # The key's reserved token: every attempt at this key names the same one, so a
        # retry after a timeout sends the very parameters the first attempt sent
        # (Stripe compares them under one partner key).
        created = await create_at_partner(services, card, partner_key, token=token)
        return {
            "reference": created.reference,
            # Stored in the key's row: the blind index, never the fingerprint itself.
            "fingerprint_idx": fingerprint_index(services, Kind.CARD, created.fingerprint),
            "last4": created.last4,
            "partner_brand": created.partner_brand,
            # Rows written before these were kept lack them: .get() below.
            "display_brand": created.display_brand,
            "funding": created.funding,
            "country": created.country,
            "exp_month": created.exp_month,
            "exp_year": created.exp_year,
            "livemode": created.livemode,
        }

    async def store_step(stored: dict[str, Any], token: str) -> Record:
        created = PartnerCard(
            reference=stored["reference"],
            fingerprint=None,
            last4=stored["last4"],
            partner_brand=stored["partner_brand"],
            display_brand=stored.get("display_brand"),
            funding=stored.get("funding"),
            country=stored.get("country"),
            exp_month=stored.get("exp_month"),
            exp_year=stored.get("exp_year"),
            livemode=stored.get("livemode"),
        )
        return await store_card(
            services,
            card,
            created,
            token=token,
            actor=client,
            fingerprint_idx=stored.get("fingerprint_idx"),
        )

    return await create_once(
        services,
        client=client,
        key=key,
        raw=raw,
        request_id=request_id,
        customer_ref=card.customer_ref,
        kind=Kind.CARD,
        partner_step=partner_step,
        store_step=store_step,
        respond=created_view,
    )


# -- the shared flow -------------------------------------------------------------------


# Given the partner idempotency key and the token reserved for the key's record.
PartnerStep = Callable[[str, str], Awaitable[dict[str, Any]]]
StoreStep = Callable[[dict[str, Any], str], Awaitable[Record]]
Respond = Callable[[Record], dict[str, Any]]


async def create_once(
    services: Services,
    *,
    client: str,
    key: str,
    raw: bytes,
    request_id: str,
    customer_ref: str | None,
    kind: Kind,
    partner_step: PartnerStep | None,
    store_step: StoreStep,
    respond: Respond,
    token: str | None = None,
) -> Answer:
    """Create a card, bank account or invoice at most once per (client, key).

    ``partner_step`` (given the partner idempotency key and the token reserved for the
    key, the same on every attempt) returns the partner's storable answer; it is
    recorded, with that token, before ``store_step`` writes
    the record, so a retry after a crash finishes the write instead of creating again.
    Whatever final error either step ends in is stored and replayed like a 201.
    ``customer_ref`` is the customer the request names: erasing it removes the key.
    ``token``, when an earlier request already named the token at the partner (a card
    setup awaiting authentication), replaces the key's reserved token.
    """
    store = _store(services)
    begun = await _begin(services, store, client, key, raw, customer_ref=customer_ref)
    if isinstance(begun, Replay):
        first = Answer.decode(begun.answer)
        return Answer(first.status, first.body, {**first.headers, REPLAYED_HEADER: "true"})
    claim = begun
    try:
        body = await _run_claim(
            services,
            store,
            claim,
            kind=kind,
            partner_step=partner_step,
            store_step=store_step,
            respond=respond,
            token=token,
        )
    except asyncio.CancelledError:
        store.abandon(claim)
        raise
    except IdempotencyErased:
        # The customer's erasure overtook this request: what it stored belongs to the
        # erased customer under a token nobody was given, so it goes too.
        await _forget_overtaken(services, claim)
        services.metrics.child(services.metrics.idempotency, "erased").inc()
        raise _erased_error() from None
    except ProxyError as exc:
        if not exc.final:
            await _release(store, claim)
            raise
        # The request's final answer, wherever it arose (a decline at creation or at
        # attach, a value refused after the partner answered): store it to replay, then
        # let the middleware render it, from the same bytes.
        final = Answer(exc.status, exc.rendered(request_id), exc.headers)
        stored = store.complete(claim, final.encode())
        try:
            await vault_call(services, "idempotency_complete", stored)
        except BaseException:
            await _release(store, claim)
            raise
        raise
    except BaseException:
        await _release(store, claim)
        raise
    return Answer(201, body)


async def _forget_overtaken(services: Services, claim: Claim) -> None:
    """Delete (and detach) the record a request overtaken by an erasure stored, if any."""
    token = (claim.partner_result or {}).get("token")
    if not token:
        return
    try:
        await delete_token(services, token)
    except NotFound:
        return
    except ProxyError as exc:
        # Left for the next erasure of the customer, which finds it by its blind index.
        _log.warning("overtaken_record_kept", error_code=exc.code)
        return
    _log.info("overtaken_record_deleted", kind=str(token_kind(token)))


def _erased_error() -> IdempotencyKeyErased:
    return IdempotencyKeyErased(
        "This Idempotency-Key's request belonged to a customer that has since been"
        " erased; its answer is gone. Use a new key.",
        param=HEADER,
    )


async def _release(store: IdempotencyStore, claim: Claim) -> None:
    """Outcome unknown (partner timeout, vault failure): hand the key back so the client's
    retry resumes it at once, with the same partner key."""
    try:
        await store.release(claim)
    except Exception:  # noqa: BLE001 - the original error is what the client must see
        store.abandon(claim)


async def _run_claim(
    services: Services,
    store: IdempotencyStore,
    claim: Claim,
    *,
    kind: Kind,
    partner_step: PartnerStep | None,
    store_step: StoreStep,
    respond: Respond,
    token: str | None = None,
) -> bytes:
    """Do (or finish) the claimed work and store the 201; returns its body."""
    if claim.partner_result is None:
        token = token or claim.reserved_token(kind)
        result = await partner_step(claim.partner_key, token) if partner_step else {}
        result = {**result, "token": token}
        await vault_call(services, "idempotency_partner", store.record_partner(claim, result))
        existing: Record | None = None
    else:
        result = dict(claim.partner_result)
        try:
            # The process that died may have stored the token already.
            existing = await vault_call(services, "get", services.vault.get(result["token"]))
        except RecordNotFound:
            existing = None
    record = existing or await store_step(result, result["token"])
    body = json.dumps(respond(record)).encode()
    await vault_call(
        services, "idempotency_complete", store.complete(claim, Answer(201, body).encode())
    )
    return body


def fingerprint_index(services: Services, kind: Kind, fingerprint: str | None) -> str | None:
    """The keyed blind index of a partner fingerprint, as an idempotency row may hold it."""
    return services.vault.fingerprint_index(kind, fingerprint) if fingerprint else None


async def _begin(
    services: Services,
    store: IdempotencyStore,
    client: str,
    key: str,
    raw: bytes,
    *,
    customer_ref: str | None,
) -> Claim | Replay:
    counter = services.metrics.idempotency
    try:
        begun = await vault_call(
            services,
            "idempotency_begin",
            store.begin(client, key, raw, customer_ref=customer_ref),
        )
    except IdempotencyErased:
        services.metrics.child(counter, "erased").inc()
        raise _erased_error() from None
    except IdempotencyMismatch:
        services.metrics.child(counter, "reused").inc()
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used with a different request body.", param=HEADER
        ) from None
    except IdempotencyBusy:
        services.metrics.child(counter, "in_use").inc()
        raise IdempotencyKeyInUse(
            "A request with this Idempotency-Key is still being processed; retry later.",
            param=HEADER,
            headers={"Retry-After": "1"},
        ) from None
    if isinstance(begun, Replay):
        services.metrics.child(counter, "replayed").inc()
    else:
        services.metrics.child(counter, "resumed" if begun.resumed else "started").inc()
    result: Claim | Replay = begun
    return result
