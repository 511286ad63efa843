"""`tokenproxy serve --workers 2`: one port, restarts, draining, metrics summed over workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tokenproxy_sandbox.launcher import free_port

from tests.helpers import stop_process
from vault.keys.ring import init_keyring

# Each poll of the log or of a listener waits this long; loops are bounded by count.
_STEP = 0.1
_STEPS = 600


@dataclass
class Deployment:
    """A running supervisor and where to reach and read it."""

    process: subprocess.Popen[bytes]
    api: str
    ops: str
    log: Path
    reader_key: str

    def events(self, name: str) -> list[dict[str, object]]:
        """The JSON log lines with ``event == name`` so far (supervisor and workers)."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event") == name:
                    found.append(entry)
        return found

    def wait_for(self, name: str, count: int) -> list[dict[str, object]]:
        """Poll the log until ``count`` ``name`` events are there (bounded, then fail)."""
        for _ in range(_STEPS):
            found = self.events(name)
            if len(found) >= count:
                return found
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            time.sleep(_STEP)
        pytest.fail(f"fewer than {count} {name!r} events: {self.log.read_text()[-2000:]}")

    def live_workers(self) -> dict[int, int]:
        """Worker index -> pid of the latest start of each worker."""
        latest: dict[int, int] = {}
        for entry in self.events("worker_started"):
            latest[int(entry["worker"])] = int(entry["pid"])  # type: ignore[call-overload]
        return latest

    def get(self, url: str, *, key: str | None = None) -> tuple[int, str]:
        """One GET on a new connection (so SO_REUSEPORT may pick either worker)."""
        request = urllib.request.Request(url)  # noqa: S310 - loopback http
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


@pytest.fixture
def deployment(tmp_path: Path, client_keys: dict[str, str]) -> Iterator[Deployment]:
    """`tokenproxy serve --workers 2` with a retention sweep every second."""
    keyring = tmp_path / "keys" / "keyring.json"
    init_keyring(keyring)
    api, ops = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENPROXY_", "PROMETHEUS"))}
    env.update(
        {
            "TOKENPROXY_LISTEN": api,
            "TOKENPROXY_OPS_LISTEN": ops,
            "TOKENPROXY_KEYRING": str(keyring),
            "TOKENPROXY_CLIENTS": str(tmp_path / "clients.json"),
            "TOKENPROXY_VAULT_URL": f"sqlite:///{tmp_path / 'vault.db'}",
            "TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:9",
            "STRIPE_API_KEY": "sk_test_workers",
            "TOKENPROXY_PURGE_INTERVAL": "1",
            "TOKENPROXY_RETENTION_CARD_DAYS": "30",
            # A short drain: a grace the proxy accepts only with short partner and vault
            # timeouts (it must outlast the longest partner call and the vault write after).
            "TOKENPROXY_SHUTDOWN_GRACE": "2",
            "TOKENPROXY_PARTNER_TIMEOUT": "1",
            "TOKENPROXY_PARTNER_MAX_RETRIES": "0",
            "TOKENPROXY_DB_TIMEOUT": "0.5",
            "TOKENPROXY_LOG_FORMAT": "json",
        }
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--workers", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = Deployment(process, f"http://{api}", f"http://{ops}", log, client_keys["orders"])
    try:
        running.wait_for("workers_serving", 1)
        yield running
    finally:
        stop_process(process)


def requests_counted(deployment: Deployment) -> float:
    """tokenproxy_http_requests_total of the token route's 4xx, as one scrape shows it."""
    status, body = deployment.get(deployment.ops + "/metrics")
    assert status == 200
    total = 0.0
    for line in body.splitlines():
        if line.startswith("tokenproxy_http_requests_total{") and 'status_class="4xx"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_metrics_on_the_ops_listener_are_summed_over_workers(deployment: Deployment) -> None:
    """Requests spread over two workers; every scrape, whichever worker answers, shows all."""
    workers = deployment.live_workers()
    assert sorted(workers) == [0, 1]
    assert len(set(workers.values())) == 2
    for _ in range(40):
        status, _ = deployment.get(
            deployment.api + "/v1/tokens/vtok_card_" + "A" * 32, key=deployment.reader_key
        )
        assert status == 404
    # Forty new connections all landing on one worker has probability 2**-39; so a scrape
    # answered from one worker's counts alone would show fewer than forty.
    assert [requests_counted(deployment) for _ in range(6)] == [40.0] * 6
    # The build's version is served in this mode too, once (not once per worker).
    _, body = deployment.get(deployment.ops + "/metrics")
    build = [line for line in body.splitlines() if line.startswith("tokenproxy_build_info{")]
    assert len(build) == 1
    assert build[0].endswith(" 1.0")


def test_a_dead_worker_is_restarted_and_the_port_keeps_serving(deployment: Deployment) -> None:
    """SIGKILL of one worker: the supervisor starts it again; requests are answered throughout."""
    before = deployment.live_workers()
    os.kill(before[1], signal.SIGKILL)
    deployment.wait_for("worker_exited", 1)
    deployment.wait_for("worker_started", 3)
    after = deployment.live_workers()
    assert after[0] == before[0]
    assert after[1] != before[1]
    assert not alive(before[1])
    for _ in range(100):
        if alive(after[1]) and len(deployment.events("started")) >= 3:
            break
        time.sleep(_STEP)
    for _ in range(20):
        status, _ = deployment.get(
            deployment.api + "/v1/tokens/vtok_card_" + "B" * 32, key=deployment.reader_key
        )
        assert status == 404
    assert deployment.process.poll() is None


def test_once_per_deployment_jobs_run_in_one_worker(deployment: Deployment) -> None:
    """The retention sweep runs in worker 0 only, however many sweeps pass."""
    sweeps = deployment.wait_for("retention_purge", 3)
    assert {entry["worker"] for entry in sweeps} == {0}
    started = deployment.events("started")
    assert {entry["worker"] for entry in started} == {0, 1}  # worker 1 logs here too


def test_sigterm_drains_every_worker(deployment: Deployment) -> None:
    """SIGTERM to the supervisor stops every worker, then the supervisor exits 0."""
    workers = deployment.live_workers()
    deployment.process.send_signal(signal.SIGTERM)
    assert deployment.process.wait(timeout=60) == 0
    assert not any(alive(pid) for pid in workers.values())
    assert len(deployment.events("stopped")) == 2


def test_a_second_deployment_on_the_same_port_is_refused(deployment: Deployment) -> None:
    """Workers share their port with each other only: another `serve --workers` gets one line."""
    api = deployment.api.removeprefix("http://")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENPROXY_", "PROMETHEUS"))}
    env.update(
        {
            "TOKENPROXY_LISTEN": api,
            "TOKENPROXY_OPS_LISTEN": f"127.0.0.1:{free_port()}",
            "TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:9",
            "STRIPE_API_KEY": "sk_test_workers",
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert done.stderr.splitlines() == [
        f"tokenproxy: cannot listen on {api} (address in use); set TOKENPROXY_LISTEN"
    ]
