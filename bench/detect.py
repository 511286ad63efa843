"""Card-number scan cost: event-loop time per metadata payload, normal and adversarial.

    python -m bench.detect [--rounds 50]

Each payload is what one tokenize may carry: 20 metadata values of up to 500 characters,
validated as the proxy does (every key, every value, the metadata as a read client gets
it). The adversarial payloads are built to make a naive scanner work hardest: candidate
numbers everywhere, none of them a card. The last lines scan one ever longer text to
show that the cost per character stays flat (linear time).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from pandetect import holds_pan
from proxy.domain.fields import validate_metadata

_VALUE = 500
_KEYS = 20


def _key(index: int) -> str:
    # Letters only: a key ending in digits would join the value's digits in the metadata
    # as a read client gets it back ("k10":"1 1 1...").
    return "key_" + "abcdefghijklmnopqrst"[index]


def _fill(unit: str) -> str:
    return (unit * (_VALUE // len(unit) + 1))[:_VALUE]


PAYLOADS: dict[str, dict[str, str]] = {
    "normal (order ids, dates, names)": {
        "order_id": "A-2025-000123",
        "placed_at": "2026-12-02T15:39:15.123456+00:00",
        "customer": "Åsa Öberg",
        "channel": "web",
        "campaign": "winter-sale",
        "items": "3",
        "uuid": "0b9e5c1a-7d2f-4e8b-9c3d-5f6a7b8c9d0e",
        "note": "leave at the door, ring twice",
    },
    "normal, 20 values x 500 chars of prose": {
        _key(i): _fill("order 12345 shipped on 2026-12-02 to Storgatan 4, ") for i in range(_KEYS)
    },
    "adversarial 1-1-1-... (20 x 500)": {_key(i): _fill("1-") for i in range(_KEYS)},
    "adversarial 1 1 1 ... (20 x 500)": {_key(i): _fill("1 ") for i in range(_KEYS)},
    "adversarial mixed separators 1.1-1.1- (20 x 500)": {
        _key(i): _fill("1.1-") for i in range(_KEYS)
    },
    "adversarial zero-width 1<ZWSP>1... (20 x 500)": {
        _key(i): _fill("1\u200b-") for i in range(_KEYS)
    },
    "adversarial full-width 1-1-... (20 x 500)": {_key(i): _fill("\uff11-") for i in range(_KEYS)},
    "adversarial 13-digit numbers 1-...-1x (20 x 500)": {
        _key(i): _fill("1-" * 12 + "1x") for i in range(_KEYS)
    },
}


def per_call_us(call: Callable[[], object], rounds: int) -> float:
    """Median wall time of one call, in microseconds."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * 1e6


def main() -> None:
    """Print microseconds per metadata payload, then per 1,000 characters of one long text."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    print("card-number scan, metadata validation per payload (median):")
    for name, metadata in PAYLOADS.items():
        micros = per_call_us(lambda metadata=metadata: validate_metadata(metadata), args.rounds)
        print(f"  {name:<52} {micros:9,.0f} µs")
    print("linear time: one adversarial text (1-1-1-...), scanned whole:")
    for size in (10_000, 20_000, 40_000, 80_000):
        text = ("1-" * size)[:size]
        micros = per_call_us(lambda text=text: holds_pan(text), max(args.rounds // 5, 3))
        print(f"  {size:>6,} chars {micros:9,.0f} µs  ({micros / size * 1000:6.1f} µs per 1,000)")


if __name__ == "__main__":
    main()
