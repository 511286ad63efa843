"""TLS on the listeners, the internal listener's client certificates, and certificate reload.

Real sockets throughout: the proxy runs as ``serve`` does, certificates are made at test
time by trustme, and clients are Python's ssl and aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme
from cryptography import x509
from openapi_spec_validator import validate
from structlog.testing import capture_logs
from tokenproxy_sandbox.launcher import Localstripe, free_port

from proxy.infra.clients import add_client, parse_scopes
from proxy.infra.settings import Settings
from proxy.infra.tls import listener_contexts
from proxy.web import api
from proxy.web.api import Operation
from proxy.web.app import serve
from proxy.web.listeners import warn_plain_http
from tests.cards import VISA
from tests.conftest import make_settings

CARD = {"number": VISA.number, "exp_month": 12, "exp_year": 2030, "cvc": "123"}


@dataclass
class TlsProxy:
    """A proxy serving TLS on a public, an internal and an ops listener."""

    settings: Settings
    ca: trustme.CA
    client_ca: trustme.CA
    keys: dict[str, str]
    cert_file: Path
    key_file: Path

    @property
    def public(self) -> str:
        """The public listener's base URL."""
        return f"https://{self.settings.listen}"

    @property
    def internal(self) -> str:
        """The internal listener's base URL."""
        return f"https://{self.settings.internal_listen}"

    def client_context(self, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
        """A client context trusting the proxy's CA, presenting ``cert`` if given."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if cert is not None:
            cert.configure_cert(context)
        return context

    def auth(self, name: str) -> dict[str, str]:
        """The Authorization header of the named client."""
        return {"Authorization": f"Bearer {self.keys[name]}"}


def write_server_cert(ca: trustme.CA, cert_file: Path, key_file: Path) -> None:
    """Issue a fresh certificate for 127.0.0.1 from ``ca`` and write it where the proxy reads."""
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key_file.write_bytes(leaf.private_key_pem.bytes())


@contextlib.asynccontextmanager
async def serving(settings: Settings, ops_context: ssl.SSLContext) -> AsyncIterator[None]:
    """Run ``serve`` in this loop until the block ends; wait until /readyz answers 200."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop))
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                if task.done():
                    task.result()
                with contextlib.suppress(aiohttp.ClientError):
                    url = f"https://{settings.ops_listen}/readyz"
                    async with http.get(url, ssl=ops_context) as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the proxy did not become ready")
        yield
    finally:
        stop.set()
        await task


@pytest.fixture
async def tls_proxy(
    tmp_path: Path,
    keyring_path: Path,
    client_keys: dict[str, str],
    localstripe: Localstripe,
) -> AsyncIterator[TlsProxy]:
    """The proxy with TLS everywhere and client certificates required on the internal side."""
    ca, client_ca = trustme.CA(), trustme.CA()
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_server_cert(ca, cert_file, key_file)
    client_ca_file = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_file))
    keys = dict(client_keys)
    clients = tmp_path / "clients.json"
    keys["billing-mtls"] = add_client(
        clients, "billing-mtls", parse_scopes("resolve"), cert_identity="CN=billing"
    )
    keys["checkout-mtls"] = add_client(
        clients, "checkout-mtls", parse_scopes("tokenize"), cert_identity="CN=checkout"
    )
    keys["orders-san"] = add_client(
        clients, "orders-san", parse_scopes("read"), cert_identity="DNS:orders.svc"
    )
    settings = make_settings(
        tmp_path,
        keyring_path,
        localstripe.base_url,
        {
            "TOKENPROXY_INTERNAL_LISTEN": f"127.0.0.1:{free_port()}",
            "TOKENPROXY_TLS_CERT_FILE": str(cert_file),
            "TOKENPROXY_TLS_KEY_FILE": str(key_file),
            "TOKENPROXY_TLS_CLIENT_CA_FILE": str(client_ca_file),
            "TOKENPROXY_TLS_RELOAD_INTERVAL": "0.1",
        },
    )
    proxy = TlsProxy(settings, ca, client_ca, keys, cert_file, key_file)
    async with serving(settings, proxy.client_context()):
        yield proxy


async def _tokenize(proxy: TlsProxy, http: aiohttp.ClientSession) -> str:
    async with http.post(
        proxy.public + "/v1/cards",
        json=CARD,
        headers=proxy.auth("checkout"),
        ssl=proxy.client_context(),
    ) as resp:
        body = await resp.json()
        assert resp.status == 201, body
        token: str = body["token"]
        return token


def _legacy_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client context that offers nothing newer than ``version``, with old suites allowed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # Lower this side's own floor, so a refusal can only come from the server.
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = version
    return context


async def _handshake(address: str, context: ssl.SSLContext) -> ssl.SSLObject:
    host, port = address.rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port), ssl=context)
    try:
        ssl_object: ssl.SSLObject = writer.get_extra_info("ssl_object")
        return ssl_object
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
async def test_handshake_below_tls12_is_refused(
    tls_proxy: TlsProxy, version: ssl.TLSVersion
) -> None:
    """A client offering at most TLS 1.0 or 1.1 gets no session on any listener."""
    for address in (tls_proxy.settings.listen, tls_proxy.settings.ops_listen):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _handshake(str(address), _legacy_client(version))
        # The same client allowed TLS 1.2 connects: the refusal was the version's.
        allowed = await _handshake(str(address), _legacy_client(ssl.TLSVersion.TLSv1_2))
        assert allowed.version() == "TLSv1.2"


async def test_tls12_with_a_weak_suite_is_refused(tls_proxy: TlsProxy) -> None:
    """At TLS 1.2, a client offering only RSA key exchange or CBC suites gets no session."""
    for suite in ("AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA"):
        context = _legacy_client(ssl.TLSVersion.TLSv1_2)
        context.set_ciphers(suite + ":@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _handshake(str(tls_proxy.settings.listen), context)


async def test_modern_handshakes_succeed(tls_proxy: TlsProxy) -> None:
    """TLS 1.3 is preferred, and a TLS 1.2 client gets a forward-secret AEAD suite."""
    modern = await _handshake(str(tls_proxy.settings.listen), tls_proxy.client_context())
    assert modern.version() == "TLSv1.3"
    context = tls_proxy.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    old = await _handshake(str(tls_proxy.settings.listen), context)
    cipher = old.cipher()
    assert cipher is not None
    assert old.version() == "TLSv1.2"
    assert cipher[0].startswith("ECDHE-")
    assert "GCM" in cipher[0] or "CHACHA20" in cipher[0]


async def test_public_listener_serves_tokenization_only(tls_proxy: TlsProxy) -> None:
    """Tokenize works on the public listener; resolve there is our 404, counted by route."""
    async with aiohttp.ClientSession() as http:
        token = await _tokenize(tls_proxy, http)
        for path in (f"/v1/tokens/{token}", "/v1/customers/cus-1/export"):
            async with http.get(
                tls_proxy.public + path,
                headers=tls_proxy.auth("billing"),
                ssl=tls_proxy.client_context(),
            ) as resp:
                assert resp.status == 404
                error = (await resp.json())["error"]
                assert error["code"] == "route_not_found"
                assert error["request_id"] == resp.headers["X-Request-Id"]
        async with http.get(
            tls_proxy.public + "/openapi.json", ssl=tls_proxy.client_context()
        ) as resp:
            assert resp.status == 200
        async with http.get(
            f"https://{tls_proxy.settings.ops_listen}/metrics", ssl=tls_proxy.client_context()
        ) as resp:
            metrics = await resp.text()
        assert 'tokenproxy_wrong_listener_requests_total{route="/v1/tokens/{token}"} 1.0' in metrics
        expiry = next(
            float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("tokenproxy_tls_certificate_expiry_timestamp_seconds ")
        )
        leaf = x509.load_pem_x509_certificate(tls_proxy.cert_file.read_bytes())
        assert expiry == leaf.not_valid_after_utc.timestamp()


async def test_internal_listener_serves_a_bound_client_with_its_certificate(
    tls_proxy: TlsProxy,
) -> None:
    """A key bound to CN=billing (or DNS:orders.svc) works with a certificate carrying it."""
    async with aiohttp.ClientSession() as http:
        token = await _tokenize(tls_proxy, http)
        billing = tls_proxy.client_ca.issue_cert("billing.svc", common_name="billing")
        async with http.get(
            tls_proxy.internal + f"/v1/tokens/{token}",
            headers=tls_proxy.auth("billing-mtls"),
            ssl=tls_proxy.client_context(billing),
        ) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            assert body["partner_reference"].startswith("pm_")
        orders = tls_proxy.client_ca.issue_cert("orders.svc", common_name="orders")
        async with http.get(
            tls_proxy.internal + f"/v1/tokens/{token}",
            headers=tls_proxy.auth("orders-san"),
            ssl=tls_proxy.client_context(orders),
        ) as resp:
            assert resp.status == 200
        # An unbound key needs a certificate to reach the listener, but not a named one.
        async with http.get(
            tls_proxy.internal + f"/v1/tokens/{token}",
            headers=tls_proxy.auth("orders"),
            ssl=tls_proxy.client_context(orders),
        ) as resp:
            assert resp.status == 200


async def test_internal_listener_refuses_a_client_without_a_certificate(
    tls_proxy: TlsProxy,
) -> None:
    """No client certificate: the handshake fails and no request is answered."""
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(
                tls_proxy.internal + "/openapi.json", ssl=tls_proxy.client_context()
            ) as resp:
                await resp.read()


async def test_internal_listener_refuses_a_certificate_from_another_ca(
    tls_proxy: TlsProxy,
) -> None:
    """A certificate saying CN=billing, issued by a CA the proxy does not trust, is refused."""
    forged = trustme.CA().issue_cert("billing.svc", common_name="billing")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(
                tls_proxy.internal + "/openapi.json",
                headers=tls_proxy.auth("billing-mtls"),
                ssl=tls_proxy.client_context(forged),
            ) as resp:
                await resp.read()


async def test_bound_key_is_refused_with_another_identity(tls_proxy: TlsProxy) -> None:
    """The CN=billing key with a trusted certificate of another identity is 401, and so is a
    certificate carrying billing only as a SAN when the binding names the subject."""
    async with aiohttp.ClientSession() as http:
        token = await _tokenize(tls_proxy, http)
        for leaf in (
            tls_proxy.client_ca.issue_cert("orders.svc", common_name="orders"),
            tls_proxy.client_ca.issue_cert("billing", common_name="billing-batch"),
        ):
            async with http.get(
                tls_proxy.internal + f"/v1/tokens/{token}",
                headers=tls_proxy.auth("billing-mtls"),
                ssl=tls_proxy.client_context(leaf),
            ) as resp:
                body = await resp.json()
                assert resp.status == 401
                assert body["error"]["code"] == "client_certificate_required"
                assert "partner_reference" not in body


async def _eventually(check: Callable[[], Awaitable[bool]], failure: str) -> None:
    """Wait (up to half a minute) until ``check`` holds; the test fails with ``failure``."""
    for _ in range(600):
        if await check():
            return
        await asyncio.sleep(0.05)
    pytest.fail(failure)


async def _internal_answers(proxy: TlsProxy, cert: trustme.LeafCert) -> bool:
    """Whether a new connection to the internal listener presenting ``cert`` is answered."""
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(
                proxy.internal + "/openapi.json", ssl=proxy.client_context(cert)
            ) as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False


async def _tls_reloads_are(proxy: TlsProxy, outcome: str, count: int) -> bool:
    """Whether the ops listener counts ``count`` TLS reloads of ``outcome``."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"https://{proxy.settings.ops_listen}/metrics", ssl=proxy.client_context()
        ) as resp,
    ):
        text = await resp.text()
    prefix = f'tokenproxy_tls_reloads_total{{outcome="{outcome}"}} '
    return any(line == f"{prefix}{count:.1f}" for line in text.splitlines())


async def test_certificate_reload_keeps_open_connections(tls_proxy: TlsProxy) -> None:
    """A renewed certificate is served to new connections; an open keep-alive one keeps working."""
    host, port = str(tls_proxy.settings.listen).rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), ssl=tls_proxy.client_context())
    try:
        before = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert await _get_openapi(reader, writer) == 200
        write_server_cert(tls_proxy.ca, tls_proxy.cert_file, tls_proxy.key_file)
        served = before
        for _ in range(600):
            address = str(tls_proxy.settings.listen)
            fresh = await _handshake(address, tls_proxy.client_context())
            served = fresh.getpeercert(binary_form=True)
            if served != before:
                break
            await asyncio.sleep(0.05)
        assert served != before, "the renewed certificate was never served"
        # The connection opened before the renewal still answers, on its old session.
        assert writer.get_extra_info("ssl_object").getpeercert(binary_form=True) == before
        assert await _get_openapi(reader, writer) == 200
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def test_a_broken_renewal_keeps_the_old_certificate(tls_proxy: TlsProxy) -> None:
    """A certificate whose key does not match is not loaded; the old pair keeps serving."""
    before = (
        await _handshake(str(tls_proxy.settings.listen), tls_proxy.client_context())
    ).getpeercert(binary_form=True)
    other = tls_proxy.ca.issue_cert("127.0.0.1")
    tls_proxy.cert_file.write_bytes(other.cert_chain_pems[0].bytes())  # key left as it was
    await _eventually(
        lambda: _tls_reloads_are(tls_proxy, "failure", 1), "the broken renewal was never noticed"
    )
    after = (
        await _handshake(str(tls_proxy.settings.listen), tls_proxy.client_context())
    ).getpeercert(binary_form=True)
    assert after == before


async def test_a_changed_client_ca_bundle_is_used_for_new_handshakes(tls_proxy: TlsProxy) -> None:
    """A replaced client-CA bundle is in force without a restart: the new CA's certificates
    get in, the CA taken out is refused, and a connection opened before keeps working."""
    ca_file = tls_proxy.settings.tls_client_ca_file
    assert ca_file is not None
    old = tls_proxy.client_ca.issue_cert("billing.svc", common_name="billing")
    new_ca = trustme.CA()
    new = new_ca.issue_cert("billing.svc", common_name="billing")
    assert await _internal_answers(tls_proxy, old)
    assert not await _internal_answers(tls_proxy, new)
    host, port = str(tls_proxy.settings.internal_listen).rsplit(":", 1)
    reader, writer = await asyncio.open_connection(
        host, int(port), ssl=tls_proxy.client_context(old)
    )
    try:
        assert await _get_openapi(reader, writer) == 200
        new_ca.cert_pem.write_to_path(str(ca_file))
        await _eventually(
            lambda: _internal_answers(tls_proxy, new), "the new CA bundle was never used"
        )
        assert not await _internal_answers(tls_proxy, old)
        assert await _get_openapi(reader, writer) == 200
        assert await _tls_reloads_are(tls_proxy, "success", 1)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def test_a_broken_client_ca_bundle_keeps_the_old_one(tls_proxy: TlsProxy) -> None:
    """A CA file that does not load is counted as a failed reload and changes nothing; the
    next good bundle written is loaded."""
    ca_file = tls_proxy.settings.tls_client_ca_file
    assert ca_file is not None
    old = tls_proxy.client_ca.issue_cert("billing.svc", common_name="billing")
    ca_file.write_text("not a certificate\n")
    await _eventually(
        lambda: _tls_reloads_are(tls_proxy, "failure", 1), "the broken bundle was never noticed"
    )
    assert await _internal_answers(tls_proxy, old)
    # The public listener's certificate is untouched, and so is its handshake.
    await _handshake(str(tls_proxy.settings.listen), tls_proxy.client_context())
    new_ca = trustme.CA()
    new_ca.cert_pem.write_to_path(str(ca_file))
    new = new_ca.issue_cert("billing.svc", common_name="billing")
    await _eventually(
        lambda: _internal_answers(tls_proxy, new),
        "the good bundle after a broken one was never used",
    )
    assert not await _internal_answers(tls_proxy, old)
    assert await _tls_reloads_are(tls_proxy, "failure", 1)


async def _get_openapi(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """One keep-alive GET /openapi.json on an open connection; its status."""
    writer.write(b"GET /openapi.json HTTP/1.1\r\nHost: proxy\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
    )
    await reader.readexactly(length)
    assert not any(line.lower() == "connection: close" for line in lines)
    return int(lines[0].split()[1])


def test_plain_http_beyond_loopback_is_warned_about() -> None:
    """Without TLS, each listener bound beyond loopback gets one warning; loopback ones none."""
    settings = Settings.from_env(
        {
            "TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1",
            "TOKENPROXY_LISTEN": "0.0.0.0:8080",
            "TOKENPROXY_INTERNAL_LISTEN": "10.0.0.5:8443",
            "TOKENPROXY_OPS_LISTEN": "127.0.0.1:9090",
        }
    )
    with capture_logs() as logs:
        warn_plain_http(settings, listener_contexts(settings))
    warned = {(e["listener"], e["address"]) for e in logs if e["event"] == "plain_http_listener"}
    assert warned == {("public", "0.0.0.0:8080"), ("internal", "10.0.0.5:8443")}


async def test_a_client_that_never_handshakes_is_closed(
    tmp_path: Path, keyring_path: Path, client_keys: dict[str, str], localstripe: Localstripe
) -> None:
    """A TCP connection that sends no ClientHello is closed by the header deadline."""
    ca = trustme.CA()
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_server_cert(ca, cert_file, key_file)
    settings = make_settings(
        tmp_path,
        keyring_path,
        localstripe.base_url,
        {
            "TOKENPROXY_TLS_CERT_FILE": str(cert_file),
            "TOKENPROXY_TLS_KEY_FILE": str(key_file),
            "TOKENPROXY_HEADER_TIMEOUT": "0.5",
        },
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with serving(settings, context):
        reader, writer = await asyncio.open_connection(settings.listen.host, settings.listen.port)
        try:
            # Nothing is sent; the server ends the connection on its own.
            assert await asyncio.wait_for(reader.read(), timeout=30) == b""
        finally:
            writer.close()


def _example_path(op: Operation) -> str:
    """A concrete path for ``op``'s template."""
    return (
        op.template.replace("{token}", "vtok_card_" + "a" * 22)
        .replace("{customer_ref}", "cus-1")
        .replace("{asset}", "card.js")
    )


async def test_every_operation_is_on_the_listeners_it_declares(tls_proxy: TlsProxy) -> None:
    """Each routed operation not marked public_listener is the unknown route's 404 on the
    public listener; on the internal listener every operation reaches its route."""
    client_cert = tls_proxy.client_ca.issue_cert("ops.svc", common_name="ops")
    async with aiohttp.ClientSession() as http:
        for op in api.routed():
            path = _example_path(op)
            for base, context in (
                (tls_proxy.public, tls_proxy.client_context()),
                (tls_proxy.internal, tls_proxy.client_context(client_cert)),
            ):
                async with http.request(op.method.upper(), base + path, ssl=context) as resp:
                    body = await resp.read()
                    code = json.loads(body)["error"]["code"] if resp.status == 404 else None
                hidden = base == tls_proxy.public and not op.public_listener
                assert (code == "route_not_found") is hidden, (op.name, base, resp.status)


async def test_the_public_document_lists_only_public_routes(tls_proxy: TlsProxy) -> None:
    """/openapi.json on the public listener names the public routes alone; internally, all."""
    billing = tls_proxy.client_ca.issue_cert("billing.svc", common_name="billing")
    async with aiohttp.ClientSession() as http:
        async with http.get(
            tls_proxy.public + "/openapi.json", ssl=tls_proxy.client_context()
        ) as resp:
            public = await resp.json()
        async with http.get(
            tls_proxy.internal + "/openapi.json", ssl=tls_proxy.client_context(billing)
        ) as resp:
            internal = await resp.json()
    assert set(public["paths"]) == api.PUBLIC_TEMPLATES
    assert set(internal["paths"]) == {op.template for op in api.OPERATIONS}
    assert "CustomerExport" not in public["components"]["schemas"]
    validate(public)


async def test_bound_key_is_refused_where_no_certificate_is_asked(tls_proxy: TlsProxy) -> None:
    """A key bound to CN=checkout is refused on the public listener, which asks for no
    client certificate, even on a route that listener serves."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            tls_proxy.public + "/v1/cards",
            json=CARD,
            headers=tls_proxy.auth("checkout-mtls"),
            ssl=tls_proxy.client_context(),
        ) as resp,
    ):
        body = await resp.json()
    assert resp.status == 401
    assert body["error"]["code"] == "client_certificate_required"
    assert "token" not in body
