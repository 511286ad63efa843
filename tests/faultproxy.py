"""A fault-injection HTTP proxy for tests: sits on loopback between tokenproxy and localstripe.

Its upstream is the sandbox partner (``Localstripe.base_url``): localstripe behind the
front that keeps Stripe's documented rules (``tokenproxy_sandbox.front``: SetupIntents with
mandates, customers required on PaymentIntents), so faults apply on top of those rules.

Faults are switched at run time, per test: a script of faults for the next requests,
then a default for the rest. Each fault models one way a network or partner fails:

* ``Fault.latency(s)``     forward after ``s`` seconds
* ``Fault.drop()``         forward, let the partner do the work, then close the
                           connection without answering (the answer is lost)
* ``Fault.reset()``        reset the connection (TCP RST) before forwarding
* ``Fault.error(502, retry_after="2")``  answer a Stripe-shaped error, do not forward
* ``Fault.decline()``      answer a 402 card_error (card_declined), do not forward
* ``Fault.hang()``         never answer (the client's timeout must fire)

With ``stripe_idempotency=True`` it also behaves as Stripe does with an
``Idempotency-Key`` header, which localstripe ignores: the first response for a key
is cached and replayed for the same key and body; another body gets 400
``idempotency_error``; a key whose first request is still running gets 409
``idempotency_key_in_use``. This is a
test stand-in for Stripe's documented behaviour, so that "never a second payment
method" can be counted here: ``created`` maps each idempotency key to the set of
``pm_`` ids the upstream really created for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections import defaultdict
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from tokenproxy_sandbox.launcher import free_port

_HOP_BY_HOP = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade"}
)


@dataclass(frozen=True)
class Fault:
    """One fault to apply to one request."""

    kind: str = "pass"
    delay: float = 0.0
    status: int = 500
    retry_after: str | None = None
    error_type: str = "api_error"
    code: str | None = None

    @classmethod
    def none(cls) -> Fault:
        """Forward unchanged."""
        return cls()

    @classmethod
    def latency(cls, seconds: float) -> Fault:
        """Forward after a delay."""
        return cls("latency", delay=seconds)

    @classmethod
    def drop(cls) -> Fault:
        """Forward, then close the connection instead of answering."""
        return cls("drop")

    @classmethod
    def reset(cls) -> Fault:
        """Reset the connection before forwarding."""
        return cls("reset")

    @classmethod
    def error(
        cls,
        status: int,
        *,
        retry_after: str | None = None,
        error_type: str | None = None,
        code: str | None = None,
    ) -> Fault:
        """Answer ``status`` with a Stripe-shaped error body, without forwarding."""
        kind = error_type or ("invalid_request_error" if status < 500 else "api_error")
        return cls("status", status=status, retry_after=retry_after, error_type=kind, code=code)

    @classmethod
    def decline(cls) -> Fault:
        """Answer as Stripe does for a declined card (402 card_error), without forwarding."""
        return cls("status", status=402, error_type="card_error", code="card_declined")

    @classmethod
    def hang(cls) -> Fault:
        """Never answer."""
        return cls("hang")


@dataclass
class _Cached:
    body_digest: bytes
    status: int
    body: bytes
    content_type: str


@dataclass
class Seen:
    """A request the fault proxy received."""

    method: str
    path: str
    idempotency_key: str | None
    fault: str


@dataclass
class FaultProxy:
    """The proxy; ``await start()``, point the partner base URL at ``base_url``."""

    upstream: str
    stripe_idempotency: bool = False
    default: Fault = field(default_factory=Fault.none)
    seen: list[Seen] = field(default_factory=list)
    upstream_calls: int = 0
    created: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    _script: list[Fault] = field(default_factory=list)
    _cache: dict[str, _Cached] = field(default_factory=dict)
    _in_flight: set[str] = field(default_factory=set)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    port: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    # Requests being handled now, and the most ever handled at once.
    in_flight: int = 0
    most_in_flight: int = 0

    @property
    def base_url(self) -> str:
        """Where clients should send partner requests."""
        return f"http://127.0.0.1:{self.port}"

    def script(self, *faults: Fault, then: Fault | None = None) -> None:
        """Apply ``faults`` to the next requests in order, then ``then`` (default: none)."""
        self._script = list(faults)
        self.default = then or Fault.none()

    def payment_method_posts(self) -> list[Seen]:
        """The POST /v1/payment_methods requests received (faulted or not)."""
        return [s for s in self.seen if s.method == "POST" and s.path == "/v1/payment_methods"]

    async def start(self) -> FaultProxy:
        """Listen on a free loopback port."""
        app = web.Application(client_max_size=1024**2)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def close(self) -> None:
        """Stop listening and close the upstream session."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self._serve(request)
        finally:
            self.in_flight -= 1

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        fault = self._script.pop(0) if self._script else self.default
        key = request.headers.get("Idempotency-Key")
        self.seen.append(Seen(request.method, request.path, key, fault.kind))
        self.arrived.set()
        body = await request.read()
        if fault.kind == "latency":
            await asyncio.sleep(fault.delay)
        elif fault.kind == "hang":
            await asyncio.sleep(3600)
        elif fault.kind == "reset":
            _reset(request)
            return web.Response()
        elif fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return _stripe_error(
                fault.status, fault.error_type, "Injected fault.", headers, code=fault.code
            )
        response = await self._forward(request, body, key)
        if fault.kind == "drop":
            # The partner did the work; the answer never reaches the caller.
            assert request.transport is not None
            request.transport.abort()
        return response

    async def _forward(self, request: web.Request, body: bytes, key: str | None) -> web.Response:
        if not (self.stripe_idempotency and key and request.method == "POST"):
            return await self._upstream(request, body, key)
        digest = body  # exact parameters, as Stripe compares them
        cached = self._cache.get(key)
        if cached is not None:
            if cached.body_digest != digest:
                return _stripe_error(
                    400,
                    "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters.",
                )
            return web.Response(
                status=cached.status,
                body=cached.body,
                headers={"Content-Type": cached.content_type, "Idempotent-Replayed": "true"},
            )
        if key in self._in_flight:
            # Stripe's body for it (https://docs.stripe.com/error-codes#idempotency-key-in-use).
            return _stripe_error(
                409,
                "invalid_request_error",
                "There is currently another in-progress request using this Idempotent Key.",
                code="idempotency_key_in_use",
            )
        self._in_flight.add(key)
        try:
            response = await self._upstream(request, body, key)
            if response.status < 500:
                assert isinstance(response.body, bytes)
                self._cache[key] = _Cached(
                    digest, response.status, response.body, response.content_type
                )
            return response
        finally:
            self._in_flight.discard(key)

    async def _upstream(self, request: web.Request, body: bytes, key: str | None) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as resp:
            payload = await resp.read()
            self.upstream_calls += 1
            if request.method == "POST" and request.path == "/v1/payment_methods" and resp.ok:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    self.created[key or "<none>"].add(json.loads(payload)["id"])
            return web.Response(
                status=resp.status,
                body=payload,
                headers={"Content-Type": resp.headers.get("Content-Type", "application/json")},
            )


def _stripe_error(
    status: int,
    kind: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    code: str | None = None,
) -> web.Response:
    error = {"type": kind, "message": message, **({"code": code} if code else {})}
    body = json.dumps({"error": error}).encode()
    return web.Response(
        status=status, body=body, headers={"Content-Type": "application/json", **(headers or {})}
    )


def _reset(request: web.Request) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), as a crashed middlebox would."""
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
