"""What `tokenproxy dev` (`make run`) adds around the proxy: the banner and a demo checkout.

The demo checkout is a page on its own origin (``TOKENPROXY_DEMO_LISTEN``, another port
on loopback) that mounts the hosted card fields with ``tokenproxy.js`` exactly as a
shop's checkout does, so a frontend developer sees them work at once. Only ``dev``
starts it: ``serve`` has no route and no listener for it. The page carries a
publishable key made for it (``tokenize`` only, bound to the demo origin); a secret
key never reaches it. Its origin is added to the allowed origins of the dev proxy
only, so the card frame may be framed by it and its key accepted from it.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import secrets
import socket
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Final

from aiohttp import web

from proxy.domain.origins import parse_origin
from proxy.infra.clients import PUBLISHABLE_SCOPES, ClientRegistry, ClientsFileError, add_client
from proxy.infra.settings import HostPort, Settings
from proxy.web.app import serve

DEMO_KEY_FILE: Final = "demo-checkout.key"
_WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names, not binds


def _asset(name: str) -> bytes:
    return (resources.files("proxy.web") / "static" / name).read_bytes()


_DEMO_HTML: Final = _asset("demo.html").decode("utf-8")
_DEMO_ASSETS: Final[dict[str, tuple[bytes, str]]] = {
    "demo.js": (_asset("demo.js"), "text/javascript"),
    "demo.css": (_asset("demo.css"), "text/css"),
}


def browser_origin(listen: HostPort, *, tls: bool = False) -> str:
    """The origin a browser on this machine uses to reach a listener bound to ``listen``
    (``https`` when the listener speaks TLS)."""
    host = "127.0.0.1" if listen.host in _WILDCARD_HOSTS else listen.host
    if ":" in host:
        host = f"[{host}]"
    return parse_origin(f"{'https' if tls else 'http'}://{host}:{listen.port}")


def serves_tls(settings: Settings) -> bool:
    """Whether the proxy's listeners speak TLS: a certificate puts it on every one of them
    (:func:`proxy.infra.tls.listener_contexts`). The demo page is plain HTTP either way."""
    return settings.tls_cert_file is not None


def proxy_origin(settings: Settings) -> str:
    """The origin of the proxy's API listener, in the scheme it serves."""
    return browser_origin(settings.listen, tls=serves_tls(settings))


def ensure_demo_key(clients_path: Path, key_file: Path, origin: str) -> str:
    """The demo page's publishable key, bound to ``origin``: the stored one, else a new one.

    A key is reused only while the clients file still holds it as a publishable client
    of that origin (moving ``TOKENPROXY_DEMO_LISTEN`` to another port makes a new one).
    """
    with contextlib.suppress(OSError, ClientsFileError):
        key = key_file.read_text(encoding="utf-8").strip()
        client = ClientRegistry.load(clients_path).authenticate(key)
        if client is not None and client.publishable and origin in client.origins:
            return key
    key = add_client(
        clients_path,
        f"demo-checkout-{secrets.token_hex(4)}",
        PUBLISHABLE_SCOPES,
        publishable=True,
        origins=frozenset({origin}),
    )
    fd = os.open(key_file, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    return key


def with_demo_origin(settings: Settings, origin: str) -> Settings:
    """``settings`` with the demo origin allowed to frame the card fields and tokenize."""
    if origin in settings.cors_origins:
        return settings
    return replace(settings, cors_origins=(*settings.cors_origins, origin))


def demo_csp(proxy_origin: str) -> str:
    """The demo page's CSP: its own script and style, the proxy's script and frame only."""
    return (
        f"default-src 'none'; script-src 'self' {proxy_origin}; style-src 'self'; "
        f"frame-src {proxy_origin}; img-src 'self'; connect-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )


def render_demo_page(proxy_origin: str, publishable_key: str, dev_key_file: str) -> str:
    """The demo checkout page; its settings travel in an escaped data attribute."""
    if not publishable_key.startswith("pk_"):
        # The page is public: only a publishable key may ever be written into it.
        raise ValueError("the demo page takes a publishable (pk_) key only")
    config = json.dumps(
        {"proxy": proxy_origin, "publishableKey": publishable_key, "devKeyFile": dev_key_file}
    )
    return _DEMO_HTML.replace("{{PROXY}}", html.escape(proxy_origin, quote=True)).replace(
        "{{CONFIG}}", html.escape(config, quote=True)
    )


def create_demo_app(proxy_origin: str, publishable_key: str, dev_key_file: str) -> web.Application:
    """The demo checkout site: ``/`` and its own script and style."""
    page = render_demo_page(proxy_origin, publishable_key, dev_key_file)
    headers = {
        "Content-Security-Policy": demo_csp(proxy_origin),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html", headers=headers)

    async def asset(request: web.Request) -> web.Response:
        body, content_type = _DEMO_ASSETS[request.match_info["asset"]]
        return web.Response(body=body, content_type=content_type, headers=headers)

    app = web.Application()
    app.router.add_get("/", index, allow_head=False)
    app.router.add_get(r"/{asset:demo\.js|demo\.css}", asset, allow_head=False)
    return app


def bind_demo(settings: Settings) -> socket.socket | None:
    """A listening socket for the demo page, or None when its address is taken or unusable.

    The proxy's own addresses count as taken: binding one of them first would make the
    proxy, not the demo, fail to start.
    """
    listen = settings.demo_listen
    if listen in (settings.listen, settings.ops_listen):
        return None
    try:
        infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError:
        return None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


async def serve_with_demo(
    settings: Settings,
    demo: web.Application,
    sock: socket.socket,
    *,
    sockets: tuple[socket.socket, socket.socket] | None = None,
) -> None:
    """Serve the demo site on ``sock`` for as long as the proxy serves (on ``sockets``)."""
    runner = web.AppRunner(demo, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        await serve(settings, sockets=sockets)
    finally:
        await runner.cleanup()


def banner(
    settings: Settings,
    *,
    partner: str,
    dev_key_file: Path,
    demo_url: str | None,
    state_dir: Path,
    sandbox: bool,
) -> str:
    """What `make run` prints first: where things are and commands that work as pasted."""
    api = proxy_origin(settings)
    ops = f"{'https' if serves_tls(settings) else 'http'}://{settings.ops_listen}"
    fresh = "the sandbox partner starts empty on each run; " if sandbox else ""
    demo = (
        f"card fields demo: {demo_url} (open it in a browser)"
        if demo_url is not None
        else f"card fields demo not started: {settings.demo_listen} is in use "
        "(set TOKENPROXY_DEMO_LISTEN to another HOST:PORT)"
    )
    return "\n".join(
        [
            f"tokenproxy (dev) on {api}, ops on {ops}, partner: {partner}",
            demo,
            f"vault: {settings.vault_location} (key ring {settings.keyring_path.absolute()})",
            f"state in {state_dir}/ ({fresh}to start over, stop and remove {state_dir}/); "
            f"dev client key (every scope) in {dev_key_file}",
            "try, from this directory:",
            f"  KEY=$(cat {dev_key_file})",
            "  TOKEN=$(curl -s "
            f"{api}/v1/cards -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json' "
            '-d \'{"number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2030, '
            '"cvc": "123"}\' | grep -o \'vtok_card_[A-Za-z0-9_-]*\'); echo $TOKEN',
            f'  curl -s {api}/v1/tokens/$TOKEN -H "Authorization: Bearer $KEY"',
        ]
    )
