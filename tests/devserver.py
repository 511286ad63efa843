"""`python -m proxy dev` (what `make run` runs) as a real subprocess in a directory of its own.

The directory stands in for a fresh clone: the dev server keeps its state in ``var/``
there, and ``.venv/bin/tokenproxy`` there is the installed console script, so commands
written for a clone run unchanged with that directory as working directory.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenproxy_sandbox.launcher import executable, free_port

from tests.helpers import stop_process

BANNER_TRY = "try, from this directory:"


@dataclass
class DevServer:
    """A running `tokenproxy dev` and where to reach it."""

    cwd: Path
    env: dict[str, str]
    api: str
    ops: str
    demo: str
    process: subprocess.Popen[bytes]
    log: Path
    # The client context trusting the proxy's certificate, when it serves TLS.
    tls: ssl.SSLContext | None = None

    def output(self) -> str:
        """Everything the process printed so far (banner, then log lines)."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def banner_commands(self) -> list[str]:
        """The shell commands the banner offers to paste, as printed."""
        lines = self.output().splitlines()
        start = lines.index(BANNER_TRY) + 1
        commands = []
        for line in lines[start:]:
            if not line.startswith("  "):
                break
            commands.append(line.strip())
        return commands

    def key(self, name: str) -> str:
        """A key file the dev server wrote under var/."""
        return (self.cwd / "var" / name).read_text(encoding="utf-8").strip()


def clean_env(cwd: Path) -> dict[str, str]:
    """The environment of a fresh shell: no tokenproxy or Stripe settings inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENPROXY_", "STRIPE_"))}
    env["TOKENPROXY_LOG_FORMAT"] = "json"
    return env


def fake_clone(cwd: Path) -> None:
    """Give ``cwd`` the ``.venv/bin/tokenproxy`` a clone has after `make run`."""
    bin_dir = cwd / ".venv" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "tokenproxy").symlink_to(executable("tokenproxy"))


@contextlib.contextmanager
def running_dev(
    cwd: Path, *, within: float = 60.0, tls: ssl.SSLContext | None = None, **extra_env: str
) -> Iterator[DevServer]:
    """Start `python -m proxy dev` in ``cwd`` on free ports; SIGTERM it when the block ends.

    ``tls``: the proxy is given a certificate (in ``extra_env``) that this client context
    trusts, and is reached over https.
    """
    cwd.mkdir(parents=True, exist_ok=True)
    fake_clone(cwd)
    listen, ops, demo = free_port(), free_port(), free_port()
    env = {
        **clean_env(cwd),
        "TOKENPROXY_LISTEN": f"127.0.0.1:{listen}",
        "TOKENPROXY_OPS_LISTEN": f"127.0.0.1:{ops}",
        "TOKENPROXY_DEMO_LISTEN": f"127.0.0.1:{demo}",
        **extra_env,
    }
    log = cwd / "dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "dev"],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    scheme = "http" if tls is None else "https"
    server = DevServer(
        cwd=cwd,
        env=env,
        api=f"{scheme}://127.0.0.1:{listen}",
        ops=f"{scheme}://127.0.0.1:{ops}",
        demo=f"http://127.0.0.1:{demo}",
        process=process,
        log=log,
        tls=tls,
    )
    try:
        _wait_ready(server, within)
        yield server
    finally:
        stop_process(process)


def _wait_ready(server: DevServer, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"tokenproxy dev exited early:\n{server.output()[-3000:]}")
        try:
            with urllib.request.urlopen(  # noqa: S310 - loopback
                server.ops + "/readyz", timeout=1, context=server.tls
            ) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"tokenproxy dev did not become ready:\n{server.output()[-3000:]}")
