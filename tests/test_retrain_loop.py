"""Scheduled retraining end to end on phantoms: a first champion, "nothing new", a worse challenger refused with a
readable reason, a better one promoted, nobody changing split, every decision audited, metrics in a real
Pushgateway. Deliveries of new images are what a site's export job would do: more phantoms (other seeds) land in
the watched folder with their Info.txt lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from tests.test_retrain_support import (
    PUSHGATEWAY,
    deliver_phantoms,
    http_get,
    phantom_batch,
    retrain_config,
    start_pushgateway,
    stop_server,
)

from mammoflow.cli import cli
from mammoflow.errors import ConfigError
from mammoflow.records import RecordsTable
from mammoflow.registry import ModelRegistry
from mammoflow.retrain.config import load_retrain_config
from mammoflow.retrain.ingest import split_of_patients
from mammoflow.retrain.loop import RetrainState, retrain_forever, retrain_once

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(PUSHGATEWAY).exists(),
                                 reason="prometheus-pushgateway (Debian package) is not installed")]

SHORT = {"data.patch_size": 48, "data.patches_per_roi": {"normal": 24, "tumour": 48},
         "schedule.phases": [{"epochs": 3, "learning_rate": 0.001, "trainable_backbone": True}]}
RULES = [{"metric": "roc_auc", "margin": 0.05}, {"metric": "pr_auc", "margin": 0.05}]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain")
    gateway, url = start_pushgateway(root)
    try:
        watched = root / "watched"
        batches = [phantom_batch(root, 32, 11), phantom_batch(root, 16, 12), phantom_batch(root, 16, 13)]
        base = retrain_config(root, watched, url)
        base["blessing"]["rules"] = RULES
        config_file = root / "retrain.yaml"
        config_file.write_text(yaml.safe_dump(base))
        cfg = load_retrain_config(config_file)
        shuffled = load_retrain_config({**base, "warm_start": False, "train_overrides": SHORT,
                                        "diagnostics": {"train_on_shuffled_labels": True}})
        out = {"root": root, "gateway": url, "cfg": cfg, "config_file": config_file}

        deliver_phantoms(watched, batches[0], 1)
        out["r1"] = retrain_once(cfg)
        out["cli_nothing_new"] = CliRunner().invoke(cli, ["retrain", "--config", str(config_file), "--once"])
        deliver_phantoms(watched, batches[1], 33)
        out["r3"] = retrain_once(shuffled, by="qa-team")
        deliver_phantoms(watched, batches[2], 49)
        out["r4"] = retrain_once(cfg)
        out["loop"] = retrain_forever(cfg, interval=0.05, max_runs=2)
        out["metrics"] = http_get(f"{url}/metrics")
        yield out
    finally:
        stop_server(gateway)


def registry(s) -> ModelRegistry:
    return ModelRegistry(s["cfg"].registry_uri)


def test_the_first_model_becomes_champion_by_the_first_model_policy(scenario):
    r1 = scenario["r1"]
    assert r1.status == "blessed" and r1.version == "v0001" and r1.promoted
    assert (r1.champion_before, r1.champion_after) == (None, "v0001")
    assert r1.verdict["kind"] == "first_model" and "first_model: bless" in r1.verdict["reason"]
    assert r1.ingest["new_records"] == 32 and r1.ingest["mode"] == "first"


def test_nothing_new_stops_before_training(scenario):
    cli_run = scenario["cli_nothing_new"]
    assert cli_run.exit_code == 0, cli_run.output
    assert "nothing new" in cli_run.output
    loop = scenario["loop"]
    assert [r.status for r in loop] == ["nothing_new", "nothing_new"] and all(r.retrain_id is None for r in loop)
    work = Path(scenario["cfg"].work_dir)
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["r0001", "r0002", "r0003"]  # no run for them
    history = [json.loads(line) for line in (work / "history.jsonl").read_text().splitlines()]
    assert [h["status"] for h in history] == ["blessed", "nothing_new", "refused", "blessed", "nothing_new",
                                              "nothing_new"]
    assert RetrainState.load(work).in_progress is None


def test_a_worse_challenger_is_refused_with_a_readable_reason(scenario):
    r3 = scenario["r3"]
    assert r3.status == "refused" and r3.version == "v0002" and not r3.promoted
    assert (r3.champion_before, r3.champion_after) == ("v0001", "v0001")
    reason = r3.verdict["reason"]
    assert reason.startswith("Not blessed: challenger r0002 does not meet the policy against v0001")
    delta = r3.verdict["deltas"]["patch.roc_auc"]
    assert delta["delta"] < -0.05 and not delta["passed"]
    assert re.search(r"patch\.roc_auc its change -0\.\d{3} is worse than the allowed drop of 0\.05 "
                     r"\(challenger r0002 0\.\d{3} vs v0001 0\.\d{3}, difference -0\.\d{3}, paired 95% CI", reason)
    assert delta["delta_ci"][1] < 0  # the paired test agrees: worse on the same patients
    v2 = registry(scenario).get("v0002")
    assert v2.blessed is False and v2.lineage["diagnostics"] == {"train_on_shuffled_labels": True}
    md = (Path(scenario["cfg"].work_dir) / "runs" / "r0002" / "verdict.md").read_text()
    assert md.startswith("# Blessing verdict: NOT BLESSED") and "| patch.roc_auc |" in md
    assert (Path(v2.uri) / "verdict.md").read_text() == md


def test_a_better_challenger_is_promoted_warm_started_from_the_champion(scenario):
    r4 = scenario["r4"]
    assert r4.status == "blessed" and r4.version == "v0003" and r4.promoted
    assert (r4.champion_before, r4.champion_after) == ("v0001", "v0003")
    assert r4.verdict["reason"].startswith("Blessed: challenger r0003 meets every rule against v0001")
    v3 = registry(scenario).get("v0003")
    assert v3.lineage["parent_version"] == "v0001" and v3.lineage["warm_start_weights"].endswith(
        "versions/v0001/model.weights.h5")
    assert v3.info["model"]["sha256"] != registry(scenario).get("v0001").info["model"]["sha256"]


def test_no_patient_changes_split_and_the_evaluation_split_stays_fixed(scenario):
    work = Path(scenario["cfg"].work_dir)
    splits = [split_of_patients(RecordsTable.read(work / "records" / rid).records)
              for rid in ("r0001", "r0002", "r0003")]
    assert splits[0].items() <= splits[1].items() <= splits[2].items()
    assert len(splits[2]) > len(splits[0])
    new_patients = set(splits[2]) - set(splits[0])
    assert all(splits[2][p] != "test" for p in new_patients)  # evaluation.freeze: new patients never join test
    fingerprints = {v.evaluation["split_sha256"] for v in registry(scenario).versions()}
    assert len(fingerprints) == 1  # all three judged on the very same evaluation examples


def test_every_decision_is_audited_and_humans_can_roll_back(scenario, monkeypatch):
    reg = registry(scenario)
    events = [(e.action, e.version or e.to_version) for e in reg.audit_log()]
    assert events == [("register", "v0001"), ("bless", "v0001"), ("promote", "v0001"),
                      ("register", "v0002"), ("refuse", "v0002"),
                      ("register", "v0003"), ("bless", "v0003"), ("promote", "v0003")]
    refuse = next(e for e in reg.audit_log() if e.action == "refuse")
    assert refuse.by == "qa-team" and refuse.reason.startswith("Not blessed") and refuse.time.endswith("Z")
    assert refuse.details["deltas"]["patch.roc_auc"]["passed"] is False
    auto = next(e for e in reg.audit_log() if e.action == "promote")
    assert auto.by.startswith("mammoflow-retrain (") and "blessed by retrain r0001" in auto.reason

    monkeypatch.setenv("MAMMOFLOW_REGISTRY", reg.root)
    runner = CliRunner()
    refused = runner.invoke(cli, ["registry", "promote", "v0002", "--reason", "try"])
    assert refused.exit_code == 1
    back = runner.invoke(cli, ["registry", "rollback", "--reason", "site B reports misses", "--by", "oncall"])
    assert back.exit_code == 0 and "v0003 -> v0001" in back.output
    last = reg.audit_log()[-1]
    assert (last.action, last.by, last.from_version, last.to_version, last.reason) == \
        ("rollback", "oncall", "v0003", "v0001", "site B reports misses")
    assert reg.champion().version == "v0001"


def test_metrics_reach_the_pushgateway(scenario):
    text = scenario["metrics"]

    def value(name: str, **labels: str) -> float:
        sel = "".join(f'(?=[^}}]*{k}="{v}")' for k, v in {"retrain": "test-site", **labels}.items())
        m = re.search(rf"^{name}\{{{sel}[^}}]*\}} (\S+)$", text, re.M)
        assert m, f"{name} {labels} not pushed"
        return float(m.group(1))

    assert value("mammoflow_retrain_last_verdict_blessed") == 1.0
    assert value("mammoflow_retrain_champion_version") == 3.0
    assert value("mammoflow_retrain_last_run_nothing_new") == 1.0
    assert value("mammoflow_retrain_nothing_new_runs_total") == 3.0
    assert value("mammoflow_retrain_runs_total", status="refused") == 1.0
    assert value("mammoflow_retrain_records_ingested_total") == 64.0
    assert value("mammoflow_retrain_records_quarantined_total") == 0.0
    assert 0.5 < value("mammoflow_retrain_champion_metric", level="patch", metric="roc_auc") <= 1.0
    assert value("mammoflow_retrain_last_success_timestamp_seconds") <= \
        value("mammoflow_retrain_last_run_timestamp_seconds")


def test_config_errors_come_before_any_work(tmp_path):
    base = retrain_config(tmp_path, tmp_path / "watched")
    with pytest.raises(ConfigError, match="no metric rules"):
        load_retrain_config({**base, "blessing": {"first_model": "bless"}})
    with pytest.raises(ConfigError, match="work_dir must be a local folder"):
        load_retrain_config({**base, "work_dir": "gs://bucket/work"})
    with pytest.raises(ConfigError, match="takes none"):  # a labels CSV that mias would silently ignore
        load_retrain_config({**base, "source": {"name": "mias", "root": "in", "labels": "labels.csv"}})
    with pytest.raises(ConfigError, match="pseudonymise_paths"):
        load_retrain_config({**base, "source": {"name": "mias", "root": "in", "pseudonymise_paths": True}})
    cfg_file = tmp_path / "r.yaml"
    cfg_file.write_text(yaml.safe_dump({**base, "work_dir": "work", "source": {"name": "mias", "root": "in"}}))
    cfg = load_retrain_config(cfg_file)
    assert cfg.work_dir == str(tmp_path / "work") and cfg.source.root == str(tmp_path / "in")
    result = CliRunner().invoke(cli, ["retrain", "--config", str(cfg_file)])
    assert result.exit_code == 2 and "exactly one of --once and --interval" in result.output
