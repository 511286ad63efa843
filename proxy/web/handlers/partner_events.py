"""Partner events: Stripe's webhook deliveries, authenticated by their signature."""

from __future__ import annotations

from aiohttp import web

from proxy.core import partner_sync
from proxy.domain.errors import InvalidSignature, ServiceUnavailable
from proxy.partners.stripe_events import verify_event
from proxy.web.appkeys import METRICS, SERVICES, SETTINGS
from proxy.web.middleware import read_body


async def stripe_events(request: web.Request) -> web.Response:
    """POST /v1/partners/stripe/events: apply a signed Stripe event once, in order.

    No client key: the ``Stripe-Signature`` header is the authentication. The raw body
    is verified as received and never logged (a partner object may name a customer).
    """
    secrets = request.app[SETTINGS].stripe_webhook_secrets
    if not secrets:
        raise ServiceUnavailable(
            "Partner events are not configured on this proxy.", code="webhooks_not_configured"
        )
    raw = await read_body(request)
    try:
        event = verify_event(raw, request.headers.get("Stripe-Signature"), secrets)
    except InvalidSignature as exc:
        metrics = request.app[METRICS]
        metrics.child(metrics.sync.events_rejected, exc.reason).inc()
        raise
    result = await partner_sync.receive_event(request.app[SERVICES], event)
    return web.json_response(result)
