"""`python -m bench.tokenize`: only the tokenize row of `python -m bench`, and a profile.

Starts the instant partner stub, the full proxy (``tokenproxy serve``, SQLite WAL with
synchronous=FULL, JSON logs at info, metrics) and the bare forwarder, each in its own
process, then drives wrk (or bench.loadgen) at both, interleaved, and prints the median
ratio with the machine's load, and each server's CPU time per request (from /proc; less
moved by other work on a shared machine than requests per second are). ``--paced`` adds,
per round, a run of each at 200 req/s (bench.loadgen, 4 connections) for the added
latency, p50 and p99. ``--baseline DIR`` runs another checkout's proxy (its own vault
file) in the same rotation, for paired before/after figures. ``--profile FILE`` records
the proxy with py-spy during one extra loaded run (py-spy must be on PATH or beside the
interpreter).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tokenproxy_sandbox.launcher import free_port

from bench.run import (
    _CARD_BODY,
    RATE,
    Load,
    Result,
    Server,
    _drive,
    _fmt,
    _median,
    _proxy_env,
    _start,
    _stop,
    add_run_arguments,
    baseline_proxy,
    proxy_base_env,
)
from proxy.infra.clients import add_client, parse_scopes
from vault.keys.ring import init_keyring


@contextlib.contextmanager
def _servers(work: Path, baseline: Path | None) -> Iterator[tuple[dict[str, Server], str]]:
    """The full proxy, the bare forwarder and, with ``baseline``, the other tree's proxy."""
    started: list[Server] = []
    try:
        keyring = work / "keyring.json"
        init_keyring(keyring)
        clients = work / "clients.json"
        checkout = add_client(clients, "bench-checkout", parse_scopes("tokenize"))
        py = sys.executable
        stub_port = free_port()
        started.append(_start("stub", [py, "-m", "bench.stub", str(stub_port)], stub_port))
        stub = f"http://127.0.0.1:{stub_port}"
        base = proxy_base_env(f"sqlite:///{work / 'vault.db'}", keyring, clients, stub)
        port, ops_port = free_port(), free_port()
        servers = {
            "full": _start(
                "full", [py, "-m", "proxy", "serve"], port, _proxy_env(base, port, ops_port)
            )
        }
        started.append(servers["full"])
        port = free_port()
        servers["bare"] = _start(
            "forward", [py, "-m", "bench.bare", "forward", str(port), stub], port
        )
        started.append(servers["bare"])
        if baseline is not None:
            # Its own vault file: the two trees' migrations need not agree.
            other = proxy_base_env(f"sqlite:///{work / 'base.db'}", keyring, clients, stub)
            servers["base"] = baseline_proxy(baseline, other)
            started.append(servers["base"])
        yield servers, checkout
    finally:
        for server in reversed(started):
            _stop(server)


def main(argv: list[str] | None = None) -> int:
    """Measure tokenize against the bare forwarder; print the ratio."""
    parser = argparse.ArgumentParser(prog="python -m bench.tokenize", description=__doc__)
    add_run_arguments(parser)
    parser.add_argument("--profile", type=Path, help="py-spy output (raw collapsed stacks)")
    parser.add_argument("--paced", action="store_true", help=f"also run each at {RATE:g} req/s")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout's proxy, measured alongside as 'base'"
    )
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tokenproxy-bench-") as tmp:
        work = Path(tmp)
        with _servers(work, args.baseline) as (servers, checkout):
            load = Load(
                "POST",
                ["/v1/cards"],
                {"Content-Type": "application/json", "Authorization": f"Bearer {checkout}"},
                _CARD_BODY,
            )
            results: dict[str, list[Result]] = {name: [] for name in servers}
            paced: dict[str, list[Result]] = {name: [] for name in servers}
            cpu: dict[str, list[float]] = {name: [] for name in servers}
            for round_no in range(args.rounds):
                order = list(servers.items())
                if round_no % 2:
                    order.reverse()
                for name, server in order:
                    if args.warmup > 0:
                        _drive(server.base, load, args.warmup, work)
                    before = _cpu_seconds(server.process.pid)
                    result = _drive(server.base, load, args.duration, work)
                    used = _cpu_seconds(server.process.pid) - before
                    results[name].append(result)
                    cpu[name].append(used / max(result.requests, 1) * 1e6)
                    print(
                        f"  tokenize {name:<5} {_fmt(result)}  {cpu[name][-1]:.0f} us CPU/request",
                        flush=True,
                    )
                    if args.paced:
                        at_rate = _drive(server.base, load, args.duration, work, rate=RATE)
                        paced[name].append(at_rate)
                        print(f"  tokenize {name:<5} @{RATE:g} {_fmt(at_rate)}", flush=True)
            if args.profile:
                _profile(servers["full"], load, args, work)
    load_end = os.getloadavg()
    for name in (n for n in ("full", "base") if n in servers):
        print(json.dumps({"proxy": name, **_summary(name, results, paced, cpu)}))
    print(
        json.dumps(
            {
                "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "load_start": [round(x, 2) for x in load_start[:2]],
                "load_end": [round(x, 2) for x in load_end[:2]],
            }
        )
    )
    return 0


def _summary(
    name: str,
    results: dict[str, list[Result]],
    paced: dict[str, list[Result]],
    cpu: dict[str, list[float]],
) -> dict[str, object]:
    """One proxy's medians against the bare forwarder's."""
    f, b = _median(results[name]), _median(results["bare"])
    full_cpu, bare_cpu = statistics.median(cpu[name]), statistics.median(cpu["bare"])
    added: dict[str, float] = {}
    if paced[name]:
        pf, pb = _median(paced[name]), _median(paced["bare"])
        added = {
            "added_p50_ms_at_rate": round(pf.p50_ms - pb.p50_ms, 2),
            "added_p99_ms_at_rate": round(pf.p99_ms - pb.p99_ms, 2),
        }
    return {
        "rps": round(f.rps),
        "bare_rps": round(b.rps),
        "ratio": round(f.rps / b.rps, 3) if b.rps else None,
        "cpu_us": round(full_cpu),
        "bare_cpu_us": round(bare_cpu),
        "cpu_ratio": round(bare_cpu / full_cpu, 3),
        **added,
        "non2xx": f.non2xx + b.non2xx,
    }


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _profile(full: Server, load: Load, args: argparse.Namespace, work: Path) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    seconds = max(1, round(args.duration))
    recorder = subprocess.Popen(
        [
            spy,
            "record",
            "-p",
            str(full.process.pid),
            "-d",
            str(seconds),
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(args.profile),
            "--nonblocking",
            "--threads",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    result = _drive(full.base, load, seconds, work)
    recorder.wait(timeout=seconds + 30)
    print(f"  profiled  {_fmt(result)} -> {args.profile}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
