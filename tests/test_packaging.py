"""Helm chart, kustomize manifests, Dockerfile and alert rules, checked offline.

The chart is linted and rendered with Helm's own engine (helm-python-sdk); every
rendered or plain manifest is validated against the Kubernetes schemas
(kubernetes-validate); probes, ports and env variables are checked against the
daemon's real endpoints and flags.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from leaderd.config import RUN_OPTIONS

helm = pytest.importorskip("helm_python", reason="chart extra not installed")
kv = pytest.importorskip("kubernetes_validate", reason="chart extra not installed")

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "leaderd"
K8S_VERSION = "1.30.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
ENDPOINTS = {"/healthz", "/readyz", "/status", "/metrics"}
FLAG_ENVS = {o.env for o in RUN_OPTIONS} | {"POD_NAME", "POD_NAMESPACE", "POD_IP"}

#: The one value every install must give: the image the user built and pushed.
IMAGE = {"leaderd": {"image": {"repository": "registry.example.com/leaderd"}}}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "readiness": {"mode": "readiness"},
    "label-events-native": {"mode": "label", "events": True, "leaderd": {"nativeSidecar": True}},
    "readiness-native": {"mode": "readiness", "leaderd": {"nativeSidecar": True}},
    "events-only": {"mode": "readiness", "events": True},
    "trial-redis-strategy": {
        "redis": {"deploy": True},
        "updateStrategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
        },
    },
    "app-health-priority": {
        "leaderd": {
            "priority": 5,
            "appHealth": {"url": "http://127.0.0.1:8080/healthz", "failures": 2},
            "preempt": True,
            "advertisePort": 8080,
        }
    },
    "functions-admin": {
        "redis": {"existingSecret": "redis-auth"},
        "functions": {
            "adminUrl": "redis://admin@redis:6379/0",
            "adminSecret": "redis-admin",
            "extraArgs": ["--redis-tls-ca", "/etc/ca.pem"],
        },
    },
    "no-functions-job": {"functions": {"loadJob": False}},
    "functions-cron": {"functions": {"reloadSchedule": "@hourly"}},
    "secret-monitoring": {
        "redis": {"existingSecret": "redis-auth"},
        "workload": {"port": 8080},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    },
}


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def render_files(values: dict[str, Any], image: bool = True) -> dict[str, str]:
    chart = helm.Chart.load(str(CHART))
    out: dict[str, str] = chart.render(merged(IMAGE, values) if image else values,
                                       name="demo", namespace="team", is_install=True)  # fmt: skip
    return out


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    docs = []
    for path, text in render_files(values).items():
        if path.endswith(".txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def mode(values: dict[str, Any]) -> str:
    return str(values.get("mode", "label"))  # label is the chart's default


def containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    spec = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def sidecar(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(c for c in containers(docs) if c["name"] == "leaderd")


def validate(doc: dict[str, Any]) -> None:
    if doc["kind"] in CRD_KINDS:
        assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["spec"]
        return
    kv.validate(doc, K8S_VERSION, strict=True)


def test_chart_lints_clean() -> None:
    for values in VALUE_SETS.values():
        report = helm.lint(str(CHART), merged(IMAGE, values), strict=True)
        errors = [m for m in report["messages"] if m["severity"] >= 2]
        assert not errors and not report["errors"], report


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rendered_chart_is_valid_kubernetes(name: str) -> None:
    docs = render(VALUE_SETS[name])
    assert docs
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_sidecar_matches_the_daemon(name: str) -> None:
    values = VALUE_SETS[name]
    docs = render(values)
    c = sidecar(docs)
    envs = {e["name"] for e in c["env"]}
    assert envs <= FLAG_ENVS, envs - FLAG_ENVS  # every variable is a real flag's
    port = next(p for p in c["ports"] if p["name"] == "leaderd-http")
    assert port["containerPort"] == 4040
    http_addr = next(e["value"] for e in c["env"] if e["name"] == "LEADERD_HTTP_ADDR")
    assert http_addr.endswith(":4040")
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] in ENDPOINTS and get["port"] == "leaderd-http"
    label_mode = mode(values) == "label"
    assert c["readinessProbe"]["httpGet"]["path"] == ("/healthz" if label_mode else "/readyz")
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert ("LEADERD_K8S_LABEL" in envs) == label_mode
    native = values.get("leaderd", {}).get("nativeSidecar", False)
    spec = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    in_init = any(x["name"] == "leaderd" for x in spec.get("initContainers", []))
    assert in_init == native and (c.get("restartPolicy") == "Always") == native
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
    assert not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["resources"]["requests"]


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rbac_only_when_needed(name: str) -> None:
    values = VALUE_SETS[name]
    docs = render(values)
    kinds = {d["kind"] for d in docs}
    needed = mode(values) == "label" or values.get("events", False)
    assert ({"ServiceAccount", "Role", "RoleBinding"} <= kinds) == needed
    assert not ({"ServiceAccount", "Role", "RoleBinding"} & kinds) or needed
    spec = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    if needed:
        role = next(d for d in docs if d["kind"] == "Role")
        verbs = {(r["resources"][0], v) for r in role["rules"] for v in r["verbs"]}
        assert (("pods", "patch") in verbs) == (mode(values) == "label")
        assert (("events", "create") in verbs) == values.get("events", False)
        assert spec["serviceAccountName"] == "demo-leaderd"
    else:
        assert spec["automountServiceAccountToken"] is False


def test_secret_is_mounted_as_a_file_and_monitoring_objects_render() -> None:
    docs = render(VALUE_SETS["secret-monitoring"])
    c = sidecar(docs)
    env = {e["name"]: e.get("value") for e in c["env"]}
    mount = c["volumeMounts"][0]["mountPath"]
    assert env["LEADERD_REDIS_PASSWORD_FILE"] == f"{mount}/password"
    assert not any("password" in str(e.get("value", "")).lower() and
                   e["name"] != "LEADERD_REDIS_PASSWORD_FILE" for e in c["env"])  # fmt: skip
    kinds = {d["kind"] for d in docs}
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds
    sm = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "leaderd-http"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"


def test_app_health_and_priority_reach_the_sidecar() -> None:
    env = {
        e["name"]: e.get("value") for e in sidecar(render(VALUE_SETS["app-health-priority"]))["env"]
    }
    assert env["LEADERD_APP_HEALTH_URL"] == "http://127.0.0.1:8080/healthz"
    assert env["LEADERD_APP_HEALTH_FAILURES"] == "2" and env["LEADERD_PRIORITY"] == "5"
    assert env["LEADERD_PREEMPT"] == "true" and env["LEADERD_PREEMPT_DELAY"] == "10s"
    names = [e["name"] for e in sidecar(render(VALUE_SETS["app-health-priority"]))["env"]]
    # Kubernetes expands $(POD_IP) only from a variable defined before it
    assert names.index("POD_IP") < names.index("LEADERD_ADVERTISE")
    assert env["LEADERD_ADVERTISE"] == "$(POD_IP):8080"
    default = {e["name"] for e in sidecar(render({}))["env"]}
    assert not default & {"LEADERD_APP_HEALTH_URL", "LEADERD_PRIORITY", "LEADERD_PREEMPT",
                          "LEADERD_ADVERTISE"}  # fmt: skip
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError):
        chart.validate_schema({"leaderd": {"appHealth": {"url": "ftp://x"}}})


def test_label_mode_service_selects_the_leader_label() -> None:
    docs = render({"mode": "label", "workload": {"port": 8080}})
    svc = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "demo-leaderd"
    )
    assert svc["spec"]["selector"]["leaderd.io/leader"] == "true"


def _desired_healthy(pdb: dict[str, Any], expected: int) -> int:
    """As pkg/controller/disruption does: maxUnavailable against the scale's replicas
    (a percentage rounds up), minAvailable as given (a percentage of pods, rounded up)."""
    spec = pdb["spec"]

    def scaled(value: int | str) -> int:
        if isinstance(value, str) and value.endswith("%"):
            return -(-int(value[:-1]) * expected // 100)
        return int(value)

    if "maxUnavailable" in spec:
        return max(0, expected - scaled(spec["maxUnavailable"]))
    return scaled(spec["minAvailable"])


def may_evict(pdbs: list[dict[str, Any]], replicas: int, ready: int, pod_ready: bool) -> bool:
    """Would the eviction API let one pod go? (No matching budget: yes. A not-Ready pod
    with unhealthyPodEvictionPolicy AlwaysAllow: yes. Else disruptionsAllowed > 0.)"""
    for pdb in pdbs:
        desired = _desired_healthy(pdb, replicas)
        policy = pdb["spec"].get("unhealthyPodEvictionPolicy", "IfHealthyBudget")
        if not pod_ready and (policy == "AlwaysAllow" or ready >= desired):
            continue
        if max(0, ready - desired) <= 0:
            return False
    return True


def _kustomize_overlay(overlay: str) -> list[dict[str, Any]]:
    """The overlay's own documents plus the base's (what `kubectl apply -k` would send)."""
    kust = yaml.safe_load((REPO / "deploy/overlays" / overlay / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for res in kust["resources"]:
        path = REPO / "deploy/overlays" / overlay / res
        files = [path] if path.is_file() else [
            path / f for f in yaml.safe_load((path / "kustomization.yaml").read_text())["resources"]
        ]  # fmt: skip
        for f in files:
            docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


@pytest.mark.parametrize("source", ["chart", "kustomize"])
def test_pod_disruption_budget_lets_the_leader_go_and_protects_label_mode(source: str) -> None:
    """3 replicas. Readiness mode: only the leader is Ready, and it can be evicted (a
    node drain never hangs). Label mode: all 3 are Ready; one may go, never two."""
    replicas = 3
    for kind in ("readiness", "label"):
        docs = render({"mode": kind}) if source == "chart" else _kustomize_overlay(kind)
        pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
        dep = next(d for d in docs if d["kind"] == "Deployment")
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        for pdb in pdbs:  # each budget selects the workload's pods
            assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), source
        if kind == "readiness":
            assert may_evict(pdbs, replicas, ready=1, pod_ready=True)  # the leader
            assert may_evict(pdbs, replicas, ready=1, pod_ready=False)  # a follower
        else:
            assert pdbs, f"{source}: label mode needs a budget"
            assert may_evict(pdbs, replicas, ready=3, pod_ready=True)
            assert not may_evict(pdbs, replicas, ready=2, pod_ready=True)  # one is down


def test_schema_rejects_bad_values() -> None:
    chart = helm.Chart.load(str(CHART))
    for bad in ({"mode": "both"}, {"redis": {"url": "http://x"}},
                {"leaderd": {"ttl": "ten"}, "redis": {"url": "redis://r"}}):  # fmt: skip
        with pytest.raises(helm.HelmError):
            chart.validate_schema(bad)


@pytest.mark.parametrize(
    "typo",
    [{"replicasCount": 2}, {"redis": {"ulr": "redis://r"}}, {"leaderd": {"imagee": {}}},
     {"leaderd": {"appHealth": {"intreval": "1s"}}}, {"workload": {"image": {"repo": "x"}}},
     {"updateStrategy": {"rollingUpdate": {"maxSurgee": 1}}}, {"service": {"prot": 80}}],
)  # fmt: skip
def test_schema_rejects_unknown_keys_at_every_level(typo: dict[str, Any]) -> None:
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError):
        chart.validate_schema(merged(IMAGE, typo))


def test_an_install_without_an_image_says_how_to_build_and_push_one() -> None:
    with pytest.raises(helm.HelmError, match="make image"):
        render_files({}, image=False)


def test_defaults_are_label_mode_with_its_rbac_and_a_settable_update_strategy() -> None:
    docs = render({})
    kinds = {d["kind"] for d in docs}
    assert {"ServiceAccount", "Role", "RoleBinding", "PodDisruptionBudget"} <= kinds
    assert "LEADERD_K8S_LABEL" in {e["name"] for e in sidecar(docs)["env"]}
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    docs = render({"updateStrategy": strategy})
    assert next(d for d in docs if d["kind"] == "Deployment")["spec"]["strategy"] == strategy
    assert "strategy" not in next(d for d in render({}) if d["kind"] == "Deployment")["spec"]


def test_the_trial_redis_is_optional_and_used_when_deployed() -> None:
    assert not [d for d in render({}) if "redis" in d["metadata"]["name"]]
    docs = render({"redis": {"deploy": True}})
    redis_docs = {d["kind"]: d for d in docs if d["metadata"]["name"] == "demo-leaderd-redis"}
    assert set(redis_docs) == {"Deployment", "Service"}
    env = {e["name"]: e.get("value") for e in sidecar(docs)["env"]}
    assert env["LEADERD_REDIS_URL"] == "redis://demo-leaderd-redis:6379/0"
    # the workload's Service and budget never select the Redis pod
    pod_labels = redis_docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for doc in docs:
        if doc["kind"] in ("Service", "PodDisruptionBudget") and doc is not redis_docs["Service"]:
            selector = doc["spec"].get("selector", {})
            selector = selector.get("matchLabels", selector)
            assert not set(selector.items()) <= set(pod_labels.items())


def _functions_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = [d for d in docs if d["kind"] == "Job"]
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["args"][:2] == ["functions", "load"]
    assert {e["name"] for e in container["env"]} <= FLAG_ENVS
    assert container["image"] == sidecar(docs)["image"]
    return job


def test_a_job_loads_the_functions_library_as_the_admin() -> None:
    """The admin step runs on install and on every upgrade (a Job per revision), with
    the admin's credentials where given, else the candidates' Redis settings."""
    job = _functions_job(render({}))
    assert job["metadata"]["name"] == "demo-leaderd-functions-1"
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env == {"LEADERD_REDIS_URL": "redis://redis:6379/0"}
    docs = render(VALUE_SETS["functions-admin"])
    spec = _functions_job(docs)["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env == {
        "LEADERD_REDIS_URL": "redis://admin@redis:6379/0",
        "LEADERD_REDIS_PASSWORD_FILE": "/run/secrets/leaderd-admin/password",
    }
    assert spec["containers"][0]["args"][2:] == ["--redis-tls-ca", "/etc/ca.pem"]
    assert spec["volumes"][0]["secret"]["secretName"] == "redis-admin"
    # Without an admin Secret, the candidates' one (a Redis with one all-powerful user).
    spec = _functions_job(render(VALUE_SETS["secret-monitoring"]))["spec"]["template"]["spec"]
    assert spec["volumes"][0]["secret"]["secretName"] == "redis-auth"
    trial = _functions_job(render({"redis": {"deploy": True}}))["spec"]["template"]["spec"]
    assert trial["containers"][0]["env"][0]["value"] == "redis://demo-leaderd-redis:6379/0"
    assert not [d for d in render(VALUE_SETS["no-functions-job"]) if d["kind"] == "Job"]
    # The admin's password without the admin's user name would be a mix-up: refused.
    with pytest.raises(helm.HelmError, match="adminUrl"):
        render_files({"functions": {"adminSecret": "redis-admin"}})
    # On a schedule too, when asked: the same pod, as a CronJob.
    assert not [d for d in render({}) if d["kind"] == "CronJob"]
    docs = render({"functions": {"reloadSchedule": "*/5 * * * *"}})
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    validate(cron)
    assert cron["spec"]["schedule"] == "*/5 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    assert pod == _functions_job(docs)["spec"]["template"]
    with pytest.raises(helm.HelmError):
        render_files({"functions": {"reloadSchedule": "every 5 minutes please"}})
    # Scheduled like the workload's pods.
    placed = render({"nodeSelector": {"pool": "infra"}, "tolerations": [{"operator": "Exists"}]})
    spec = _functions_job(placed)["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"pool": "infra"} and spec["tolerations"]


def test_readiness_mode_without_a_port_says_how_to_reach_the_leader() -> None:
    notes = next(t for p, t in render_files({"mode": "readiness"}).items() if p.endswith(".txt"))
    assert "workload.port" in notes
    notes = next(t for p, t in render_files({}).items() if p.endswith(".txt"))
    assert "workload.port is 0" not in notes


def _kustomize_docs() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted((REPO / "deploy").rglob("*.yaml")):
        if path.name in ("kustomization.yaml", "leaderd-rules.yaml", "leaderd-rules.test.yaml"):
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path, doc))
    return out


def test_deploy_manifests_are_valid_kubernetes() -> None:
    docs = _kustomize_docs()
    assert len(docs) >= 8
    for path, doc in docs:
        if path.name == "label-mode.yaml":
            continue  # a strategic-merge patch, not a whole object
        try:
            validate(doc)
        except Exception as exc:
            raise AssertionError(f"{path}: {exc}") from exc


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("overlay", ["readiness", "label"])
def test_kustomize_overlays_build_and_validate(overlay: str) -> None:  # pragma: no cover
    out = subprocess.run(["kubectl", "kustomize", str(REPO / "deploy" / "overlays" / overlay)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    for doc in yaml.safe_load_all(out):
        if doc:
            validate(doc)


def test_deploy_sidecar_matches_the_daemon() -> None:
    dep = next(d for p, d in _kustomize_docs() if p.name == "deployment.yaml")
    c = next(x for x in dep["spec"]["template"]["spec"]["containers"] if x["name"] == "leaderd")
    assert {e["name"] for e in c["env"]} <= FLAG_ENVS
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    patch = next(d for p, d in _kustomize_docs() if p.name == "label-mode.yaml")
    pc = patch["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in pc["env"]} <= FLAG_ENVS
    assert pc["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_deploy_runs_the_functions_load_step() -> None:
    (job,) = [d for p, d in _kustomize_docs() if d["kind"] == "Job"]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["functions", "load"] and c["image"] == "leaderd:dev"
    assert {e["name"] for e in c["env"]} <= FLAG_ENVS
    base = yaml.safe_load((REPO / "deploy" / "base" / "kustomization.yaml").read_text())
    assert "functions-job.yaml" in base["resources"]


def test_dockerfile_final_stage_runs_as_non_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    final = re.split(r"(?m)^FROM ", text)[-1]
    users = re.findall(r"(?m)^USER\s+(\S+)", final)
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "leaderd"]' in final
    assert "EXPOSE 4040" in final
    assert not re.search(r"(?m)^RUN .*(gcc|build-essential)", final)
    assert "--no-cache-dir" in final


def _rules(doc: dict[str, Any]) -> list[tuple[str, str, str | None, dict[str, str]]]:
    groups = doc["spec"]["groups"] if "spec" in doc else doc["groups"]
    return [(r["alert"], r["expr"], r.get("for"), r["labels"]) for g in groups for r in g["rules"]]


def test_alert_rules_are_the_same_everywhere() -> None:
    canonical = yaml.safe_load((REPO / "deploy/monitoring/leaderd-rules.yaml").read_text())
    chart_copy = yaml.safe_load((CHART / "files/leaderd-rules.yaml").read_text())
    operator = yaml.safe_load((REPO / "deploy/monitoring/prometheusrule.yaml").read_text())
    assert chart_copy == canonical
    assert _rules(operator) == _rules(canonical)
    metric_names = set(re.findall(r"leaderd_[a-z0-9_]+", str(_rules(canonical))))
    assert metric_names <= {"leaderd_is_leader", "leaderd_leadership_transitions_total",
                            "leaderd_refresh_total"}  # fmt: skip


def test_grafana_dashboard_uses_real_metrics() -> None:
    import json

    dash = json.loads((REPO / "deploy/monitoring/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set(re.findall(r"leaderd_[a-z0-9_]+", " ".join(exprs)))
    real = {"leaderd_is_leader", "leaderd_leadership_transitions_total",
            "leaderd_refresh_total", "leaderd_refresh_duration_seconds_bucket",
            "leaderd_lease_remaining_seconds", "leaderd_acquire_attempts_total",
            "leaderd_k8s_errors_total", "leaderd_fencing_token"}  # fmt: skip
    assert used and used <= real


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    mon = REPO / "deploy" / "monitoring"
    subprocess.run(["promtool", "check", "rules", "leaderd-rules.yaml"], cwd=mon, check=True,
                   capture_output=True)  # fmt: skip
    out = subprocess.run(["promtool", "test", "rules", "leaderd-rules.test.yaml"], cwd=mon,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
