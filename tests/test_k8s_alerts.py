"""Alerts and dashboards of k8s/: promtool accepts every rule and its unit tests pin the behaviour of the absent(),
GPU-pending, RayJob and training-target rules; every alert has a severity and a runbook section; every metric the
alerts and dashboards query is one the code exposes (or a named external exporter's); the dashboards are valid
JSON, provisioned as one ConfigMap."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.k8s_validate import render
from tests.test_k8s import K8S, OVERLAYS, one

REPO = K8S.parent
GRAFANA = K8S / "grafana"
RUNBOOK = K8S / "RUNBOOK.md"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
SEVERITIES = {"critical", "warning", "info"}
#: Pushed by each pipeline's exit handler (issue 16, item 5), named here first: the alerts and dashboards use them.
PIPELINE_STATUS = {"mammoflow_pipeline_last_run_failed", "mammoflow_pipeline_last_success_timestamp_seconds"}
#: Metrics of other exporters, with who produces them (k8s/README.md, "Alerts and runbooks").
EXTERNAL = {"up": "Prometheus", "kube_pod_status_phase": "kube-state-metrics",
            "kube_pod_container_resource_requests": "kube-state-metrics",
            "kuberay_job_deployment_status": "KubeRay operator >= 1.4"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH (it renders the trees)")
needs_promtool = pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool (Debian package prometheus) not installed")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not on PATH (it renders the kustomize trees)")
    return {name: [r.obj for r in render(K8S / "overlays" / name)] for name in OVERLAYS}


def rules_of(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for o in objects if o["kind"] == "PrometheusRule" for g in o["spec"]["groups"] for rule in g["rules"]]


def rule_files(objects: list[dict[str, Any]], folder: Path, annotations: bool = True) -> list[Path]:
    paths = []
    for obj in (o for o in objects if o["kind"] == "PrometheusRule"):
        spec = json.loads(json.dumps(obj["spec"]))
        if not annotations:  # unit tests pin expressions, `for` and labels; annotations are checked elsewhere
            for group in spec["groups"]:
                for rule in group["rules"]:
                    rule.pop("annotations", None)
        path = folder / f"{obj['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------ promtool


@needs_promtool
def test_every_rule_of_every_overlay_passes_promtool(rendered, tmp_path):
    for overlay, objects in rendered.items():
        folder = tmp_path / overlay
        folder.mkdir()
        files = rule_files(objects, folder)
        result = subprocess.run([PROMTOOL, "check", "rules", *map(str, files)], capture_output=True, text=True,
                                check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        found = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", result.stdout))
        assert found == len(rules_of(objects)) >= 15, (overlay, found)


TRAINING = 'up{job="mammoflow/mammoflow-training",namespace="kubeflow",pod="%s"}'
UNIT_TESTS = [
    {   # absent(): three of the four "last run" metrics pushed, one never: only that one alerts, after 26 h.
        "interval": "1h",
        "input_series": [
            {"series": f'{name}{{job="mammoflow_retrain",retrain="site-a"}}', "values": "1x40"}
            for name in ("mammoflow_retrain_last_run_timestamp_seconds", "mammoflow_retrain_last_run_failed",
                         "mammoflow_retrain_first_run_timestamp_seconds",
                         "mammoflow_retrain_last_success_timestamp_seconds")],
        "alert_rule_test": [
            {"eval_time": "25h", "alertname": "MammoflowRetrainMetricsAbsent", "exp_alerts": []},
            {"eval_time": "27h", "alertname": "MammoflowRetrainMetricsAbsent", "exp_alerts": [
                {"exp_labels": {"job": "mammoflow_retrain", "metric": "mammoflow_retrain_last_run_nothing_new",
                                "severity": "critical"}}]},
            {"eval_time": "27h", "alertname": "MammoflowRetrainNeverSucceeded", "exp_alerts": []},
        ],
    },
    {   # Nothing pushed at all (the schedule without a config): every last-run metric and the last success absent.
        "interval": "1h",
        "input_series": [{"series": 'up{job="pushgateway"}', "values": "1x200"}],
        "alert_rule_test": [
            {"eval_time": "27h", "alertname": "MammoflowRetrainMetricsAbsent", "exp_alerts": [
                {"exp_labels": {"job": "mammoflow_retrain", "metric": name, "severity": "critical"}}
                for name in ("mammoflow_retrain_first_run_timestamp_seconds", "mammoflow_retrain_last_run_failed",
                             "mammoflow_retrain_last_run_nothing_new",
                             "mammoflow_retrain_last_run_timestamp_seconds")]},
            {"eval_time": "6d", "alertname": "MammoflowRetrainNeverSucceeded", "exp_alerts": []},
            {"eval_time": "8d", "alertname": "MammoflowRetrainNeverSucceeded", "exp_alerts": [
                {"exp_labels": {"job": "mammoflow_retrain", "severity": "warning"}}]},
            {"eval_time": "27h", "alertname": "MammoflowPipelineStatusAbsent", "exp_alerts": [
                {"exp_labels": {"pipeline": "mammoflow-retrain", "metric": name, "severity": "warning"}}
                for name in sorted(PIPELINE_STATUS)]},
        ],
    },
    {   # GPU pods: only a Pending pod that requests a GPU, in a project namespace, for 30 minutes.
        "interval": "1m",
        "input_series": [
            {"series": f'kube_pod_status_phase{{namespace="{ns}",pod="{pod}",phase="Pending"}}', "values": value}
            for ns, pod, value in (("mammoflow", "gpu-waiting", "1x60"), ("mammoflow", "cpu-waiting", "1x60"),
                                   ("team-b", "gpu-elsewhere", "1x60"), ("kubeflow", "gpu-running", "0x60"))
        ] + [
            {"series": f'kube_pod_container_resource_requests{{namespace="{ns}",pod="{pod}",container="main",'
                       f'resource="{res}",unit="integer"}}', "values": "1x60"}
            for ns, pod, res in (("mammoflow", "gpu-waiting", "nvidia_com_gpu"), ("mammoflow", "cpu-waiting", "cpu"),
                                 ("team-b", "gpu-elsewhere", "nvidia_com_gpu"),
                                 ("kubeflow", "gpu-running", "nvidia_com_gpu"))],
        "alert_rule_test": [
            {"eval_time": "25m", "alertname": "MammoflowGPUPodPending", "exp_alerts": []},
            {"eval_time": "35m", "alertname": "MammoflowGPUPodPending", "exp_alerts": [
                {"exp_labels": {"namespace": "mammoflow", "pod": "gpu-waiting", "severity": "warning"}}]},
        ],
    },
    {   # Training targets: a pod fetching shards for 4 h (never answered) is not "down"; one that answered is.
        "interval": "1m",
        "input_series": [{"series": TRAINING % "fetching", "values": "0x300"},
                         {"series": TRAINING % "crashed", "values": "1x30 0x270"}],
        "alert_rule_test": [
            {"eval_time": "2h", "alertname": "MammoflowTrainingTargetDown", "exp_alerts": [
                {"exp_labels": {"job": "mammoflow/mammoflow-training", "namespace": "kubeflow", "pod": "crashed",
                                "severity": "warning"}}]},
            {"eval_time": "2h", "alertname": "MammoflowTrainingMetricsNeverServed", "exp_alerts": []},
            {"eval_time": "4h", "alertname": "MammoflowTrainingMetricsNeverServed", "exp_alerts": [
                {"exp_labels": {"job": "mammoflow/mammoflow-training", "namespace": "kubeflow", "pod": "fetching",
                                "severity": "info"}}]},
        ],
    },
    {   # A failed RayJob (KubeRay's metric) and a failed pipeline run (the exit handler's push).
        "interval": "1m",
        "input_series": [
            {"series": 'kuberay_job_deployment_status{namespace="mammoflow",name="mammoflow-sweep",'
                       'deployment_status="Failed"}', "values": "1x10"},
            {"series": 'kuberay_job_deployment_status{namespace="mammoflow",name="other",'
                       'deployment_status="Complete"}', "values": "1x10"},
            {"series": 'mammoflow_pipeline_last_run_failed{job="mammoflow_pipeline",pipeline="mammoflow-sweep"}',
             "values": "1x10"},
            {"series": 'mammoflow_pipeline_last_run_failed{job="mammoflow_pipeline",pipeline="mammoflow-training"}',
             "values": "0x10"}],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "MammoflowRayJobFailed", "exp_alerts": [
                {"exp_labels": {"namespace": "mammoflow", "name": "mammoflow-sweep", "severity": "warning"}}]},
            {"eval_time": "5m", "alertname": "MammoflowPipelineRunFailed", "exp_alerts": [
                {"exp_labels": {"pipeline": "mammoflow-sweep", "severity": "warning"}}]},
        ],
    },
]


@needs_promtool
def test_promtool_unit_tests_of_the_rules(rendered, tmp_path):
    files = rule_files(rendered["local"], tmp_path, annotations=False)
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": [f.name for f in files], "evaluation_interval": "1m",
                                     "tests": UNIT_TESTS}, sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, check=False,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_unit_tests_can_fail(rendered, tmp_path):
    """A wrong expectation is reported: the unit tests above are not vacuous."""
    files = rule_files(rendered["local"], tmp_path, annotations=False)
    wrong = json.loads(json.dumps(UNIT_TESTS[2]))
    wrong["alert_rule_test"] = [{"eval_time": "35m", "alertname": "MammoflowGPUPodPending", "exp_alerts": []}]
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": [f.name for f in files], "tests": [wrong]}))
    result = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, check=False,
                            cwd=tmp_path)
    assert result.returncode != 0 and "gpu-waiting" in result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------ severities, runbooks


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_alert_has_a_severity_and_its_runbook_section(rendered, overlay):
    params = yaml.safe_load((K8S / "overlays" / overlay / "params.yaml").read_text())["data"]
    headings = set(re.findall(r"^## (\w+)$", RUNBOOK.read_text(), flags=re.M))
    rules = rules_of(rendered[overlay])
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["runbook_url"] == f"{params['runbookBaseURL']}#{rule['alert'].lower()}"
        assert rule["alert"] in headings, f"k8s/RUNBOOK.md has no section for {rule['alert']}"
    assert {r["labels"]["severity"] for r in rules} == SEVERITIES
    assert headings == {r["alert"] for r in rules}, "a runbook section for an alert that does not exist"


# ------------------------------------------------------------------------------------------------ metric names


def metric_names(expr: str) -> set[str]:
    """Metric names of a PromQL expression: identifiers that are not functions, keywords or label names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end():].lstrip()[:1]
        if following != "(" and match.group(0) not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]", match.group(0)):
            names.add(match.group(0))
    return names


def code_metric_names() -> set[str]:
    """Every metric the code exposes: the training gauges (from a real RunMetrics), the retrain push set, and the
    sweep's ray.util.metrics as Ray exports them (prefix ray_, counters with _total)."""
    from mammoflow.retrain.push import METRICS
    from mammoflow.training.monitor import RunMetrics

    metrics = RunMetrics("names")
    names = {family.name for family in metrics.registry.collect()} | set(METRICS)
    runner = (REPO / "src" / "mammoflow" / "sweep" / "runner.py").read_text()
    for kind, name in re.findall(r'\b(Gauge|Counter)\(\s*"(mammoflow_[a-z_]+)"', runner):
        names.add(f"ray_{name}" + ("_total" if kind == "Counter" else ""))
    return names


def queries(objects: list[dict[str, Any]]) -> dict[str, str]:
    exprs = {f"alert {r['alert']}": r["expr"] for r in rules_of(objects)}
    for path in sorted(GRAFANA.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                exprs[f"{path.name}: {panel['title']} {target['refId']}"] = target["expr"]
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                exprs[f"{path.name}: ${variable['name']}"] = re.sub(r"label_values\((.*),\s*\w+\)", r"\1",
                                                                  variable["query"]["query"])
    return exprs


def test_metric_name_extraction():
    assert metric_names('max by (pod) (up{job="x"} == 0) and on (pod) max_over_time(up[12h]) == 1') == {"up"}
    assert metric_names('label_replace(absent(a_b{c="d"}), "metric", "e_f", "", "") or rate(g_total[5m]) > 2 * 86400'
                        ) == {"a_b", "g_total"}


def test_alerts_and_dashboards_query_only_metrics_the_code_exposes(rendered):
    exposed = code_metric_names() | PIPELINE_STATUS
    assert "mammoflow_train_val_loss" in exposed and "mammoflow_val_loss" not in exposed, \
        "training metrics share the prefix mammoflow_train_ (mammoflow.training.monitor)"
    used: dict[str, set[str]] = {}
    for where, expr in queries(rendered["local"]).items():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    unknown = {name: sorted(where) for name, where in used.items() if name not in exposed and name not in EXTERNAL}
    assert not unknown, f"queried but exposed by nothing: {unknown}"
    ours = {name for name in used if "mammoflow_" in name}
    assert all(re.match(r"(ray_)?mammoflow_(train|retrain|pipeline|sweep|trial)_", n) for n in ours), ours
    # Each dashboard shows its own part: the training, sweep and retraining metrics all appear somewhere.
    assert {"mammoflow_train_val_loss", "ray_mammoflow_sweep_best_metric", "mammoflow_retrain_champion_metric",
            "kuberay_job_deployment_status", "mammoflow_pipeline_last_run_failed"} <= set(used)


def test_the_exit_handler_pushes_the_pipeline_status_metrics():
    """The alerts name the exit handler's metrics before it exists; this holds the code to those names."""
    sources = [p for folder in ("src", "components", "pipelines") for p in (REPO / folder).rglob("*.py")]
    text = "\n".join(p.read_text() for p in sources)
    missing = {name for name in PIPELINE_STATUS if name not in text}
    assert not missing, f"no code pushes {sorted(missing)} (issue 16, item 5: an exit handler on every pipeline)"


# ------------------------------------------------------------------------------------------------ dashboards


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dashboards_are_provisioned_from_one_generated_configmap(rendered, overlay):
    boards = {p.name: p.read_text() for p in GRAFANA.glob("*.json")}
    assert set(boards) == {"mammoflow-training-dashboard.json", "mammoflow-sweeps-dashboard.json",
                           "mammoflow-dashboard.json"}
    configmap = one(rendered[overlay], "ConfigMap", "mammoflow-grafana-dashboards")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "mammoflow"
    assert configmap["data"] == boards, "the ConfigMap is generated from the JSON files, byte for byte"
    uids = set()
    for name, text in boards.items():
        board = json.loads(text)
        uids.add(board["uid"])
        assert board["panels"] and all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in board["panels"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        assert all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"]), name
    assert len(uids) == 3
    assert len(json.dumps(configmap)) < 256 * 1024, "kubectl apply's last-applied annotation holds at most 256 KiB"
