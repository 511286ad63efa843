"""The sandbox partner's front: localstripe, plus the Stripe rules it leaves out.

localstripe (run as its own process, never imported: it is GPL) is lenient where the
billing path depends on Stripe being strict, and lacks what saving a payment method for
off-session use returns. This small HTTP front sits before it in the dev stack and the
tests and behaves as Stripe documents, each rule citing the page it follows:

* ``POST /v1/setup_intents`` with ``payment_method``, ``confirm``, ``mandate_data`` and
  ``return_url`` (localstripe takes none of them at creation): created, then confirmed.
  On success the payment method is attached to the SetupIntent's customer and, with
  ``mandate_data``, a Mandate is made; with a ``return_url`` a card that needs 3-D
  Secure gets a ``redirect_to_url`` next action whose page completes the authentication.
* ``GET /v1/setup_intents/{id}`` carries its ``mandate``; ``GET /v1/mandates/{id}``.
* ``POST /v1/payment_intents`` refuses a payment method that belongs to a customer
  when ``customer`` names another or none, and checks ``mandate`` against the method.
* ``sepa_debit`` PaymentMethods lose the legacy Sources fields ``mandate_reference`` and
  ``mandate_url``, which Stripe's PaymentMethod object does not have.
* ``POST`` with an ``Idempotency-Key`` (which localstripe ignores) behaves as Stripe
  documents: the first answer, a 500 included, is saved and replayed for the same key
  and parameters; other parameters get 400 ``idempotency_error``; a key whose first
  request still runs gets 409 ``idempotency_key_in_use``.
* ``POST /v1/payment_methods/{id}/detach`` of a method saved on no customer is refused
  (localstripe detaches it).
* Card PaymentMethods carry the brand Stripe would name from the number (localstripe
  names every card ``visa``).
* ``allow_redisplay`` on ``POST /v1/payment_methods`` is taken as Stripe takes it
  (``always``, ``limited`` or ``unspecified``, the default) and shown on the method;
  localstripe refuses the parameter.
* ``GET /v1/subscriptions?customer=`` lists a customer's subscriptions that are not
  canceled (localstripe lists them only under the customer).
* ``PUT /_sandbox/rate_limit`` (``{rate, burst}``) turns on a limiter like Stripe's: an
  API request past ``burst`` at ``rate`` a second gets 429 ``rate_limit`` before the
  idempotency layer runs (https://docs.stripe.com/rate-limits); ``GET`` says how many
  it refused, ``DELETE /_sandbox/faults`` turns it off.
* Every API request is recorded (method, path, ``Stripe-Version``, ``Idempotency-Key``)
  for ``GET /_sandbox/requests``; ``POST /_sandbox/faults`` scripts answers Stripe gives
  and localstripe never does (5xx, 429, documented error bodies), ``DELETE`` clears both.

Run it as ``python -m tokenproxy_sandbox.front --port P --upstream URL``;
``tokenproxy_sandbox.launcher`` starts it in front of localstripe.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
from aiohttp import web

_HOP_BY_HOP = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade"}
)
_CREATE_ONLY = ("customer", "usage", "metadata", "payment_method_types")
_SANDBOX_AUTH = "Bearer sk_test_localstripe"


@dataclass
class _Setup:
    customer: str | None
    payment_method: str | None = None
    mandate_data: dict[str, str] = field(default_factory=dict)
    return_url: str | None = None
    mandate: str | None = None


# Answers Stripe gives before its idempotency layer runs, so never saved under a key.
_NOT_SAVED = frozenset({401, 403, 409, 429})
_REDISPLAY = frozenset({"always", "limited", "unspecified"})
_SAVED_MAX = 10_000


@dataclass
class _Saved:
    """The first answer given for an idempotency key, and the parameters it was for."""

    params: str
    status: int
    body: bytes


@dataclass
class _Fault:
    """A scripted answer for the next ``times`` requests matching method and path."""

    method: str
    path: re.Pattern[str]
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    times: int


@dataclass
class _RateLimit:
    """Stripe's rate limiter as a GCRA token bucket: ``rate`` a second, ``burst`` at once."""

    rate: float
    burst: int
    tat: float = 0.0
    refused: int = 0

    def allow(self) -> bool:
        """Spend one request if the bucket has one; count it refused otherwise."""
        now, interval = time.monotonic(), 1.0 / self.rate
        base = max(self.tat, now)
        if base + interval - now > self.burst * interval + 1e-9:
            self.refused += 1
            return False
        self.tat = base + interval
        return True


@dataclass
class StripeFront:
    """The front's state: what localstripe cannot keep for us."""

    upstream: str
    base_url: str = ""
    setups: dict[str, _Setup] = field(default_factory=dict)
    mandates: dict[str, dict[str, Any]] = field(default_factory=dict)
    session: aiohttp.ClientSession | None = None
    requests: deque[dict[str, str | None]] = field(default_factory=lambda: deque(maxlen=500))
    faults: list[_Fault] = field(default_factory=list)
    saved: dict[tuple[str, str], _Saved] = field(default_factory=dict)
    brands: dict[str, str] = field(default_factory=dict)
    redisplay: dict[str, str] = field(default_factory=dict)
    running: set[tuple[str, str]] = field(default_factory=set)
    rate_limit: _RateLimit | None = None

    # -- idempotency ---------------------------------------------------------------

    async def idempotent(
        self, request: web.Request, answer: Callable[[], Awaitable[web.Response]]
    ) -> web.Response:
        """Answer a keyed POST as Stripe's idempotency layer does.

        https://docs.stripe.com/api/idempotent_requests: "Stripe saves the status code
        and body of the first request made with a given idempotency key after endpoint
        execution begins. Retries with the same key return the saved response,
        including 500 errors"; the layer "compares incoming parameters to those of the
        original request and errors if they're not the same". The rate limiter and
        authentication run before it (https://docs.stripe.com/error-low-level), so a
        401, 403 or 429 is not saved; a concurrent request on the same key gets 409.
        """
        key = request.headers["Idempotency-Key"]
        scope = (request.headers.get("Authorization", ""), key)
        params = request.method + " " + request.path + "\n" + (await request.text())
        saved = self.saved.get(scope)
        if saved is not None:
            if saved.params != params:
                return web.json_response(
                    {
                        "error": {
                            "type": "idempotency_error",
                            "message": "Keys for idempotent requests can only be used with "
                            "the same parameters they were first used with.",
                        }
                    },
                    status=400,
                )
            return web.Response(
                status=saved.status,
                body=saved.body,
                content_type="application/json",
                headers={"Idempotent-Replayed": "true", "Idempotency-Key": key},
            )
        if scope in self.running:
            return _error(
                409,
                "There is currently another in-progress request using this Idempotent Key.",
                "idempotency_key",
                code="idempotency_key_in_use",
            )
        self.running.add(scope)
        try:
            response = await answer()
        finally:
            self.running.discard(scope)
        if response.status not in _NOT_SAVED and isinstance(response.body, bytes):
            if len(self.saved) >= _SAVED_MAX:
                self.saved.pop(next(iter(self.saved)))
            self.saved[scope] = _Saved(params, response.status, response.body)
        return response

    # -- what tests script and read ------------------------------------------------

    def record(self, request: web.Request) -> None:
        """Keep what a test may ask about a request: never its body (card data)."""
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "stripe_version": request.headers.get("Stripe-Version"),
                "idempotency_key": request.headers.get("Idempotency-Key"),
            }
        )

    def scripted(self, request: web.Request) -> web.Response | None:
        """The scripted answer for this request, if a fault matches it (used up in order)."""
        for fault in self.faults:
            if fault.method == request.method and fault.path.fullmatch(request.path):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                headers = {"Request-Id": "req_" + secrets.token_hex(7), **fault.headers}
                return web.json_response(fault.body, status=fault.status, headers=headers)
        return None

    async def add_fault(self, request: web.Request) -> web.Response:
        """``POST /_sandbox/faults``: ``{method, path (a regex), status, body, headers, times}``."""
        doc = await request.json()
        self.faults.append(
            _Fault(
                method=str(doc.get("method", "POST")).upper(),
                path=re.compile(str(doc["path"])),
                status=int(doc["status"]),
                body=dict(doc.get("body") or {}),
                headers={str(k): str(v) for k, v in (doc.get("headers") or {}).items()},
                times=int(doc.get("times", 1)),
            )
        )
        return web.json_response({"faults": len(self.faults)})

    async def set_rate_limit(self, request: web.Request) -> web.Response:
        """``PUT /_sandbox/rate_limit``: ``{rate, burst}`` limits every API request from now."""
        doc = await request.json()
        self.rate_limit = _RateLimit(rate=float(doc["rate"]), burst=int(doc["burst"]))
        return web.json_response({"refused": 0})

    async def get_rate_limit(self, _request: web.Request) -> web.Response:
        """``GET /_sandbox/rate_limit``: how many requests the limiter refused."""
        return web.json_response({"refused": self.rate_limit.refused if self.rate_limit else 0})

    async def reset(self, _request: web.Request) -> web.Response:
        """``DELETE /_sandbox/faults``: forget scripted faults, recorded requests, saved keys,
        and turn the rate limiter off."""
        self.rate_limit = None
        self.faults.clear()
        self.requests.clear()
        self.saved.clear()
        return web.json_response({})

    async def list_requests(self, _request: web.Request) -> web.Response:
        """``GET /_sandbox/requests``: the recorded requests, oldest first."""
        return web.json_response(list(self.requests))

    # -- plumbing ----------------------------------------------------------------

    async def call(
        self,
        request: web.Request | None,
        method: str,
        path: str,
        form: list[tuple[str, str]] | None,
    ) -> tuple[int, Any]:
        """Send one request to localstripe with the caller's auth; status and JSON body."""
        assert self.session is not None  # noqa: S101 - set by the app's startup
        auth = request.headers.get("Authorization", "") if request else _SANDBOX_AUTH
        headers = {"Authorization": auth}
        data = None
        if form is not None:
            data = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        async with self.session.request(
            method, self.upstream + path, headers=headers, data=data
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    async def forward(self, request: web.Request) -> web.Response:
        """Pass a request through unchanged, applying the response rules."""
        assert self.session is not None  # noqa: S101
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        redisplay = "unspecified"
        if request.method == "POST" and request.path == "/v1/payment_methods":
            # Stripe takes allow_redisplay on a new PaymentMethod, "unspecified" by default
            # (https://docs.stripe.com/api/payment_methods/create#create_payment_method-allow_redisplay);
            # localstripe answers 400 "Unexpected allow_redisplay", so it stops here.
            form = parse_qsl(body.decode(), keep_blank_values=True)
            given = [value for name, value in form if name == "allow_redisplay"]
            if given:
                if given[-1] not in _REDISPLAY:
                    return _error(400, "Invalid allow_redisplay.", "allow_redisplay")
                redisplay = given[-1]
                body = urlencode([(n, v) for n, v in form if n != "allow_redisplay"]).encode()
        async with self.session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as resp:
            payload = await resp.read()
            status = resp.status
        if request.path.startswith("/v1/payment_methods") and status == 200:
            doc = json.loads(payload)
            if request.method == "POST" and request.path == "/v1/payment_methods":
                number = dict(parse_qsl(body.decode(), keep_blank_values=True)).get("card[number]")
                if number and isinstance(doc, dict) and "id" in doc:
                    self.brands[doc["id"]] = _stripe_brand(number)
                if isinstance(doc, dict) and "id" in doc:
                    self.redisplay[doc["id"]] = redisplay
            payload = json.dumps(self._with_brands(_without_legacy_mandate(doc))).encode()
        return web.Response(status=status, body=payload, content_type="application/json")

    def _with_brands(self, body: Any) -> Any:
        """Card methods with the brand Stripe names from their number, and every method
        with its allow_redisplay."""
        list_body = isinstance(body, dict) and body.get("object") == "list"
        items = body.get("data") if list_body else [body]
        for item in items or []:
            if isinstance(item, dict) and item.get("object") == "payment_method":
                item["allow_redisplay"] = self.redisplay.get(item.get("id"), "unspecified")
            card = item.get("card") if isinstance(item, dict) else None
            if isinstance(card, dict) and item.get("id") in self.brands:
                card["brand"] = self.brands[item["id"]]
        return body

    # -- SetupIntents ------------------------------------------------------------

    async def create_setup_intent(self, request: web.Request) -> web.Response:
        """Create (and with ``confirm`` confirm) a SetupIntent as Stripe does.

        https://docs.stripe.com/api/setup_intents/create: ``payment_method``,
        ``confirm``, ``mandate_data`` ("can only be used with confirm=true") and
        ``return_url`` are accepted at creation, and "if present, the SetupIntent's
        payment method will be attached to the Customer on successful setup".
        """
        form = parse_qsl((await request.read()).decode(), keep_blank_values=True)
        create = [(k, v) for k, v in form if k.split("[")[0] in _CREATE_ONLY]
        params = dict(form)
        mandate_data = {k: v for k, v in form if k.startswith("mandate_data[")}
        confirm = params.get("confirm") == "true"
        if mandate_data and not confirm:
            return _error(400, "mandate_data can only be used with confirm=true.", "mandate_data")
        if mandate_data and (problem := _acceptance_problem(mandate_data)):
            return _error(400, problem, "mandate_data")
        customer = params.get("customer")
        if customer:
            # https://docs.stripe.com/error-codes#resource-missing: a deleted or unknown
            # customer is 400 resource_missing on its param; localstripe takes any id.
            found, doc = await self.call(request, "GET", f"/v1/customers/{customer}", None)
            if found != 200 or (isinstance(doc, dict) and doc.get("deleted")):
                return _error(
                    400, f"No such customer: '{customer}'", "customer", code="resource_missing"
                )
        status, intent = await self.call(request, "POST", "/v1/setup_intents", create)
        if status != 200:
            return web.json_response(intent, status=status)
        setup = _Setup(
            customer=params.get("customer"),
            mandate_data=mandate_data,
            return_url=params.get("return_url"),
        )
        self.setups[intent["id"]] = setup
        if not confirm:
            return web.json_response(self.present(intent))
        confirm_form = []
        if "payment_method" in params:
            confirm_form.append(("payment_method", params["payment_method"]))
        return await self.confirm(request, intent["id"], confirm_form)

    async def confirm_setup_intent(self, request: web.Request) -> web.Response:
        """``POST /v1/setup_intents/{id}/confirm``, with the same success rules."""
        form = parse_qsl((await request.read()).decode(), keep_blank_values=True)
        intent_id = request.match_info["id"]
        setup = self.setups.setdefault(intent_id, _Setup(customer=None))
        extra = {k: v for k, v in form if k.startswith("mandate_data[")}
        if extra:
            if problem := _acceptance_problem(extra):
                return _error(400, problem, "mandate_data")
            setup.mandate_data = extra
        if "return_url" in dict(form):
            setup.return_url = dict(form)["return_url"]
        passed = [(k, v) for k, v in form if k in ("payment_method", "client_secret")]
        return await self.confirm(request, intent_id, passed)

    async def confirm(
        self, request: web.Request, intent_id: str, form: list[tuple[str, str]]
    ) -> web.Response:
        """Confirm at localstripe, then do what Stripe does on success."""
        status, intent = await self.call(
            request, "POST", f"/v1/setup_intents/{intent_id}/confirm", form
        )
        if status != 200:
            return web.json_response(intent, status=status)
        await self.on_status(request, intent)
        return web.json_response(self.present(intent))

    async def on_status(self, request: web.Request | None, intent: dict[str, Any]) -> None:
        """Attach and make the mandate once succeeded (Stripe does both on success)."""
        setup = self.setups[intent["id"]]
        setup.payment_method = intent.get("payment_method")
        if intent.get("status") != "succeeded" or setup.payment_method is None:
            return
        if setup.customer:
            # https://docs.stripe.com/api/setup_intents/object#setup_intent_object-customer:
            # "the SetupIntent's payment method will be attached to the Customer on
            # successful setup".
            await self.call(
                request,
                "POST",
                f"/v1/payment_methods/{setup.payment_method}/attach",
                [("customer", setup.customer)],
            )
        if setup.mandate_data and setup.mandate is None:
            setup.mandate = self.make_mandate(setup)

    def make_mandate(self, setup: _Setup) -> str:
        """A Mandate as https://docs.stripe.com/api/mandates/object describes it."""
        data = setup.mandate_data
        prefix = "mandate_data[customer_acceptance]"
        mandate_id = "mandate_" + secrets.token_hex(12)
        reference = secrets.token_hex(8).upper()
        self.mandates[mandate_id] = {
            "id": mandate_id,
            "object": "mandate",
            "customer_acceptance": {
                "type": data.get(f"{prefix}[type]"),
                "accepted_at": int(data.get(f"{prefix}[accepted_at]") or time.time()),
                "online": {
                    "ip_address": data.get(f"{prefix}[online][ip_address]"),
                    "user_agent": data.get(f"{prefix}[online][user_agent]"),
                },
            },
            "livemode": False,
            "multi_use": {},
            "payment_method": setup.payment_method,
            "payment_method_details": {
                "type": "sepa_debit",
                "sepa_debit": {
                    "reference": reference,
                    "url": f"{self.base_url}/mandates/{reference}",
                },
            },
            "status": "active",
            "type": "multi_use",
        }
        return mandate_id

    def present(self, intent: dict[str, Any]) -> dict[str, Any]:
        """The SetupIntent as Stripe shows it: its ``mandate`` and a redirect next action."""
        setup = self.setups.get(intent["id"])
        intent = dict(intent)
        intent["mandate"] = setup.mandate if setup else None
        if intent.get("status") == "requires_action" and setup and setup.return_url:
            # https://docs.stripe.com/api/setup_intents/create#create_setup_intent-return_url:
            # with a return_url, a card needing 3-D Secure is sent to a page, then back.
            intent["next_action"] = {
                "type": "redirect_to_url",
                "redirect_to_url": {
                    "url": f"{self.base_url}/_sandbox/authenticate/{intent['id']}",
                    "return_url": setup.return_url,
                },
            }
        return intent

    async def get_setup_intent(self, request: web.Request) -> web.Response:
        """``GET /v1/setup_intents/{id}`` with its mandate."""
        status, intent = await self.call(request, "GET", request.path_qs, None)
        if status != 200:
            return web.json_response(intent, status=status)
        self.setups.setdefault(intent["id"], _Setup(customer=intent.get("customer")))
        return web.json_response(self.present(intent))

    async def authenticate(self, request: web.Request) -> web.Response:
        """The sandbox's 3-D Secure page: ``?result=fail`` fails, else it succeeds.

        Success confirms the SetupIntent at localstripe (its way of completing
        authentication) and redirects to the return_url, as Stripe's page does.
        """
        intent_id = request.match_info["id"]
        setup = self.setups.get(intent_id)
        if setup is None:
            raise web.HTTPNotFound
        # The shopper's browser holds no API key: the page acts with the sandbox's own.
        if request.query.get("result") == "fail":
            await self.call(None, "POST", f"/v1/setup_intents/{intent_id}/cancel", [])
        else:
            status, intent = await self.call(
                None, "POST", f"/v1/setup_intents/{intent_id}/confirm", []
            )
            if status == 200:
                await self.on_status(None, intent)
        if setup.return_url:
            raise web.HTTPFound(setup.return_url)
        return web.Response(text="authenticated")

    async def get_mandate(self, request: web.Request) -> web.Response:
        """``GET /v1/mandates/{id}`` (https://docs.stripe.com/api/mandates/retrieve)."""
        mandate = self.mandates.get(request.match_info["id"])
        if mandate is None:
            return _error(404, "No such mandate.", "mandate", code="resource_missing")
        return web.json_response(mandate)

    # -- PaymentMethods ----------------------------------------------------------

    async def detach_payment_method(self, request: web.Request) -> web.Response:
        """Refuse to detach what is attached to no customer, as Stripe does.

        https://docs.stripe.com/api/payment_methods/detach detaches "a PaymentMethod
        object from a Customer"; for one saved on none Stripe answers 400 "The payment
        method you provided is not attached to a customer so detachment is impossible."
        """
        method = request.match_info["id"]
        status, pm = await self.call(request, "GET", f"/v1/payment_methods/{method}", None)
        if status == 200 and not pm.get("customer"):
            return _error(
                400,
                "The payment method you provided is not attached to a customer so detachment"
                " is impossible.",
                "payment_method",
            )
        return await self.forward(request)

    # -- Subscriptions -----------------------------------------------------------

    async def list_subscriptions(self, request: web.Request) -> web.Response:
        """``GET /v1/subscriptions?customer=``, as Stripe lists them.

        https://docs.stripe.com/api/subscriptions/list: "By default, returns a list of
        subscriptions that have not been canceled"; ``customer`` filters by customer.
        """
        customer = request.query.get("customer")
        if not customer:
            return await self.forward(request)
        status, found = await self.call(
            request, "GET", f"/v1/customers/{customer}/subscriptions", None
        )
        if status != 200:
            return web.json_response(found, status=status)
        data = [s for s in found.get("data", []) if s.get("status") != "canceled"]
        return web.json_response(
            {"object": "list", "url": "/v1/subscriptions", "has_more": False, "data": data}
        )

    # -- PaymentIntents ----------------------------------------------------------

    async def create_payment_intent(self, request: web.Request) -> web.Response:
        """Refuse what Stripe refuses, then let localstripe charge.

        https://docs.stripe.com/api/payment_intents/create#create_payment_intent-customer:
        "Payment methods attached to other Customers cannot be used with this
        PaymentIntent"; Stripe answers 400 asking for the customer. ``mandate``
        (https://docs.stripe.com/api/payment_intents/create#create_payment_intent-mandate)
        must be the payment method's; localstripe takes no such parameter.
        """
        form = parse_qsl((await request.read()).decode(), keep_blank_values=True)
        params = dict(form)
        method = params.get("payment_method")
        if method:
            status, pm = await self.call(request, "GET", f"/v1/payment_methods/{method}", None)
            if status != 200:
                return web.json_response(pm, status=status)
            owner = pm.get("customer")
            if owner and params.get("customer") != owner:
                return _error(
                    400,
                    f"The `payment_method` parameter supplied {method} belongs to the Customer "
                    f"{owner}. Please include the Customer in the `customer` parameter on "
                    "the PaymentIntent.",
                    "payment_method",
                )
        mandate = params.get("mandate")
        if mandate is not None:
            known = self.mandates.get(mandate)
            if known is None or known["payment_method"] != method:
                return _error(400, "No such mandate for this payment method.", "mandate")
        passed = [(k, v) for k, v in form if k != "mandate"]
        status, intent = await self.call(request, "POST", "/v1/payment_intents", passed)
        return web.json_response(intent, status=status)


def _acceptance_problem(data: dict[str, str]) -> str | None:
    """What Stripe would refuse in ``mandate_data`` (online acceptance), or None.

    https://docs.stripe.com/api/setup_intents/confirm#confirm_setup_intent-mandate_data:
    ``customer_acceptance.type`` is required; ``online`` needs ``ip_address`` and
    ``user_agent``.
    """
    prefix = "mandate_data[customer_acceptance]"
    kind = data.get(f"{prefix}[type]")
    if kind not in ("online", "offline"):
        return "mandate_data[customer_acceptance][type] must be online or offline."
    if kind == "online":
        for name in ("ip_address", "user_agent"):
            if not data.get(f"{prefix}[online][{name}]"):
                return f"Missing required param: {prefix}[online][{name}]."
    return None


# Stripe's card brands by IIN prefix, longest first; Stripe has no maestro brand
# (https://docs.stripe.com/api/payment_methods/object#payment_method_object-card-brand:
# amex, cartes_bancaires, diners, discover, eftpos_au, jcb, link, mastercard, unionpay,
# visa or unknown).
_BRAND_RANGES: tuple[tuple[int, int, int, str], ...] = (
    (4, 2221, 2720, "mastercard"),
    (4, 3528, 3589, "jcb"),
    (4, 6011, 6011, "discover"),
    (3, 644, 649, "discover"),
    (3, 300, 305, "diners"),
    (2, 51, 55, "mastercard"),
    (2, 34, 34, "amex"),
    (2, 37, 37, "amex"),
    (2, 36, 36, "diners"),
    (2, 65, 65, "discover"),
    (2, 62, 62, "unionpay"),
    (1, 4, 4, "visa"),
)


def _stripe_brand(number: str) -> str:
    """The brand Stripe names for a card number."""
    for length, low, high, brand in _BRAND_RANGES:
        if number[:length].isdigit() and low <= int(number[:length]) <= high:
            return brand
    return "unknown"


def _without_legacy_mandate(body: Any) -> Any:
    """Drop the Sources-era mandate fields localstripe puts on sepa_debit methods.

    https://docs.stripe.com/api/payment_methods/object#payment_method_object-sepa_debit
    lists bank_code, branch_code, country, fingerprint, generated_from and last4 only.
    """
    items = body.get("data") if isinstance(body, dict) and body.get("object") == "list" else [body]
    for item in items or []:
        details = item.get("sepa_debit") if isinstance(item, dict) else None
        if isinstance(details, dict):
            details.pop("mandate_reference", None)
            details.pop("mandate_url", None)
    return body


def _error(status: int, message: str, param: str, *, code: str | None = None) -> web.Response:
    error: dict[str, Any] = {"type": "invalid_request_error", "message": message, "param": param}
    if code:
        error["code"] = code
    return web.json_response({"error": error}, status=status)


def make_app(front: StripeFront) -> web.Application:
    """The front's aiohttp app: the rules above, everything else passed through."""

    @web.middleware
    async def stripe_rules(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/_sandbox/"):
            return await handler(request)
        front.record(request)
        if front.rate_limit is not None and not front.rate_limit.allow():
            # Before the idempotency layer, as at Stripe: a 429 is never saved under a key.
            return web.json_response(
                {
                    "error": {
                        "type": "invalid_request_error",
                        "code": "rate_limit",
                        "message": "Too many requests hit the API too quickly.",
                    }
                },
                status=429,
                headers={"Request-Id": "req_" + secrets.token_hex(7)},
            )

        async def answer() -> web.Response:
            scripted = front.scripted(request)
            if scripted is not None:
                return scripted
            response: web.Response = await handler(request)
            return response

        if request.method == "POST" and request.headers.get("Idempotency-Key"):
            return await front.idempotent(request, answer)
        return await answer()

    app = web.Application(middlewares=[stripe_rules])

    async def session(_app: web.Application) -> Any:
        front.session = aiohttp.ClientSession()
        yield
        await front.session.close()

    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/setup_intents", front.create_setup_intent)
    app.router.add_post("/v1/setup_intents/{id}/confirm", front.confirm_setup_intent)
    app.router.add_get("/v1/setup_intents/{id}", front.get_setup_intent)
    app.router.add_get("/v1/mandates/{id}", front.get_mandate)
    app.router.add_get("/_sandbox/authenticate/{id}", front.authenticate)
    app.router.add_post("/_sandbox/faults", front.add_fault)
    app.router.add_delete("/_sandbox/faults", front.reset)
    app.router.add_get("/_sandbox/requests", front.list_requests)
    app.router.add_put("/_sandbox/rate_limit", front.set_rate_limit)
    app.router.add_get("/_sandbox/rate_limit", front.get_rate_limit)
    app.router.add_post("/v1/payment_intents", front.create_payment_intent)
    app.router.add_get("/v1/subscriptions", front.list_subscriptions)
    app.router.add_post("/v1/payment_methods/{id}/detach", front.detach_payment_method)
    app.router.add_route("*", "/{tail:.*}", front.forward)
    return app


def main() -> None:
    """Serve the front on loopback until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    front = StripeFront(upstream=args.upstream, base_url=f"http://127.0.0.1:{args.port}")
    web.run_app(make_app(front), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
