"""Limits on hostile input that aiohttp does not set for us, and the server's own options.

Body size is aiohttp's ``client_max_size`` (TOKENPROXY_MAX_BODY_BYTES); header line and
field sizes are its parser options (TOKENPROXY_MAX_HEADER_BYTES); these add a deadline
for reading a body (slow-loris style trickling holds a connection and a handler) and an
explicit JSON nesting depth (deep nesting costs recursion in the parser and everywhere
that walks the result; our bodies are two levels deep).
"""

from __future__ import annotations

from typing import Any

from proxy.settings import Settings

MAX_JSON_DEPTH = 8
_OPENERS = (ord("["), ord("{"))
_CLOSERS = (ord("]"), ord("}"))
_QUOTE = ord('"')
_BACKSLASH = ord("\\")


def json_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays/objects in ``raw`` nest deeper than ``limit`` (strings ignored)."""
    # Fast path: a body with few brackets cannot nest deeply; the scan below runs in
    # Python, and tokenization bodies hold two openers.
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        elif byte in _CLOSERS:
            depth -= 1
    return False


def server_options(settings: Settings) -> dict[str, Any]:
    """aiohttp server options (AppRunner keyword arguments) for the API listener."""
    return {
        "max_line_size": settings.max_header_bytes,
        "max_field_size": settings.max_header_bytes,
        "max_headers": 64,
        "shutdown_timeout": settings.shutdown_grace,
    }
