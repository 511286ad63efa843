"""deploy/METRICS.md, the dashboard and the rules agree with what the proxy exports."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from tests.conftest import RunningProxy
from tests.deploy.tools import DEPLOY
from tests.proxy.test_cards_api import card_body, tokenize

_ROW_RE = re.compile(r"^\|\s*`(tokenproxy_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|")
_TYPE_RE = re.compile(r"^# TYPE (\S+) (\S+)$")
_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"')
_METRIC_NAME_RE = re.compile(r"\btokenproxy_[a-z0-9_]+")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Entry:
    """One catalog row."""

    type: str
    labels: frozenset[str]
    exported: bool


def catalog() -> dict[str, Entry]:
    """The rows of deploy/METRICS.md: exported now, or added by another issue."""
    entries: dict[str, Entry] = {}
    exported = True
    for line in (DEPLOY / "METRICS.md").read_text().splitlines():
        if line.startswith("## "):
            exported = line.strip() == "## Exported"
        match = _ROW_RE.match(line)
        if match:
            name, kind, labels = match.groups()
            names = frozenset(x.strip() for x in labels.split(",") if x.strip() not in {"", "—"})
            assert name not in entries, f"{name} is listed twice"
            entries[name] = Entry(kind, names, exported)
    return entries


def exported(text: str) -> dict[str, tuple[str, set[str]]]:
    """Metric families in exposition text: name -> (type, label names seen in samples)."""
    families: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        type_match = _TYPE_RE.match(line)
        if type_match:
            families[type_match.group(1)] = (type_match.group(2), set())
            continue
        sample = _SAMPLE_RE.match(line)
        if sample is None or line.startswith("#"):
            continue
        name = sample.group(1)
        family = name if name in families else None
        for suffix in _HISTOGRAM_SUFFIXES:
            if family is None and name.endswith(suffix) and name[: -len(suffix)] in families:
                family = name[: -len(suffix)]
        assert family is not None, f"sample {name} has no # TYPE line"
        families[family][1].update(_LABEL_RE.findall(sample.group(2) or ""))
    return families


async def test_catalog_matches_metrics_served_by_a_running_proxy(proxy: RunningProxy) -> None:
    """Every exported family is in the catalog with its type and labels, and vice versa."""
    created = await tokenize(proxy, card_body())
    await proxy.request("GET", f"/v1/tokens/{created['token']}", client="billing")
    await proxy.request("GET", "/v1/tokens/vtok_card_" + "A" * 32, client="billing")
    await proxy.request("GET", f"/v1/tokens/{created['token']}")
    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        served = exported(await resp.text())
    documented = catalog()
    tokenproxy = {name: v for name, v in served.items() if name.startswith("tokenproxy_")}
    for name, (kind, labels) in tokenproxy.items():
        assert name in documented, f"{name} is exported but not in deploy/METRICS.md"
        entry = documented[name]
        assert entry.exported, f"{name} is exported but catalogued under 'Added by other issues'"
        assert kind == entry.type, f"{name}: exported as {kind}, documented as {entry.type}"
        seen = labels - {"le"}
        assert seen <= entry.labels, f"{name}: labels {sorted(seen)} vs {sorted(entry.labels)}"
    for name, entry in documented.items():
        if entry.exported:
            assert name in tokenproxy, f"{name} is documented as exported but not served"
    # The traffic above gives every labelled family of the card path samples, so the
    # label sets were compared in full for these.
    for name in (
        "tokenproxy_http_requests_total",
        "tokenproxy_http_request_duration_seconds",
        "tokenproxy_partner_requests_total",
        "tokenproxy_vault_operation_duration_seconds",
        "tokenproxy_tokens_created_total",
        "tokenproxy_auth_failures_total",
        "tokenproxy_build_info",
    ):
        assert served[name][1] - {"le"} == documented[name].labels, name


def _known_names() -> set[str]:
    names = set(catalog())
    for name, entry in catalog().items():
        if entry.type == "histogram":
            names.update(name + suffix for suffix in _HISTOGRAM_SUFFIXES)
    return names


def test_rules_use_only_catalogued_metrics() -> None:
    """Each metric an alert or recording rule reads is in the catalog (no typo'd names)."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    known = _known_names()
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert exprs
    for expr in exprs:
        for name in _METRIC_NAME_RE.findall(expr):
            assert name in known, f"rules.yml uses {name}, which deploy/METRICS.md lacks"


def test_every_alert_is_documented_and_labelled_with_a_severity() -> None:
    """The alert table in METRICS.md lists exactly the alerts rules.yml defines."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    text = (DEPLOY / "METRICS.md").read_text()
    documented = set(re.findall(r"^\| `(Tokenproxy\w+)`", text, re.MULTILINE))
    assert {a["alert"] for a in alerts} == documented
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning"}
        assert alert["annotations"]["summary"]


def test_dashboard_queries_only_catalogued_metrics_and_recorded_series() -> None:
    """Every dashboard query names catalogued metrics or rules.yml recording rules."""
    dashboard = json.loads((DEPLOY / "grafana" / "tokenproxy.json").read_text())
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    known = _known_names()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert dashboard["uid"] == "tokenproxy"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert panels
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            for name in re.findall(r"\btokenproxy:[a-z0-9_:]+", expr):
                assert name in recorded, f"{panel['title']}: {name} is not recorded"
            for name in _METRIC_NAME_RE.findall(expr):
                assert name in known, f"{panel['title']}: {name} is not in the catalog"
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    covered = {name for expr in exprs for name in _METRIC_NAME_RE.findall(expr)}
    # Traffic, errors, latency, partner health, vault, keys, integrity, saturation.
    assert {
        "tokenproxy_decryption_failures_total",
        "tokenproxy_partner_requests_total",
        "tokenproxy_vault_errors_total",
        "tokenproxy_deks",
        "tokenproxy_rewrap_remaining",
        "tokenproxy_partner_orphans_total",
        "tokenproxy_customer_erasures_total",
        "tokenproxy_auth_failures_total",
        "tokenproxy_audit_write_failures_total",
        "tokenproxy_key_active_age_seconds",
    } <= covered
    used = {name for expr in exprs for name in re.findall(r"\btokenproxy:[a-z0-9_:]+", expr)}
    assert {
        "tokenproxy:checkout_requests:rate5m",
        "tokenproxy:route_errors:ratio_rate5m",
        "tokenproxy:partner_attempts:per_call_rate5m",
        "tokenproxy:db_pool:utilisation",
        "tokenproxy:event_loop_lag_seconds:p99_5m",
        "tokenproxy:vault_operation_duration_seconds:p99_5m",
        "tokenproxy:partner_request_duration_seconds:p99_5m",
    } <= used


def test_dashboard_opens_with_one_row_per_journey() -> None:
    """The first rows answer "is checkout working?" and "is billing working?" at a glance."""
    dashboard = json.loads((DEPLOY / "grafana" / "tokenproxy.json").read_text())
    panels = sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    rows = [p for p in panels if p["type"] == "row"]
    assert rows[0]["title"].startswith("Checkout")
    assert rows[1]["title"].startswith("Billing")

    def under(row: dict[str, Any]) -> list[dict[str, Any]]:
        following = [r["gridPos"]["y"] for r in rows if r["gridPos"]["y"] > row["gridPos"]["y"]]
        end = min(following, default=10**6)
        return [
            p
            for p in panels
            if p["type"] != "row" and row["gridPos"]["y"] < p["gridPos"]["y"] < end
        ]

    checkout = " ".join(t["expr"] for p in under(rows[0]) for t in p["targets"])
    assert "tokenproxy:checkout_requests:rate5m" in checkout  # success and 4xx ratios
    assert 'status_class="4xx"' in checkout
    assert "rate_limited" in checkout  # 429s
    assert "p99" in checkout
    billing = " ".join(t["expr"] for p in under(rows[1]) for t in p["targets"])
    assert "/v1/tokens/{token}" in billing
    assert "/v1/invoices" in billing
    assert all(p["type"] == "stat" for p in under(rows[0]) + under(rows[1]))
    # Nothing overlaps: every panel has its own cells on the 24-column grid.
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        own = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not own & cells, panel["title"]
        cells |= own
