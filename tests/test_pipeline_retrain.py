"""The retraining pipeline run locally with kfp.local, night after night, on tiny phantom deliveries: state,
shards, runs and the registry in a real GCS emulator, metrics in a real Pushgateway (when installed).

The scenario: a first model is blessed and promoted; new images give a challenger that a strict policy refuses
(the promote branch does not run); a rewritten Info.txt with no record change and an untouched folder both end
early and are recorded; a config change that breaks the warm start fails in train and is recorded and pushed by the
exit handler without moving the baseline; the next run retrains on the same delivery and an operator forces the
blessing, audited with the reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.gcs_emulator import emulator_endpoint
from tests.test_retrain_support import (
    PUSHGATEWAY,
    deliver_phantoms,
    fast_config,
    http_get,
    phantom_batch,
    start_pushgateway,
    stop_server,
)

from mammoflow import steps, storage
from mammoflow.pipelines.local import LocalRunError, run_local
from mammoflow.records import RecordsTable
from mammoflow.registry import ModelRegistry
from mammoflow.retrain.ingest import split_of_patients

pytestmark = pytest.mark.slow

#: A training run of seconds (one epoch of three steps on 32 px patches); blessing with a lax rule.
CONFIG: dict[str, Any] = fast_config("site-a")
#: No challenger can gain a whole unit of ROC-AUC: refused, whatever it learnt.
STRICT = {"blessing": {"rules": [{"metric": "roc_auc", "min_gain": 1.0}]}}
ALL_STEPS = {"retrain-scan", "retrain-ingest", "retrain-preprocess", "retrain-build-dataset", "retrain-train",
             "retrain-evaluate", "retrain-evaluate-2", "bless", "register", "promote", "push-retrain-metrics"}


def _run(root: Path, store: str, params: dict[str, Any]) -> dict[str, Any]:
    """One pipeline run; what it left: the summary (or the error), its kfp.local step folders, its result.json."""
    before_runs = set((root / "kfp").iterdir()) if (root / "kfp").exists() else set()
    before = set(storage.list(f"{store}/retrain/site-a"))
    out: dict[str, Any] = {}
    try:
        out["summary"] = run_local("retrain", root, params)
        out["report"] = Path(out["summary"]["report"]).read_text()  # the next run replaces the file
    except LocalRunError as exc:
        out["error"] = str(exc)
    (kfp_run,) = set((root / "kfp").iterdir()) - before_runs
    out["kfp"] = kfp_run
    out["steps"] = {p.name for p in kfp_run.iterdir()}
    (result,) = [u for u in set(storage.list(f"{store}/retrain/site-a")) - before if u.endswith("/result.json")]
    out["result"] = json.loads(storage.get_bytes(result))
    out["run_id"] = result.split("/")[-2]
    out["state"] = json.loads(storage.get_bytes(f"{store}/retrain/site-a/state.json"))
    return out


def artifact(run: dict[str, Any], step: str, name: str) -> dict[str, Any]:
    doc = json.loads((run["kfp"] / step / "executor_output.json").read_text())
    return doc["artifacts"][name]["artifacts"][0]


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mammoflow.storage import create_bucket

    base = tmp_path_factory.mktemp("retrain_pipeline")
    gateway = url = None
    if Path(PUSHGATEWAY).exists():
        gateway, url = start_pushgateway(base)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", emulator_endpoint())  # the steps (subprocesses) inherit it
        mp.setenv("GOOGLE_CLOUD_PROJECT", "mammoflow-test")
        store = "gs://retrain-pipeline-test/mammoflow"
        create_bucket(store)
        try:
            watched, root = base / "watched", base / "run"
            (base / "retrain.yaml").write_text(yaml.safe_dump(CONFIG))  # source.root relative to the YAML
            params = {"config": str(base / "retrain.yaml"), "storage_root": store, "push_gateway": url or ""}
            out: dict[str, Any] = {"base": base, "store": store, "gateway": url, "watched": watched}
            deliver_phantoms(watched, phantom_batch(base, 16, 11), 1)
            out["first"] = _run(root, store, params)
            deliver_phantoms(watched, phantom_batch(base, 8, 12), 17)
            out["refused"] = _run(root, store, {**params, "config_overrides": STRICT})
            info = watched / "Info.txt"  # the export job rewrote the annotations: same records, new bytes
            info.write_text(info.read_text() + "\n")
            out["same_records"] = _run(root, store, params)
            out["untouched"] = _run(root, store, params)
            deliver_phantoms(watched, phantom_batch(base, 8, 13), 25)
            # Bigger patches: the champion's weights no longer fit, and warm starting refuses before any training.
            broken = {"train_overrides": {"data.patch_size": 40}}
            out["failed"] = _run(root, store, {**params, "config_overrides": broken})
            out["forced"] = _run(root, store, {**params, "config_overrides": STRICT, "requested_by": "alice",
                                               "force_bless_reason": "new label definition agreed by the site"})
            if url:
                out["pushed"] = http_get(f"{url}/metrics")
            yield out
        finally:
            if gateway is not None:
                stop_server(gateway)


def registry(nights: dict[str, Any]) -> ModelRegistry:
    return ModelRegistry(f"{nights['store']}/registry")


def records_of(uri: str, dest: Path) -> RecordsTable:
    return RecordsTable.read(steps.fetch_tree(uri, dest))


def test_the_first_run_registers_and_promotes_the_first_model(nights: dict[str, Any]) -> None:
    run = nights["first"]
    assert run["steps"] == ALL_STEPS  # every step ran
    result = run["result"]
    assert (result["status"], result["retrain_id"], result["version"], result["promoted"]) == (
        "blessed", "r0001", "v0001", True)
    assert result["verdict"]["kind"] == "first_model" and result["ingest"]["new_records"] == 16
    summary = run["summary"]
    assert summary["report"].endswith("report.md") and summary["metrics"]["blessed"] == 1.0
    report = run["report"]
    assert report.startswith("# Retrain site-a: BLESSED") and "| registered | v0001 (promoted) |" in report
    # No champion yet: its evaluation is an empty artifact, and the verdict is the first-model policy's.
    assert artifact(run, "retrain-evaluate-2", "evaluation")["metadata"]["absent"] is True
    verdict_md = Path(artifact(run, "bless", "verdict")["uri"]).read_text()
    assert verdict_md.startswith("# Blessing verdict: BLESSED") and "first_model: bless" in verdict_md
    assert (result["champion_before"], result["champion_after"]) == (None, "v0001")
    v1 = registry(nights).get("v0001")  # (the registry as the last run left it)
    assert v1.lineage["pipeline_run_id"] == run["run_id"] and v1.lineage["pipeline"] == "mammoflow-retrain"
    assert v1.lineage["retrain_id"] == "r0001" and v1.lineage["parent_version"] is None
    assert v1.info["created_by"] == "kfp:mammoflow-retrain"
    # The state every later run starts from lives in object storage.
    state = run["state"]
    assert state["last_records"] == f"{nights['store']}/retrain/site-a/{run['run_id']}/records"
    assert state["next_id"] == 2 and state["in_progress"] is None


def test_a_refused_challenger_is_registered_but_not_promoted(nights: dict[str, Any], tmp_path: Path) -> None:
    run, first = nights["refused"], nights["first"]
    assert run["steps"] == ALL_STEPS - {"promote"}  # the blessed branch did not run
    result = run["result"]
    assert (result["status"], result["version"], result["promoted"]) == ("refused", "v0002", False)
    assert (result["champion_before"], result["champion_after"]) == ("v0001", "v0001")
    assert result["ingest"]["new_records"] == 8 and result["ingest"]["mode"] == "incremental"
    reason = result["verdict"]["reason"]
    assert reason.startswith("Not blessed: challenger r0002 does not meet the policy against v0001")
    assert re.search(r"patch\.roc_auc its change [+-]\d\.\d{3} is below the required gain of 1", reason)
    # Both models were judged on the same rows: the difference has a paired bootstrap CI.
    delta = result["verdict"]["deltas"]["patch.roc_auc"]
    assert delta["delta_ci"] is not None and delta["champion"] is not None
    assert artifact(run, "bless", "metrics")["metadata"]["blessed"] == 0.0
    assert Path(artifact(run, "bless", "verdict")["uri"]).read_text().startswith("# Blessing verdict: NOT BLESSED")
    reg = registry(nights)
    v2 = reg.get("v0002")
    assert v2.blessed is False and v2.verdict["reason"] == reason
    assert v2.lineage["parent_version"] == "v0001" and v2.lineage["warm_start_weights"].endswith(
        "versions/v0001/model.weights.h5")
    assert v2.evaluation["split_sha256"] == reg.get("v0001").evaluation["split_sha256"]  # the same test examples
    refuse = [e for e in reg.audit_log() if e.action == "refuse"]
    assert [(e.version, e.by) for e in refuse] == [("v0002", "kfp:mammoflow-retrain")]
    # Only the new images were preprocessed; the shared folder held the first run's.
    pre = json.loads(storage.get_bytes(f"{nights['store']}/retrain/site-a/{run['run_id']}/steps/preprocess.json"))
    assert (pre["reused"], pre["processed"]) == (16, 8)
    # Nobody changed split; new patients never joined the evaluation split.
    before = split_of_patients(records_of(first["state"]["last_records"], tmp_path / "a").records)
    after = split_of_patients(records_of(run["state"]["last_records"], tmp_path / "b").records)
    assert before.items() <= after.items() and len(after) > len(before)
    assert all(after[p] != "test" for p in set(after) - set(before))


def test_nothing_new_ends_early_and_is_recorded(nights: dict[str, Any]) -> None:
    same, untouched = nights["same_records"], nights["untouched"]
    # Files changed (Info.txt) but no record did: the run stops after the ingest, which becomes the baseline.
    assert same["steps"] == {"retrain-scan", "retrain-ingest", "push-retrain-metrics"}
    assert same["result"]["status"] == "nothing_new" and same["result"]["retrain_id"] == "r0003"
    assert artifact(same, "retrain-ingest", "metrics")["metadata"]["nothing_new"] == 1.0
    assert "Files changed, but no record was added" in Path(artifact(same, "retrain-ingest", "summary")["uri"]
                                                            ).read_text()
    assert same["state"]["last_records"].endswith(f"/{same['run_id']}/records")
    # Nothing changed at all: the scan ends it; no retrain id is spent.
    assert untouched["steps"] == {"retrain-scan", "push-retrain-metrics"}
    result = untouched["result"]
    assert (result["status"], result["retrain_id"]) == ("nothing_new", None)
    assert result["ingest"]["files"]["scanned"] == 25 and result["ingest"]["total_records"] == 24
    assert untouched["state"]["next_id"] == 4 and untouched["state"]["last_records"] == same["state"]["last_records"]
    scan_md = Path(artifact(untouched, "retrain-scan", "summary")["uri"]).read_text()
    assert scan_md.startswith("# Retrain site-a: nothing new") and "25 scanned, 24 records" in scan_md
    report = untouched["report"]
    assert report.startswith("# Retrain site-a: nothing new") and "| champion | v0001 -> v0001 |" in report
    assert untouched["summary"]["metrics"]["nothing_new"] == 1.0
    assert untouched["state"]["metrics"]["mammoflow_retrain_nothing_new_runs_total"] == 2


def test_a_failed_run_is_recorded_by_the_exit_handler(nights: dict[str, Any]) -> None:
    run = nights["failed"]
    assert "Inner task failed: 'retrain-train'" in run["error"] and "warm start" in run["error"]
    assert run["steps"] == {"retrain-scan", "retrain-ingest", "retrain-preprocess", "retrain-build-dataset",
                            "retrain-train", "push-retrain-metrics"}
    result = run["result"]
    assert result["status"] == "failed" and result["retrain_id"] == "r0004"
    assert "last step completed: build" in result["error"]
    state = run["state"]
    # The failed run's ingest is not the baseline: the next run sees the same delivery as new.
    assert state["last_records"] == nights["untouched"]["state"]["last_records"]
    assert state["in_progress"] is None
    assert state["metrics"]["mammoflow_retrain_last_run_failed"] == 1.0
    assert state["metrics"]["runs_by_status"] == {"blessed": 1, "refused": 1, "nothing_new": 2, "failed": 1}


def test_an_operator_forces_the_blessing_with_a_reason(nights: dict[str, Any]) -> None:
    run = nights["forced"]
    assert run["steps"] == ALL_STEPS
    result = run["result"]
    assert (result["status"], result["retrain_id"], result["version"]) == ("blessed", "r0005", "v0003")
    assert result["ingest"]["new_records"] == 8  # the delivery the failed run could not finish
    verdict = result["verdict"]
    assert verdict["forced"] and verdict["would_have_blessed"] is False and verdict["forced_by"] == "alice"
    reg = registry(nights)
    assert reg.champion().version == "v0003"
    forced = [e for e in reg.audit_log() if e.action in ("force_bless", "promote")][-2:]
    assert [(e.action, e.by) for e in forced] == [("force_bless", "alice"), ("promote", "alice")]
    assert forced[0].reason == "new label definition agreed by the site"
    assert "forced blessing in retrain r0005" in forced[1].reason and forced[1].from_version == "v0001"
    assert run["state"]["metrics"]["mammoflow_retrain_champion_version"] == 3


def test_every_outcome_reaches_the_pushgateway(nights: dict[str, Any]) -> None:
    if nights["gateway"] is None:
        pytest.skip("prometheus-pushgateway (Debian package) is not installed")
    for name in ("first", "refused", "same_records", "untouched", "failed", "forced"):
        assert nights[name]["result"]["pushed"] is True, name
    text = nights["pushed"]

    def value(metric: str, **labels: str) -> float:
        sel = "".join(f'(?=[^}}]*{k}="{v}")' for k, v in {"retrain": "site-a", **labels}.items())
        m = re.search(rf"^{metric}\{{{sel}[^}}]*\}} (\S+)$", text, re.M)
        assert m, f"{metric} {labels} not pushed"
        return float(m.group(1))

    assert value("mammoflow_retrain_runs_total", status="failed") == 1.0
    assert value("mammoflow_retrain_runs_total", status="blessed") == 2.0
    assert value("mammoflow_retrain_nothing_new_runs_total") == 2.0
    assert value("mammoflow_retrain_champion_version") == 3.0
    assert value("mammoflow_retrain_last_verdict_forced") == 1.0
    # Over all ingests: 16 + 8 + the third delivery twice (the failed run ingested it before failing, as
    # `mammoflow retrain` counts a failed run's ingest).
    assert value("mammoflow_retrain_records_ingested_total") == 16 + 8 + 8 + 8
    # The run status every pipeline pushes (job mammoflow_pipeline): the last night succeeded, one before failed.
    status = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("mammoflow_pipeline_") and 'pipeline="mammoflow-retrain"' in line}
    assert status["mammoflow_pipeline_last_run_failed"] == 0.0
    assert status["mammoflow_pipeline_last_success_timestamp_seconds"] == \
        status["mammoflow_pipeline_last_run_timestamp_seconds"]


def test_the_run_command_prints_where_the_summary_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mammoflow pipeline run --local --pipeline retrain` on a site's export folder that has no image yet: nothing
    to train on, and the summary says so."""
    from click.testing import CliRunner

    from mammoflow.cli import cli

    (tmp_path / "watched").mkdir()
    (tmp_path / "watched" / "Info.txt").write_text("mammoflow test site export\n")
    (tmp_path / "retrain.yaml").write_text(yaml.safe_dump(CONFIG))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["pipeline", "run", "--local", "--pipeline", "retrain", "--root", "out",
                                      "--param", "config=retrain.yaml"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"report: {tmp_path / 'out' / 'report.md'}" in result.stdout
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith("# Retrain site-a: nothing new")
