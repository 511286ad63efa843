"""Resolve only: the full proxy against the bare primary-key read, plus server CPU per request.

``python -m bench.resolve [--duration S] [--rounds N] [--cold]``: starts the full proxy
(``python -m proxy serve``, SQLite vault with WAL and synchronous=FULL, JSON logs at info)
and the bare reader on the same seeded vault, then alternates saturated runs (wrk, or
bench.loadgen without it) and paced runs at 200 req/s between the two, and prints the
ratios (medians over rounds) with each server's CPU time per request read from
``/proc/PID/stat``: on a shared machine CPU per request moves less than req/s does.
``--cold`` first resolves every seeded token once while the proxy is fresh (each data
key unwrapped once), then measures the warm runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenproxy_sandbox.launcher import free_port

from bench.run import (
    RATE,
    SEED_TOKENS,
    Load,
    Result,
    Server,
    _drive,
    _proxy_env,
    _seed,
    _start,
    _stop,
    add_run_arguments,
    baseline_proxy,
    proxy_base_env,
)
from proxy.infra.clients import add_client, parse_scopes
from vault import LocalKekProvider
from vault.keys.ring import init_keyring


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat; 12 and 13 after the ")" split.
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system): the main thread (the event loop) against all others."""
    found: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = "loop" if task.name == str(pid) else "others"
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return found


def _measured(server: Server, load: Load, seconds: float, work: Path, **kw: float) -> tuple:
    user, system = _cpu_seconds(server.process.pid)
    threads = _thread_cpu(server.process.pid)
    result: Result = _drive(server.base, load, seconds, work, **kw)
    user_after, system_after = _cpu_seconds(server.process.pid)
    per = 1e6 / max(1, result.requests)
    by_thread = ", ".join(
        f"{name} {(spent - threads.get(name, 0.0)) * per:.0f}"
        for name, spent in sorted(_thread_cpu(server.process.pid).items())
        if spent - threads.get(name, 0.0) > 0
    )
    print(
        f"    ({server.name}: user {(user_after - user) * per:.0f} us/req,"
        f" system {(system_after - system) * per:.0f} us/req; by thread: {by_thread})"
    )
    return result, (user_after - user + system_after - system) * per


def _summary(runs: dict[str, list[tuple[Result, float]]]) -> None:
    def med(key: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) if attr != "cpu" else c for r, c in runs[key])

    paced_bare = f"bare @{RATE:g}"
    for side in ("full", "base"):
        if side not in runs:
            continue
        paced = f"{side} @{RATE:g}"
        print(
            f"{side}: resolve/bare req/s {med(side, 'rps') / med('bare', 'rps'):.2f}x;"
            f" cpu/req {med(side, 'cpu'):.0f} us, bare {med('bare', 'cpu'):.0f} us;"
            f" @{RATE:g}: +{med(paced, 'p50_ms') - med(paced_bare, 'p50_ms'):.2f}"
            f" / +{med(paced, 'p99_ms') - med(paced_bare, 'p99_ms'):.2f} ms"
            f" (cpu/req {med(paced, 'cpu'):.0f} / {med(paced_bare, 'cpu'):.0f} us)"
        )
    print(f"load average at end {os.getloadavg()[:2]}")


def _profile(full: Server, load: Load, args: argparse.Namespace, work: Path) -> None:
    """A py-spy profile of the proxy over one saturated run (SVG, or raw collapsed stacks)."""
    _drive(full.base, load, args.warmup or 1.0, work)
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "-f",
            "flamegraph" if args.profile.suffix == ".svg" else "raw",
            "-r",
            "100",
            "--threads",
            *(["--idle"] if args.profile_rate else []),
            "-o",
            str(args.profile),
            "-d",
            str(round(args.duration)),
            "-p",
            str(full.process.pid),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kw = {"rate": args.profile_rate} if args.profile_rate else {}
    _drive(full.base, load, args.duration, work, **kw)
    spy.wait(timeout=60)


def _rounds(
    sides: list[tuple[str, Server, Load]], args: argparse.Namespace, work: Path
) -> dict[str, list[tuple[Result, float]]]:
    """Saturated and paced runs of every side in turn (order rotated each round)."""
    runs: dict[str, list[tuple[Result, float]]] = {}
    for round_no in range(args.rounds):
        for rate in (None, RATE):
            shift = round_no % len(sides)
            for side, server, load in sides[shift:] + sides[:shift]:
                kw = {"rate": rate} if rate else {}
                if args.warmup:
                    _drive(server.base, load, args.warmup, work, **kw)
                result, cpu = _measured(server, load, args.duration, work, **kw)
                key = f"{side} @{rate:g}" if rate else side
                runs.setdefault(key, []).append((result, cpu))
                print(
                    f"  {key:<10} {result.rps:8.0f} req/s p50 {result.p50_ms:6.2f}"
                    f" p99 {result.p99_ms:6.2f} ms  {cpu:6.0f} us/req  non2xx {result.non2xx}",
                    flush=True,
                )
    return runs


def main(argv: list[str] | None = None) -> int:
    """Run the resolve rows and print them."""
    parser = argparse.ArgumentParser(prog="python -m bench.resolve", description=__doc__)
    add_run_arguments(parser, duration=8.0)
    parser.add_argument("--cold", action="store_true")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout's proxy, measured alongside as 'base'"
    )
    parser.add_argument("--profile-rate", type=float, help="profile at this paced rate instead")
    parser.add_argument(
        "--profile", type=Path, help="py-spy flame graph (SVG) of the proxy over one saturated run"
    )
    args = parser.parse_args(argv)
    print(f"load average at start: {os.getloadavg()[:2]}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tokenproxy-resolve-") as tmp:
        work = Path(tmp)
        keyring = work / "keyring.json"
        init_keyring(keyring)
        clients = work / "clients.json"
        billing = add_client(clients, "bench-billing", parse_scopes("resolve"))
        db = work / "vault.db"
        url = f"sqlite:///{db}"
        tokens = asyncio.run(_seed(url, LocalKekProvider.from_file(keyring), SEED_TOKENS))
        # Resolve never calls the partner: an address nothing answers on.
        base = proxy_base_env(url, keyring, clients, "http://127.0.0.1:9")
        py = sys.executable
        port, ops = free_port(), free_port()
        full = _start("full", [py, "-m", "proxy", "serve"], port, _proxy_env(base, port, ops))
        rport = free_port()
        bare = _start("read", [py, "-m", "bench.bare", "read", str(rport), str(db)], rport)
        print(f"proxy pid {full.process.pid}, bare pid {bare.process.pid}", flush=True)
        baseline = baseline_proxy(args.baseline, base) if args.baseline else None
        try:
            paths = [f"/v1/tokens/{t}" for t in tokens]
            full_load = Load("GET", paths, {"Authorization": f"Bearer {billing}"})
            bare_load = Load("GET", paths)
            if args.cold:
                result, cpu = _measured(full, full_load, 3.0, work)
                print(f"  cold full {result.rps:8.0f} req/s  {cpu:6.0f} us/req", flush=True)
                # Right after a burst of first resolves thousands of last-use marks wait for
                # the periodic flush, which shares the writer with every audit event.
                result, cpu = _measured(full, full_load, args.duration, work, rate=RATE)
                print(
                    f"  full @{RATE:g} after the burst: p50 {result.p50_ms:.2f}"
                    f" p99 {result.p99_ms:.2f} ms",
                    flush=True,
                )
            if args.profile:
                _profile(full, full_load, args, work)
                return 0
            sides = [("full", full, full_load), ("bare", bare, bare_load)]
            if baseline is not None:
                sides.append(("base", baseline, full_load))
            _summary(_rounds(sides, args, work))
        finally:
            for server in (bare, full, baseline):
                if server is not None:
                    _stop(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
