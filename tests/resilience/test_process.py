"""The real `python -m proxy serve` process: graceful SIGTERM, and kill -9 at random moments."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from tests.cards import VISA
from tests.faultproxy import Fault, FaultProxy
from tests.proxy.test_cards_api import card_body
from tests.resilience.serverproc import ServerProcess


async def test_sigterm_finishes_in_flight_then_exits_zero(
    tmp_path: Path, faults: FaultProxy
) -> None:
    """On SIGTERM the listener closes, the slow in-flight request still gets its 201, exit 0."""
    server = ServerProcess(tmp_path / "srv", faults.base_url)
    await server.start()
    faults.script(Fault.latency(1.5))
    async with aiohttp.ClientSession() as http:

        async def tokenize() -> tuple[int, dict[str, object]]:
            async with http.post(
                server.base + "/v1/cards",
                json=card_body(),
                headers={**server.auth("checkout"), "Idempotency-Key": "term-1"},
            ) as resp:
                return resp.status, await resp.json()

        in_flight = asyncio.create_task(tokenize())
        await faults.arrived.wait()
        server.terminate()
        # Stops accepting: new connections are refused while the request is still running.
        refused = False
        for _ in range(100):
            try:
                async with (
                    aiohttp.ClientSession() as fresh,
                    fresh.get(server.base + "/openapi.json"),
                ):
                    pass
            except aiohttp.ClientConnectorError:
                refused = True
                break
            await asyncio.sleep(0.02)
        assert refused
        assert not in_flight.done()
        status, body = await in_flight
    assert status == 201
    assert str(body["token"]).startswith("vtok_card_")
    assert await server.wait() == 0
    log = server.log.read_text()
    assert '"event":"stopped"' in log
    assert VISA.number not in log


@pytest.mark.slow
async def test_kill_9_at_random_moments_never_duplicates(
    tmp_path: Path, faults: FaultProxy
) -> None:
    """≥20 kill -9s mid-traffic, restarts and retries: each key → one token and one pm_."""
    rng = random.Random(6)
    keys = [f"crash-{i}" for i in range(24)]
    bodies = {k: card_body(metadata={"order": k}) for k in keys}
    answers: dict[str, bytes] = {}
    # Every partner call takes a while, so kills land before, during and after it.
    faults.script(then=Fault.latency(0.08))
    server = ServerProcess(tmp_path / "srv", faults.base_url)
    kills = 0

    async def attempt(http: aiohttp.ClientSession, key: str) -> None:
        try:
            async with http.post(
                server.base + "/v1/cards",
                json=bodies[key],
                headers={**server.auth("checkout"), "Idempotency-Key": key},
            ) as resp:
                raw = await resp.read()
                if resp.status == 201:
                    if key in answers:
                        assert raw == answers[key], "a key answered with two different tokens"
                    answers[key] = raw
                else:
                    assert resp.status in {409, 502, 503, 504}, raw
        except (TimeoutError, aiohttp.ClientError):
            pass  # the answer was lost with the process: retried after the restart

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 150
    while kills < 20 and loop.time() < deadline:
        await server.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            # Keys already answered are sent again too: their replay must not change.
            batch = rng.sample(keys, k=12)
            tasks = [asyncio.create_task(attempt(http, k)) for k in batch]
            await asyncio.sleep(rng.uniform(0.0, 0.35))
            server.kill()
            kills += 1
            await asyncio.gather(*tasks)
    assert kills >= 20

    await server.start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for _ in range(50):
            pending = [k for k in keys if k not in answers]
            if not pending:
                break
            await asyncio.gather(*(attempt(http, k) for k in pending))
            await asyncio.sleep(0.1)
        assert sorted(answers) == sorted(keys)
        # Every answered key replays the same answer once more.
        await asyncio.gather(*(attempt(http, k) for k in keys))
        references = set()
        for key in keys:
            token = json.loads(answers[key])["token"]
            async with http.get(
                f"{server.base}/v1/tokens/{token}", headers=server.auth("billing")
            ) as resp:
                assert resp.status == 200
                view = await resp.json()
            assert view["metadata"] == {"order": key}
            references.add(view["partner_reference"])
    server.terminate()
    assert await server.wait() == 0

    # Some answers were lost mid-call and the partner call repeated (same key): the
    # chaos reached the dangerous window, and still nothing was created twice.
    assert len(faults.payment_method_posts()) > len(keys)
    # At the partner: one payment method per key, none created twice.
    assert len(faults.created) == len(keys)
    assert all(len(pms) == 1 for pms in faults.created.values())
    assert references == set().union(*faults.created.values())
    # In the vault: exactly one token per key.
    db = sqlite3.connect(server.vault_path)
    (records,) = db.execute("SELECT count(*) FROM records").fetchone()
    (done,) = db.execute("SELECT count(*) FROM idempotency_keys WHERE state = 'done'").fetchone()
    db.close()
    assert records == len(keys)
    assert done == len(keys)
