"""The async client: one aiohttp session, timeouts, and retries only where they are safe."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import date
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import aiohttp

from tokenproxy_client._errors import (
    IDEMPOTENCY_KEY_IN_USE,
    MISSING_SCOPE,
    APIConnectionError,
    APIError,
    APITimeoutError,
    PermissionDeniedError,
    TokenProxyError,
    error_for,
)
from tokenproxy_client._models import (
    BankAccountToken,
    CardToken,
    CustomerErasure,
    CustomerExport,
    Deletion,
    InvoiceToken,
    ResolvedToken,
    TokenPage,
    TokenView,
)

# 429 and 503 say "not now", nothing happened. 409 only when the Idempotency-Key is in
# use by a request still running (a reused key with another body is a real conflict).
DEFAULT_RETRY_STATUSES: Final = frozenset({429, 503})
# The server's largest page (GET /v1/customers/{ref}/tokens?limit=).
MAX_PAGE_SIZE: Final = 100


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry: exponential backoff with full jitter, Retry-After obeyed."""

    max_retries: int = 2
    backoff: float = 0.25
    max_backoff: float = 4.0
    max_retry_after: float = 30.0

    def delay(self, attempt: int, error: TokenProxyError | None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        retry_after = error.headers.get("Retry-After") if error is not None else None
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_retry_after)
            except ValueError:
                pass
        cap = min(self.max_backoff, self.backoff * (2**attempt))
        return random.uniform(0, cap)  # noqa: S311 - jitter, not a secret


def _retryable(error: TokenProxyError) -> bool:
    if isinstance(error, APIConnectionError):
        # Safe for GET and DELETE (idempotent) and for POST (same Idempotency-Key).
        return True
    if error.status in DEFAULT_RETRY_STATUSES:
        return True
    return error.status == 409 and error.code == IDEMPOTENCY_KEY_IN_USE


def _path(*parts: str) -> str:
    # Tokens and customer refs go into the path: quote everything, slashes included.
    return "/" + "/".join(quote(p, safe="") for p in parts)


class TokenProxyClient:
    """An async tokenproxy client. Use as ``async with``; one session, connections reused.

    ``session`` lets a service share its own aiohttp session (it is then not closed here).
    Every POST carries an Idempotency-Key (one per logical call, the same on each retry).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        retry: RetryPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
        user_agent: str = "tokenproxy-client/0.1",
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self.retry = retry or RetryPolicy()
        self._session = session
        self._own_session = session is None
        self._user_agent = user_agent

    def __repr__(self) -> str:
        # Never the key.
        return f"TokenProxyClient({self.base_url!r})"

    async def __aenter__(self) -> TokenProxyClient:
        self._http()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client made it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30),
                headers={"User-Agent": self._user_agent},
            )
        return self._session

    # ---------------------------------------------------------------- transport

    async def _request(
        self,
        method: str,
        path: str,
        *,
        payload: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        url = self.base_url + path
        attempt = 0
        while True:
            try:
                return await self._once(method, url, headers, payload, params)
            except TokenProxyError as error:
                if attempt >= self.retry.max_retries or not _retryable(error):
                    raise
                await asyncio.sleep(self.retry.delay(attempt, error))
                attempt += 1

    async def _once(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        payload: Mapping[str, Any] | None,
        params: Mapping[str, str] | None,
    ) -> Any:
        try:
            async with self._http().request(
                method, url, json=payload, params=params, headers=headers, timeout=self._timeout
            ) as resp:
                raw = await resp.read()
                status = resp.status
                response_headers = {k: v for k, v in resp.headers.items()}  # noqa: C416 - CIMultiDict
                is_json = resp.content_type == "application/json"
        except TimeoutError:
            # Our own messages: a library's text could quote the request.
            raise APITimeoutError("tokenproxy did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise APIConnectionError(f"could not reach tokenproxy ({type(exc).__name__})") from None
        body: Any = None
        if raw and is_json:
            try:
                body = json.loads(raw)
            except ValueError:
                if 200 <= status < 300:
                    raise APIError(
                        "tokenproxy answered with invalid JSON",
                        status=status,
                        request_id=response_headers.get("X-Request-Id"),
                    ) from None
        if 200 <= status < 300:
            return body
        raise error_for(status, body, response_headers)

    # ------------------------------------------------------------------- tokens

    async def tokenize_card(
        self,
        number: str,
        exp_month: int,
        exp_year: int,
        cvc: str,
        *,
        holder_name: str | None = None,
        customer_ref: str | None = None,
        metadata: Mapping[str, str] | None = None,
        return_url: str | None = None,
        idempotency_key: str | None = None,
        postal_code: str | None = None,
    ) -> CardToken:
        """POST /v1/cards (scope tokenize). For server-side use and tests; browsers use elements.

        With ``customer_ref`` the card is saved for off-session charges; if its issuer
        wants the cardholder, CardError ``authentication_required`` (see ``confirm_card``).
        ``postal_code`` is the billing postal code, passed to the payment partner only.
        """
        body: dict[str, Any] = {
            "number": number,
            "exp_month": exp_month,
            "exp_year": exp_year,
            "cvc": cvc,
        }
        _put(
            body,
            holder_name=holder_name,
            customer_ref=customer_ref,
            return_url=return_url,
            postal_code=postal_code,
        )
        if metadata is not None:
            body["metadata"] = dict(metadata)
        result = await self._request(
            "POST", "/v1/cards", payload=body, idempotency_key=idempotency_key
        )
        return CardToken.from_json(result)

    async def tokenize_bank_account(
        self,
        iban: str,
        holder_name: str,
        *,
        email: str | None = None,
        customer_ref: str | None = None,
        mandate_acceptance: Mapping[str, str | int] | None = None,
        idempotency_key: str | None = None,
    ) -> BankAccountToken:
        """POST /v1/bank-accounts (scope tokenize): a SEPA debit account.

        With ``customer_ref`` it is saved with a SEPA mandate, which needs
        ``mandate_acceptance``: ``{"ip_address", "user_agent"[, "accepted_at"]}`` of the
        shopper when they accepted the mandate.
        """
        body: dict[str, Any] = {"iban": iban, "holder_name": holder_name}
        _put(body, email=email, customer_ref=customer_ref)
        if mandate_acceptance is not None:
            body["mandate_acceptance"] = dict(mandate_acceptance)
        result = await self._request(
            "POST",
            "/v1/bank-accounts",
            payload=body,
            idempotency_key=idempotency_key,
        )
        return BankAccountToken.from_json(result)

    async def confirm_card(self, setup: str, *, idempotency_key: str | None = None) -> CardToken:
        """POST /v1/cards/confirm: the token of a card whose holder has authenticated.

        ``setup`` is ``CardError.setup`` of the ``authentication_required`` answer.
        """
        result = await self._request(
            "POST", "/v1/cards/confirm", payload={"setup": setup}, idempotency_key=idempotency_key
        )
        return CardToken.from_json(result)

    async def attach_token(
        self, token: str, customer_ref: str, *, idempotency_key: str | None = None
    ) -> CardToken:
        """POST /v1/tokens/{token}/attach: save a single-use card token on a customer.

        The answer is a new, reusable token; the single-use one is deleted. A card whose
        issuer wants its holder raises CardError ``authentication_required`` as
        tokenize_card does (finish with confirm_card).
        """
        result = await self._request(
            "POST",
            _path("v1", "tokens", token, "attach"),
            payload={"customer_ref": customer_ref},
            idempotency_key=idempotency_key,
        )
        return CardToken.from_json(result)

    async def read(self, token: str) -> TokenView:
        """GET /v1/tokens/{token}: the masked view (scope read or resolve)."""
        return TokenView.from_json(await self._request("GET", _path("v1", "tokens", token)))

    async def resolve(self, token: str) -> ResolvedToken:
        """GET /v1/tokens/{token} with the resolve scope: what an off-session charge needs."""
        resolved = ResolvedToken.from_json(await self._request("GET", _path("v1", "tokens", token)))
        if resolved is None:
            # The proxy answers a read-only key with the masked view; say so plainly.
            raise PermissionDeniedError(
                "This client key lacks the resolve scope.", code=MISSING_SCOPE, status=403
            )
        return resolved

    async def delete(self, token: str) -> Deletion:
        """DELETE /v1/tokens/{token} (scope delete), detaching it at the partner."""
        body = await self._request("DELETE", _path("v1", "tokens", token))
        return Deletion.from_json(token, body if isinstance(body, dict) else None)

    # ---------------------------------------------------------------- customers

    async def iter_customer_tokens(
        self, customer_ref: str, *, page_size: int = MAX_PAGE_SIZE
    ) -> AsyncIterator[TokenView]:
        """Every token of a customer (masked views), following the pages.

        ``page_size`` is 1-100 (the server's bound); each page's ``next_cursor`` goes back
        as ``starting_after``, the only cursor parameter the server takes.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1-{MAX_PAGE_SIZE}")
        path = _path("v1", "customers", customer_ref, "tokens")
        params: dict[str, str] = {"limit": str(page_size)}
        while True:
            page = TokenPage.from_json(await self._request("GET", path, params=params))
            for view in page.data:
                yield view
            if not page.has_more:
                return
            cursor = page.next_cursor
            if cursor is None:
                # Guessing a cursor (the last token, say) would restart or skip pages.
                raise APIError(
                    "tokenproxy said more pages follow but gave no next_cursor",
                    status=200,
                    request_id=None,
                )
            params = {"limit": str(page_size), "starting_after": cursor}

    async def list_customer_tokens(
        self, customer_ref: str, *, page_size: int = MAX_PAGE_SIZE
    ) -> list[TokenView]:
        """GET /v1/customers/{ref}/tokens (scope read), all pages."""
        return [view async for view in self.iter_customer_tokens(customer_ref, page_size=page_size)]

    async def export_customer(self, customer_ref: str) -> CustomerExport:
        """GET /v1/customers/{ref}/export (scope admin): the data-subject access report."""
        body = await self._request("GET", _path("v1", "customers", customer_ref, "export"))
        return CustomerExport.from_json(customer_ref, body)

    async def erase_customer(self, customer_ref: str) -> CustomerErasure:
        """DELETE /v1/customers/{ref} (scope delete): erasure; safe to repeat."""
        body = await self._request("DELETE", _path("v1", "customers", customer_ref))
        return CustomerErasure.from_json(customer_ref, body if isinstance(body, dict) else None)

    # ----------------------------------------------------------------- invoices

    async def create_invoice(
        self,
        customer_ref: str,
        invoice_number: str,
        amount: int,
        currency: str,
        due_date: date | str,
        *,
        ocr_reference: str | None = None,
        ocr_length_digit: bool | None = None,
        partner: str | None = None,
        partner_reference: str | None = None,
        idempotency_key: str | None = None,
    ) -> InvoiceToken:
        """POST /v1/invoices: store an invoice reference (amount in minor units).

        ``ocr_length_digit`` says the OCR reference carries a length digit before its check
        digit (the server verifies both).
        """
        body: dict[str, Any] = {
            "customer_ref": customer_ref,
            "invoice_number": invoice_number,
            "amount": amount,
            "currency": currency,
            "due_date": due_date.isoformat() if isinstance(due_date, date) else due_date,
        }
        _put(
            body,
            ocr_reference=ocr_reference,
            partner=partner,
            partner_reference=partner_reference,
        )
        if ocr_length_digit is not None:
            body["ocr_length_digit"] = ocr_length_digit
        result = await self._request(
            "POST",
            "/v1/invoices",
            payload=body,
            idempotency_key=idempotency_key,
        )
        return InvoiceToken.from_json(result)


def _put(body: dict[str, Any], **optional: str | None) -> None:
    for name, value in optional.items():
        if value is not None:
            body[name] = value
