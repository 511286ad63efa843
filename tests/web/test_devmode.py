"""The demo checkout page: served by `tokenproxy dev` only, with a publishable key only."""

from __future__ import annotations

import contextlib
import html
import http.client
import json
import re
import socket
import ssl
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from tokenproxy_sandbox.launcher import Localstripe, free_port

from proxy.infra.clients import ClientRegistry, add_client, parse_scopes
from proxy.infra.settings import HostPort, Settings
from proxy.web.devmode import (
    banner,
    bind_demo,
    browser_origin,
    demo_csp,
    ensure_demo_key,
    render_demo_page,
    with_demo_origin,
)
from tests.devserver import DevServer, running_dev
from tests.resilience.serverproc import ServerProcess
from tests.web.test_tls import write_server_cert

DEMO = "http://127.0.0.1:8081"


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


@contextlib.contextmanager
def socket_on_free_port() -> Iterator[int]:
    """Hold a listening socket on a free loopback port for the block; yields the port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def _config(page: str) -> dict[str, str]:
    match = re.search(r'data-config="([^"]*)"', page)
    assert match is not None
    config: dict[str, str] = json.loads(html.unescape(match.group(1)))
    return config


def test_browser_origin_of_wildcard_and_named_hosts() -> None:
    """A listener on every interface is reached on loopback; a named host keeps its name."""
    assert browser_origin(HostPort("0.0.0.0", 8081)) == "http://127.0.0.1:8081"  # noqa: S104
    assert browser_origin(HostPort("127.0.0.1", 8081)) == DEMO
    assert browser_origin(HostPort("Dev.Example", 80)) == "http://dev.example"
    assert browser_origin(HostPort("::1", 8081)) == "http://[::1]:8081"
    assert browser_origin(HostPort("0.0.0.0", 8443), tls=True) == "https://127.0.0.1:8443"  # noqa: S104
    assert browser_origin(HostPort("dev.example", 443), tls=True) == "https://dev.example"


def test_demo_key_is_publishable_bound_to_the_demo_origin(tmp_path: Path) -> None:
    """The key made for the page is a pk_ key with only tokenize, bound to the demo origin."""
    clients, key_file = tmp_path / "clients.json", tmp_path / "demo-checkout.key"
    add_client(clients, "dev", parse_scopes("tokenize,read,resolve,delete,admin,invoice"))
    key = ensure_demo_key(clients, key_file, DEMO)
    assert key.startswith("pk_")
    client = ClientRegistry.load(clients).authenticate(key)
    assert client is not None
    assert client.publishable
    assert client.scopes == frozenset({"tokenize"})
    assert client.origins == frozenset({DEMO})
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_demo_key_is_reused_while_valid_and_replaced_when_not(tmp_path: Path) -> None:
    """Restarts keep the key; another demo origin or a key the clients file lost gets a new one."""
    clients, key_file = tmp_path / "clients.json", tmp_path / "demo-checkout.key"
    first = ensure_demo_key(clients, key_file, DEMO)
    assert ensure_demo_key(clients, key_file, DEMO) == first
    moved = ensure_demo_key(clients, key_file, "http://127.0.0.1:9000")
    assert moved != first
    assert key_file.read_text().strip() == moved
    registry = ClientRegistry.load(clients)
    client = registry.authenticate(moved)
    assert client is not None
    assert client.origins == frozenset({"http://127.0.0.1:9000"})
    # A secret key in the key file is never taken for the page's key.
    secret = add_client(clients, "intruder", parse_scopes("tokenize"))
    key_file.write_text(secret + "\n")
    replaced = ensure_demo_key(clients, key_file, DEMO)
    assert replaced.startswith("pk_")
    assert replaced != secret


def test_demo_page_takes_only_a_publishable_key() -> None:
    """Rendering the page with a secret key is refused: the page is public."""
    with pytest.raises(ValueError, match="publishable"):
        render_demo_page("http://127.0.0.1:8080", "tpk_secret", "var/dev-client.key")


def test_demo_page_has_no_inline_script_and_escaped_config() -> None:
    """Scripts are external files; the key and addresses travel as escaped data."""
    page = render_demo_page("http://127.0.0.1:8080", "pk_abc", 'var/"x".key')
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, flags=re.S)
    assert [a.strip() for a, _ in scripts] == [
        'src="http://127.0.0.1:8080/elements/tokenproxy.js"',
        'src="demo.js" defer',
    ]
    assert all(not body.strip() for _, body in scripts)
    assert re.search(r"\son[a-z]+\s*=", page) is None
    assert _config(page) == {
        "proxy": "http://127.0.0.1:8080",
        "publishableKey": "pk_abc",
        "devKeyFile": 'var/"x".key',
    }


def test_demo_origin_is_added_once() -> None:
    """The dev proxy allows the demo origin beside the configured ones, without duplicates."""
    settings = Settings.from_env(
        {"TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1", "TOKENPROXY_CORS_ORIGINS": DEMO}
    )
    assert with_demo_origin(settings, DEMO).cors_origins == (DEMO,)
    other = with_demo_origin(settings, "http://127.0.0.1:9000")
    assert other.cors_origins == (DEMO, "http://127.0.0.1:9000")


def test_banner_says_when_the_demo_did_not_start() -> None:
    """A taken demo address is one line naming it and the setting; the proxy still runs."""
    settings = Settings.from_env({"TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1"})
    text = banner(
        settings,
        partner="stub",
        dev_key_file=Path("var/dev-client.key"),
        demo_url=None,
        state_dir=Path("var"),
        sandbox=True,
    )
    lines = [line for line in text.splitlines() if "demo" in line]
    assert lines == [
        "card fields demo not started: 127.0.0.1:8081 is in use "
        "(set TOKENPROXY_DEMO_LISTEN to another HOST:PORT)"
    ]


def test_banner_names_the_scheme_each_listener_serves() -> None:
    """Plain listeners are printed as http://, and all of them as https:// once TLS is set."""
    base = {"TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1"}
    tls = {"TOKENPROXY_TLS_CERT_FILE": "tls.crt", "TOKENPROXY_TLS_KEY_FILE": "tls.key"}
    for env, scheme in ((base, "http"), ({**base, **tls}, "https")):
        text = banner(
            Settings.from_env(env),
            partner="stub",
            dev_key_file=Path("var/dev-client.key"),
            demo_url=None,
            state_dir=Path("var"),
            sandbox=True,
        )
        first = text.splitlines()[0]
        assert first.startswith(
            f"tokenproxy (dev) on {scheme}://127.0.0.1:8080, ops on {scheme}://127.0.0.1:9090,"
        ), first
        other = "http" if scheme == "https" else "https"
        assert f"{other}://127.0.0.1:8080" not in text


def test_dev_with_tls_prints_and_serves_https(tmp_path: Path) -> None:
    """`tokenproxy dev` with a certificate: the banner, its commands and the demo page name
    the https addresses, and those answer over TLS with that certificate."""
    ca = trustme.CA()
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_server_cert(ca, cert_file, key_file)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with running_dev(
        tmp_path / "dev",
        tls=context,
        TOKENPROXY_TLS_CERT_FILE=str(cert_file),
        TOKENPROXY_TLS_KEY_FILE=str(key_file),
    ) as dev:
        assert dev.api.startswith("https://")
        assert f"tokenproxy (dev) on {dev.api}, ops on {dev.ops}," in dev.output()
        assert f"curl -s {dev.api}/v1/tokens/" in "\n".join(dev.banner_commands())
        _, _, page = _get(dev.demo + "/")
        assert _config(page)["proxy"] == dev.api
        request = urllib.request.Request(dev.api + "/openapi.json")  # noqa: S310 - loopback
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:  # noqa: S310 - loopback
            assert resp.status == 200
        # The same address in plain HTTP is not served.
        with pytest.raises((OSError, http.client.HTTPException)):
            _get(dev.api.replace("https://", "http://") + "/openapi.json")


def test_demo_never_takes_the_proxy_addresses() -> None:
    """A demo address equal to the API or ops listener is treated as taken, never bound."""
    for same in ("TOKENPROXY_LISTEN", "TOKENPROXY_OPS_LISTEN"):
        port = free_port()
        settings = Settings.from_env(
            {
                "TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1",
                same: f"127.0.0.1:{port}",
                "TOKENPROXY_DEMO_LISTEN": f"127.0.0.1:{port}",
            }
        )
        assert bind_demo(settings) is None
    free = Settings.from_env(
        {
            "TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1",
            "TOKENPROXY_DEMO_LISTEN": f"127.0.0.1:{free_port()}",
        }
    )
    sock = bind_demo(free)
    assert sock is not None
    sock.close()


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """A running `tokenproxy dev` on free ports, in a directory of its own."""
    with running_dev(tmp_path_factory.mktemp("devmode")) as server:
        yield server


def test_dev_serves_the_demo_page_with_its_publishable_key(dev: DevServer) -> None:
    """The banner's demo URL serves a page carrying the demo pk_ key and no secret key."""
    assert f"card fields demo: {dev.demo}/" in dev.output()
    status, headers, page = _get(dev.demo + "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Content-Security-Policy"] == demo_csp(dev.api)
    config = _config(page)
    assert config["publishableKey"] == dev.key("demo-checkout.key")
    assert config["proxy"] == dev.api
    assert dev.key("dev-client.key") not in page
    assert "tpk_" not in page
    for asset in ("demo.js", "demo.css"):
        status, _, body = _get(f"{dev.demo}/{asset}")
        assert status == 200
        assert "tpk_" not in body


async def test_dev_proxy_accepts_the_demo_origin(dev: DevServer) -> None:
    """The card frame may be framed by the demo origin and the demo key tokenizes from it."""
    _, headers, _ = _get(dev.api + "/elements/card")
    ancestors = headers["Content-Security-Policy"].split("frame-ancestors ")[1].split()
    assert dev.demo in ancestors
    async with aiohttp.ClientSession() as http:
        async with http.options(
            dev.api + "/v1/cards",
            headers={
                "Origin": dev.demo,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        ) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == dev.demo
        async with http.post(
            dev.api + "/v1/cards",
            headers={
                "Authorization": f"Bearer {dev.key('demo-checkout.key')}",
                "Origin": dev.demo,
            },
            json={"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        ) as resp:
            assert resp.status == 201, await resp.text()
            assert (await resp.json())["token"].startswith("vtok_card_")


def test_dev_runs_without_the_demo_when_its_address_is_taken(tmp_path: Path) -> None:
    """A busy demo port costs the demo only: one banner line, and the proxy serves."""
    with (
        socket_on_free_port() as port,
        running_dev(tmp_path, TOKENPROXY_DEMO_LISTEN=f"127.0.0.1:{port}") as dev,
    ):
        assert f"card fields demo not started: 127.0.0.1:{port} is in use" in dev.output()
        status, _, _ = _get(dev.ops + "/readyz")
        assert status == 200


async def test_serve_has_no_demo_page(tmp_path: Path, localstripe: Localstripe) -> None:
    """`tokenproxy serve` neither listens on the demo address nor serves the page or origin."""
    demo_port = free_port()
    server = ServerProcess(
        tmp_path, localstripe.base_url, TOKENPROXY_DEMO_LISTEN=f"127.0.0.1:{demo_port}"
    )
    await server.start()
    try:
        with pytest.raises(urllib.error.URLError):
            _get(f"http://127.0.0.1:{demo_port}/")
        for path in ("/", "/demo.js", "/demo.css", "/elements/demo.html"):
            status, _, body = _get(server.base + path)
            assert status == 404, path
            assert "pk_" not in body
        _, headers, _ = _get(server.base + "/elements/card")
        assert headers["Content-Security-Policy"].endswith("frame-ancestors 'none'")
        clients = json.loads((tmp_path / "clients.json").read_text())["clients"]
        assert not any(c.get("kind") == "publishable" for c in clients)
    finally:
        server.kill()
