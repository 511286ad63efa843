"""The client's address: the TCP peer, or what trusted reverse proxies say it was.

Behind an ingress every request's TCP peer is the ingress pod, so the publishable-key
limiter and the auth-failure throttle would put a whole shop in one bucket, and the audit
trail would record the ingress instead of the shopper (PCI DSS 10.2.2). A forwarding
header is believed only when the peer is in ``TOKENPROXY_TRUSTED_PROXIES``; anyone else
can write anything there, so from an untrusted peer the header is ignored.

The chain (``TOKENPROXY_FORWARDED_HEADER``: ``X-Forwarded-For`` or RFC 7239
``Forwarded``, one only, the one the ingress writes: a proxy passes the other through as
the client sent it) is walked from the right, the hop nearest to us, skipping trusted
hops; the first untrusted address is the client. Each proxy appends the address it saw,
so everything left of that point was written by the client and is never read. A hop that
does not parse as an address ends the walk with the header ignored: a garbled chain
proves nothing, and the peer is at least an address someone answered from.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from aiohttp import web

from proxy.infra.settings import FORWARDED, IPNetwork
from proxy.web.appkeys import SETTINGS

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_ADDRESS_KEY = web.RequestKey("client_address", str)
# A chain longer than this is not a deployment's proxies but a client padding the header.
MAX_HOPS = 32


def client_address(request: web.Request) -> str:
    """The address of the client behind ``request``, by the trusted-proxy rules; "unknown" if none.

    Used by every place that keys or records by address: limits, throttle, audit, logs.
    """
    found = request.get(_ADDRESS_KEY)
    if found is None:
        settings = request.app[SETTINGS]
        found = resolve(
            request.remote,
            request.headers.getall(settings.forwarded_header, []),
            settings.trusted_proxies,
            forwarded=settings.forwarded_header == FORWARDED,
        )
        request[_ADDRESS_KEY] = found
    return found


def resolve(
    peer: str | None,
    header_values: Sequence[str],
    trusted: Sequence[IPNetwork],
    *,
    forwarded: bool,
) -> str:
    """The client address given the TCP ``peer``, the forwarding header's lines and the trust list.

    ``forwarded`` says the lines are RFC 7239 ``Forwarded`` (else ``X-Forwarded-For``).
    """
    peer_address = _peer_address(peer or "")
    if peer_address is None:
        # A Unix socket or a test transport: there is no address, and no proxy to believe.
        return (peer or "")[:64] or "unknown"
    if not header_values or not _is_trusted(peer_address, trusted):
        return str(peer_address)
    hops = _forwarded_hops(header_values) if forwarded else _xff_hops(header_values)
    client = peer_address
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            return str(peer_address)
        client = address
        if not _is_trusted(address, trusted):
            break
    # Every hop trusted: the leftmost is where the chain began (an internal caller
    # reaching us through our own proxies).
    return str(client)


# The TCP peer is the socket's own text, not the client's: the same few peers (an ingress,
# a billing service) come back on every request. Header hops are client text and are not
# cached.
@functools.lru_cache(maxsize=1024)
def _peer_address(peer: str) -> IPAddress | None:
    return parse_address(peer)


def parse_address(text: str) -> IPAddress | None:
    """An IP address as forwarding headers and peers write it; None when it is not one.

    Takes a bare address, ``a.b.c.d:port`` and ``[v6]`` or ``[v6]:port``; an IPv4-mapped
    IPv6 address is its IPv4 address, so one host is one key whichever way it arrived.
    Zone ids (``%eth0``) are refused: they name an interface of the sender, not a host.
    """
    text = text.strip()
    if not text or len(text) > 64 or "%" in text:
        return None
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not _port(rest)):
            return None
        text = inside
    elif text.count(":") == 1:
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _port(rest: str) -> bool:
    return rest.startswith(":") and rest[1:].isdigit()


def _is_trusted(address: IPAddress, trusted: Iterable[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def _xff_hops(values: Sequence[str]) -> list[str]:
    # Several header lines are one list in order (RFC 9110 5.3), as proxies may append a line.
    hops = [hop for value in values for hop in value.split(",")]
    return hops[-MAX_HOPS:]


def _forwarded_hops(values: Sequence[str]) -> list[str]:
    """The ``for=`` of each element; "" (no address) for an element without exactly one."""
    elements = [element for value in values for element in value.split(",")]
    return [_forwarded_for(element) for element in elements[-MAX_HOPS:]]


def _forwarded_for(element: str) -> str:
    found: list[str] = []
    for pair in element.split(";"):
        name, eq, value = pair.strip().partition("=")
        if not eq:
            return ""
        if name.strip().lower() == "for":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            found.append(value)
    # Two `for` in one element are not ours to choose between.
    return found[0] if len(found) == 1 else ""
