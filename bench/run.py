"""Orchestrate one benchmark run: start the servers, seed the vault, drive load, print.

Servers, each in its own process:

* ``stub``    — the instant partner (bench.stub), shared by both tokenize servers;
* ``full``    — the real proxy, ``python -m proxy serve``: SQLite vault (WAL,
  synchronous=FULL, group commit), bearer auth, JSON logs at info to /dev/null, metrics;
* ``forward`` — bare aiohttp JSON-in → partner → JSON-out (bench.bare);
* ``read``    — bare aiohttp GET doing one SQLite primary-key read on the same file.

Full and bare runs alternate (and swap order each round) so that noise from other work
on the machine falls on both sides of each ratio; the figure reported is the median
over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenproxy_sandbox.launcher import free_port

from proxy.infra.clients import add_client, parse_scopes
from vault import Kind, LocalKekProvider, NewRecord, Vault
from vault.keys.ring import init_keyring

CONNECTIONS = 64
SEED_TOKENS = 2000
IDLE_CONNECTIONS = 1000
_CARD_BODY = json.dumps(
    {"number": "4242424242424242", "exp_month": 12, "exp_year": 2045, "cvc": "123"}
)
_RESULT_RE = re.compile(r"BENCH_RESULT (\{.*\})")


@dataclass
class Server:
    """A server process under test."""

    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Load:
    """One load shape: a method, the paths to cycle through, headers, an optional body."""

    method: str
    paths: list[str]
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None


@dataclass
class Result:
    """One measured run."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    errors: int


def _start(name: str, argv: list[str], port: int, env: dict[str, str] | None = None) -> Server:
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env or dict(os.environ)
    )
    server = Server(name, port, process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"{name} exited with {process.returncode}: {err[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return server
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{name} did not start listening on {port}")


def _stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=5)


def _lua(load: Load) -> str:
    lines = [f'wrk.method = "{load.method}"']
    if load.body is not None:
        lines.append(f"wrk.body = [==[{load.body}]==]")
    for name, value in load.headers.items():
        lines.append(f'wrk.headers["{name}"] = "{value}"')
    if len(load.paths) == 1:
        lines.append(f'wrk.path = "{load.paths[0]}"')
    else:
        lines.append("local paths = {" + ",".join(f'"{p}"' for p in load.paths) + "}")
        lines.append("local n = #paths")
        lines.append("local i = math.random(n)")
        lines.append("request = function() i = i % n + 1; return wrk.format(nil, paths[i]) end")
    lines.append(
        "done = function(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        '  io.write(string.format("BENCH_RESULT {\\"requests\\":%d,\\"duration_us\\":%d,'
        '\\"p50_us\\":%d,\\"p99_us\\":%d,\\"non2xx\\":%d,\\"errors\\":%d}\\n",\n'
        "    summary.requests, summary.duration, latency:percentile(50),"
        " latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))\n"
        "end"
    )
    return "\n".join(lines) + "\n"


def _drive(base: str, load: Load, seconds: float, workdir: Path) -> Result:
    """Run the load generator (its own process) against ``base`` for ``seconds``."""
    if shutil.which("wrk"):
        script = workdir / f"load-{abs(hash((base, load.method)))}.lua"
        script.write_text(_lua(load))
        argv = [
            "wrk",
            "-t2",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            base,
        ]
    else:
        spec = {
            "base": base,
            "method": load.method,
            "paths": load.paths,
            "headers": load.headers,
            "body": load.body,
            "duration": seconds,
            "connections": CONNECTIONS,
        }
        argv = [sys.executable, "-m", "bench.loadgen", json.dumps(spec)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    match = _RESULT_RE.search(out.stdout)
    if match is None:
        raise RuntimeError(f"load generator failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    raw = json.loads(match.group(1))
    duration = raw["duration_us"] / 1e6
    return Result(
        rps=raw["requests"] / duration if duration else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        requests=raw["requests"],
        non2xx=raw["non2xx"],
        errors=raw["errors"],
    )


async def _seed(vault_url: str, keyring: Path, count: int) -> list[str]:
    vault = await Vault.open(vault_url, LocalKekProvider.from_file(keyring))
    try:
        tokens: list[str] = []
        for start in range(0, count, 200):
            records = await asyncio.gather(
                *(
                    vault.put(
                        NewRecord(
                            kind=Kind.CARD,
                            partner="stripe",
                            partner_reference=f"pm_seed{n:016d}",
                            details={
                                "brand": "visa",
                                "last4": "4242",
                                "masked": "424242******4242",
                            },
                            fingerprint=f"fpseed{n}",
                        )
                    )
                    for n in range(start, min(count, start + 200))
                )
            )
            tokens.extend(r.token for r in records)
        return tokens
    finally:
        await vault.close()


def _rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"VmRSS", "VmHWM"}:
            fields[name] = int(value.split()[0])
    return fields


def _socket_count(pid: int) -> int:
    return sum(
        1 for fd in Path(f"/proc/{pid}/fd").iterdir() if os.readlink(fd).startswith("socket:")
    )


async def _hold_connections(
    port: int, request: bytes, count: int, pid: int
) -> tuple[int, dict[str, int]]:
    """Open ``count`` keep-alive connections, one answered request each; RSS while held."""
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
        await reader.readexactly(int(match.group(1)) if match else 0)

    try:
        for start in range(0, count, 100):
            await asyncio.gather(*(one() for _ in range(min(100, count - start))))
        await asyncio.sleep(1.0)
        return _socket_count(pid), _rss_kib(pid)
    finally:
        for writer in writers:
            writer.close()


def _fmt(result: Result) -> str:
    flag = ""
    if result.non2xx or result.errors:
        flag = f"  (non-2xx {result.non2xx}, socket errors {result.errors})"
    return f"{result.rps:>9.0f} {result.p50_ms:>9.2f} {result.p99_ms:>9.2f}{flag}"


@contextlib.contextmanager
def _servers(work: Path) -> Iterator[dict[str, Any]]:
    started: list[Server] = []
    try:
        keyring = work / "keyring.json"
        init_keyring(keyring)
        clients = work / "clients.json"
        checkout = add_client(clients, "bench-checkout", parse_scopes("tokenize"))
        billing = add_client(clients, "bench-billing", parse_scopes("resolve"))
        db = work / "vault.db"
        vault_url = f"sqlite:///{db}"
        tokens = asyncio.run(_seed(vault_url, keyring, SEED_TOKENS))

        py = sys.executable
        stub_port = free_port()
        started.append(_start("stub", [py, "-m", "bench.stub", str(stub_port)], stub_port))
        stub = f"http://127.0.0.1:{stub_port}"
        port = free_port()
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("TOKENPROXY_", "STRIPE_"))
        }
        ops_port = free_port()
        env.update(
            {
                "TOKENPROXY_LISTEN": f"127.0.0.1:{port}",
                "TOKENPROXY_OPS_LISTEN": f"127.0.0.1:{ops_port}",
                "TOKENPROXY_VAULT_URL": vault_url,
                "TOKENPROXY_KEYRING": str(keyring),
                "TOKENPROXY_CLIENTS": str(clients),
                "STRIPE_API_KEY": "sk_test_bench",
                "TOKENPROXY_STRIPE_API_BASE": stub,
                "TOKENPROXY_LOG_LEVEL": "info",
                "TOKENPROXY_LOG_FORMAT": "json",
            }
        )
        full = _start("full", [py, "-m", "proxy", "serve"], port, env)
        started.append(full)
        port = free_port()
        forward = _start("forward", [py, "-m", "bench.bare", "forward", str(port), stub], port)
        started.append(forward)
        port = free_port()
        read = _start("read", [py, "-m", "bench.bare", "read", str(port), str(db)], port)
        started.append(read)
        yield {
            "full": full,
            "forward": forward,
            "read": read,
            "ops": f"http://127.0.0.1:{ops_port}",
            "db": db,
            "checkout": checkout,
            "billing": billing,
            "tokens": tokens,
        }
    finally:
        for server in reversed(started):
            _stop(server)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median)")
    args = parser.parse_args(argv)

    generator = "wrk, 2 threads" if shutil.which("wrk") else "bench.loadgen (wrk not installed)"
    load1, load5, _ = os.getloadavg()
    print(
        f"tokenproxy bench: {os.cpu_count()} cores, load average {load1:.1f}/{load5:.1f} at start."
        "\nThe cores are shared with other work (other sessions' test suites may run"
        " concurrently): absolute figures are noisy;\nratios come from full/bare runs"
        " interleaved in this one invocation (median of rounds)."
        f"\nload: {generator}, {CONNECTIONS} connections, {args.warmup:g} s warm-up +"
        f" {args.duration:g} s per run, {args.rounds} rounds; each server its own process.\n",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="tokenproxy-bench-") as tmp:
        work = Path(tmp)
        with _servers(work) as s:
            tokenize = Load(
                "POST",
                ["/v1/cards"],
                {"Content-Type": "application/json", "Authorization": f"Bearer {s['checkout']}"},
                _CARD_BODY,
            )
            paths = [f"/v1/tokens/{t}" for t in s["tokens"]]
            read_full = Load("GET", paths, {"Authorization": f"Bearer {s['billing']}"})
            read_bare = Load("GET", paths)
            pairs = [
                ("tokenize", (s["full"], tokenize), (s["forward"], tokenize)),
                ("read", (s["full"], read_full), (s["read"], read_bare)),
            ]
            results: dict[tuple[str, str], list[Result]] = {}
            for round_no in range(args.rounds):
                for path, full, bare in pairs:
                    order = [("full", full), ("bare", bare)]
                    if round_no % 2:
                        order.reverse()
                    for side, (server, load) in order:
                        if args.warmup > 0:
                            _drive(server.base, load, args.warmup, work)
                        result = _drive(server.base, load, args.duration, work)
                        results.setdefault((path, side), []).append(result)
                        print(f"  round {round_no + 1} {path:<8} {side:<4} {_fmt(result)}")
            print()
            _report(results)
            _report_rss(s)
            _sanity(s)
    return 0


def _median(runs: list[Result]) -> Result:
    return Result(
        rps=statistics.median(r.rps for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        requests=sum(r.requests for r in runs),
        non2xx=sum(r.non2xx for r in runs),
        errors=sum(r.errors for r in runs),
    )


def _report(results: dict[tuple[str, str], list[Result]]) -> None:
    labels = {
        ("tokenize", "full"): "tokenize  full proxy POST /v1/cards",
        ("tokenize", "bare"): "tokenize  bare aiohttp forwarder",
        ("read", "full"): "read      full proxy GET /v1/tokens/{t} (resolve)",
        ("read", "bare"): "read      bare aiohttp SQLite PK read",
    }
    targets = {"tokenize": 0.7, "read": 0.8}
    print(f"{'path':<50} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}")
    for path in ("tokenize", "read"):
        full = _median(results[(path, "full")])
        bare = _median(results[(path, "bare")])
        print(f"{labels[(path, 'full')]:<50} {_fmt(full)}")
        print(f"{labels[(path, 'bare')]:<50} {_fmt(bare)}")
        ratio = full.rps / bare.rps if bare.rps else 0.0
        verdict = "met" if ratio >= targets[path] else "MISSED"
        print(f"  ratio full/bare {path}: {ratio:.2f} (target >= {targets[path]:.1f}: {verdict})")
    print()


def _report_rss(s: dict[str, Any]) -> None:
    token = s["tokens"][0]
    for name, server, headers in (
        ("full proxy", s["full"], f"Authorization: Bearer {s['billing']}\r\n"),
        ("bare PK read", s["read"], ""),
    ):
        pid = server.process.pid
        before = _rss_kib(pid)
        request = (f"GET /v1/tokens/{token} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n").encode()
        sockets, held = asyncio.run(_hold_connections(server.port, request, IDLE_CONNECTIONS, pid))
        print(
            f"RSS {name:<13} with {IDLE_CONNECTIONS} idle keep-alive connections"
            f" ({sockets} sockets open in the process): {held['VmRSS'] / 1024:.1f} MiB"
            f" (before: {before['VmRSS'] / 1024:.1f} MiB; peak so far"
            f" {held['VmHWM'] / 1024:.1f} MiB)"
            + ("; target <= 150 MB" if server is s["full"] else "")
        )


def _sanity(s: dict[str, Any]) -> None:
    """Show that the proxy really did the work: vault rows and its own counters."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{s['db']}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT count(*) FROM records").fetchone()[0]
    with urllib.request.urlopen(s["ops"] + "/metrics", timeout=5) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    created = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tokenproxy_tokens_created_total")
    )
    print(
        f"\nsanity: vault holds {rows} records ({SEED_TOKENS} seeded); the proxy's"
        f" tokenproxy_tokens_created_total = {created:.0f}"
    )
