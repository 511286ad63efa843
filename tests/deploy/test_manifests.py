"""Dockerfile, Kubernetes manifests, compose file and env.example, checked statically.

No container engine runs here, so the Dockerfile is held to hadolint's main rules by
hand; the manifests are validated against the Kubernetes API schemas (bundled by
kubernetes-validate, offline) and then for what this service needs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.tools import DEPLOY

ROOT = DEPLOY.parent
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30.0"


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs with continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    steps = []
    for raw in logical.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            steps.append((instruction.upper(), args.strip()))
    return steps


def _final_stage() -> list[tuple[str, str]]:
    steps = _dockerfile()
    last_from = max(i for i, (ins, _) in enumerate(steps) if ins == "FROM")
    return steps[last_from:]


def test_dockerfile_is_multi_stage_on_a_pinned_slim_base() -> None:
    """Two stages or more, every base pinned (no :latest), the default base slim."""
    steps = _dockerfile()
    froms = [args for ins, args in steps if ins == "FROM"]
    assert len(froms) >= 2
    base = next(args for ins, args in steps if ins == "ARG" and args.startswith("PYTHON_IMAGE="))
    image = base.split("=", 1)[1]
    assert "slim" in image
    assert ":" in image
    assert not image.endswith(":latest")
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)


def test_final_stage_runs_as_an_unprivileged_user_without_build_tools() -> None:
    """USER is numeric non-root and comes after every RUN; nothing is installed there."""
    final = _final_stage()
    users = [args for ins, args in final if ins == "USER"]
    assert users
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) >= 1000
    last_user = max(i for i, (ins, _) in enumerate(final) if ins == "USER")
    assert all(ins != "RUN" for ins, _ in final[last_user:])
    runs = " ".join(args for ins, args in final if ins == "RUN")
    for tool in ("apt-get", "pip ", "gcc", "build-essential", "curl", "wget"):
        assert tool not in runs, tool
    copies = [args for ins, args in final if ins == "COPY"]
    assert copies == ["--from=build /opt/tokenproxy /opt/tokenproxy"]


def test_dockerfile_follows_hadolint_rules() -> None:
    """DL3020 COPY not ADD, DL3042 pip without cache, DL3025 exec form, DL3000 abs WORKDIR."""
    steps = _dockerfile()
    assert all(ins != "ADD" for ins, _ in steps)
    for ins, args in steps:
        if ins == "RUN" and "pip install" in args:
            assert "--no-cache-dir" in args
        if ins in {"CMD", "ENTRYPOINT"}:
            assert args.startswith("["), f"{ins} must use the exec form"
        if ins == "WORKDIR":
            assert args.startswith("/")


def test_image_installs_the_postgres_extra() -> None:
    """The image can open a postgresql:// vault: its pip install names the postgres extra."""
    installs = [args for ins, args in _dockerfile() if ins == "RUN" and "pip install" in args]
    assert any('".[postgres]"' in args for args in installs)


def test_image_takes_secrets_from_mounted_files_and_checks_health_on_ops() -> None:
    """No secret values in ENV/ARG; key ring, clients and Stripe key are mounted paths."""
    final = _final_stage()
    env = " ".join(args for ins, args in final if ins == "ENV")
    assert "TOKENPROXY_KEYRING=/run/secrets/" in env
    assert "TOKENPROXY_CLIENTS=/run/secrets/" in env
    assert "STRIPE_API_KEY_FILE=/run/secrets/" in env
    assert not re.search(r"STRIPE_API_KEY=|PASSWORD|sk_live|sk_test", env)
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # nothing to write on a read-only root
    health = [args for ins, args in final if ins == "HEALTHCHECK"]
    assert len(health) == 1
    assert "127.0.0.1:9090/healthz" in health[0]
    assert "TOKENPROXY_OPS_LISTEN=0.0.0.0:9090" in env
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", "var", "tests"):
        assert path in ignored, f".dockerignore lacks {path} (keys and state live in var/)"


def _k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _one(kind: str) -> dict[str, Any]:
    found = [d for d in _k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == "tokenproxy"]
    assert len(found) == 1, kind
    return found[0]


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    """Every manifest passes strict schema validation (unknown fields are errors)."""
    docs = _k8s_docs()
    assert {d["kind"] for d in docs} >= {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "tokenproxy"
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_schema_validation_catches_a_misspelt_field() -> None:
    """The validator is not vacuous: a typo in a container field is refused."""
    deployment = _one("Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_deployment_is_locked_down_with_probes_on_the_ops_port() -> None:
    """Non-root, read-only root, no privilege escalation, ALL capabilities dropped, limits."""
    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for container in pod["initContainers"] + pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}
    (main,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    config = _one("ConfigMap")["data"]
    assert ports["ops"] == int(config["TOKENPROXY_OPS_LISTEN"].rsplit(":", 1)[1])
    assert ports["api"] == int(config["TOKENPROXY_LISTEN"].rsplit(":", 1)[1])
    assert ports["internal"] == int(config["TOKENPROXY_INTERNAL_LISTEN"].rsplit(":", 1)[1])
    # The ops listener speaks TLS too (TOKENPROXY_TLS_CERT_FILE covers every listener).
    probe = {"path": "/readyz", "port": "ops", "scheme": "HTTPS"}
    assert main["readinessProbe"]["httpGet"] == probe
    assert main["livenessProbe"]["httpGet"] == {**probe, "path": "/healthz"}
    assert main["startupProbe"]["httpGet"]["port"] == "ops"
    assert main["startupProbe"]["httpGet"]["scheme"] == "HTTPS"
    # The key ring reaches the proxy through a memory volume with mode 0600 (see the manifest).
    keyring_mount = next(m for m in main["volumeMounts"] if m["name"] == "keyring")
    assert config["TOKENPROXY_KEYRING"].startswith(keyring_mount["mountPath"] + "/")
    volume = next(v for v in pod["volumes"] if v["name"] == "keyring")
    assert volume["emptyDir"]["medium"] == "Memory"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert _one("Service")["spec"]["selector"].items() <= labels.items()
    assert _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_certificates_come_from_a_secret_mounted_whole() -> None:
    """The TLS files named in the ConfigMap lie in the tokenproxy-tls Secret's volume, mounted
    as a directory so a renewal reaches the running proxy."""
    pod = _one("Deployment")["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    mount = next(m for m in main["volumeMounts"] if m["name"] == "tls")
    assert "subPath" not in mount
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "tokenproxy-tls"
    assert "items" not in volume["secret"]
    config = _one("ConfigMap")["data"]
    secret = next(
        d
        for d in _k8s_docs()
        if d["kind"] == "Secret" and d["metadata"]["name"] == "tokenproxy-tls"
    )
    for setting, key in (
        ("TOKENPROXY_TLS_CERT_FILE", "tls.crt"),
        ("TOKENPROXY_TLS_KEY_FILE", "tls.key"),
        ("TOKENPROXY_TLS_CLIENT_CA_FILE", "ca.crt"),
    ):
        assert config[setting] == f"{mount['mountPath']}/{key}"
        assert key in secret["stringData"]


def test_autoscaler_and_disruption_budget_fit_together() -> None:
    """The HPA scales this Deployment and never below what the PDB keeps available."""
    hpa = _one("HorizontalPodAutoscaler")["spec"]
    pdb = _one("PodDisruptionBudget")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "tokenproxy",
    }
    assert hpa["minReplicas"] > pdb["minAvailable"]
    assert hpa["maxReplicas"] > hpa["minReplicas"]


def test_network_policy_admits_only_the_callers_and_reaches_only_partner_db_dns() -> None:
    """Ingress: checkout/billing/order on the API, Prometheus on ops; egress: 443, 5432, 53."""
    docs = [d for d in _k8s_docs() if d["kind"] == "NetworkPolicy"]
    deny = next(d for d in docs if d["metadata"]["name"] == "default-deny")
    assert deny["spec"]["podSelector"] == {}
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    policy = _one("NetworkPolicy")["spec"]
    by_port: dict[int, set[str]] = {}
    for rule in policy["ingress"]:
        namespaces = {
            peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for peer in rule["from"]
        }
        for port in rule["ports"]:
            by_port.setdefault(port["port"], set()).update(namespaces)
    assert by_port == {
        8080: {"checkout", "billing", "order"},
        8443: {"billing", "order"},
        9090: {"monitoring"},
    }
    egress_ports = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {("TCP", 443), ("TCP", 5432), ("UDP", 53), ("TCP", 53)}
    public = next(r for r in policy["egress"] if any("ipBlock" in t for t in r["to"]))
    assert "10.0.0.0/8" in public["to"][0]["ipBlock"]["except"]


def _settings_read() -> set[str]:
    source = (ROOT / "proxy" / "infra" / "settings.py").read_text()
    names = set(re.findall(r'"(TOKENPROXY_[A-Z_]+)"', source))
    names.update(f"{n}_FILE" for n in re.findall(r'_secret\(env, "([A-Z_]+)"\)', source))
    return names


def test_env_example_documents_every_setting_with_a_comment() -> None:
    """Each setting settings.py reads appears in deploy/env.example under a comment."""
    lines = (DEPLOY / "env.example").read_text().splitlines()
    settings = _settings_read()
    assert "TOKENPROXY_VAULT_URL" in settings
    for name in settings:
        index = next((i for i, line in enumerate(lines) if re.match(rf"#?\s*{name}=", line)), None)
        assert index is not None, f"{name} missing from deploy/env.example"
        assert lines[index - 1].startswith("#"), f"{name} has no comment above it"
    configmap = _one("ConfigMap")["data"]
    assert set(configmap) <= settings


def test_compose_stack_wires_proxy_database_prometheus_and_grafana() -> None:
    """Four services; Prometheus loads the rules; Grafana gets the dashboard provisioned."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"tokenproxy", "postgres", "prometheus", "grafana"} <= set(services)
    proxy = services["tokenproxy"]
    assert proxy["read_only"] is True
    assert proxy["cap_drop"] == ["ALL"]
    assert proxy["environment"]["TOKENPROXY_VAULT_URL"].startswith("postgresql://")
    assert proxy["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "stripe-api-key" in proxy["secrets"]

    def mounts(service: str) -> dict[Path, str]:
        out = {}
        for volume in services[service]["volumes"]:
            source, target = volume.split(":")[:2]
            out[(DEPLOY / source).resolve()] = target
        return out

    prometheus = mounts("prometheus")
    assert (
        prometheus[(DEPLOY / "prometheus" / "rules.yml").resolve()] == "/etc/prometheus/rules.yml"
    )
    config = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules.yml"]
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["tokenproxy:9090"]
    grafana = mounts("grafana")
    dashboards = grafana[(DEPLOY / "grafana").resolve()]
    provider = yaml.safe_load(
        (DEPLOY / "compose/grafana/provisioning/dashboards/tokenproxy.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == dashboards
    datasource = yaml.safe_load(
        (DEPLOY / "compose/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
