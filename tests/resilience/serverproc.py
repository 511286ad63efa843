"""`python -m proxy serve` as a real subprocess, for shutdown and crash tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, free_port

from proxy.infra.clients import add_client, parse_scopes
from tests.resilience.conftest import FAST
from vault.keys.ring import init_keyring


class ServerProcess:
    """One proxy process; the vault, key ring and clients persist across restarts."""

    def __init__(self, workdir: Path, partner_base: str, **env: str) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        keyring = workdir / "keyring.json"
        clients = workdir / "clients.json"
        if not keyring.exists():
            init_keyring(keyring)
        self.keys = {
            name: add_client(clients, name, parse_scopes(scope))
            for name, scope in (
                ("checkout", "tokenize"),
                ("billing", "resolve"),
                # Every scope: lets the fuzzer past authorisation on every operation.
                ("root", "tokenize,read,resolve,delete,admin,invoice"),
            )
        }
        self.vault_path = workdir / "vault.db"
        self.env = {
            **os.environ,
            "TOKENPROXY_VAULT_URL": f"sqlite:///{self.vault_path}",
            "TOKENPROXY_KEYRING": str(keyring),
            "TOKENPROXY_CLIENTS": str(clients),
            "STRIPE_API_KEY": SANDBOX_API_KEY,
            "TOKENPROXY_STRIPE_API_BASE": partner_base,
            "TOKENPROXY_LOG_FORMAT": "json",
            **FAST,
            **env,
        }
        self.log = workdir / "proxy.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.base = ""
        self.ops = ""

    def auth(self, client: str) -> dict[str, str]:
        """Authorization header for a client."""
        return {"Authorization": f"Bearer {self.keys[client]}"}

    def launch(self) -> None:
        """Start on fresh ports; does not wait for readiness."""
        listen, ops = free_port(), free_port()
        self.base, self.ops = f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{ops}"
        env = {
            **self.env,
            "TOKENPROXY_LISTEN": f"127.0.0.1:{listen}",
            "TOKENPROXY_OPS_LISTEN": f"127.0.0.1:{ops}",
        }
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def start(self, within: float = 30.0) -> None:
        """Start on fresh ports and wait until /readyz answers 200."""
        self.launch()
        assert self.process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with aiohttp.ClientSession() as http:
            while loop.time() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"proxy exited early: {self.log.read_text()[-2000:]}")
                try:
                    async with http.get(self.ops + "/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        self.kill()
        raise RuntimeError("proxy did not become ready")

    def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM (graceful shutdown); does not wait."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def wait(self, within: float = 30.0) -> int:
        """Wait for the process to exit; its return code."""
        assert self.process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.process.poll() is None:
            if loop.time() > deadline:
                self.kill()
                raise RuntimeError("proxy did not exit in time")
            await asyncio.sleep(0.05)
        return self.process.returncode
