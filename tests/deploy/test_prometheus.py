"""The alert rules under promtool, and a real Prometheus server scraping a running proxy."""

from __future__ import annotations

import asyncio
import json
import re
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
from tests.deploy.tools import DEPLOY, PROMETHEUS_RULE, render_prometheus_rule, require
from tests.helpers import stop_process
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
                        {
                            "job_name": "tokenproxy",
                            "static_configs": [
                                {
                                    "targets": [target],
                                    "labels": {"app_kubernetes_io_name": "tokenproxy"},
                                }
                            ],
                        }
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
        stop_process(self.process, within=10)
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


def _alerts() -> list[dict[str, Any]]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_alert_links_a_runbook_section_that_exists() -> None:
    """Each alert's runbook_url is docs/operations.md#<anchor> of a heading that is there."""
    operations = DEPLOY.parent / "docs" / "operations.md"
    headings = re.findall(r"^#{1,6} (.+)$", operations.read_text(), re.MULTILINE)
    anchors = {_slug(h) for h in headings}
    assert "tokenproxydown" in anchors
    for alert in _alerts():
        url = alert["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page.endswith("/docs/operations.md"), alert["alert"]
        assert anchor in anchors, f"{alert['alert']}: no section #{anchor} in docs/operations.md"


def test_rules_select_targets_by_a_label_the_manifests_set_not_by_job_name() -> None:
    """No rule names job="tokenproxy"; `up` is read by the label the PodMonitor copies."""
    text = RULES.read_text()
    assert not re.search(r'job\s*=~?\s*"', text)
    podmonitor = yaml.safe_load((DEPLOY / "k8s" / "monitoring" / "podmonitor.yaml").read_text())
    pods = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())["spec"]["template"]
    labels = pods["metadata"]["labels"]
    assert podmonitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    copied = podmonitor["spec"]["podTargetLabels"]
    assert copied == ["app.kubernetes.io/name"]
    # The operator turns the pod label into a target label by replacing the dots and slash.
    target_label = re.sub(r"[^a-zA-Z0-9_]", "_", copied[0])
    for alert in _alerts():
        if re.search(r"\bup\b", alert["expr"]):
            assert f'{target_label}="{labels[copied[0]]}"' in alert["expr"], alert["alert"]
    ports = {p["name"] for p in pods["spec"]["containers"][0]["ports"]}
    assert {e["port"] for e in podmonitor["spec"]["podMetricsEndpoints"]} <= ports
    assert any(a["expr"].startswith("absent(") for a in _alerts())


def test_prometheusrule_manifest_carries_exactly_rules_yml() -> None:
    """The shipped PrometheusRule is rules.yml (regenerate it: python -m tests.deploy.tools)."""
    assert PROMETHEUS_RULE.read_text() == render_prometheus_rule()
    shipped = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert shipped["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    listed = yaml.safe_load((PROMETHEUS_RULE.parent / "kustomization.yaml").read_text())
    assert sorted(listed["resources"]) == ["podmonitor.yaml", "prometheusrule.yaml"]


def test_rule_tests_never_pad_counters_with_leading_zeros() -> None:
    """Counter series in rules_test.yml start at a non-zero first sample or at `_` (absent)."""
    tests = yaml.safe_load((RULES.parent / "rules_test.yml").read_text())["tests"]
    checked = 0
    for case in tests:
        for series in case["input_series"]:
            name = series["series"].split("{", 1)[0]
            if name.endswith(("_total", "_bucket", "_count")):
                first = str(series["values"]).split()[0]
                le_zero = name.endswith("_bucket") and first.startswith("0x")
                assert le_zero or not re.match(r"0(\D|$)", first), series["series"]
                checked += 1
    assert checked > 20


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each dashboard expression (as a recording rule, $job set to .*)."""
    dashboard = json.loads((DEPLOY / "grafana" / "tokenproxy.json").read_text())
    exprs = [
        target["expr"].replace("$job", ".*")
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    assert len(exprs) > 30
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run(
        [require("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
