"""structlog set-up with the card-data redaction backstop.

Handlers are written not to log card data at all; :func:`redact_processor` is
the backstop for the day one does. It runs after ``format_exc_info`` so
tracebacks are scrubbed too, and stdlib ``logging`` (libraries) goes through
the same chain via ``ProcessorFormatter``.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from typing import IO, Any, Final, TextIO, cast

import msgspec
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from pandetect import holds_pan, may_hold_pan, redact_pans
from proxy.domain.iban import redact_ibans

__all__ = ["configure_logging", "redact_processor", "redact_text"]

REDACTED: Final = "[REDACTED]"

# Substrings that mark a key as card/bank data wherever they appear. Keys like
# invoice_number get redacted too: losing a value in a log is cheap, leaking a
# PAN is not.
_SENSITIVE_SUBSTRINGS: Final = ("number", "cvc", "cvv", "cvn", "iban", "expiry", "expiration")
# Matched only as whole tokens: "pan" and "exp" are inside company, expand, export...
_SENSITIVE_TOKENS: Final = frozenset({"pan", "exp", "expmonth", "expyear", "expdate"})
_CAMEL_RE: Final = re.compile(r"([a-z0-9])([A-Z])")
_TOKEN_SPLIT_RE: Final = re.compile(r"[^a-z0-9]+")
# Containers nested deeper than this are not walked (and not printed): it also
# stops self-referencing structures.
_MAX_DEPTH: Final = 16
_MIN_PAN_INT: Final = 10**12
_OWN_KEYS: Final = frozenset({"_record", "_from_structlog"})


@functools.lru_cache(maxsize=4096)
def _sensitive_key(key: str) -> bool:
    lowered = key.lower()
    if any(part in lowered for part in _SENSITIVE_SUBSTRINGS):
        return True
    tokens = _TOKEN_SPLIT_RE.split(_CAMEL_RE.sub(r"\1_\2", key).lower())
    return not _SENSITIVE_TOKENS.isdisjoint(tokens)


def _is_sensitive_key(key: object) -> bool:
    # The cache is bounded, but only keys of sane length are worth caching.
    return isinstance(key, str) and len(key) <= 128 and _sensitive_key(key)


# Card fields inside text, as form bodies and logfmt lines carry them
# (``card[cvc]=123``, ``cvc: 123``, ``"exp_month": 12``): a CVC is too short for the
# digit scan, so it is recognised by its field name.
_FIELD_IN_TEXT_RE: Final = re.compile(
    r"""((?:number|cvc|cvv|cvn|cvv2|cvc2|exp_month|exp_year|expiry|iban)\]?["']?\s*[=:]\s*["']?)"""
    r"""[^&\s,;"'}]+""",
    re.IGNORECASE,
)


# Necessary for an IBAN or a field in text: an IBAN's check digits are two digits at most
# one separator apart; a field in text needs "=" or ":". Most log strings (events,
# routes, tokens, names) have neither, and this one scan costs a fraction of the ones it
# saves. Card numbers have their own, wider test (:func:`pandetect.may_hold_pan`:
# thirteen digits of any script).
_MAY_HOLD_IBAN_OR_FIELD_RE: Final = re.compile(r"[0-9][ -]?[0-9]|[=:]")


def redact_text(text: str) -> str:
    """Text with IBANs, numbers holding a PAN and card fields replaced by placeholders."""
    may_hold_pan_text = may_hold_pan(text)
    if not may_hold_pan_text and _MAY_HOLD_IBAN_OR_FIELD_RE.search(text) is None:
        return text
    # IBANs first: their digits would otherwise be eaten piecemeal as PAN runs.
    text = redact_ibans(text)
    if may_hold_pan_text:
        text = redact_pans(text)
    if "=" in text or ":" in text:
        text = _FIELD_IN_TEXT_RE.sub(r"\1[REDACTED]", text)
    return text


# Strings already scanned and found clean (methods, routes, client names, addresses repeat
# on every line). Only clean strings are kept, so card data never outlives its line here;
# short ones only, and the table is emptied when full rather than evicted entry by entry.
_CLEAN: Final[set[str]] = set()
_CLEAN_MAX_ENTRIES: Final = 2048
_CLEAN_MAX_LENGTH: Final = 200


def _redact_str(text: str) -> str:
    if text in _CLEAN:
        return text
    redacted = redact_text(text)
    if redacted == text and len(text) <= _CLEAN_MAX_LENGTH:
        if len(_CLEAN) >= _CLEAN_MAX_ENTRIES:
            _CLEAN.clear()
        _CLEAN.add(text)
    return redacted


def _scrub(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return _redact_str(value)
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        # A PAN passed as a number would be rendered as digits.
        if abs(value) >= _MIN_PAN_INT and holds_pan(str(value)):
            return "[REDACTED_PAN]"
        return value
    if depth >= _MAX_DEPTH:
        return "[TRUNCATED]"
    if isinstance(value, dict):
        return {
            _scrub_key(k): REDACTED if _is_sensitive_key(k) else _scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        scrubbed = [_scrub(item, depth + 1) for item in value]
        return tuple(scrubbed) if isinstance(value, tuple) else scrubbed
    # Renderers fall back to repr() (or __structlog__) for anything else, and an
    # object's repr can hold anything, so render it here where it can be scrubbed.
    to_structlog = getattr(value, "__structlog__", None)
    text = to_structlog() if callable(to_structlog) else repr(value)
    return redact_text(text if isinstance(text, str) else repr(text))


def _scrub_key(key: Any) -> Any:
    return redact_text(key) if isinstance(key, str) else key


def redact_processor(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Redact card-data fields and PAN/IBAN-looking text anywhere in the event."""
    # Mutated in place: structlog hands each processor a dict it owns (values replaced,
    # no key added or removed, so iterating while assigning is safe).
    for key, value in event_dict.items():
        if _is_sensitive_key(key):
            event_dict[key] = REDACTED
        elif key in _OWN_KEYS:
            # ProcessorFormatter's bookkeeping (the LogRecord), removed before
            # rendering; repr-ing it here would only cost time.
            continue
        elif type(value) is str:
            event_dict[key] = _redact_str(value)
        elif not _plain_scalar(value):
            event_dict[key] = _scrub(value, 0)
    return event_dict


def _plain_scalar(value: object) -> bool:
    """None, a bool, a float or an integer too short to hold a card number: nothing to scan."""
    kind = type(value)
    if kind is int:
        return -_MIN_PAN_INT < cast(int, value) < _MIN_PAN_INT
    return value is None or kind is bool or kind is float


class _JsonRenderer:
    """JSON lines through msgspec's encoder (compact: no spaces after separators).

    Falls back to structlog's renderer (the standard library's encoder) for what msgspec
    refuses (a lone surrogate, a key that is not a string) and for non-ASCII text, which
    the standard library escapes: a log line stays ASCII whatever the stream's encoding.
    """

    def __init__(self) -> None:
        self._encode = msgspec.json.Encoder().encode
        # Compact like msgspec's output, so every line has one shape whichever encoder wrote it.
        self._fallback = structlog.processors.JSONRenderer(separators=(",", ":"))

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        try:
            rendered = self._encode(event_dict)
        except (TypeError, ValueError, UnicodeEncodeError, OverflowError):
            return cast(str, self._fallback(logger, name, event_dict))
        if not rendered.isascii():
            return cast(str, self._fallback(logger, name, event_dict))
        return rendered.decode("ascii")


def _level_number(level: str) -> int:
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    return number


class _RedactingHandler(logging.StreamHandler[TextIO]):
    """Marks the root handler we installed, so reconfiguring replaces it."""


def configure_logging(
    *, json: bool | None = None, level: str = "info", stream: IO[str] | None = None
) -> None:
    """Configure structlog and stdlib logging to write redacted lines to stream.

    ``json`` defaults to JSON unless stream (default stdout) is a terminal.
    """
    # WriteLogger only calls write/flush; IO[str] is what callers hold.
    out = cast(TextIO, stream if stream is not None else sys.stdout)
    if json is None:
        json = not (hasattr(out, "isatty") and out.isatty())
    level_number = _level_number(level)
    renderer: Processor
    if json:
        renderer = _JsonRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=hasattr(out, "isatty") and out.isatty(),
            # format_exc_info already made the traceback a (scrubbed) string.
            exception_formatter=structlog.dev.plain_traceback,
        )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.format_exc_info,
            redact_processor,
            # Level and timestamp are our own values: added after redaction so they are
            # not scanned on every line (a timestamp's digits and colons always are).
            structlog.processors.add_log_level,
            timestamper,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        # One write per line, newline included (PrintLogger's print() makes two when the
        # stream is unbuffered, as PYTHONUNBUFFERED in the image makes it): workers share
        # stdout, and a line split in two writes can interleave with another worker's.
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            timestamper,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
    )
    handler = _RedactingHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RedactingHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_number)
    # We write one canonical line per request ourselves; aiohttp's access log
    # would double the volume and log raw query strings.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
