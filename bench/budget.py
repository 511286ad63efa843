"""`python -m bench.budget`: what the outbound partner budget costs one partner call.

Every partner call spends one request from the budget (TOKENPROXY_PARTNER_RATE). With
SQLite it is a bucket in memory; with PostgreSQL the process leases up to 16 requests per
round trip (4 at the default rate, whose burst is 4) from one row every replica shares.
This drives ``OutboundBudget.take`` from 32 coroutines at once (the default
TOKENPROXY_PARTNER_MAX_IN_FLIGHT), with a rate high enough never to refuse, and reports
the mean time per take and the round trips to the database per 1000 takes. Beside it,
one lease statement alone, sequential on one connection (its round trip).

A partner call itself takes 0.2-0.4 s at Stripe; the figures here are what the budget
adds to it. Runs in its own schema of the database on 127.0.0.1:5432, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time

import asyncpg

from bench.postgres import ADMIN_URL
from proxy.partners.budget import OutboundBudget
from proxy.web.sharedlimits import BudgetRows
from vault.backends.postgres import PostgresBackend

CONCURRENCY = 32


async def _drive(budget: OutboundBudget, takes: int) -> float:
    """Seconds per take, ``takes`` spread over CONCURRENCY coroutines."""
    per = takes // CONCURRENCY

    async def worker() -> None:
        for _ in range(per):
            await budget.take()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return (time.perf_counter() - started) / (per * CONCURRENCY)


async def main(takes: int, rate: float) -> None:
    """Print a Markdown table of the budget's cost per take."""
    schema = "tp_budget_bench_" + secrets.token_hex(4)
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in ADMIN_URL else "?"
    backend = PostgresBackend(f"{ADMIN_URL}{sep}search_path={schema}")
    try:
        await backend.migrate()
        local = OutboundBudget(rate, key="partner:bench:local")
        local_s = await _drive(local, takes)
        shared = OutboundBudget(rate, key="partner:bench:shared")
        shared.source = BudgetRows(backend)
        shared_s = await _drive(shared, takes)
        # At the default rate (15) the burst, and so the largest lease, is 4.
        small = OutboundBudget(rate, key="partner:bench:small", max_lease=4)
        small.source = BudgetRows(backend)
        small_s = await _drive(small, takes)
        started = time.perf_counter()
        statements = 500
        for _ in range(statements):
            await backend.limit_lease("partner:bench:statement", 1.0 / rate, int(rate), 1)
        statement_s = (time.perf_counter() - started) / statements
        done = (takes // CONCURRENCY) * CONCURRENCY
        print("| budget | µs per take | round trips per 1000 takes |")
        print("|---|---|---|")
        print(f"| in memory (SQLite) | {local_s * 1e6:.1f} | 0 |")
        print(f"| shared (PostgreSQL) | {shared_s * 1e6:.1f} | {1000 * shared.leases / done:.0f} |")
        print(
            f"| shared, leases of at most 4 | {small_s * 1e6:.1f} |"
            f" {1000 * small.leases / done:.0f} |"
        )
        print(f"| one lease statement, sequential | {statement_s * 1e6:.0f} | 1000 |")
    finally:
        await backend.close()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--takes", type=int, default=32_000)
    parser.add_argument("--rate", type=float, default=1_000_000.0)
    args = parser.parse_args()
    asyncio.run(main(args.takes, args.rate))
