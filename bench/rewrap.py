"""Rewrap throughput: data keys re-wrapped per second on SQLite (target >= 20k/s).

    python -m bench.rewrap [--deks 100000] [--batch-size 2000]

Seeds a fresh vault with N wrapped data keys under version 1, rotates, then times
`vault.rotation.rewrap` (read a page, unwrap, wrap, compare-and-set write, one durable
commit per batch) until every key is on version 2.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path

from vault import LocalKekProvider, Vault
from vault.crypto import dek_aad, new_key
from vault.keys.ring import init_keyring
from vault.rotation import rewrap


def seed(db_path: Path, keys: LocalKekProvider, count: int) -> None:
    """Insert ``count`` per-record data keys wrapped under the active version."""
    rows = []
    for _ in range(count):
        dek_id = "dek_" + secrets.token_urlsafe(16)
        version, wrapped = keys.wrap(new_key(), dek_aad(dek_id, keys.active_version))
        rows.append((dek_id, None, version, wrapped, "2026-01-01T00:00:00.000000Z"))
    db = sqlite3.connect(db_path)
    db.executemany("INSERT INTO deks VALUES (?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()


async def run(deks: int, batch_size: int) -> float:
    """Seed, rotate, rewrap; returns data keys per second."""
    with tempfile.TemporaryDirectory() as folder:
        ring = Path(folder) / "keyring.json"
        init_keyring(ring)
        keys = LocalKekProvider.from_file(ring)
        db_path = Path(folder) / "vault.db"
        vault = await Vault.open(f"sqlite:///{db_path}", keys)
        try:
            seed(db_path, keys, deks)
            keys.rotate()
            started = time.perf_counter()
            progress = await rewrap(vault, batch_size=batch_size)
            elapsed = time.perf_counter() - started
        finally:
            await vault.close()
    assert progress.rewrapped == deks, progress
    assert progress.remaining == 0, progress
    return deks / elapsed


def main() -> None:
    """Print the rewrap figure."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deks", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=2000)
    args = parser.parse_args()
    rate = asyncio.run(run(args.deks, args.batch_size))
    verdict = "ok" if rate >= 20_000 else "BELOW TARGET"
    print(
        f"rewrap (SQLite, batch {args.batch_size}, {args.deks} DEKs): "
        f"{rate:,.0f} DEKs/s  [target >= 20,000: {verdict}]"
    )


if __name__ == "__main__":
    main()
