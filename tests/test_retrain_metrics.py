"""Retraining metrics: pushed to a real Pushgateway, scraped by a real Prometheus that evaluates the shipped alert
rules, and queried with every expression of the shipped Grafana dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from tests.k8s_validate import check_tree
from tests.test_retrain_support import (
    PROMETHEUS,
    PROMTOOL,
    PUSHGATEWAY,
    free_port,
    http_get,
    start_pushgateway,
    start_server,
    stop_server,
)

from mammoflow.retrain.push import METRICS, push_metrics, retrain_values

REPO = Path(__file__).resolve().parents[1]
ALERTS = REPO / "k8s" / "base" / "alerts.yaml"
DASHBOARD = REPO / "k8s" / "grafana" / "mammoflow-dashboard.json"
JOB = "mammoflow_retrain"
servers = pytest.mark.skipif(not (Path(PUSHGATEWAY).exists() and Path(PROMETHEUS).exists()),
                             reason="Prometheus and its Pushgateway are not installed (Debian packages prometheus, "
                                    "prometheus-pushgateway)")


def rules_spec() -> dict:
    return yaml.safe_load(ALERTS.read_text())["spec"]


def state_metrics(now: float, *, success_age: float, run_age: float, ingested: int, quarantined: int,
                  failed: bool = False, blessed: bool = True) -> dict:
    """A retrain state's ``metrics`` section, as :mod:`mammoflow.retrain.loop` keeps it."""
    return {
        "mammoflow_retrain_first_run_timestamp_seconds": now - 30 * 86400,
        "mammoflow_retrain_last_run_timestamp_seconds": now - run_age,
        "mammoflow_retrain_last_success_timestamp_seconds": now - success_age,
        "mammoflow_retrain_last_duration_seconds": 812.0,
        "mammoflow_retrain_last_run_nothing_new": 0.0, "mammoflow_retrain_last_run_failed": float(failed),
        "mammoflow_retrain_last_verdict_blessed": float(blessed), "mammoflow_retrain_last_verdict_forced": 0.0,
        "mammoflow_retrain_champion_version": 3,
        "mammoflow_retrain_last_ingest_records": ingested, "mammoflow_retrain_last_ingest_quarantined": quarantined,
        "mammoflow_retrain_table_records": 300,
        "mammoflow_retrain_records_ingested_total": 310, "mammoflow_retrain_records_quarantined_total": 12,
        "mammoflow_retrain_nothing_new_runs_total": 4,
        "runs_by_status": {"blessed": 2, "refused": 1, "nothing_new": 4},
        "champion_metrics": {"roi.roc_auc": 0.91, "roi.tumour_recall": 0.85},
        "challenger_metrics": {"roi.roc_auc": 0.62, "roi.tumour_recall": 0.4},
    }


# ------------------------------------------------------------------------------------------------ offline checks


@pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool (Debian package prometheus) not installed")
def test_alert_rules_pass_promtool(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rules_spec()))
    result = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 rules found" in result.stdout


def test_alerts_manifest_validates():
    problems, counts = check_tree(ALERTS)
    assert problems == [], "\n".join(map(str, problems))
    assert list(counts.values()) == [1]


def test_alerts_and_dashboard_use_only_pushed_metric_names():
    exposed = set(METRICS)
    used = set(re.findall(r"mammoflow_retrain_[a-z_]+", ALERTS.read_text() + DASHBOARD.read_text()))
    assert used and used <= exposed, used - exposed
    names = {"MammoflowNoSuccessfulRetrain", "MammoflowRetrainQuarantineRateHigh", "MammoflowRetrainFailing",
             "MammoflowRetrainNotRunning"}
    assert {r["alert"] for g in rules_spec()["groups"] for r in g["rules"]} == names


def test_retrain_values_cover_every_metric():
    values = retrain_values(state_metrics(time.time(), success_age=60, run_age=60, ingested=10, quarantined=0))
    assert set(values) == set(METRICS)
    assert values["mammoflow_retrain_champion_metric"] == [({"level": "roi", "metric": "roc_auc"}, 0.91),
                                                           ({"level": "roi", "metric": "tumour_recall"}, 0.85)]


# ------------------------------------------------------------------------------------------------ real servers


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus")
    gateway, gateway_url = start_pushgateway(tmp)
    rules = tmp / "rules.yaml"
    rules.write_text(yaml.safe_dump(rules_spec()))
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "pushgateway", "honor_labels": True,
                            "static_configs": [{"targets": [gateway_url.removeprefix("http://")]}]}]}))
    url = f"http://127.0.0.1:{port}"
    prom = start_server([PROMETHEUS, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
                         f"--storage.tsdb.path={tmp / 'tsdb'}"], f"{url}/-/ready", tmp / "prometheus.log")
    now = time.time()
    push_metrics(gateway_url, JOB, retrain_values(state_metrics(now, success_age=3600, run_age=3600, ingested=40,
                                                                quarantined=1)), grouping_key={"retrain": "site-a"})
    push_metrics(gateway_url, JOB, retrain_values(state_metrics(now, success_age=8 * 86400, run_age=3 * 86400,
                                                                ingested=10, quarantined=5, failed=True,
                                                                blessed=False)), grouping_key={"retrain": "site-b"})
    try:
        yield {"gateway": gateway_url, "prometheus": url}
    finally:
        stop_server(prom)
        stop_server(gateway)
        shutil.rmtree(tmp / "tsdb", ignore_errors=True)


def query(url: str, expr: str) -> list[dict]:
    data = json.loads(http_get(f"{url}/api/v1/query?query={urllib.parse.quote(expr)}"))
    assert data["status"] == "success", data
    return data["data"]["result"]


def wait_for(fn, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        out = fn()
        if out or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


@servers
@pytest.mark.slow
def test_pushgateway_holds_the_pushed_metrics(stack):
    text = http_get(f"{stack['gateway']}/metrics")
    assert re.search(r'mammoflow_retrain_last_verdict_blessed\{[^}]*retrain="site-b"[^}]*\} 0', text)
    assert re.search(r'mammoflow_retrain_runs_total\{[^}]*retrain="site-a",status="refused"\} 1', text)
    assert re.search(r'mammoflow_retrain_champion_metric\{[^}]*level="roi",metric="roc_auc",retrain="site-a"\} 0.91',
                     text)
    assert "# HELP mammoflow_retrain_last_success_timestamp_seconds When the last retrain ended with a verdict" in text


@servers
@pytest.mark.slow
def test_prometheus_scrapes_and_every_dashboard_query_answers(stack):
    url = stack["prometheus"]
    assert wait_for(lambda: query(url, 'mammoflow_retrain_champion_metric{retrain="site-a",metric="roc_auc"}'))
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        result = wait_for(lambda e=expr: query(url, e.replace("$retrain", "site-a")))
        assert result, f"no data for dashboard query {expr}"
    rate = query(url, [t["expr"] for p in dashboard["panels"] if p["title"].startswith("Quarantine rate")
                       for t in p["targets"]][0].replace("$retrain", "site-b"))
    assert float(rate[0]["value"][1]) == pytest.approx(5 / 15)


@servers
@pytest.mark.slow
def test_alert_rules_fire_for_the_unhealthy_retraining_only(stack):
    url = stack["prometheus"]
    expected = {"MammoflowNoSuccessfulRetrain", "MammoflowRetrainQuarantineRateHigh", "MammoflowRetrainFailing",
                "MammoflowRetrainNotRunning"}

    def active() -> list[dict]:
        alerts = json.loads(http_get(f"{url}/api/v1/alerts"))["data"]["alerts"]
        return alerts if {a["labels"]["alertname"] for a in alerts} >= expected else []

    alerts = wait_for(active)
    assert {a["labels"]["alertname"] for a in alerts} == expected
    assert {a["labels"]["retrain"] for a in alerts} == {"site-b"}  # site-a is healthy: 1 of 41 quarantined, recent
    assert all(a["state"] in ("pending", "firing") for a in alerts)
    quarantine = next(a for a in alerts if a["labels"]["alertname"] == "MammoflowRetrainQuarantineRateHigh")
    assert float(quarantine["value"]) == pytest.approx(5 / 15)
