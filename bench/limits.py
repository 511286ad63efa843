"""`python -m bench.limits`: what the shared rate limits cost a browser tokenization.

A browser tokenizes with a publishable key, which spends from a rate-limit bucket: in
memory with SQLite, one upsert on PostgreSQL (shared by every replica). A server's
secret key spends from none. So, per backend, one proxy process is driven alternately
with both keys (twice each, the same connections and instant partner stub), and the
difference per request is the limit's cost. Beside it, the statement alone: sequential
decisions from one connection (its round trip) and 16 at once.

The bucket is made large enough never to refuse (a refusal costs less than a
tokenization and would flatter the numbers). All requests come from 127.0.0.1, so on
PostgreSQL they update one row: the worst case for row locks (shoppers spread over many).

Runs in its own database (``tp_limits_bench``, dropped at the end) on 127.0.0.1:5432.
Uses wrk when installed, else bench/loadgen.py. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tokenproxy_sandbox.launcher import free_port

from bench.postgres import ADMIN_URL, CARD, Proxies, admin, spawn, wait_port, wrk, wrk_result
from proxy.infra.clients import add_client, parse_scopes
from vault.backends.postgres import PostgresBackend
from vault.keys.ring import init_keyring

DATABASE = "tp_limits_bench"
CONNECTIONS = 32
SHOP = "https://shop.example"


def _url() -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{DATABASE}"


def _lua(folder: Path, name: str, headers: dict[str, str]) -> Path:
    path = folder / f"{name}.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = '{CARD}'"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _load(base: str, folder: Path, name: str, headers: dict[str, str], duration: int) -> float:
    """req/s of POST /v1/cards with ``headers`` for ``duration`` seconds."""
    headers = {"Content-Type": "application/json", **headers}
    if shutil.which("wrk"):
        script = _lua(folder, name, headers)
        result = wrk_result(
            wrk(base + "/v1/cards", script, connections=CONNECTIONS, duration=duration)
        )
        return result["rps"]
    spec = {
        "base": base,
        "paths": ["/v1/cards"],
        "method": "POST",
        "body": CARD,
        "headers": headers,
        "connections": CONNECTIONS,
        "duration": duration,
    }
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCH_RESULT "))
    result = json.loads(line.removeprefix("BENCH_RESULT "))
    if result["non2xx"] or result["errors"]:
        print(f"  warning: {result['non2xx']} non-2xx, {result['errors']} errors", flush=True)
    return float(result["requests"]) / (result["duration_us"] / 1e6)


async def statement_cost(decisions: int) -> tuple[float, float, float, float]:
    """Sequential p50 and p99 (µs) of one bucket decision, the proxy-side CPU µs per decision
    (what a replica pays, whatever the machine's load), and decisions/s with 16 at once."""
    backend = PostgresBackend(_url() + "?search_path=statement", pool_max=16)
    try:
        await backend.migrate()
        timings = []
        cpu = time.process_time()
        for i in range(decisions):
            started = time.perf_counter()
            await backend.limit_take(f"pk:bench:{i % 100}", 1e-9, 10**9)
            timings.append((time.perf_counter() - started) * 1e6)
        cpu_us = (time.process_time() - cpu) / decisions * 1e6
        timings.sort()
        p50 = statistics.median(timings)
        p99 = timings[int(len(timings) * 0.99)]
        started = time.perf_counter()

        async def worker(n: int) -> None:
            for i in range(decisions // 16):
                await backend.limit_take(f"pk:bench:{(n * 7 + i) % 100}", 1e-9, 10**9)

        await asyncio.gather(*(worker(n) for n in range(16)))
        rate = (decisions // 16) * 16 / (time.perf_counter() - started)
    finally:
        await backend.close()
    return p50, p99, cpu_us, rate


async def main_async(args: argparse.Namespace) -> None:
    """Set up the database, stub and keys; measure; print the tables."""
    await admin(f"DROP DATABASE IF EXISTS {DATABASE}")
    await admin(f"CREATE DATABASE {DATABASE}")
    stub_port = free_port()
    stub = spawn(["-m", "bench.postgres", "stub", str(stub_port)], dict(os.environ))
    rows: dict[str, dict[str, list[float]]] = {}
    try:
        for schema in ("statement", "proxy"):
            await admin(f"CREATE SCHEMA {schema}", _url())
        p50, p99, cpu_us, rate = await statement_cost(args.decisions)
        print(
            f"statement: p50 {p50:.0f} µs, p99 {p99:.0f} µs, {cpu_us:.0f} µs CPU,"
            f" {rate:.0f}/s at 16",
            flush=True,
        )
        with tempfile.TemporaryDirectory(prefix="tp-bench-limits-") as tmp:
            folder = Path(tmp)
            keyring = folder / "keyring.json"
            init_keyring(keyring)
            clients = folder / "clients.json"
            secret = add_client(clients, "checkout", parse_scopes("tokenize"))
            publishable = add_client(
                clients,
                "shop",
                parse_scopes("tokenize"),
                publishable=True,
                origins=frozenset({SHOP}),
            )
            await wait_port(stub_port)
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("TOKENPROXY_")},
                "TOKENPROXY_KEYRING": str(keyring),
                "TOKENPROXY_CLIENTS": str(clients),
                "STRIPE_API_KEY": "sk_test_bench",
                "TOKENPROXY_STRIPE_API_BASE": f"http://127.0.0.1:{stub_port}",
                "TOKENPROXY_LOG_FORMAT": "json",
                "TOKENPROXY_CORS_ORIGINS": SHOP,
                "TOKENPROXY_PUBLISHABLE_RATE_PER_MINUTE": "1e12",
                "TOKENPROXY_PUBLISHABLE_BURST": str(10**9),
            }
            backends = {
                "postgres": _url() + "?search_path=proxy",
                "sqlite": f"sqlite:///{folder / 'vault.db'}",
            }
            kinds = {
                "server (secret key)": {"Authorization": f"Bearer {secret}"},
                "browser (publishable key)": {
                    "Authorization": f"Bearer {publishable}",
                    "Origin": SHOP,
                },
            }
            for backend, url in backends.items():
                proxies = Proxies(1, {**env, "TOKENPROXY_VAULT_URL": url})
                rows[backend] = {kind: [] for kind in kinds}
                try:
                    await proxies.ready()
                    base = proxies.bases[0]
                    _load(base, folder, "warmup", kinds["server (secret key)"], 2)
                    for _ in range(2):
                        for kind, headers in kinds.items():
                            rps = _load(base, folder, "run", headers, args.duration)
                            rows[backend][kind].append(rps)
                            print(f"  {backend:8} {kind:26} {rps:8.0f} req/s", flush=True)
                finally:
                    proxies.stop()
    finally:
        stub.terminate()
        stub.wait()
        await admin(f"DROP DATABASE IF EXISTS {DATABASE}")

    print(
        f"\nOne bucket decision on PostgreSQL, sequential: p50 {p50:.0f} µs, p99 {p99:.0f} µs,"
        f" {cpu_us:.0f} µs of the proxy's CPU; 16 at once: {rate:.0f} decisions/s.\n"
    )
    print("| vault | server tokenize | browser tokenize | browser/server | cost per browser |")
    print("|---|---|---|---|---|")
    for backend, kinds_rps in rows.items():
        server = max(kinds_rps["server (secret key)"])
        browser = max(kinds_rps["browser (publishable key)"])
        cost = 1e6 / browser - 1e6 / server
        print(
            f"| {backend} | {server:.0f} req/s | {browser:.0f} req/s | {browser / server:.2f}"
            f" | {cost:+.0f} µs of server time |"
        )


def main() -> int:
    """Entry point: `python -m bench.limits [--duration S] [--decisions N]`."""
    parser = argparse.ArgumentParser(prog="python -m bench.limits", description=__doc__)
    parser.add_argument("--duration", type=int, default=5, help="seconds per load run")
    parser.add_argument("--decisions", type=int, default=2000, help="statement decisions")
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
