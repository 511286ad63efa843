"""Malformed credentials, encodings, framing and targets over raw sockets: our 4xx, no echo."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import re
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.infra.clients import ClientRegistry, digest
from tests.cards import VISA
from tests.conftest import SHOP, RunningProxy, add_shop_key
from tests.core.test_audit_api import audit_rows, settle
from tests.helpers import metrics_text

PAN = VISA.number.encode()
BODY = json.dumps(
    {"number": VISA.number, "exp_month": 12, "exp_year": 2030, "cvc": VISA.cvc}
).encode()


@pytest.fixture
def proxy_env() -> dict[str, str]:
    """CORS for the shop, and a short body deadline so a short body is answered quickly."""
    return {"TOKENPROXY_CORS_ORIGINS": SHOP, "TOKENPROXY_BODY_READ_TIMEOUT": "0.5"}


@pytest.fixture
def client_keys(client_keys: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The standard clients plus a publishable key bound to the shop's origin."""
    return add_shop_key(client_keys, tmp_path)


_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) ", re.MULTILINE)


def statuses(answer: bytes) -> list[int]:
    """The status code of every response in ``answer`` (pipelined answers included)."""
    return [int(code) for code in _STATUS_LINE.findall(answer)]


def first_body(answer: bytes) -> bytes:
    """The body of the first response in ``answer``."""
    head, _, rest = answer.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    return rest[: int(length.group(1))] if length else rest


async def exchange(proxy: RunningProxy, payload: bytes) -> bytes:
    """Send ``payload`` on a fresh connection and read until the server closes it."""
    host, port = proxy.settings.listen.host, proxy.settings.listen.port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


def request(
    *,
    method: bytes = b"POST",
    target: bytes = b"/v1/cards",
    headers: list[bytes] | None = None,
    body: bytes = BODY,
    length: bool = True,
) -> bytes:
    """A raw request: request line, headers as given, then the body."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += headers or []
    if length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def bearer(key: bytes) -> bytes:
    """An Authorization header line carrying ``key``."""
    return b"Authorization: Bearer " + key


JSON = b"Content-Type: application/json"


def cases(key: bytes, reader: bytes, pk: bytes) -> dict[str, bytes]:
    """Hostile requests by name, with valid tokenize, read and publishable keys."""
    auth = bearer(key)
    read = bearer(reader)
    deflated = zlib.compress(BODY)
    return {
        # Credentials.
        "key-not-utf8": request(headers=[JSON, bearer(b"\xff\xfe" + PAN)]),
        "key-latin1": request(headers=[JSON, bearer(PAN + b"\xe9")]),
        "key-utf8-non-ascii": request(headers=[JSON, bearer("clé".encode() + PAN)]),
        "key-control-chars": request(headers=[JSON, bearer(b"\x01\x02" + PAN)]),
        "key-nul": request(headers=[JSON, bearer(b"a\x00" + PAN)]),
        "key-huge": request(headers=[JSON, bearer(PAN * 400)]),
        "key-empty": request(headers=[JSON, b"Authorization: Bearer "]),
        "key-whitespace": request(headers=[JSON, b"Authorization: Bearer \t "]),
        "authorization-empty": request(headers=[JSON, b"Authorization:"]),
        "scheme-only": request(headers=[JSON, b"Authorization: Bearer"]),
        "scheme-wrong": request(headers=[JSON, b"Authorization: Token " + PAN]),
        "scheme-basic": request(
            headers=[JSON, b"Authorization: Basic " + base64.b64encode(PAN + b":" + PAN)]
        ),
        "scheme-tab": request(headers=[JSON, b"Authorization: Bearer\t" + PAN]),
        "authorization-twice": request(headers=[JSON, auth, bearer(PAN)]),
        "authorization-twice-same": request(headers=[JSON, auth, auth]),
        "authorization-folded": request(headers=[JSON, b"Authorization: Bearer", b" " + key]),
        "publishable-no-origin": request(headers=[JSON, bearer(pk)]),
        "publishable-origin-not-utf8": request(
            headers=[JSON, bearer(pk), b"Origin: https://\xff" + PAN]
        ),
        "publishable-origin-garbage": request(
            headers=[JSON, bearer(pk), b"Origin: " + PAN + b"://[::"]
        ),
        "publishable-origin-twice": request(
            headers=[JSON, bearer(pk), b"Origin: " + SHOP.encode(), b"Origin: https://x"]
        ),
        "publishable-checkout-origin-not-utf8": request(
            headers=[
                JSON,
                bearer(pk),
                b"Origin: http://127.0.0.1",
                b"Sec-Fetch-Site: same-origin",
                b"TokenProxy-Checkout-Origin: \xff" + PAN,
            ]
        ),
        # Other headers.
        "idempotency-key-not-utf8": request(headers=[JSON, auth, b"Idempotency-Key: \xff" + PAN]),
        "idempotency-key-twice": request(
            headers=[JSON, auth, b"Idempotency-Key: a", b"Idempotency-Key: b"]
        ),
        "content-type-not-utf8": request(headers=[b"Content-Type: application/\xff" + PAN, auth]),
        "content-type-bad-charset": request(
            headers=[b"Content-Type: application/json; charset=" + PAN, auth]
        ),
        "host-not-utf8": request(headers=[JSON, auth, b"Host: \xff" + PAN]),
        # Encodings.
        "gzip-not-gzip": request(headers=[JSON, auth, b"Content-Encoding: gzip"], body=BODY),
        "gzip-truncated": request(
            headers=[JSON, auth, b"Content-Encoding: gzip"], body=gzip.compress(BODY)[:20]
        ),
        "gzip-bomb": request(
            headers=[JSON, auth, b"Content-Encoding: gzip"], body=gzip.compress(b" " * 4_000_000)
        ),
        "deflate-not-deflate": request(headers=[JSON, auth, b"Content-Encoding: deflate"]),
        "deflate-truncated": request(
            headers=[JSON, auth, b"Content-Encoding: deflate"], body=deflated[:10]
        ),
        "br-not-br": request(headers=[JSON, auth, b"Content-Encoding: br"]),
        "zstd-not-zstd": request(headers=[JSON, auth, b"Content-Encoding: zstd"]),
        "encoding-unknown": request(headers=[JSON, auth, b"Content-Encoding: " + PAN]),
        "encoding-stacked": request(headers=[JSON, auth, b"Content-Encoding: gzip, gzip"]),
        "encoding-not-utf8": request(headers=[JSON, auth, b"Content-Encoding: \xff"]),
        # Framing.
        "content-length-short": request(
            headers=[JSON, auth, b"Content-Length: %d" % (len(BODY) - 5)], length=False
        ),
        "content-length-long": request(
            headers=[JSON, auth, b"Content-Length: %d" % (len(BODY) + 50)], length=False
        ),
        "content-length-twice": request(
            headers=[JSON, auth, b"Content-Length: 3", b"Content-Length: %d" % len(BODY)],
            length=False,
        ),
        "content-length-negative": request(
            headers=[JSON, auth, b"Content-Length: -1"], length=False
        ),
        "content-length-plus": request(
            headers=[JSON, auth, b"Content-Length: +%d" % len(BODY)], length=False
        ),
        "content-length-huge": request(
            headers=[JSON, auth, b"Content-Length: 99999999999999999999999"], length=False
        ),
        "content-length-and-chunked": request(
            headers=[JSON, auth, b"Transfer-Encoding: chunked"],
            body=b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n",
        ),
        "chunked-bad-size": request(
            headers=[JSON, auth, b"Transfer-Encoding: chunked"],
            body=b"zz" + PAN + b"\r\n{}\r\n0\r\n\r\n",
            length=False,
        ),
        "chunked-size-overflow": request(
            headers=[JSON, auth, b"Transfer-Encoding: chunked"],
            body=b"ffffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
            length=False,
        ),
        "chunked-short-chunk": request(
            headers=[JSON, auth, b"Transfer-Encoding: chunked"],
            body=b"%x\r\n" % (len(BODY) + 9) + BODY + b"\r\n0\r\n\r\n",
            length=False,
        ),
        "chunked-no-terminator": request(
            headers=[JSON, auth, b"Transfer-Encoding: chunked"],
            body=b"%x\r\n" % len(BODY) + BODY + b"\r\n",
            length=False,
        ),
        "chunked-bad-extension": request(
            headers=[JSON, auth, b"Transfer-Encoding: chunked"],
            body=b"%x;\xff=" % len(BODY) + PAN + b"\r\n" + BODY + b"\r\n0\r\n\r\n",
            length=False,
        ),
        "chunked-then-gzip": request(
            headers=[JSON, auth, b"Transfer-Encoding: chunked, gzip"],
            body=b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n",
            length=False,
        ),
        "transfer-encoding-unknown": request(
            headers=[JSON, auth, b"Transfer-Encoding: " + PAN], length=False
        ),
        "transfer-encoding-twice": request(
            headers=[JSON, auth, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
            body=b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n",
            length=False,
        ),
        # Request target.
        "path-percent-not-utf8": request(
            method=b"GET", target=b"/v1/tokens/%ff%fe" + PAN, headers=[read], body=b""
        ),
        "path-raw-not-utf8": request(
            method=b"GET", target=b"/v1/tokens/\xff" + PAN, headers=[read], body=b""
        ),
        "path-percent-invalid": request(
            method=b"GET", target=b"/v1/tokens/%zz" + PAN, headers=[read], body=b""
        ),
        "path-nul": request(
            method=b"GET", target=b"/v1/tokens/%00" + PAN, headers=[read], body=b""
        ),
        "path-customer-not-utf8": request(
            method=b"GET", target=b"/v1/customers/%ff" + PAN + b"/tokens", headers=[read], body=b""
        ),
        "query-value-not-utf8": request(
            method=b"GET",
            target=b"/v1/customers/c1/tokens?limit=%ff" + PAN,
            headers=[read],
            body=b"",
        ),
        "query-name-not-utf8": request(
            method=b"GET",
            target=b"/v1/customers/c1/tokens?%ff" + PAN + b"=1",
            headers=[read],
            body=b"",
        ),
        "query-limit-twice": request(
            method=b"GET",
            target=b"/v1/customers/c1/tokens?limit=1&limit=2",
            headers=[read],
            body=b"",
        ),
        "query-limit-huge": request(
            method=b"GET",
            target=b"/v1/customers/c1/tokens?limit=" + PAN * 3,
            headers=[read],
            body=b"",
        ),
        "query-limit-unicode-digits": request(
            method=b"GET",
            target=b"/v1/customers/c1/tokens?limit=%EF%BC%95",
            headers=[read],
            body=b"",
        ),
        "query-cursor-not-utf8": request(
            method=b"GET",
            target=b"/v1/customers/c1/tokens?starting_after=%ff" + PAN,
            headers=[read],
            body=b"",
        ),
        "preflight-not-utf8": request(
            method=b"OPTIONS",
            headers=[
                b"Origin: " + SHOP.encode(),
                b"Access-Control-Request-Method: \xff" + PAN,
                b"Access-Control-Request-Headers: \xff" + PAN,
            ],
            body=b"",
        ),
        "preflight-origin-not-utf8": request(
            method=b"OPTIONS",
            headers=[b"Origin: \xff" + PAN, b"Access-Control-Request-Method: POST"],
            body=b"",
        ),
        "query-percent-invalid": request(target=b"/v1/cards?%zz" + PAN, headers=[JSON, auth]),
        "query-card-number-name": request(target=b"/v1/cards?" + PAN + b"=1", headers=[JSON, auth]),
        "target-absolute": request(target=b"http://" + PAN + b"/v1/cards", headers=[JSON, auth]),
        "target-authority": request(method=b"CONNECT", target=PAN + b":443", body=b""),
        "target-asterisk": request(method=b"OPTIONS", target=b"*", body=b""),
        "method-unknown": request(method=b"BREW", headers=[JSON, auth]),
        "method-card-number": request(method=PAN, headers=[JSON, auth]),
        # Protocol switches and pipelining.
        "upgrade-websocket": request(
            headers=[JSON, auth, b"Upgrade: websocket", b"Connection: Upgrade"]
        ),
        "upgrade-h2c": request(headers=[JSON, auth, b"Upgrade: h2c", b"Connection: Upgrade"]),
        "expect-unknown": request(headers=[JSON, auth, b"Expect: " + PAN]),
        "http-1.0-no-host": b"GET /v1/tokens/" + PAN + b" HTTP/1.0\r\n" + read + b"\r\n\r\n",
        "pipelined-garbage": request(method=b"GET", target=b"/v1/nothing", body=b"")[:-4].replace(
            b"Connection: close", b"Connection: keep-alive"
        )
        + b"\r\n\r\n"
        + PAN
        + b" / HTTP/1.1\r\n\r\n",
    }


# Not malformed: an absolute-form target is legal HTTP/1.1, a charset is not ours to read, and
# a server may ignore an Upgrade it does not offer.
ACCEPTED = {"content-type-bad-charset", "target-absolute", "upgrade-h2c", "upgrade-websocket"}


async def test_malformed_requests_are_4xx_without_echo(proxy: RunningProxy) -> None:
    """Each malformed credential, encoding, framing or target gets our 4xx JSON and no echo."""
    keys = {name: key.encode() for name, key in proxy.keys.items()}
    wrong = {}
    for name, payload in cases(keys["checkout"], keys["orders"], keys["shop"]).items():
        answer = await exchange(proxy, payload)
        codes = statuses(answer)
        leaked = PAN in answer or VISA.middle.encode() in answer
        if not codes or leaked or max(codes) >= 500:
            wrong[name] = (codes, leaked)
            continue
        if name in ACCEPTED:
            continue
        body = json.loads(first_body(answer))
        if not 400 <= codes[0] < 500 or not body["error"]["code"]:
            wrong[name] = (codes, body)
    assert wrong == {}


async def test_undecodable_key_is_counted_and_audited_as_invalid(proxy: RunningProxy) -> None:
    """A bearer key with non-UTF-8 bytes is a 401 counted and audited as an invalid key."""
    answer = await exchange(proxy, request(headers=[JSON, bearer(b"tpk_\xff\xfe" + PAN)]))
    assert statuses(answer) == [401]
    assert json.loads(first_body(answer))["error"]["code"] == "invalid_api_key"
    await settle(proxy)
    assert 'tokenproxy_auth_failures_total{reason="invalid_key"} 1.0' in await metrics_text(proxy)
    assert [row[0] for row in audit_rows(proxy)] == ["auth.failure"]


@pytest.mark.parametrize(
    ("encoding", "body", "code"),
    [
        (b"gzip", BODY, "invalid_content_encoding"),
        (b"deflate", PAN * 3, "invalid_content_encoding"),
        (b"gzip, gzip", gzip.compress(gzip.compress(BODY)), "unsupported_content_encoding"),
        (b"compress", BODY, "unsupported_content_encoding"),
    ],
)
async def test_body_not_in_its_content_encoding_is_refused(
    proxy: RunningProxy, encoding: bytes, body: bytes, code: str
) -> None:
    """A body that does not decode as its Content-Encoding, or an unsupported coding, is a 4xx."""
    key = bearer(proxy.keys["checkout"].encode())
    answer = await exchange(
        proxy, request(headers=[JSON, key, b"Content-Encoding: " + encoding], body=body)
    )
    assert 400 <= statuses(answer)[0] < 500
    assert json.loads(first_body(answer))["error"]["code"] == code
    assert PAN not in answer


async def test_gzip_body_is_still_accepted(proxy: RunningProxy) -> None:
    """A correctly gzip-encoded JSON body tokenizes as before."""
    key = bearer(proxy.keys["checkout"].encode())
    payload = request(headers=[JSON, key, b"Content-Encoding: gzip"], body=gzip.compress(BODY))
    assert statuses(await exchange(proxy, payload)) == [201]


# What aiohttp can hand us as a header value: any text, plus lone surrogates (undecodable bytes).
HEADER_TEXT = st.characters(codec="utf-8") | st.sampled_from("\udcff\udc80\udce9")


@given(st.text(alphabet=HEADER_TEXT, max_size=400))
def test_authenticate_never_raises_on_any_header_text(key: str) -> None:
    """Whatever text a header decodes to, lone surrogates included, is no client and no error."""
    registry = ClientRegistry([])
    assert registry.authenticate(key) is None
    assert len(digest(key)) == 64


@pytest.mark.parametrize(
    ("listener", "target"),
    [("listen", b"/v1/cards"), ("listen", b"/v1/nothing"), ("ops_listen", b"/healthz")],
)
async def test_unknown_expectation_is_our_417_without_echo(
    proxy: RunningProxy, listener: str, target: bytes
) -> None:
    """An Expect other than 100-continue is our 417 JSON on both listeners, never quoted back."""
    address = getattr(proxy.settings, listener)
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        writer.write(request(method=b"GET", target=target, headers=[b"Expect: " + PAN], body=b""))
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    assert statuses(answer) == [417]
    assert PAN not in answer
    assert json.loads(first_body(answer))["error"]["code"] == "expectation_failed"


async def test_expect_100_continue_still_works(proxy: RunningProxy) -> None:
    """A client that waits for 100 Continue before its body gets it, then its answer."""
    key = bearer(proxy.keys["checkout"].encode())
    payload = request(headers=[JSON, key, b"Expect: 100-continue"])
    head, _, body = payload.partition(b"\r\n\r\n")
    reader, writer = await asyncio.open_connection(
        proxy.settings.listen.host, proxy.settings.listen.port
    )
    try:
        writer.write(head + b"\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        writer.write(body)
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    assert statuses(interim) == [100]
    assert statuses(answer) == [201]
