"""In-process costs of the pieces of a resolve, each the best of several timed repeats.

``python -m bench.resolve_parts``: on a machine shared with other work the CPU time per
request of a whole server moves by more than a few microseconds between runs; the best of
repeated in-process timings moves far less, so a change to one piece shows here. Run it
with another checkout first on ``PYTHONPATH`` to compare (it uses only APIs both have).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import msgspec
import structlog

from proxy.infra.log import configure_logging
from proxy.web.authguard import source_key
from proxy.web.middleware import new_request_id
from vault import Kind, LocalKekProvider, NewRecord, Vault
from vault.audit import EventType, Outcome
from vault.keys.ring import init_keyring
from vault.records import iso, utcnow

_REPEATS = 7


def _best_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=_REPEATS)) / number * 1e6


def _log_line() -> float:
    with open(os.devnull, "w") as sink:
        configure_logging(json=True, stream=sink)
        log = structlog.get_logger("tokenproxy.request")
        structlog.contextvars.bind_contextvars(request_id=new_request_id())

        def line() -> None:
            log.info(
                "request",
                method="GET",
                route="/v1/tokens/{token}",
                status=200,
                duration_ms=1.234,
                client="billing",
                address="127.0.0.1",
                # A fresh token each line, as in a real run: nothing to reuse from the last.
                token="vtok_card_" + new_request_id()[4:],
                error_code=None,
            )

        try:
            return _best_us(line, 2000)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")


async def _vault_parts(work: Path) -> dict[str, float]:
    keyring = work / "keyring.json"
    init_keyring(keyring)
    vault = await Vault.open(f"sqlite:///{work / 'vault.db'}", LocalKekProvider.from_file(keyring))
    try:
        records = await asyncio.gather(
            *(
                vault.put(
                    NewRecord(
                        kind=Kind.CARD,
                        partner="stripe",
                        partner_reference=f"pm_parts{n:08d}",
                        details={"brand": "visa", "last4": "4242", "masked": "424242******4242"},
                    )
                )
                for n in range(500)
            )
        )
        tokens = [r.token for r in records]
        dek_ids = {t: (await vault.backend.get_record(t)).dek_id for t in tokens}  # type: ignore[union-attr]
        found = {}
        for name, forget in (("vault.get, data key cached", False), ("vault.get, uncached", True)):
            best = float("inf")
            for _ in range(_REPEATS):
                spent = 0.0
                for token in tokens:
                    if forget:
                        vault.forget_dek(dek_ids[token])
                    started = time.process_time()
                    await vault.get(token)
                    spent += time.process_time() - started
                best = min(best, spent)
            found[name] = best / len(tokens) * 1e6
        # Audit events at 64 concurrent (group commits as under load): process CPU per event.
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            for _ in range(8):
                await asyncio.gather(
                    *(
                        vault.audit.append(
                            EventType.RESOLVE,
                            outcome=Outcome.SUCCESS,
                            actor="billing",
                            origin="127.0.0.1",
                            resource=token,
                        )
                        for token in tokens[:64]
                    )
                )
            best = min(best, (time.process_time() - started) / (8 * 64))
        found["audit append at 64 concurrent (all threads' CPU)"] = best * 1e6
        return found
    finally:
        await vault.close()


def main() -> int:
    """Print each piece's cost in microseconds."""
    view = {
        "token": "vtok_card_" + "a" * 32,
        "kind": "card",
        "brand": "visa",
        "last4": "4242",
        "masked": "424242******4242",
        "customer_ref": None,
        "metadata": {},
        "created_at": iso(utcnow()),
        "reusable": True,
        "partner": "stripe",
        "partner_reference": "pm_parts00000001",
    }
    print(f"load average {os.getloadavg()[:2]}")
    print(f"  canonical log line           {_log_line():8.2f} us")
    print(f"  request id                   {_best_us(new_request_id, 20000):8.2f} us")
    print(
        f"  source key of an address     {_best_us(lambda: source_key('10.1.2.3'), 20000):8.2f} us"
    )
    print(f"  timestamp (iso of now)       {_best_us(lambda: iso(utcnow()), 20000):8.2f} us")
    dumps = _best_us(lambda: json.dumps(view).encode(), 20000)
    print(f"  resolve body, json.dumps     {dumps:8.2f} us")
    encode = msgspec.json.Encoder().encode
    print(f"  resolve body, msgspec        {_best_us(lambda: encode(view), 20000):8.2f} us")
    with tempfile.TemporaryDirectory(prefix="tokenproxy-parts-") as tmp:
        for name, cost in asyncio.run(_vault_parts(Path(tmp))).items():
            print(f"  {name:<28} {cost:8.2f} us")
    print(f"load average {os.getloadavg()[:2]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
