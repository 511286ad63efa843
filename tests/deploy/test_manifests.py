"""Dockerfile, Kubernetes manifests, compose file and env.example, checked statically.

No container engine runs here, so the Dockerfile is held to hadolint's main rules by
hand; the manifests are validated against the Kubernetes API schemas (bundled by
kubernetes-validate, offline) and then for what this service needs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.infra.settings import Settings
from tests.deploy.tools import DEPLOY

ROOT = DEPLOY.parent
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30.0"
# Placeholders for the Secrets, kept beside the manifests and never applied with them.
EXAMPLE = "secret.example.yaml"
EXAMPLES = (EXAMPLE, "tls-secret.example.yaml")


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
    """Two stages or more, every base pinned by digest (a tag moves), the default base slim."""
    steps = _dockerfile()
    froms = [args for ins, args in steps if ins == "FROM"]
    assert len(froms) >= 2
    base = next(args for ins, args in steps if ins == "ARG" and args.startswith("PYTHON_IMAGE="))
    image = base.split("=", 1)[1]
    assert "slim" in image
    assert re.fullmatch(r"python:[\w.-]+@sha256:[0-9a-f]{64}", image), image
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
    for tool in ("apt-get", "pip install", "gcc", "build-essential", "curl", "wget"):
        assert tool not in runs, tool
    copies = [args for ins, args in final if ins == "COPY"]
    assert copies == [
        "--from=build /usr/bin/tini-static /usr/bin/tini",
        "--from=build /opt/tokenproxy /opt/tokenproxy",
    ]


def test_final_stage_removes_the_base_images_pip_and_setuptools() -> None:
    """Nothing of the base's installer tooling (pip, setuptools, wheel, ensurepip) is left."""
    final = _final_stage()
    removed = " ".join(args for ins, args in final if ins == "RUN" and args.startswith("rm -rf"))
    for path in (
        "site-packages/pip ",
        "site-packages/setuptools ",
        "site-packages/pkg_resources ",
        "site-packages/wheel ",
        "/ensurepip ",
        "/usr/local/bin/pip ",
        "/usr/local/bin/pip3* ",
    ):
        assert path in removed + " ", path


def test_pid_1_is_an_init_that_forwards_sigterm() -> None:
    """tini (pinned, from the build stage) runs as PID 1 and execs the proxy, exec form."""
    steps = _dockerfile()
    (entrypoint,) = [args for ins, args in _final_stage() if ins == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["/usr/bin/tini", "--", "tokenproxy"]
    installs = " ".join(args for ins, args in steps if ins == "RUN" and "apt-get install" in args)
    assert re.search(r"\btini=[0-9][\w.+~-]*", installs)
    assert ("STOPSIGNAL", "SIGTERM") in _final_stage()


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


_PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def _lock(name: str) -> dict[str, str]:
    """A `make lock` file: package name -> its exact version; any other requirement fails."""
    pins: dict[str, str] = {}
    for line in (DEPLOY / "docker" / name).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _PIN_RE.match(line)
        assert match, f"{name}: not an exact pin: {line}"
        pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_image_installs_only_exact_pins_including_the_postgres_and_kms_extras() -> None:
    """Every install is from a lock of exact pins (the whole tree, --no-deps), postgres and kms."""
    steps = _dockerfile()
    installs = [args for ins, args in steps if ins == "RUN" and "pip" in args and "install" in args]
    assert any("--no-deps" in a and "-r requirements.lock" in a for a in installs)
    assert any("--no-deps" in a and "-r build-requirements.lock" in a for a in installs)
    # The project's own wheel is built from the copied source, with no index access.
    assert any("--no-build-isolation" in a for ins, a in steps if ins == "RUN")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    wanted = _requirement_names(
        project["dependencies"]
        + project["optional-dependencies"]["postgres"]
        + project["optional-dependencies"]["kms"]
    )
    lock = _lock("requirements.lock")
    assert {"asyncpg", "boto3"} <= wanted <= set(lock)
    build = _lock("build-requirements.lock")
    assert _requirement_names(pyproject["build-system"]["requires"]) == set(build)
    copied = " ".join(args for ins, args in steps if ins == "COPY")
    assert "deploy/docker/requirements.lock" in copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "!deploy/docker/*.lock" in ignored[ignored.index("deploy") :]


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
    for path in sorted([*K8S.glob("*.yaml"), *(K8S / "jobs").glob("*.yaml")]):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _job(name: str) -> dict[str, Any]:
    found = [d for d in _k8s_docs() if d["kind"] == "Job" and d["metadata"]["name"] == name]
    assert len(found) == 1, name
    return found[0]


def _applied_docs() -> list[dict[str, Any]]:
    """The documents `kubectl apply -k deploy/k8s` applies: the kustomization's resources."""
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    docs = []
    for name in listed:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
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
        "Job",
        "Role",
        "RoleBinding",
    }
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "tokenproxy"
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name not in {"kustomization.yaml", *EXAMPLES}
    )


def test_apply_k_never_applies_the_example_secret() -> None:
    """`kubectl apply -k deploy/k8s` holds no Secret: placeholders never overwrite real ones."""
    applied = _applied_docs()
    assert {d["kind"] for d in applied} >= {"Deployment", "ConfigMap", "NetworkPolicy"}
    assert all(d["kind"] != "Secret" for d in applied)
    example = [d for d in yaml.safe_load_all((K8S / EXAMPLE).read_text()) if d]
    assert example
    assert {d["kind"] for d in example} == {"Secret"}


def test_kubectl_kustomize_renders_no_secret() -> None:
    """What kubectl itself renders from deploy/k8s holds no Secret (skipped without kubectl)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in _applied_docs()
    )
    assert all(d["kind"] != "Secret" for d in rendered)


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
    assert "initContainers" not in pod
    for container in pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}
    (main,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    config = {
        **_one("ConfigMap")["data"],
        **{e["name"]: e["value"] for e in main.get("env", [])},
    }
    assert ports["ops"] == int(config["TOKENPROXY_OPS_LISTEN"].rsplit(":", 1)[1])
    assert ports["api"] == int(config["TOKENPROXY_LISTEN"].rsplit(":", 1)[1])
    assert ports["internal"] == int(config["TOKENPROXY_INTERNAL_LISTEN"].rsplit(":", 1)[1])
    # The ops listener speaks TLS too (TOKENPROXY_TLS_CERT_FILE covers every listener).
    probe = {"path": "/readyz", "port": "ops", "scheme": "HTTPS"}
    assert main["readinessProbe"]["httpGet"] == probe
    assert main["livenessProbe"]["httpGet"] == {**probe, "path": "/healthz"}
    assert main["startupProbe"]["httpGet"]["port"] == "ops"
    assert main["startupProbe"]["httpGet"]["scheme"] == "HTTPS"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert _one("Service")["spec"]["selector"].items() <= labels.items()
    assert _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_key_ring_is_the_secret_volume_itself_so_rotations_reach_running_pods() -> None:
    """The ring is read from its Secret's volume, mounted whole (kubelet updates it in place)."""
    pod = _one("Deployment")["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    config = _one("ConfigMap")["data"]
    keyring_mount = next(m for m in main["volumeMounts"] if m["name"] == "keyring")
    # kubelet never updates a subPath mount: the rotation would not arrive.
    assert all("subPath" not in m and "subPathExpr" not in m for m in main["volumeMounts"])
    assert config["TOKENPROXY_KEYRING"] == keyring_mount["mountPath"] + "/keyring.json"
    volume = next(v for v in pod["volumes"] if v["name"] == "keyring")
    assert volume["secret"]["secretName"] == "tokenproxy-keyring"
    assert volume["secret"]["items"] == [{"key": "keyring.json", "path": "keyring.json"}]
    # The layout the ring accepts (vault.keys.ring._secret_volume_file): root-owned,
    # group fsGroup, which must be the process's own group, read-only.
    context = pod["securityContext"]
    assert context["fsGroup"] == context["runAsGroup"] == 10001
    assert volume["secret"]["defaultMode"] & ~0o440 == 0
    # Only the rotation Job may write the ring's Secret, and only that one.
    role = next(d for d in _k8s_docs() if d["kind"] == "Role")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["tokenproxy-keyring"],
            "verbs": ["get", "patch"],
        }
    ]


def test_certificates_come_from_a_secret_mounted_whole() -> None:
    """The TLS files the Deployment names lie in the tokenproxy-tls Secret's volume, mounted
    as a directory so a renewal reaches the running proxy."""
    pod = _one("Deployment")["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    mount = next(m for m in main["volumeMounts"] if m["name"] == "tls")
    assert "subPath" not in mount
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "tokenproxy-tls"
    assert "items" not in volume["secret"]
    config = {e["name"]: e["value"] for e in main["env"]}
    secret = next(
        d
        for d in yaml.safe_load_all((K8S / "tls-secret.example.yaml").read_text())
        if d and d["kind"] == "Secret" and d["metadata"]["name"] == "tokenproxy-tls"
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
    # A drain evicts one pod at a time however far the HPA scaled out.
    assert pdb == {**pdb, "maxUnavailable": 1}
    assert "minAvailable" not in pdb
    assert hpa["minReplicas"] > pdb["maxUnavailable"]
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    # The HPA owns the count: an apply must not reset a scale-out.
    assert "replicas" not in _one("Deployment")["spec"]


def test_pods_spread_across_zones_and_nodes() -> None:
    """A zone outage takes at most its share: zone spread is enforced, node spread preferred."""
    pod = _one("Deployment")["spec"]["template"]["spec"]
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    zone = spread["topology.kubernetes.io/zone"]
    assert zone["whenUnsatisfiable"] == "DoNotSchedule"
    assert zone["maxSkew"] == 1
    assert spread["kubernetes.io/hostname"]["maxSkew"] == 1
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    for constraint in spread.values():
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()


def test_shutdown_grace_outlasts_a_partner_call_and_fits_in_the_pod_grace() -> None:
    """The proxy accepts the shipped grace, and preStop + grace < terminationGracePeriod."""
    config = _one("ConfigMap")["data"]
    pod = _one("Deployment")["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    timing = {k: v for k, v in config.items() if "TIMEOUT" in k or "RETR" in k or "GRACE" in k}
    settings = Settings.from_env({**timing, "TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1"})
    grace = float(config["TOKENPROXY_SHUTDOWN_GRACE"])
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert settings.shutdown_grace == grace
    assert settings.min_shutdown_grace <= grace
    assert float(pre_stop[1]) + grace < pod["terminationGracePeriodSeconds"]


def test_migrations_run_as_a_job_with_their_own_timeout_never_at_pod_start() -> None:
    """The Deployment does not migrate; the migrate Job does, with a long statement timeout."""
    config = _one("ConfigMap")["data"]
    assert config["TOKENPROXY_MIGRATE_ON_START"] == "false"
    job = _job("tokenproxy-migrate")
    assert job["spec"]["activeDeadlineSeconds"] >= 600
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["migrate"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert float(env["TOKENPROXY_DB_TIMEOUT"]) > float(config.get("TOKENPROXY_DB_TIMEOUT", "5"))
    assert float(env["TOKENPROXY_DB_TIMEOUT"]) < job["spec"]["activeDeadlineSeconds"]
    assert container["envFrom"] == [{"configMapRef": {"name": "tokenproxy"}}]


def _same_image_and_lockdown(pod: dict[str, Any]) -> None:
    deployment_image = _one("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in pod.get("initContainers", []) + pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        if container["image"].startswith("ghcr.io/casall/tokenproxy"):
            assert container["image"] == deployment_image
    labels = pod.get("labels", {})
    assert labels.get("app.kubernetes.io/name") != "tokenproxy"


@pytest.mark.parametrize("name", ["init", "rotate", "retire"])
def test_key_ring_jobs_change_a_private_copy_and_patch_only_the_ring_secret(name: str) -> None:
    """Ring changes run in the cluster: a memory copy, the CLI, a Secret patch; no laptop."""
    job = _job(f"tokenproxy-keys-{name}")
    template = job["spec"]["template"]
    pod = template["spec"]
    _same_image_and_lockdown(pod)
    # Not selected by the Service, the PDB or the serving pods' policy.
    assert template["metadata"]["labels"]["app.kubernetes.io/name"] == "tokenproxy-admin"
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "keys"
    # A failed publish is retried in the same pod, so the memory volume survives.
    assert pod["restartPolicy"] == "OnFailure"
    assert pod["serviceAccountName"] == "tokenproxy-keys"
    (change,) = pod["initContainers"]
    (publish,) = pod["containers"]
    script = change["command"][2]
    assert f"tokenproxy keys {name}" in script
    env = {e["name"]: e.get("value") for e in change["env"]}
    assert env["TOKENPROXY_KEYRING"] == "/work/keyring.json"
    work = next(v for v in pod["volumes"] if v["name"] == "work")
    assert work["emptyDir"]["medium"] == "Memory"
    # Pinned by digest, like the image's base: this container holds an API token.
    assert re.search(r"@sha256:[0-9a-f]{64}$", publish["image"])
    assert publish["args"] == [
        "patch",
        "secret",
        "tokenproxy-keyring",
        "--type=merge",
        "--patch-file=/work/patch.json",
    ]
    # Only the publish step holds an API token.
    mounts = {m["mountPath"] for m in publish["volumeMounts"]}
    assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts
    assert all(
        not m["mountPath"].startswith("/var/run/secrets/kubernetes.io")
        for m in change["volumeMounts"]
    )
    if name != "init":
        assert "install -m 0600 /run/secrets/tokenproxy-keyring/keyring.json" in script


def test_rewrap_job_reads_the_ring_from_its_secret() -> None:
    """`keys rewrap` runs in the cluster with the ring as the serving pods see it."""
    pod = _job("tokenproxy-keys-rewrap")["spec"]["template"]["spec"]
    _same_image_and_lockdown(pod)
    (container,) = pod["containers"]
    assert container["args"] == ["keys", "rewrap"]
    volume = next(v for v in pod["volumes"] if v["name"] == "keyring")
    assert volume["secret"]["secretName"] == "tokenproxy-keyring"


def test_network_policy_admits_only_the_callers_and_reaches_only_partner_db_dns() -> None:
    """Ingress: the callers and the ingress controller on the API, Prometheus on ops; egress:
    the database (in the cluster or private) and DNS."""
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
        8080: {"checkout", "ingress-nginx"},
        8443: {"billing", "order"},
        9090: {"monitoring"},
    }
    # From the ingress namespace only the controller's pods, never every pod there.
    ingress_peers = [
        peer
        for rule in policy["ingress"]
        for peer in rule["from"]
        if peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        == "ingress-nginx"
    ]
    assert [p["podSelector"]["matchLabels"] for p in ingress_peers] == [
        {"app.kubernetes.io/name": "ingress-nginx"}
    ]
    # The ingress is the one peer whose forwarding header the proxy believes.
    trusted = _one("ConfigMap")["data"]["TOKENPROXY_TRUSTED_PROXIES"].split(",")
    assert trusted
    assert all(n.strip() not in {"0.0.0.0/0", "::/0"} for n in trusted)
    egress_ports = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {("TCP", 5432), ("UDP", 53), ("TCP", 53)}
    # A managed PostgreSQL at a private address is reachable, not only an in-cluster one.
    (database,) = [r for r in policy["egress"] if r["ports"][0]["port"] == 5432]
    blocks = {t["ipBlock"]["cidr"] for t in database["to"] if "ipBlock" in t}
    assert blocks == {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}


def _https_egress() -> dict[str, Any]:
    (policy,) = [
        d
        for d in _applied_docs()
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "tokenproxy-egress-https"
    ]
    return policy


def test_https_egress_reaches_public_and_private_443_but_never_link_local() -> None:
    """Partner and public KMS on 443; a private KMS endpoint too; instance metadata never."""
    policy = _https_egress()
    pods = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pods.items()
    assert policy["spec"]["policyTypes"] == ["Egress"]
    rules = policy["spec"]["egress"]
    assert {(p["protocol"], p["port"]) for r in rules for p in r["ports"]} == {("TCP", 443)}
    public = next(
        t["ipBlock"] for r in rules for t in r["to"] if t["ipBlock"]["cidr"] == "0.0.0.0/0"
    )
    assert {"10.0.0.0/8", "169.254.0.0/16"} <= set(public["except"])
    private = {t["ipBlock"]["cidr"] for r in rules for t in r["to"]} - {"0.0.0.0/0"}
    assert private == {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}
    assert all("169.254" not in cidr for cidr in private)


FQDN = ROOT / "deploy" / "k8s-egress-fqdn"


def test_fqdn_overlay_allows_https_only_to_the_partner_and_kms_by_name() -> None:
    """The Cilium overlay drops the broad 443 policy and names api.stripe.com and AWS KMS."""
    kustomization = yaml.safe_load((FQDN / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../k8s", "cilium-fqdn.yaml"]
    (patch,) = kustomization["patches"]
    deleted = yaml.safe_load(patch["patch"])
    assert deleted["$patch"] == "delete"
    assert deleted["metadata"]["name"] == _https_egress()["metadata"]["name"]
    policy = yaml.safe_load((FQDN / "cilium-fqdn.yaml").read_text())
    pods = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["endpointSelector"]["matchLabels"].items() <= pods.items()
    by_name = next(r for r in policy["spec"]["egress"] if "toFQDNs" in r)
    names = {n.get("matchName") or n.get("matchPattern") for n in by_name["toFQDNs"]}
    assert {"api.stripe.com", "kms.*.amazonaws.com"} <= names
    assert by_name["toPorts"] == [{"ports": [{"port": "443", "protocol": "TCP"}]}]
    # toFQDNs only works when DNS goes through Cilium's proxy.
    dns = next(r for r in policy["spec"]["egress"] if "toEndpoints" in r)
    assert dns["toPorts"][0]["rules"]["dns"]


def test_kubectl_renders_the_fqdn_overlay_without_the_broad_policy() -> None:
    """kubectl kustomize deploy/k8s-egress-fqdn: base + Cilium policy, minus the 443 policy."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(FQDN)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    rendered = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out.stdout) if d}
    base = {(d["kind"], d["metadata"]["name"]) for d in _applied_docs()}
    assert rendered == base - {("NetworkPolicy", "tokenproxy-egress-https")} | {
        ("CiliumNetworkPolicy", "tokenproxy-egress-fqdn")
    }


def test_reconcile_cronjob_runs_nightly_locked_down_with_its_own_egress() -> None:
    """The nightly reconcile: one run at a time, --fix, hardened like the Deployment, and a
    policy that lets its pods reach only the partner, the database and DNS."""
    docs = _k8s_docs()
    [cronjob] = [d for d in docs if d["kind"] == "CronJob"]
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    minute, hour, *rest = spec["schedule"].split()
    assert minute.isdigit()
    assert hour.isdigit()
    assert rest == ["*", "*", "*"]  # every day
    pod = spec["jobTemplate"]["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["args"][:2] == ["reconcile", "--fix"]
    assert "--rate" in container["args"]
    deployment = _one("Deployment")["spec"]["template"]["spec"]
    assert container["image"] == deployment["containers"][0]["image"]
    assert pod["spec"]["securityContext"] == deployment["securityContext"]
    hardened = container["securityContext"]
    assert hardened["readOnlyRootFilesystem"] is True
    assert hardened["allowPrivilegeEscalation"] is False
    assert hardened["capabilities"]["drop"] == ["ALL"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    label = pod["metadata"]["labels"]["app.kubernetes.io/name"]
    [policy] = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy"
        and d["spec"]["podSelector"].get("matchLabels") == {"app.kubernetes.io/name": label}
    ]
    assert policy["spec"]["ingress"] == []
    egress = {(p["protocol"], p["port"]) for r in policy["spec"]["egress"] for p in r["ports"]}
    assert egress == {("TCP", 443), ("TCP", 5432), ("UDP", 53), ("TCP", 53)}


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


# PostgreSQL's default max_connections (100) less its superuser_reserved_connections (3).
POSTGRES_CONNECTIONS = 100 - 3


def test_database_connections_fit_postgresql_defaults_at_full_scale() -> None:
    """(HPA maximum + surge) x pool, plus every Job's pool, stays within max_connections."""
    config = _one("ConfigMap")["data"]
    deployment = _one("Deployment")["spec"]
    hpa = _one("HorizontalPodAutoscaler")["spec"]
    surge = deployment["strategy"]["rollingUpdate"]["maxSurge"]
    assert isinstance(surge, int)
    pods = hpa["maxReplicas"] + surge
    serving = pods * int(config["TOKENPROXY_DB_POOL_MAX"])
    jobs = 0
    for doc in _k8s_docs():
        if doc["kind"] != "Job":
            continue
        pod = doc["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            if container["image"].startswith("ghcr.io/casall/tokenproxy"):
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                jobs = max(jobs, int(env["TOKENPROXY_DB_POOL_MAX"]))
    # A migration or ring change may overlap a rewrap: two Jobs at once.
    assert serving + 2 * jobs <= POSTGRES_CONNECTIONS


def _pods() -> list[tuple[str, dict[str, Any]]]:
    pods = [("Deployment", _one("Deployment")["spec"]["template"]["spec"])]
    pods += [
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in _k8s_docs()
        if d["kind"] == "Job"
    ]
    pods += [
        (d["metadata"]["name"], d["spec"]["jobTemplate"]["spec"]["template"]["spec"])
        for d in _k8s_docs()
        if d["kind"] == "CronJob"
    ]
    return pods


def test_every_file_a_container_is_told_to_read_is_mounted() -> None:
    """Key ring and _FILE settings of every pod, Job and CronJob lie in a volume holding them."""
    config = _one("ConfigMap")["data"]
    checked = 0
    for name, pod in _pods():
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod.get("initContainers", []) + pod["containers"]:
            if not container["image"].startswith("ghcr.io/casall/tokenproxy"):
                continue
            env = dict(config)
            env.update({e["name"]: e["value"] for e in container.get("env", [])})
            files = {
                k: v for k, v in env.items() if (k.endswith("_FILE") or k == "TOKENPROXY_KEYRING")
            }
            for setting, path in files.items():
                if not path or path.startswith("/work/"):
                    continue  # switched off, or written by the Job itself
                mount = next(
                    (m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")),
                    None,
                )
                assert mount is not None, f"{name}/{container['name']}: {setting}={path}"
                secret = volumes[mount["name"]].get("secret")
                if secret is not None and "items" in secret:
                    inside = path.removeprefix(mount["mountPath"] + "/")
                    assert inside in {i["path"] for i in secret["items"]}, f"{name}: {setting}"
                checked += 1
    assert checked >= 8


def test_operations_doc_shows_the_fqdn_policy_exactly_as_shipped() -> None:
    """The CiliumNetworkPolicy in docs/operations.md is the file the overlay applies."""
    text = (ROOT / "docs" / "operations.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    shipped = yaml.safe_load((FQDN / "cilium-fqdn.yaml").read_text())
    assert shipped in [yaml.safe_load(block) for block in blocks]
