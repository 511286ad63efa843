"""The logging redaction backstop: what reaches the stream never holds card data."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.infra.log import configure_logging, redact_processor, redact_text
from tests.cards import luhn_complete, reference_luhn
from tests.conftest import LOG_STREAM

PAN = "4242424242424242"
DIGITS = "0123456789"


@contextmanager
def logging_to_buffer(*, json_lines: bool = True) -> Iterator[io.StringIO]:
    """Configure logging into a StringIO and restore structlog and stdlib state after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access = logging.getLogger("aiohttp.access")
    access_level = access.level
    buffer = io.StringIO()
    configure_logging(json=json_lines, stream=buffer)
    try:
        yield buffer
    finally:
        structlog.reset_defaults()
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        access.setLevel(access_level)
        # configure_logging replaced the session's handler: put the session's logging
        # back, or later leak scans would read a buffer nothing writes to any more.
        configure_logging(json=True, level="debug", stream=LOG_STREAM)


def _raise(exc: Exception) -> None:
    """Raise exc from a frame of its own, as library code would."""
    raise exc


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_pan_in_message_is_redacted() -> None:
    """A PAN in the event text becomes [REDACTED_PAN]."""
    with logging_to_buffer() as buffer:
        structlog.get_logger().info(f"charging {PAN} now")
    assert PAN not in buffer.getvalue()
    assert _lines(buffer)[0]["event"] == "charging [REDACTED_PAN] now"


def test_spaced_and_dashed_pans_are_redacted() -> None:
    """PANs printed in groups with spaces or dashes are redacted too."""
    with logging_to_buffer() as buffer:
        structlog.get_logger().info("x", a="4242 4242 4242 4242", b="5555-5555-5555-4444")
    line = _lines(buffer)[0]
    assert line["a"] == line["b"] == "[REDACTED_PAN]"


def test_nested_pans_are_redacted() -> None:
    """PANs inside nested dicts, lists and tuples are redacted."""
    with logging_to_buffer() as buffer:
        structlog.get_logger().info(
            "x", data={"items": [{"note": f"pan {PAN}"}, ("378282246310005",)]}
        )
    assert PAN not in buffer.getvalue()
    assert "378282246310005" not in buffer.getvalue()
    assert _lines(buffer)[0]["data"] == {
        "items": [{"note": "pan [REDACTED_PAN]"}, ["[REDACTED_PAN]"]]
    }


@pytest.mark.parametrize(
    "key", ["card_number", "cvc", "cvv", "exp_month", "exp_year", "exp", "iban", "pan", "cardExp"]
)
def test_sensitive_keys_are_redacted(key: str) -> None:
    """Fields named like card data lose their value whatever it is, at any depth."""
    with logging_to_buffer() as buffer:
        structlog.get_logger().info("x", **{key: "12"}, nested={key: ["a", 1]})
    line = _lines(buffer)[0]
    assert line[key] == "[REDACTED]"
    assert line["nested"] == {key: "[REDACTED]"}


@pytest.mark.parametrize("key", ["company", "expand", "expires_at", "span_id", "request_id"])
def test_ordinary_keys_are_kept(key: str) -> None:
    """Keys that merely contain 'pan' or 'exp' inside a word keep their value."""
    with logging_to_buffer() as buffer:
        structlog.get_logger().info("x", **{key: "v"})
    assert _lines(buffer)[0][key] == "v"


def test_traceback_is_scrubbed() -> None:
    """A traceback whose exception message holds a PAN is scrubbed."""
    with logging_to_buffer() as buffer:
        try:
            _raise(ValueError(f"declined {PAN}"))
        except ValueError:
            structlog.get_logger().exception("charge failed")
    line = _lines(buffer)[0]
    assert PAN not in buffer.getvalue()
    assert "ValueError: declined [REDACTED_PAN]" in line["exception"]


def test_console_renderer_is_scrubbed() -> None:
    """The console (non-JSON) renderer output is scrubbed as well."""
    with logging_to_buffer(json_lines=False) as buffer:
        log = structlog.get_logger()
        log.info(f"card {PAN}", cvc="987")
        try:
            _raise(ValueError(PAN))
        except ValueError:
            log.exception("failed")
    text = buffer.getvalue()
    assert PAN not in text
    # Timestamps left out: their microseconds can spell 987 by chance.
    assert "987" not in re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z?", "", text)
    assert "[REDACTED_PAN]" in text


@pytest.mark.parametrize(
    "iban", ["DE89370400440532013000", "DE89 3704 0044 0532 0130 00", "se4550000000058398257466"]
)
def test_iban_is_redacted(iban: str) -> None:
    """IBANs, compact or printed in blocks, become [REDACTED_IBAN]."""
    with logging_to_buffer() as buffer:
        structlog.get_logger().info(f"payout to {iban} ok")
    assert _lines(buffer)[0]["event"] == "payout to [REDACTED_IBAN] ok"


def test_iban_shaped_id_with_bad_checksum_is_kept() -> None:
    """An id shaped like an IBAN but failing mod-97 (and with no PAN in it) is left alone."""
    assert not reference_luhn("12345698765433")
    with logging_to_buffer() as buffer:
        structlog.get_logger().info("x", ref="GB82WEST12345698765433")
    assert _lines(buffer)[0]["ref"] == "GB82WEST12345698765433"


def test_long_digit_runs_are_searched_for_glued_pans() -> None:
    """A digit run longer than any PAN (a PAN glued to its expiry) is redacted."""
    with logging_to_buffer() as buffer:
        structlog.get_logger().info("x", blob=PAN + "1230")
    assert _lines(buffer)[0]["blob"] == "[REDACTED_PAN]"


def test_non_luhn_order_id_is_kept() -> None:
    """A 16-digit number that fails Luhn (an order id) is not redacted."""
    order_id = "1234567812345678"
    assert not reference_luhn(order_id)
    with logging_to_buffer() as buffer:
        structlog.get_logger().info("x", order_id=order_id, event_count=3)
    line = _lines(buffer)[0]
    assert line["order_id"] == order_id
    assert line["event_count"] == 3


def test_pan_as_integer_is_redacted() -> None:
    """A PAN passed as a JSON number is redacted; ordinary integers are kept."""
    with logging_to_buffer() as buffer:
        structlog.get_logger().info("x", value=int(PAN), count=1234567812345678)
    line = _lines(buffer)[0]
    assert line["value"] == "[REDACTED_PAN]"
    assert line["count"] == 1234567812345678


def test_object_repr_is_scrubbed() -> None:
    """Objects the renderer would repr() are rendered and scrubbed first."""

    @dataclass
    class Leaky:
        number_text: str

    with logging_to_buffer() as buffer:
        structlog.get_logger().info("x", obj=Leaky(PAN), raw=PAN.encode())
    assert PAN not in buffer.getvalue()


def test_stdlib_logging_is_scrubbed() -> None:
    """Library lines through stdlib logging are rendered by the same redacting chain."""
    with logging_to_buffer() as buffer:
        logging.getLogger("x").error("partner said %s for %s", "no", PAN)
    line = _lines(buffer)[0]
    assert PAN not in buffer.getvalue()
    assert line["event"] == "partner said no for [REDACTED_PAN]"
    assert line["logger"] == "x"
    assert line["level"] == "error"


def test_stdlib_traceback_is_scrubbed() -> None:
    """A stdlib logger's exc_info traceback is scrubbed."""
    with logging_to_buffer() as buffer:
        try:
            _raise(RuntimeError(f"card {PAN}"))
        except RuntimeError:
            logging.getLogger("lib").exception("oops")
    assert PAN not in buffer.getvalue()
    assert "[REDACTED_PAN]" in _lines(buffer)[0]["exception"]


def test_aiohttp_access_log_is_quiet() -> None:
    """aiohttp's access log is raised to WARNING: we write our own request line."""
    with logging_to_buffer() as buffer:
        logging.getLogger("aiohttp.access").info("GET /v1/cards 200")
    assert buffer.getvalue() == ""


def test_reconfiguring_replaces_the_root_handler() -> None:
    """Configuring twice leaves one redacting root handler, writing to the new stream."""
    with logging_to_buffer(), logging_to_buffer() as second:
        logging.getLogger("x").warning("once")
        assert len(_lines(second)) == 1


def test_unknown_level_is_refused() -> None:
    """A misspelt level fails loudly instead of logging everything."""
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging(level="verbose", stream=io.StringIO())


def test_redact_processor_truncates_deep_nesting() -> None:
    """Self-referencing or very deep structures are cut off instead of recursing forever."""
    loop: list[Any] = []
    loop.append(loop)
    event = redact_processor(None, "info", {"event": "x", "loop": loop})
    assert "TRUNCATED" in json.dumps(event)


luhn_pans = st.integers(min_value=12, max_value=18).flatmap(
    lambda n: st.text(DIGITS, min_size=n, max_size=n).map(luhn_complete)
)
boundary = st.sampled_from(list("abcXYZ,;:!()[]{}/_=#\"'\t\n"))


@settings(max_examples=200)
@given(luhn_pans, st.text(max_size=40), st.text(max_size=40), boundary, boundary)
def test_generated_pans_never_reach_the_line(
    pan: str, prefix: str, suffix: str, left: str, right: str
) -> None:
    """Any Luhn-valid 13-19 digit PAN embedded in random text is absent from the JSON line."""
    text = prefix + left + pan + right + suffix
    with logging_to_buffer() as buffer:
        structlog.get_logger().info(text, note=text, items=[text])
    assert pan not in buffer.getvalue()


@pytest.mark.parametrize(
    "text",
    [
        "post_data=type=card&card[number]=4242424242424242&card[exp_month]=12&card[cvc]=731",
        "cvc: 731 and exp_year=2031",
        '{"cvc": "731", "exp_month": "12"}',
        "CVV2=731",
    ],
)
def test_card_fields_inside_text_are_redacted(text: str) -> None:
    """Card fields inside text lose their values: a CVC is too short for the digit scan."""
    out = redact_text(text)
    assert "731" not in out
    assert "[REDACTED]" in out
    assert "4242424242424242" not in out


_DISGUISED = [
    "\uff14\uff12" * 8,  # full-width
    "\u0664\u0662" * 8,  # Arabic-Indic
    "4242\u200b4242\u200b4242\u200b4242",  # zero-width spaces
    "4242.4242.4242.4242",
    "4242/4242/4242/4242",
    "4242_4242_4242_4242",
    "4242:4242:4242:4242",
    "4242\u20134242\u20134242\u20134242",  # en dash
    "4242\u00a04242\u00a04242\u00a04242",  # no-break space
]


@pytest.mark.parametrize("disguised", _DISGUISED)
def test_disguised_pans_are_redacted(disguised: str) -> None:
    """Log redaction uses the card-number detector: any digits, any short separators."""
    with logging_to_buffer() as buffer:
        structlog.get_logger().info("paid", note=f"card {disguised} ok", items=[disguised])
        logging.getLogger("lib").warning("card %s", disguised)
    text = buffer.getvalue()
    # Only this test's two lines: a background thread of an earlier test may log meanwhile.
    ours = [
        line for line in _lines(buffer) if str(line.get("event", "")).startswith(("paid", "card"))
    ]
    assert len(ours) == 2
    for line in ours:
        assert "[REDACTED_PAN]" in json.dumps(line, ensure_ascii=False)
    assert disguised not in text
    assert disguised not in json.loads(json.dumps(text))
    # No residue of the digits either; the timestamps are left out, since their
    # microseconds can spell 4242 by chance.
    fields = json.dumps([{k: v for k, v in line.items() if k != "timestamp"} for line in ours])
    assert "4242" not in fields.replace("\\u200b", "")


class _Writes(io.StringIO):
    """A stream that keeps every write call apart."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_each_log_line_is_one_write_with_its_newline() -> None:
    """Workers share stdout: a line written in two calls could interleave with another's."""
    stream = _Writes()
    try:
        configure_logging(json=True, stream=stream)
        structlog.get_logger().info("one", detail="x" * 200)
        logging.getLogger("lib").warning("two")
    finally:
        structlog.reset_defaults()
        configure_logging(json=True, level="debug", stream=LOG_STREAM)
    assert len(stream.calls) == 2
    assert all(call.endswith("\n") and call.count("\n") == 1 for call in stream.calls)
    assert [json.loads(call)["event"] for call in stream.calls] == ["one", "two"]


def test_a_value_seen_clean_is_still_scanned_when_it_changes() -> None:
    """A field that was clean on one line and holds a PAN on the next is redacted there."""
    with logging_to_buffer() as buffer:
        log = structlog.get_logger()
        log.info("request", address="10.0.0.1", token="vtok_card_abc")
        log.info("request", address=f"peer {PAN}", token=f"vtok_card_{PAN}")
        log.info("request", address="10.0.0.1", token=f"vtok_card_{PAN}")
    assert PAN not in buffer.getvalue()
    lines = _lines(buffer)
    assert lines[0]["address"] == "10.0.0.1"
    assert lines[1]["address"] == "peer [REDACTED_PAN]"
    assert lines[2]["token"] == "vtok_card_[REDACTED_PAN]"


def test_non_ascii_and_lone_surrogates_render_as_ascii_json() -> None:
    """Non-ASCII text is escaped and a lone surrogate does not lose the line."""
    with logging_to_buffer() as buffer:
        log = structlog.get_logger()
        log.info("request", route="/v1/tokens/\u00e9t\u00e9")
        log.info("request", route="/v1/tokens/\udc80")
        log.info("request", sizes={1: "one"})
    text = buffer.getvalue()
    assert text.isascii()
    assert text.count('"event":"request"') == 3
    lines = _lines(buffer)
    assert lines[0]["route"] == "/v1/tokens/\u00e9t\u00e9"
    assert lines[1]["route"] == "/v1/tokens/\udc80"
    assert lines[2]["sizes"] == {"1": "one"}


def test_large_integers_holding_a_pan_are_redacted_at_the_top_level() -> None:
    """A PAN passed as a top-level integer field is redacted, a small integer kept."""
    with logging_to_buffer() as buffer:
        structlog.get_logger().info("request", status=200, amount=int(PAN))
    line = _lines(buffer)[0]
    assert line["status"] == 200
    assert line["amount"] == "[REDACTED_PAN]"
