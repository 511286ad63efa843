"""Finding the operators' tools the deploy tests run (promtool, prometheus); the PrometheusRule."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ci

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def require(tool: str) -> str:
    """The tool's path; in CI a missing tool fails the test, elsewhere it skips it."""
    path = shutil.which(tool)
    if path is None:
        reason = f"{tool} is not installed (Debian package 'prometheus'; .ci/run installs it)"
        if ci():
            pytest.fail(reason)
        pytest.skip(reason)
    return path


PROMETHEUS_RULE = DEPLOY / "k8s" / "monitoring" / "prometheusrule.yaml"
_PROMETHEUS_RULE_HEADER = """\
# The alert and recording rules of deploy/prometheus/rules.yml for the Prometheus
# Operator. Generated: edit rules.yml, then `python -m tests.deploy.tools` (a test checks
# that the two agree).
"""


def prometheus_rule() -> dict[str, Any]:
    """The PrometheusRule carrying rules.yml's groups, as deploy/k8s/monitoring ships it."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "tokenproxy",
            "namespace": "tokenproxy",
            "labels": {"app.kubernetes.io/name": "tokenproxy"},
        },
        "spec": {"groups": rules["groups"]},
    }


def _literal_blocks(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def render_prometheus_rule() -> str:
    """The text of deploy/k8s/monitoring/prometheusrule.yaml."""

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(str, _literal_blocks)
    body = yaml.dump(prometheus_rule(), Dumper=Dumper, sort_keys=False, width=100)
    return _PROMETHEUS_RULE_HEADER + body


if __name__ == "__main__":
    PROMETHEUS_RULE.write_text(render_prometheus_rule())
