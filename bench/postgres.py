"""`python -m bench.postgres`: the proxy on PostgreSQL, measured with wrk.

1. Throughput of tokenize (POST /v1/cards, instant partner stub) and resolve
   (GET /v1/tokens/{t}, random tokens) at 1, 2 and 4 proxy processes sharing one
   database; 64 connections in total, split evenly over the processes (one wrk per
   process, run at the same time; req/s summed).
2. Resolve latency (p50/p99, 16 connections, one process) on a vault seeded with
   10k tokens and one seeded with 1M tokens (seeded with COPY; sizes via
   ``--small``/``--large``), measured alternately twice each.

Everything runs in its own database (``tp_postgres_bench``, dropped at the end) on the
server at 127.0.0.1:5432. Needs wrk. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from tokenproxy_sandbox.launcher import free_port

from proxy.infra.clients import add_client, parse_scopes
from vault import Kind, LocalKekProvider, NewRecord, Record, Vault, iso, new_token, utcnow
from vault.crypto import record_aad
from vault.keys.ring import init_keyring

ADMIN_URL = os.environ.get("TOKENPROXY_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
DATABASE = "tp_postgres_bench"
CONNECTIONS = 64
CARD = '{"number":"4242424242424242","exp_month":12,"exp_year":2030,"cvc":"123"}'
CUSTOMERS = 1000
ROOT = Path(__file__).resolve().parent.parent


# -- the instant partner ---------------------------------------------------------


def stub_app() -> web.Application:
    """Answers Stripe's POST /v1/payment_methods at once, in the shape the adapter reads."""
    counter = itertools.count(1)

    async def create(request: web.Request) -> web.Response:
        form = await request.post()
        number = str(form.get("card[number]", "0000"))
        return web.json_response(
            {
                "id": f"pm_bench{next(counter):016d}",
                "object": "payment_method",
                "type": "card",
                "card": {"brand": "visa", "last4": number[-4:], "fingerprint": "fpbench"},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/payment_methods", create)
    return app


# -- processes ------------------------------------------------------------------------


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A child process with output discarded (the proxy's JSON logs included)."""
    return subprocess.Popen(
        [sys.executable, *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_http(url: str, wait: float = 30.0) -> None:
    """Poll ``url`` until it answers 200."""
    deadline = time.monotonic() + wait
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in time")


async def wait_port(port: int, wait: float = 10.0) -> None:
    """Wait until something accepts connections on loopback ``port``."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise RuntimeError(f"nothing listening on port {port}")


class Proxies:
    """N `python -m proxy serve` processes on one database."""

    def __init__(self, n: int, env: dict[str, str]) -> None:
        self.bases: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self._ops: list[str] = []
        for _ in range(n):
            listen, ops = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            self.procs.append(
                spawn(
                    ["-m", "proxy", "serve"],
                    {**env, "TOKENPROXY_LISTEN": listen, "TOKENPROXY_OPS_LISTEN": ops},
                )
            )
            self.bases.append(f"http://{listen}")
            self._ops.append(f"http://{ops}/readyz")

    async def ready(self) -> None:
        """Wait until every process reports ready."""
        await asyncio.gather(*(wait_http(url) for url in self._ops))

    def stop(self) -> None:
        """SIGTERM all, then wait."""
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=20)


# -- wrk ------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:  # wrk prints odd values (nan) when a run completed no request
        return float("nan")
    number, unit = match.groups()
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def wrk(
    base: str, script: Path, *, connections: int, duration: int, threads: int = 1
) -> subprocess.Popen[str]:
    """Start wrk (with --latency) against ``base``; parse with ``wrk_result``."""
    return subprocess.Popen(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(script),
            base,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wrk_result(proc: subprocess.Popen[str]) -> dict[str, float]:
    """req/s, p50 and p99 (seconds) and non-2xx count from a finished wrk."""
    out, _ = proc.communicate()
    rps_match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    # Anchored to the latency-distribution lines: a Stdev column such as "68.50%" on the
    # thread-stats lines also contains "50%".
    p50_match = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    p99_match = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    if rps_match is None or p50_match is None or p99_match is None:
        print("  wrk output not understood:\n" + out)
        return {"rps": 0.0, "p50": float("nan"), "p99": float("nan")}
    rps = float(rps_match.group(1))
    p50 = _seconds(p50_match.group(1))
    p99 = _seconds(p99_match.group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    if bad or errors:
        print(f"  wrk warning: {bad.group(0) if bad else ''} {errors.group(0) if errors else ''}")
    return {"rps": rps, "p50": p50, "p99": p99}


def tokenize_script(folder: Path, key: str) -> Path:
    """A wrk script posting one test card."""
    path = folder / "tokenize.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{CARD}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    return path


def resolve_script(folder: Path, key: str, tokens: list[str], name: str) -> Path:
    """A wrk script resolving tokens picked at random from ``tokens``."""
    listing = folder / f"{name}.tokens"
    listing.write_text("\n".join(tokens) + "\n")
    path = folder / f"{name}.lua"
    path.write_text(
        "local tokens = {}\n"
        f'for line in io.lines("{listing}") do tokens[#tokens + 1] = line end\n'
        "math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))\n"
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        "request = function()\n"
        '  return wrk.format("GET", "/v1/tokens/" .. tokens[math.random(#tokens)])\n'
        "end\n"
    )
    return path


# -- seeding --------------------------------------------------------------------------


async def seed(url: str, keyring: Path, count: int) -> list[str]:
    """Store ``count`` card records over CUSTOMERS customers; returns a sample of tokens.

    The customers' keys are made through the vault API; the bulk rows are sealed exactly
    as ``Vault.put`` seals them and loaded with COPY (one INSERT each would take hours).
    """
    vault = await Vault.open(url, LocalKekProvider.from_file(keyring))
    tokens: list[str] = []
    try:
        customers = []
        for c in range(min(CUSTOMERS, count)):
            record = await vault.put(_new_record(f"cus-{c}"))
            tokens.append(record.token)
            row = await vault.backend.get_record(record.token)
            assert row is not None
            customers.append((f"cus-{c}", row.dek_id, row.customer_idx, vault._deks[row.dek_id]))
        conn = await asyncpg.connect(url)
        try:
            remaining = count - len(tokens)
            batch: list[tuple[Any, ...]] = []
            for i in range(remaining):
                ref, dek_id, customer_idx, sealer = customers[i % len(customers)]
                token = new_token(Kind.CARD)
                now = utcnow()
                record = Record(
                    token=token,
                    kind=Kind.CARD,
                    partner="stripe",
                    partner_reference=f"pm_seed{i:016d}",
                    details={"brand": "visa", "last4": "4242", "masked": "424242******4242"},
                    customer_ref=ref,
                    metadata={},
                    created_at=now,
                )
                plaintext = json.dumps(record.payload(), separators=(",", ":")).encode()
                ciphertext = sealer.seal(plaintext, record_aad(token, Kind.CARD, dek_id))
                batch.append(
                    (token, "card", dek_id, ciphertext, customer_idx, None, iso(now), None)
                )
                tokens.append(token)
                if len(batch) == 50_000 or i == remaining - 1:
                    await conn.copy_records_to_table(
                        "records",
                        records=batch,
                        columns=[
                            "token",
                            "kind",
                            "dek_id",
                            "ciphertext",
                            "customer_idx",
                            "fingerprint_idx",
                            "created_at",
                            "last_used_at",
                        ],
                    )
                    batch = []
            await conn.execute("ANALYZE records")
        finally:
            await conn.close()
    finally:
        await vault.close()
    return tokens


def _new_record(customer: str) -> NewRecord:
    return NewRecord(
        kind=Kind.CARD,
        partner="stripe",
        partner_reference="pm_seed",
        details={"brand": "visa", "last4": "4242", "masked": "424242******4242"},
        customer_ref=customer,
        metadata={},
        fingerprint=None,
    )


# -- the run --------------------------------------------------------------------------


async def admin(sql: str, url: str = ADMIN_URL) -> None:
    """One statement on the admin database."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def db_url(schema: str) -> str:
    """The bench database with ``schema`` as search_path."""
    base = ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{DATABASE}?search_path={schema}"


async def throughput(
    env: dict[str, str], folder: Path, scripts: dict[str, Path], duration: int
) -> list[tuple[str, int, float]]:
    """Summed req/s of tokenize and resolve at 1, 2 and 4 processes."""
    rows = []
    for n in (1, 2, 4):
        proxies = Proxies(n, env)
        try:
            await proxies.ready()
            for label, script in scripts.items():
                # wrk requests the URL's path unless the script's request() builds one.
                path = "/v1/cards" if label == "tokenize" else ""
                runs = [
                    wrk(base + path, script, connections=CONNECTIONS // n, duration=duration)
                    for base in proxies.bases
                ]
                total = sum(wrk_result(r)["rps"] for r in runs)
                rows.append((label, n, total))
                print(f"  {label:8} {n} process(es): {total:8.0f} req/s", flush=True)
        finally:
            proxies.stop()
    return rows


async def latency(
    env_for: dict[str, dict[str, str]], scripts: dict[str, Path], duration: int
) -> dict[str, list[dict[str, float]]]:
    """Resolve p50/p99 at 16 connections, one process per seeded vault, alternated."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in env_for}
    for _ in range(2):
        for name, env in env_for.items():
            proxies = Proxies(1, env)
            try:
                await proxies.ready()
                # Warm-up: the first seconds pay for connections and the DEK cache.
                wrk_result(wrk(proxies.bases[0], scripts[name], connections=16, duration=2))
                result = wrk_result(
                    wrk(proxies.bases[0], scripts[name], connections=16, duration=duration)
                )
                results[name].append(result)
                print(
                    f"  resolve on {name}: p50 {result['p50'] * 1e3:.2f} ms, "
                    f"p99 {result['p99'] * 1e3:.2f} ms, {result['rps']:.0f} req/s",
                    flush=True,
                )
            finally:
                proxies.stop()
    return results


async def main_async(args: argparse.Namespace) -> None:
    """Set up the database, partner stub and keys; run both measurements; print tables."""
    await admin(f"DROP DATABASE IF EXISTS {DATABASE}")
    await admin(f"CREATE DATABASE {DATABASE}")
    stub_port = free_port()
    stub = spawn(["-m", "bench.postgres", "stub", str(stub_port)], dict(os.environ))
    try:
        with tempfile.TemporaryDirectory(prefix="tp-bench-pg-") as tmp:
            folder = Path(tmp)
            keyring = folder / "keyring.json"
            init_keyring(keyring)
            clients = folder / "clients.json"
            checkout = add_client(clients, "checkout", parse_scopes("tokenize"))
            billing = add_client(clients, "billing", parse_scopes("resolve"))
            base_admin = ADMIN_URL.rsplit("/", 1)[0] + f"/{DATABASE}"
            for schema in ("small", "large", "tput"):
                await admin(f"CREATE SCHEMA {schema}", base_admin)
            await wait_port(stub_port)
            env_common = {
                **{k: v for k, v in os.environ.items() if not k.startswith("TOKENPROXY_")},
                "TOKENPROXY_KEYRING": str(keyring),
                "TOKENPROXY_CLIENTS": str(clients),
                "STRIPE_API_KEY": "sk_test_bench",
                "TOKENPROXY_STRIPE_API_BASE": f"http://127.0.0.1:{stub_port}",
                "TOKENPROXY_LOG_FORMAT": "json",
            }
            sizes = {"small": args.small, "large": args.large}
            samples: dict[str, list[str]] = {}
            for name, size in sizes.items():
                started = time.perf_counter()
                tokens = await seed(db_url(name), keyring, size)
                took = time.perf_counter() - started
                print(f"seeded {size:,} tokens into '{name}' in {took:.0f} s", flush=True)
                samples[name] = random.sample(tokens, min(len(tokens), 100_000))
            tput_env = {**env_common, "TOKENPROXY_VAULT_URL": db_url("tput")}
            # The throughput schema reads from a 10k-token copy of 'small'.
            tput_tokens = await seed(db_url("tput"), keyring, 10_000)
            scripts = {
                "tokenize": tokenize_script(folder, checkout),
                "resolve": resolve_script(folder, billing, tput_tokens, "tput"),
            }
            print("throughput (64 connections split over the processes):", flush=True)
            rows = await throughput(tput_env, folder, scripts, args.duration)
            lat_scripts = {
                name: resolve_script(folder, billing, samples[name], name) for name in sizes
            }
            lat_env = {name: {**env_common, "TOKENPROXY_VAULT_URL": db_url(name)} for name in sizes}
            print("resolve latency (one process, 16 connections):", flush=True)
            lat = await latency(lat_env, lat_scripts, args.duration)
    finally:
        stub.terminate()
        stub.wait()
        if not args.keep:
            await admin(f"DROP DATABASE IF EXISTS {DATABASE}")

    print("\n| path | 1 process | 2 processes | 4 processes |\n|---|---|---|---|")
    for label in ("tokenize", "resolve"):
        cells = " | ".join(f"{rps:.0f} req/s" for lab, _, rps in rows if lab == label)
        print(f"| {label} | {cells} |")
    print("\n| vault size | resolve p50 | resolve p99 |\n|---|---|---|")
    best: dict[str, dict[str, float]] = {}
    for name, size in sizes.items():
        runs = lat[name]
        best[name] = {k: min(r[k] for r in runs) for k in ("p50", "p99")}
        print(
            f"| {size:,} tokens | {best[name]['p50'] * 1e3:.2f} ms "
            f"| {best[name]['p99'] * 1e3:.2f} ms |"
        )
    ratio = best["large"]["p99"] / best["small"]["p99"]
    print(f"\np99 ratio large/small: {ratio:.2f} (target <= 1.2)")


def main() -> int:
    """Entry point: `python -m bench.postgres [--small N] [--large N] [--duration S]`."""
    parser = argparse.ArgumentParser(prog="python -m bench.postgres", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    stub = sub.add_parser("stub", help="run the instant partner stub (internal)")
    stub.add_argument("port", type=int)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--keep", action="store_true", help="keep the bench database")
    args = parser.parse_args()
    if args.command == "stub":
        web.run_app(stub_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)
        return 0
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
