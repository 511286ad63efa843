"""Orchestrate one benchmark run: start the servers, seed the vault, drive load, print.

Servers, each in its own process:

* ``stub``    — the instant partner (bench.stub), shared by both tokenize servers;
* ``full``    — the real proxy, ``python -m proxy serve``: SQLite vault (WAL,
  synchronous=FULL, group commit), bearer auth, JSON logs at info to /dev/null, metrics;
* ``forward`` — bare aiohttp JSON-in → partner → JSON-out (bench.bare);
* ``read``    — bare aiohttp GET doing one SQLite primary-key read on the same file;
* ``kms``     — the real proxy with ``TOKENPROXY_KEK_PROVIDER=aws-kms`` against moto's KMS
  server (its own vault and key map), when moto is installed;
* ``workers`` — ``tokenproxy serve --workers 2`` on the ``full`` proxy's vault.

Full and bare runs alternate (and swap order each round) so that noise from other work
on the machine falls on both sides of each ratio; the figure reported is the median
over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
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

from bench.detect import PAYLOADS, per_call_us
from proxy.domain.fields import validate_metadata
from proxy.infra.clients import add_client, parse_scopes
from vault import KekProvider, Kind, LocalKekProvider, NewRecord, Vault
from vault.keys.ring import init_keyring

CONNECTIONS = 64
SEED_TOKENS = 5000
RATE = 200.0
RATE_CONNECTIONS = 4
IDLE_CONNECTIONS = 1000
_CARD_BODY = json.dumps(
    {"number": "4242424242424242", "exp_month": 12, "exp_year": 2045, "cvc": "123"}
)
_RESULT_RE = re.compile(r"BENCH_RESULT (\{.*\})")
_LAG_RE = re.compile(r'tokenproxy_event_loop_lag_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)')
WORKERS = 2
_BEGIN = "<!-- bench:begin -->"
_END = "<!-- bench:end -->"
_FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "eu-central-1",
    "AWS_DEFAULT_REGION": "eu-central-1",
}


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


def _start(
    name: str,
    argv: list[str],
    port: int,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Server:
    process = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env or dict(os.environ),
        cwd=cwd,
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


def _drive(
    base: str, load: Load, seconds: float, workdir: Path, *, rate: float | None = None
) -> Result:
    """Run the load generator (its own process) against ``base`` for ``seconds``.

    ``rate``: an open loop at that many requests/s over RATE_CONNECTIONS connections
    (bench.loadgen; wrk cannot pace), for latency at a load the server carries easily.
    """
    feed: str | None = None
    if shutil.which("wrk") and rate is None:
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
            "connections": RATE_CONNECTIONS if rate else CONNECTIONS,
            "rate": rate,
        }
        # On stdin: thousands of token paths would overflow an argument list.
        feed = json.dumps(spec)
        argv = [sys.executable, "-m", "bench.loadgen"]
    out = subprocess.run(
        argv, input=feed, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
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


async def _seed(vault_url: str, keys: KekProvider, count: int) -> list[str]:
    vault = await Vault.open(vault_url, keys)
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


def _moto(work: Path) -> tuple[Server, dict[str, str]] | None:
    """moto's KMS server and the environment pointing boto3 at it, or None without moto."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not Path(exe).exists():
        return None
    port = free_port()
    env = {**os.environ, **_FAKE_AWS}
    server = _start("moto", [exe, "-H", "127.0.0.1", "-p", str(port)], port, env)
    return server, {**_FAKE_AWS, "TOKENPROXY_KMS_ENDPOINT": f"http://127.0.0.1:{port}"}


def _kms_vault(work: Path, kms_env: dict[str, str]) -> tuple[Path, str, list[str]]:
    """A KMS key map (one fresh KMS key) and a vault seeded under it."""
    import boto3

    from vault.keys.kms import KmsKekProvider, init_kms_keyring

    for name, value in _FAKE_AWS.items():
        os.environ.setdefault(name, value)
    client = boto3.client(
        "kms", endpoint_url=kms_env["TOKENPROXY_KMS_ENDPOINT"], region_name=_FAKE_AWS["AWS_REGION"]
    )
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    keymap = work / "kms-keyring.json"
    init_kms_keyring(keymap, client, key_id)
    url = f"sqlite:///{work / 'vault-kms.db'}"
    keys = KmsKekProvider.from_file(keymap, endpoint_url=kms_env["TOKENPROXY_KMS_ENDPOINT"])
    return keymap, key_id, asyncio.run(_seed(url, keys, SEED_TOKENS))


def proxy_base_env(vault_url: str, keyring: Path, clients: Path, partner: str) -> dict[str, str]:
    """A bench proxy's environment: this one without our settings, then the bench's own."""
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TOKENPROXY_", "STRIPE_", "PROMETHEUS_"))
    }
    base.update(
        {
            "TOKENPROXY_VAULT_URL": vault_url,
            "TOKENPROXY_KEYRING": str(keyring),
            "TOKENPROXY_CLIENTS": str(clients),
            "STRIPE_API_KEY": "sk_test_bench",
            "TOKENPROXY_STRIPE_API_BASE": partner,
            "TOKENPROXY_LOG_LEVEL": "info",
            "TOKENPROXY_LOG_FORMAT": "json",
        }
    )
    return base


def baseline_proxy(tree: Path, base: dict[str, str]) -> Server:
    """The proxy of another checkout (e.g. the commit before a change) with the same
    settings: measured beside this tree's under the same machine load, as ``base``."""
    tree = tree.resolve()
    path = os.pathsep.join(str(tree / sub) for sub in ("", "sandbox", "clients/python"))
    port, ops = free_port(), free_port()
    env = _proxy_env({**base, "PYTHONPATH": path}, port, ops)
    # `python -m` puts the working directory ahead of PYTHONPATH: started from this
    # checkout, the "baseline" would import this checkout's proxy, not the tree's.
    return _start("base", [sys.executable, "-m", "proxy", "serve"], port, env, cwd=tree)


def _proxy_env(base: dict[str, str], port: int, ops_port: int, **extra: str) -> dict[str, str]:
    return {
        **base,
        "TOKENPROXY_LISTEN": f"127.0.0.1:{port}",
        "TOKENPROXY_OPS_LISTEN": f"127.0.0.1:{ops_port}",
        **extra,
    }


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
        tokens = asyncio.run(_seed(vault_url, LocalKekProvider.from_file(keyring), SEED_TOKENS))

        py = sys.executable
        stub_port = free_port()
        started.append(_start("stub", [py, "-m", "bench.stub", str(stub_port)], stub_port))
        stub = f"http://127.0.0.1:{stub_port}"
        base = proxy_base_env(vault_url, keyring, clients, stub)
        servers: dict[str, Any] = {}
        port, ops_port = free_port(), free_port()
        servers["full"] = _start(
            "full", [py, "-m", "proxy", "serve"], port, _proxy_env(base, port, ops_port)
        )
        started.append(servers["full"])
        servers["full_ops"] = f"http://127.0.0.1:{ops_port}"
        kms_tokens: list[str] = []
        moto = _moto(work)
        if moto is not None:
            started.append(moto[0])
            keymap, key_id, kms_tokens = _kms_vault(work, moto[1])
            port, ops_port = free_port(), free_port()
            env = _proxy_env(
                base,
                port,
                ops_port,
                TOKENPROXY_VAULT_URL=f"sqlite:///{work / 'vault-kms.db'}",
                TOKENPROXY_KEYRING=str(keymap),
                TOKENPROXY_KEK_PROVIDER="aws-kms",
                TOKENPROXY_KMS_KEY_ID=key_id,
                **moto[1],
            )
            servers["kms"] = _start("kms", [py, "-m", "proxy", "serve"], port, env)
            started.append(servers["kms"])
            servers["kms_ops"] = f"http://127.0.0.1:{ops_port}"
        port, ops_port = free_port(), free_port()
        servers["workers"] = _start(
            "workers",
            [py, "-m", "proxy", "serve", "--workers", str(WORKERS)],
            port,
            _proxy_env(base, port, ops_port),
        )
        started.append(servers["workers"])
        port = free_port()
        servers["forward"] = _start(
            "forward", [py, "-m", "bench.bare", "forward", str(port), stub], port
        )
        started.append(servers["forward"])
        port = free_port()
        servers["read"] = _start("read", [py, "-m", "bench.bare", "read", str(port), str(db)], port)
        started.append(servers["read"])
        yield {
            **servers,
            "ops": servers["full_ops"],
            "db": db,
            "checkout": checkout,
            "billing": billing,
            "tokens": tokens,
            "kms_tokens": kms_tokens,
        }
    finally:
        for server in reversed(started):
            _stop(server)


def _lag_buckets(ops: str) -> dict[float, float]:
    """The proxy's cumulative event-loop lag histogram: upper bound -> count."""
    with urllib.request.urlopen(ops + "/metrics", timeout=5) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    buckets: dict[float, float] = {}
    for match in _LAG_RE.finditer(text):
        bound = float("inf") if match.group(1) == "+Inf" else float(match.group(1))
        buckets[bound] = float(match.group(2))
    return buckets


def _lag_p99_ms(before: dict[float, float], after: dict[float, float]) -> float:
    """The bucket bound (ms) holding the 99th percentile of the lag observed in between."""
    deltas = {b: after.get(b, 0.0) - before.get(b, 0.0) for b in after}
    total = deltas.get(float("inf"), 0.0)
    if total <= 0:
        return float("nan")
    for bound in sorted(deltas):
        if deltas[bound] >= 0.99 * total:
            return bound * 1000
    return float("inf")


@dataclass
class Row:
    """One line of the result table."""

    what: str
    proxy: str
    reference: str
    ratio: str
    target: str
    met: bool | None


def _rps_row(what: str, full: Result, ref: Result, target: float) -> Row:
    ratio = full.rps / ref.rps if ref.rps else 0.0
    return Row(
        what,
        f"{full.rps:,.0f} req/s",
        f"{ref.rps:,.0f}",
        f"{ratio:.2f}x",
        f"≥ {target}x",
        ratio >= target,
    )


def _latency_row(what: str, full: Result, ref: Result, p50: float, p99: float) -> Row:
    d50, d99 = full.p50_ms - ref.p50_ms, full.p99_ms - ref.p99_ms
    return Row(
        what,
        f"{full.p50_ms:.1f} / {full.p99_ms:.1f} ms",
        f"{ref.p50_ms:.1f} / {ref.p99_ms:.1f}",
        f"+{d50:.1f} / +{d99:.1f} ms",
        f"≤ +{p50:g} / +{p99:g} ms",
        d50 <= p50 and d99 <= p99,
    )


def add_run_arguments(parser: argparse.ArgumentParser, *, duration: float = 10.0) -> None:
    """--duration, --warmup and --rounds, as every interleaving bench takes them."""
    parser.add_argument("--duration", type=float, default=duration, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median)")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print one table, and write it into ``--write`` if given."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    add_run_arguments(parser)
    parser.add_argument("--write", type=Path, help="markdown file whose bench table to replace")
    args = parser.parse_args(argv)

    generator = "wrk, 2 threads" if shutil.which("wrk") else "bench.loadgen (wrk not installed)"
    load1, load5, _ = os.getloadavg()
    header = (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores,"
        f" load average {load1:.1f}/{load5:.1f} at start; load: {generator}, {CONNECTIONS}"
        f" connections ({RATE:g} req/s rows: bench.loadgen, {RATE_CONNECTIONS} connections),"
        f" {args.warmup:g} s warm-up + {args.duration:g} s per run, {args.rounds} rounds"
        " (median), full and reference runs interleaved; each server its own process."
    )
    print("tokenproxy bench: " + header, flush=True)
    with tempfile.TemporaryDirectory(prefix="tokenproxy-bench-") as tmp:
        work = Path(tmp)
        with _servers(work) as s:
            rows = _measure(s, args, work)
            rss = _report_rss(s)
            rows.append(
                Row(
                    "RSS with 1,000 idle keep-alive connections",
                    f"{rss['full'] / 1024:.1f} MiB",
                    f"{rss['bare'] / 1024:.1f}",
                    "",
                    "≤ 150 MB",
                    rss["full"] / 1024 * 1.048576 <= 150,
                )
            )
            rows.append(_scan_row())
            _sanity(s)
    load1, load5, _ = os.getloadavg()
    header += f" Load average at the end {load1:.1f}/{load5:.1f}."
    table = _table(rows)
    print()
    print(table)
    if args.write:
        _write(args.write, header, table)
    return 0


def _measure(s: dict[str, Any], args: argparse.Namespace, work: Path) -> list[Row]:
    tokenize = Load(
        "POST",
        ["/v1/cards"],
        {"Content-Type": "application/json", "Authorization": f"Bearer {s['checkout']}"},
        _CARD_BODY,
    )
    auth = {"Authorization": f"Bearer {s['billing']}"}
    paths = [f"/v1/tokens/{t}" for t in s["tokens"]]
    read_full = Load("GET", paths, auth)
    read_bare = Load("GET", paths)
    rows: list[Row] = []
    results: dict[str, list[Result]] = {}

    def run(key: str, server: Server, load: Load, **kw: Any) -> Result:
        if args.warmup > 0 and not kw.pop("cold", False):
            _drive(server.base, load, args.warmup, work, **kw)
        result = _drive(server.base, load, args.duration, work, **kw)
        results.setdefault(key, []).append(result)
        print(f"  {key:<28} {_fmt(result)}", flush=True)
        return result

    # First, while both processes are fresh: resolve over distinct tokens (every data key
    # unwrapped once), local key ring against KMS, then tokenize in both modes.
    kms = s.get("kms")
    lag: dict[str, tuple[dict[float, float], dict[float, float]]] = {}
    if kms is not None:
        kms_paths = [f"/v1/tokens/{t}" for t in s["kms_tokens"]]
        kms_lag_before = _lag_buckets(s["kms_ops"])
        cold = min(3.0, args.duration)
        local_cold = _drive(s["full"].base, read_full, cold, work)
        kms_cold = _drive(kms.base, Load("GET", kms_paths, auth), cold, work)
        print(f"  {'resolve cold local':<28} {_fmt(local_cold)}")
        print(f"  {'resolve cold kms':<28} {_fmt(kms_cold)}")
        for _ in range(args.rounds):
            run("tokenize local", s["full"], tokenize)
            run("tokenize kms", kms, tokenize)
        lag["kms"] = (kms_lag_before, _lag_buckets(s["kms_ops"]))
        rows.append(
            _rps_row(
                f"KMS / local ring: resolve, fresh process, {len(kms_paths):,} distinct tokens",
                kms_cold,
                local_cold,
                0.9,
            )
        )
        rows.append(
            _rps_row(
                "KMS / local ring: tokenize",
                _median(results["tokenize kms"]),
                _median(results["tokenize local"]),
                0.9,
            )
        )
    pairs = [
        ("tokenize", (s["full"], tokenize), (s["forward"], tokenize)),
        ("resolve", (s["full"], read_full), (s["read"], read_bare)),
    ]

    def interleaved(round_no: int, suffix: str = "", **kw: Any) -> None:
        """Full and bare runs of each path, their order swapped every other round."""
        for path, full, bare in pairs:
            order = [("full", full), ("bare", bare)]
            if round_no % 2:
                order.reverse()
            for side, (server, load) in order:
                run(f"{path} {side}{suffix}", server, load, **kw)

    lag_before = _lag_buckets(s["full_ops"])
    for round_no in range(args.rounds):
        interleaved(round_no)
        for path, full_load in (("tokenize", tokenize), ("resolve", read_full)):
            run(f"{path} {WORKERS} workers", s["workers"], full_load)
            run(f"{path} 1 worker", s["full"], full_load)
    lag["local"] = (lag_before, _lag_buckets(s["full_ops"]))
    paced_before = _lag_buckets(s["full_ops"])
    for round_no in range(args.rounds):
        interleaved(round_no, f" @{RATE:g}", rate=RATE)
    paced = (paced_before, _lag_buckets(s["full_ops"]))

    m = {key: _median(runs) for key, runs in results.items()}
    return [*_head_rows(m), *rows, *_tail_rows(m, lag, paced)]


def _head_rows(m: dict[str, Result]) -> list[Row]:
    """Tokenize and resolve against the bare servers, saturated and at a paced rate."""
    return [
        _rps_row(
            "tokenize, full proxy / bare forwarder", m["tokenize full"], m["tokenize bare"], 0.7
        ),
        _rps_row(
            "resolve (durable audit event) / bare PK read",
            m["resolve full"],
            m["resolve bare"],
            0.8,
        ),
        _latency_row(
            f"tokenize at {RATE:g} req/s, p50 / p99",
            m[f"tokenize full @{RATE:g}"],
            m[f"tokenize bare @{RATE:g}"],
            1,
            3,
        ),
        _latency_row(
            f"resolve at {RATE:g} req/s, p50 / p99",
            m[f"resolve full @{RATE:g}"],
            m[f"resolve bare @{RATE:g}"],
            1,
            3,
        ),
    ]


_Span = tuple[dict[float, float], dict[float, float]]


def _tail_rows(m: dict[str, Result], lag: dict[str, _Span], paced: _Span) -> list[Row]:
    """Event-loop lag, and workers against one process."""
    rows: list[Row] = []
    lag_rows = [(f"under full load, {mode} keys", span) for mode, span in lag.items()]
    lag_rows.append((f"at {RATE:g} req/s (tokenize and resolve), local keys", paced))
    for label, (lag_start, lag_end) in lag_rows:
        p99 = _lag_p99_ms(lag_start, lag_end)
        rows.append(Row(f"event-loop lag p99 {label}", f"≤ {p99:g} ms", "", "", "≤ 5 ms", p99 <= 5))
    for path in ("tokenize", "resolve"):
        rows.append(
            _rps_row(
                f"{path}: {WORKERS} workers / 1 worker",
                m[f"{path} {WORKERS} workers"],
                m[f"{path} 1 worker"],
                1.4,
            )
        )
    return rows


def _scan_row() -> Row:
    """The card-number scan of the worst adversarial metadata payload, event-loop time."""

    def cost(name: str) -> float:
        return per_call_us(functools.partial(validate_metadata, PAYLOADS[name]), 20)

    worst = max((cost(name), name) for name in PAYLOADS if name.startswith("adversarial"))
    normal = cost("normal (order ids, dates, names)")
    return Row(
        f"card-number scan, worst adversarial metadata ({worst[1]})",
        f"{worst[0]:,.0f} µs",
        f"{normal:,.0f} (normal)",
        "",
        "linear time",
        None,
    )


def _table(rows: list[Row]) -> str:
    lines = [
        "| what | proxy | reference | ratio / added | target | |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        verdict = "" if row.met is None else ("met" if row.met else "**missed**")
        cells = (row.what, row.proxy, row.reference, row.ratio, row.target, verdict)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write(path: Path, header: str, table: str) -> None:
    """Replace the text between the bench markers in ``path`` (appended if absent)."""
    block = f"{_BEGIN}\n`make bench`, {header}\n\n{table}\n{_END}"
    text = path.read_text() if path.exists() else ""
    if _BEGIN in text and _END in text:
        start, end = text.index(_BEGIN), text.index(_END) + len(_END)
        text = text[:start] + block + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def _median(runs: list[Result]) -> Result:
    return Result(
        rps=statistics.median(r.rps for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        requests=sum(r.requests for r in runs),
        non2xx=sum(r.non2xx for r in runs),
        errors=sum(r.errors for r in runs),
    )


def _report_rss(s: dict[str, Any]) -> dict[str, int]:
    token = s["tokens"][0]
    held_kib: dict[str, int] = {}
    for name, server, headers in (
        ("full", s["full"], f"Authorization: Bearer {s['billing']}\r\n"),
        ("bare", s["read"], ""),
    ):
        pid = server.process.pid
        before = _rss_kib(pid)
        request = (f"GET /v1/tokens/{token} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n").encode()
        sockets, held = asyncio.run(_hold_connections(server.port, request, IDLE_CONNECTIONS, pid))
        held_kib[name] = held["VmRSS"]
        print(
            f"RSS {name:<5} with {IDLE_CONNECTIONS} idle keep-alive connections"
            f" ({sockets} sockets open in the process): {held['VmRSS'] / 1024:.1f} MiB"
            f" (before: {before['VmRSS'] / 1024:.1f} MiB)"
        )
    return held_kib


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
