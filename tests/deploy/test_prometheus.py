"""The alert rules under promtool, and a real Prometheus server scraping a running proxy."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from tokenproxy_sandbox.launcher import free_port

from tests.conftest import RunningProxy
from tests.deploy.tools import DEPLOY, require
from tests.proxy.test_cards_api import card_body, tokenize

RULES = DEPLOY / "prometheus" / "rules.yml"


def test_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts rules.yml."""
    out = subprocess.run(
        [require("promtool"), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_check_rejects_a_broken_rule(tmp_path: Path) -> None:
    """The check can fail: a rule with a bad expression is refused."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "rate(up[5m]"}]}]}
        )
    )
    out = subprocess.run(
        [require("promtool"), "check", "rules", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0


def test_rule_unit_tests_pass() -> None:
    """`promtool test rules` runs rules_test.yml: each alert fires when it should, only then."""
    out = subprocess.run(
        [require("promtool"), "test", "rules", "rules_test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


class PrometheusServer:
    """A Prometheus process on a free loopback port scraping one target every second."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {"job_name": "tokenproxy", "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        self.log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        """Terminate and wait."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()


@pytest.fixture
async def prometheus(proxy: RunningProxy, tmp_path: Path) -> AsyncIterator[PrometheusServer]:
    """Prometheus scraping the proxy fixture's ops listener, with rules.yml loaded."""
    server = PrometheusServer(require("prometheus"), tmp_path, proxy.ops.removeprefix("http://"))
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.process.poll() is None, "prometheus exited"
            try:
                async with proxy.http.get(server.base + "/-/ready") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            await asyncio.sleep(0.2)
        yield server
    finally:
        server.stop()


async def _until(http: aiohttp.ClientSession, url: str, found: Any) -> Any:
    """Poll a Prometheus API URL until ``found(data)`` is truthy (60 s at most); return it."""
    deadline = time.monotonic() + 60
    last: Any = None
    while time.monotonic() < deadline:
        async with http.get(url) as resp:
            last = await resp.json()
        result = found(last["data"]) if last.get("status") == "success" else None
        if result:
            return result
        await asyncio.sleep(0.5)
    pytest.fail(f"timed out waiting on {url}; last answer {last}")


@pytest.mark.slow
async def test_real_prometheus_scrapes_the_proxy_and_fires_an_alert(
    proxy: RunningProxy, prometheus: PrometheusServer
) -> None:
    """Series arrive in Prometheus, recording rules evaluate, a decryption failure alerts."""
    http = proxy.http
    api = prometheus.base + "/api/v1"
    created = await tokenize(proxy, card_body(customer_ref="cus-prom"))
    status, _, _ = await proxy.request("GET", f"/v1/tokens/{created['token']}", client="billing")
    assert status == 200

    def card_requests(data: dict[str, Any]) -> list[Any]:
        return [
            r
            for r in data["result"]
            if r["metric"].get("route") == "/v1/cards" and r["metric"]["job"] == "tokenproxy"
        ]

    series = await _until(http, api + "/query?query=tokenproxy_http_requests_total", card_requests)
    assert series[0]["metric"]["status_class"] == "2xx"
    await _until(
        http,
        api + "/query?query=tokenproxy:http_requests:rate5m",
        lambda d: d["result"],
    )
    # The counter has been scraped at 0; now make it move.
    db = sqlite3.connect(proxy.vault_path)
    (blob,) = db.execute(
        "SELECT ciphertext FROM records WHERE token = ?", (created["token"],)
    ).fetchone()
    db.execute(
        "UPDATE records SET ciphertext = ? WHERE token = ?",
        (blob[:20] + bytes([blob[20] ^ 1]) + blob[21:], created["token"]),
    )
    db.commit()
    db.close()
    status, _, _ = await proxy.request("GET", f"/v1/tokens/{created['token']}", client="billing")
    assert status == 503

    def firing(data: dict[str, Any]) -> list[Any]:
        return [
            a
            for a in data["alerts"]
            if a["labels"]["alertname"] == "TokenproxyDecryptionFailures" and a["state"] == "firing"
        ]

    alerts = await _until(http, api + "/alerts", firing)
    assert alerts[0]["labels"]["severity"] == "critical"

    async with http.get(api + "/rules") as resp:
        groups = (await resp.json())["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    defined = yaml.safe_load(RULES.read_text())["groups"]
    assert len(rules) == sum(len(group["rules"]) for group in defined)
    assert all(rule["health"] == "ok" for rule in rules), [
        (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
    ]
