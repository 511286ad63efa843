"""Signed Stripe events keep tokens true to the partner, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tokenproxy_sandbox.launcher import Localstripe

from pandetect import holds_pan
from proxy.web.appkeys import SERVICES
from tests.cards import card_like_run
from tests.conftest import RunningProxy, make_settings, running_proxy
from tests.helpers import bank_body, create, metrics_text, resolve
from tests.proxy.test_cards_api import card_body
from tests.stripe_events import (
    NEXT_SECRET,
    OTHER_SECRET,
    SECRET,
    card_like_event_id,
    card_pm,
    event,
    sign,
)

EVENTS = "/v1/partners/stripe/events"


@pytest.fixture
async def synced(
    tmp_path: Path,
    keyring_path: Path,
    client_keys: dict[str, str],
    localstripe: Localstripe,
    vault_url: str,
) -> AsyncIterator[RunningProxy]:
    """The proxy on the parametrised vault, with two webhook secrets (a rotation)."""
    secrets_file = tmp_path / "webhook-secrets"
    secrets_file.write_text(f"{SECRET}\n{NEXT_SECRET}\n")
    settings = make_settings(
        tmp_path,
        keyring_path,
        localstripe.base_url,
        {
            "TOKENPROXY_VAULT_URL": vault_url,
            "TOKENPROXY_STRIPE_WEBHOOK_SECRET_FILE": str(secrets_file),
        },
    )
    async with running_proxy(tmp_path, client_keys, settings) as running:
        yield running


async def deliver(
    proxy: RunningProxy, body: bytes, *, secret: str = SECRET, header: str | None = None
) -> tuple[int, dict[str, Any]]:
    """POST an event as Stripe does: no client key, the signature in Stripe-Signature."""
    headers = {"Content-Type": "application/json; charset=utf-8"}
    headers["Stripe-Signature"] = header if header is not None else sign(body, secret)
    status, payload, _ = await proxy.request("POST", EVENTS, data=body, headers=headers)
    assert payload is not None
    return status, payload


async def card_token(proxy: RunningProxy, customer: str) -> tuple[str, str, str]:
    """A card saved on ``customer``: its token, payment method and partner customer."""
    token = (await create(proxy, "/v1/cards", card_body(customer_ref=customer)))["token"]
    view = await resolve(proxy, token)
    return token, view["partner_reference"], view["partner_customer"]


async def read(proxy: RunningProxy, token: str) -> dict[str, Any]:
    """The masked view of a token."""
    status, view, _ = await proxy.request("GET", f"/v1/tokens/{token}", client="orders")
    assert status == 200, view
    assert view is not None
    return view


async def test_card_update_changes_the_masked_view_in_place(synced: RunningProxy) -> None:
    """A reissued card's new last four and expiry replace the old ones under the same token."""
    token, pm, cus = await card_token(synced, "cus-updated")
    before = await read(synced, token)
    assert (before["exp_month"], before["exp_year"]) == (12, 2034)
    assert before["last4"] != "1111"
    body = event(
        "payment_method.automatically_updated",
        card_pm(pm, cus, last4="1111", exp_month=3, exp_year=2031),
    )
    status, answer = await deliver(synced, body)
    assert status == 200, answer
    assert answer["outcome"] == "applied"
    assert answer["replayed"] is False
    after = await read(synced, token)
    assert (after["exp_month"], after["exp_year"], after["last4"]) == (3, 2031, "1111")
    assert after["masked"] == before["masked"][:-4] + "1111"
    assert (await resolve(synced, token))["partner_reference"] == pm


async def test_redelivered_event_is_applied_once(synced: RunningProxy) -> None:
    """The same event id delivered again answers 200 replayed and undoes no later change."""
    token, pm, cus = await card_token(synced, "cus-dup")
    now = int(time.time())
    first = event("payment_method.updated", card_pm(pm, cus, exp_year=2035), created=now - 10)
    second = event("payment_method.updated", card_pm(pm, cus, exp_year=2036), created=now)
    assert (await deliver(synced, first))[1]["outcome"] == "applied"
    assert (await deliver(synced, second))[1]["outcome"] == "applied"
    status, answer = await deliver(synced, first)
    assert status == 200
    assert answer == {**answer, "outcome": "applied", "replayed": True}
    assert (await read(synced, token))["exp_year"] == 2036
    assert (
        'tokenproxy_partner_events_total{outcome="replayed",type="payment_method.updated"} 1.0'
        in (await metrics_text(synced))
    )


async def test_older_event_does_not_overwrite_a_newer_change(synced: RunningProxy) -> None:
    """An event created before the change already applied arrives late and is skipped."""
    token, pm, cus = await card_token(synced, "cus-order")
    now = int(time.time())
    newer = event("payment_method.updated", card_pm(pm, cus, exp_month=7), created=now)
    older = event("payment_method.updated", card_pm(pm, cus, exp_month=5), created=now - 60)
    assert (await deliver(synced, newer))[1]["outcome"] == "applied"
    status, answer = await deliver(synced, older)
    assert (status, answer["outcome"], answer["replayed"]) == (200, "stale", False)
    assert (await read(synced, token))["exp_month"] == 7


async def test_tampered_payload_is_refused_and_counted(synced: RunningProxy) -> None:
    """A payload changed after signing is 400 invalid_signature and changes nothing."""
    token, pm, cus = await card_token(synced, "cus-tamper")
    body = event("payment_method.updated", card_pm(pm, cus, exp_month=1))
    header = sign(body, SECRET)
    tampered = body.replace(b'"exp_month": 1', b'"exp_month": 2')
    assert tampered != body
    status, answer = await deliver(synced, tampered, header=header)
    assert status == 400
    assert answer["error"]["code"] == "invalid_signature"
    assert answer["error"]["type"] == "invalid_request_error"
    assert (await read(synced, token))["exp_month"] == 12
    text = await metrics_text(synced)
    assert 'tokenproxy_partner_events_rejected_total{reason="invalid"} 1.0' in text


async def test_wrong_secret_missing_and_stale_signatures_are_refused(synced: RunningProxy) -> None:
    """A signature by another secret, none at all, or one older than 300 s is refused."""
    token, pm, _cus = await card_token(synced, "cus-badsig")
    body = event("payment_method.detached", card_pm(pm, None))
    assert (await deliver(synced, body, secret=OTHER_SECRET))[0] == 400
    assert (await deliver(synced, body, header=""))[0] == 400
    stale = sign(body, SECRET, at=int(time.time()) - 301)
    status, answer = await deliver(synced, body, header=stale)
    assert (status, answer["error"]["code"]) == (400, "invalid_signature")
    assert "detached_at" not in await read(synced, token)
    text = await metrics_text(synced)
    for reason in ("invalid", "missing", "stale"):
        assert f'tokenproxy_partner_events_rejected_total{{reason="{reason}"}} 1.0' in text


async def test_second_secret_is_accepted_during_rotation(synced: RunningProxy) -> None:
    """An event signed with the new secret of a rotation is applied like one with the old."""
    token, pm, cus = await card_token(synced, "cus-rotate")
    body = event("payment_method.updated", card_pm(pm, cus, exp_month=9))
    status, answer = await deliver(synced, body, secret=NEXT_SECRET)
    assert (status, answer["outcome"]) == (200, "applied")
    assert (await read(synced, token))["exp_month"] == 9


async def test_detached_payment_method_makes_resolve_410(synced: RunningProxy) -> None:
    """A detached payment method shows in read, and resolve answers 410 token_detached."""
    token, pm, _ = await card_token(synced, "cus-detach")
    status, answer = await deliver(synced, event("payment_method.detached", card_pm(pm, None)))
    assert (status, answer["outcome"]) == (200, "applied")
    assert "detached_at" in await read(synced, token)
    status, body, _ = await synced.request("GET", f"/v1/tokens/{token}", client="billing")
    assert status == 410
    assert body is not None
    assert body["error"]["code"] == "token_detached"


async def test_deleted_customer_detaches_all_its_tokens(synced: RunningProxy) -> None:
    """customer.deleted marks every token saved on that partner customer detached."""
    first, _, cus = await card_token(synced, "cus-gone")
    second, _, _ = await card_token(synced, "cus-gone")
    other, _, _ = await card_token(synced, "cus-stays")
    deleted = event("customer.deleted", {"id": cus, "object": "customer", "deleted": True})
    assert (await deliver(synced, deleted))[1]["outcome"] == "applied"
    assert "detached_at" in await read(synced, first)
    assert "detached_at" in await read(synced, second)
    assert "detached_at" not in await read(synced, other)


async def test_inactive_mandate_revokes_the_bank_token(synced: RunningProxy) -> None:
    """mandate.updated to inactive makes the bank token's resolve answer 410 mandate_revoked."""
    bank = await create(synced, "/v1/bank-accounts", bank_body(customer_ref="cus-sepa"))
    view = await resolve(synced, bank["token"])
    mandate = {
        "id": view["mandate_reference"] or "mandate_1",
        "object": "mandate",
        "payment_method": view["partner_reference"],
        "status": "inactive",
        "type": "multi_use",
    }
    assert (await deliver(synced, event("mandate.updated", mandate)))[1]["outcome"] == "applied"
    assert (await read(synced, bank["token"]))["mandate_status"] == "inactive"
    status, body, _ = await synced.request("GET", f"/v1/tokens/{bank['token']}", client="billing")
    assert status == 410
    assert body is not None
    assert body["error"]["code"] == "mandate_revoked"


async def test_unknown_event_type_is_ignored_and_counted(synced: RunningProxy) -> None:
    """A type the proxy does not act on answers 200 ignored, counted under its type."""
    body = event("charge.succeeded", {"id": "ch_1", "object": "charge"})
    status, answer = await deliver(synced, body)
    assert (status, answer["outcome"]) == (200, "ignored")
    text = await metrics_text(synced)
    assert 'tokenproxy_partner_events_total{outcome="ignored",type="charge.succeeded"} 1.0' in text


async def test_each_change_is_audited_and_the_body_never_logged(
    synced: RunningProxy, log_stream: Any
) -> None:
    """An applied event leaves one audit event per token, and no log line holds the payload."""
    token, pm, cus = await card_token(synced, "cus-audit")
    marker = "zz-never-logged-" + str(time.time_ns())
    last4 = (await read(synced, token))["last4"]
    body = event(
        "payment_method.updated", {**card_pm(pm, cus, exp_month=4, last4=last4), "marker": marker}
    )
    event_id = json.loads(body)["id"]
    assert (await deliver(synced, body))[1]["outcome"] == "applied"
    assert marker not in log_stream.getvalue()
    trail = [row async for row in _audit(synced)]
    updates = [e for e in trail if e["event_type"] == "token.partner_update"]
    assert len(updates) == 1
    assert updates[0]["resource"] == token
    assert json.loads(updates[0]["detail"]) == {
        "event": event_id,
        "event_type": "payment_method.updated",
        "fields": ["exp_month"],
    }


async def test_an_event_id_that_reads_as_a_card_number_is_audited_as_its_digest(
    synced: RunningProxy,
) -> None:
    """An event whose Stripe id holds a Luhn-valid digit run is applied, not refused on
    every redelivery: the trail names it by its ``event:`` digest, never the run."""
    token, pm, cus = await card_token(synced, "cus-card-like-id")
    run = card_like_run()
    event_id = card_like_event_id(run)
    assert holds_pan(event_id, hex_words=True)
    body = event("payment_method.updated", card_pm(pm, cus, exp_month=6), event_id=event_id)
    status, answer = await deliver(synced, body)
    assert status == 200, answer
    assert (answer["outcome"], answer["replayed"]) == ("applied", False)
    assert (await read(synced, token))["exp_month"] == 6
    trail = [row async for row in _audit(synced)]
    updates = [e for e in trail if e["event_type"] == "token.partner_update"]
    digest = synced.app[SERVICES].vault.audit.digest("event", event_id)
    assert [json.loads(e["detail"])["event"] for e in updates] == [digest]
    assert not any(run in json.dumps(e) for e in trail)
    status, answer = await deliver(synced, body)
    assert status == 200, answer
    assert (answer["outcome"], answer["replayed"]) == ("applied", True)


async def _audit(proxy: RunningProxy) -> AsyncIterator[dict[str, Any]]:
    """The audit trail's events, as dicts."""
    for row in await proxy.app[SERVICES].vault.backend.read_audit(limit=10_000):
        yield {
            "event_type": row.entry.event_type,
            "resource": row.entry.resource,
            "detail": row.entry.detail,
        }


async def test_without_secrets_the_endpoint_is_unavailable(proxy: RunningProxy) -> None:
    """A proxy given no webhook secret refuses events with 503 webhooks_not_configured."""
    body = event("payment_method.detached", card_pm("pm_x", None))
    status, answer = await deliver(proxy, body)
    assert (status, answer["error"]["code"]) == (503, "webhooks_not_configured")


async def test_oversized_and_non_json_deliveries_are_refused_before_verification(
    synced: RunningProxy,
) -> None:
    """The body limit and media type apply as on every route; nothing is verified or stored."""
    big = event("charge.succeeded", {"id": "ch_1", "padding": "x" * 20_000})
    status, answer = await deliver(synced, big)
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")
    body = event("charge.succeeded", {"id": "ch_2"})
    status, answer, _ = await synced.request(
        "POST",
        EVENTS,
        data=body,
        headers={"Content-Type": "text/plain", "Stripe-Signature": sign(body, SECRET)},
    )
    assert status == 415
    assert answer is not None
    assert answer["error"]["code"] == "unsupported_media_type"
    assert "tokenproxy_partner_events_total{" not in await metrics_text(synced)
