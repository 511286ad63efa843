"""Web origins as browsers serialise them (RFC 6454): the one parser the allowlists share.

An allowlist entry is compared byte for byte with the ``Origin`` header a browser
sends, so it is normalised here the way a browser serialises an origin: lower-case
scheme and host, the scheme's default port left out, no path, no trailing slash.
Wildcards and the opaque ``null`` origin are refused: an allowlist that matches
"anything" would hand publishable keys and card-field frames to every site.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_RE = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
)
_IPV6_RE = re.compile(r"^\[[0-9a-f:.]+\]$")


class OriginError(ValueError):
    """A value that is not one exact http(s) origin; the message says why, not the value."""


def parse_origin(value: str) -> str:
    """``value`` as a browser would serialise it (``https://shop.example``), or OriginError."""
    text = value.strip()
    if not text or "*" in text or text.lower() == "null":
        raise OriginError("an origin must be one exact scheme://host[:port], without wildcards")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise OriginError("an origin must be scheme://host[:port]") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise OriginError("an origin must use http or https")
    if parts.username is not None or parts.password is not None:
        raise OriginError("an origin must not carry user information")
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith("?"):
        raise OriginError("an origin has no path, query or fragment")
    host = (parts.hostname or "").lower()
    netloc_host = f"[{host}]" if ":" in host else host
    if not (_HOST_RE.match(host) or _IPV6_RE.match(netloc_host)):
        raise OriginError("an origin needs a valid host name")
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{netloc_host}:{port}"
    return f"{scheme}://{netloc_host}"


def parse_origin_list(text: str) -> tuple[str, ...]:
    """A comma-separated list of origins, normalised, duplicates dropped, order kept."""
    seen: dict[str, None] = {}
    for item in text.split(","):
        if item.strip():
            seen[parse_origin(item)] = None
    return tuple(seen)
