"""The deploy files, checked by the tools that consume them, offline.

- ``deploy/prometheus/alerts.yml``: ``promtool check rules`` and its unit tests
  (``alerts.test.yml``, ``promtool test rules``); promtool missing fails loudly (Debian's
  ``prometheus`` package; ``scripts/test`` installs it).
- Every metric the rules, the Grafana dashboard and the HPA name is one a real server
  exports at ``/metrics`` (families from its ``# TYPE`` lines, with the sample suffixes of
  each type), and the label values they match on (close reasons, problem types, backend
  commands) are ones pushsvc uses.
- ``deploy/kubernetes/``: every manifest validated against the Kubernetes schemas by
  ``kubernetes-validate --strict``; probes, grace period and selectors consistent.
- ``deploy/systemd/pushsvc.service``: ``systemd-analyze verify`` (with ExecStart pointed at
  this checkout's ``pushsvc``), else the required keys; its stop timeout above the drain.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from pushsvc import exceptions
from pushsvc.metrics import BACKEND_COMMANDS
from pushsvc.protocol.codes import CLOSE_CODES
from tests.fixtures_server import make_server

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
KUBERNETES = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "pushsvc.service"
K8S_VERSION = "1.37.0"
# series Prometheus itself records for a scrape target (not exported by pushsvc)
PROMETHEUS_SERIES = {"up"}
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
}


def tool(name: str, package: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/local/bin/{name}") if Path(p).exists()), None
    )
    if found is None:
        pytest.fail(f"{name} is not installed: `apt-get install {package}` (scripts/test does it)")
    return found


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "pushsvc.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def manifests() -> dict[str, dict[str, Any]]:
    """kind -> the manifest, for every file kustomization.yaml lists."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    found = {}
    for name in kustomization["resources"]:
        doc = yaml.safe_load((KUBERNETES / name).read_text())
        found[doc["kind"]] = doc
    return found


# --- Prometheus ------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = tool("promtool", "prometheus")
    check = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


def test_every_alert_is_unit_tested_firing_and_documented() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    firing = {
        case["alertname"] for t in tests for case in t["alert_rule_test"] if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for t in tests
        for case in t["alert_rule_test"]
        if not case.get("exp_alerts")
    }
    names = {rule["alert"] for rule in rules()}
    assert names == firing, "every alert has a test where it fires"
    assert names == quiet, "and one where it does not"
    howto = (ROOT / "docs" / "how-to" / "alerts.md").read_text()
    for name in names:
        assert f"### {name}" in howto, name


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """The sample names a real server exports at /metrics, from its # TYPE lines."""
    server = make_server("memory://").start()
    try:
        text = httpx.get(server.url + "/metrics", timeout=10).text
    finally:
        server.stop()
    names: set[str] = set()
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        if kind == "counter":  # prometheus-client names the family with or without _total
            family = family.removesuffix("_total")
        names.update(family + suffix for suffix in SUFFIXES.get(kind, ("",)))
    assert "pushsvc_connections_open" in names  # the page parsed as expected
    return names


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(pushsvc_[a-z0-9_]+)", expr)) | {
        n for n in PROMETHEUS_SERIES if re.search(rf"\b{n}\{{", expr)
    }


def test_every_metric_the_rules_dashboard_and_hpa_name_is_exported(exported: set[str]) -> None:
    hpa = manifests()["HorizontalPodAutoscaler"]
    used = {
        "alerts.yml": set().union(*(_metric_names(r["expr"]) for r in rules())),
        "pushsvc.json": set().union(*map(_metric_names, dashboard_exprs())),
        "hpa.yaml": {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if "pods" in m},
    }
    for where, names in used.items():
        assert names, where
        unknown = names - exported - PROMETHEUS_SERIES
        assert not unknown, f"{where} names metrics /metrics does not export: {sorted(unknown)}"


def test_label_values_matched_by_the_rules_and_dashboard_are_pushsvc_s() -> None:
    exprs = [r["expr"] for r in rules()] + dashboard_exprs()
    reasons = {info.name for info in CLOSE_CODES.values()} | {"other"}
    problems = {
        cls.problem
        for cls in vars(exceptions).values()
        if isinstance(cls, type) and hasattr(cls, "problem")
    }
    allowed = {"reason": reasons, "problem": problems, "command": set(BACKEND_COMMANDS)}
    seen = set()
    for expr in exprs:
        for label, _, value in re.findall(r'\b(reason|problem|command)(=~|!=|=)"([^"]+)"', expr):
            for alternative in value.split("|"):
                assert alternative in allowed[label], f'{label}="{alternative}" in {expr}'
                seen.add(label)
    assert seen == set(allowed)


def test_dashboard_panels_have_queries_and_unique_ids() -> None:
    dash = json.loads((DEPLOY / "grafana" / "pushsvc.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in dash["panels"])
    for needed in ("transport", "Deliveries", "latency", "refused", "Backend"):
        assert needed.lower() in titles.lower(), needed
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]


# --- Kubernetes ------------------------------------------------------------------------------


def test_kubernetes_manifests_validate_against_the_schemas() -> None:
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    on_disk = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk, "kustomization.yaml lists every manifest"
    for name in listed:
        doc = yaml.safe_load((KUBERNETES / name).read_text())
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_is_strict_about_unknown_fields() -> None:
    deployment = manifests()["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbes"] = container.pop("readinessProbe")  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_deployment_probes_grace_period_and_selectors_fit_together() -> None:
    m = manifests()
    deployment, config = m["Deployment"], m["ConfigMap"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    drain = float(config["data"]["PUSHSVC_GRACEFUL_TIMEOUT"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
    assert refs == {config["metadata"]["name"], m["Secret"]["metadata"]["name"]}
    assert all(k.startswith(("PUSHSVC_", "FORWARDED_")) for k in config["data"])
    assert all(k.startswith("PUSHSVC_") for k in m["Secret"]["stringData"])
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = m[kind]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), kind
    hpa = m["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert any(x["type"] == "Pods" for x in hpa["metrics"])


# --- systemd ---------------------------------------------------------------------------------


def _unit_keys(text: str) -> dict[str, str]:
    keys = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            keys[key.strip()] = value.strip()
    return keys


def test_systemd_unit_restarts_drains_and_stops_after_the_graceful_timeout() -> None:
    keys = _unit_keys(UNIT.read_text())
    assert keys["Restart"] in ("on-failure", "always")
    assert int(keys["LimitNOFILE"]) >= 65536
    assert keys["KillSignal"] == "SIGTERM"
    graceful = re.search(r"--graceful-timeout[ =](\d+(?:\.\d+)?)", keys["ExecStart"])
    assert graceful, "ExecStart sets --graceful-timeout"
    stop = float(keys["TimeoutStopSec"].removesuffix("s"))
    assert stop > float(graceful[1])
    # the flag exists under that name
    serve_help = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "pushsvc"), "serve", "--help"],
        capture_output=True,
        text=True,
    )
    if serve_help.returncode == 0:
        assert "--graceful-timeout" in serve_help.stdout


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # the keys are checked above; verify is the stronger check
        pytest.skip("systemd-analyze is not installed")
    pushsvc = shutil.which("pushsvc") or str(ROOT / ".venv" / "bin" / "pushsvc")
    text = UNIT.read_text().replace("/opt/pushsvc/venv/bin/pushsvc", pushsvc)
    # the pushsvc user need not exist on this machine
    text = re.sub(r"^(User|Group)=pushsvc$", r"\1=root", text, flags=re.MULTILINE)
    copy = tmp_path / "pushsvc.service"
    copy.write_text(text)
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    # verify exits 0 on unknown keys and bad values too: it only warns, so no output at all
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
