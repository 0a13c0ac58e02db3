"""One retraining run, two drivers: ``mammoflow retrain --once`` (its steps in order in one process) and the step
functions called one at a time as the KFP pods call them (a fresh config and an empty cache per step) reach the same
outcomes night after night; and the config frozen by the scan is checked by every later step."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from tests.test_retrain_support import deliver_phantoms, fast_config, phantom_batch

from mammoflow import steps, storage
from mammoflow.cli import cli
from mammoflow.errors import ConfigError, InputError
from mammoflow.registry import ModelRegistry
from mammoflow.retrain import stages
from mammoflow.retrain.blessing import Verdict
from mammoflow.retrain.run import Layout, RetrainRun
from mammoflow.retrain.state import RetrainState

#: A training run of seconds (one epoch of three steps on 32 px patches).
CONFIG: dict[str, Any] = fast_config("site-c")
#: No challenger can gain a whole unit of ROC-AUC: refused, whatever it learnt.
STRICT = {**CONFIG, "blessing": {**CONFIG["blessing"], "rules": [{"metric": "roc_auc", "min_gain": 1.0}]}}
PIPELINE = "mammoflow-retrain"


def site(root: Path) -> dict[str, Path]:
    """A watched folder, a lax and a strict retrain config (paths relative to them), a work folder and a store."""
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, cfg in (("lax", CONFIG), ("strict", STRICT)):
        files[name] = root / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump({**cfg, "work_dir": "work", "storage_root": "store"}))
    return {**files, "watched": root / "watched", "store": root / "store", "work": root / "work"}


def once(paths: dict[str, Path], config: str) -> dict[str, Any]:
    """``mammoflow retrain --once``; the result the run wrote."""
    out = CliRunner().invoke(cli, ["retrain", "--config", str(paths[config]), "--once"])
    assert out.exit_code in (0, 4), out.output
    line = (paths["work"] / "history.jsonl").read_text().splitlines()[-1]
    rid = json.loads(line)["retrain_id"]
    if rid is None:
        return json.loads(line)
    return json.loads((paths["work"] / "runs" / rid / "result.json").read_text())


def pods(paths: dict[str, Path], config: str, run_id: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The pipeline's steps for run ``run_id``, each as its KFP component calls it, in a fresh "pod" (the config
    loaded again from its file, an empty local cache); the exit handler's result."""
    store, tmp = str(paths["store"]), paths["store"].parent / "kfp" / run_id

    def pod(step: str) -> Any:
        monkeypatch.setenv(steps.CACHE_ENV, str(tmp / "cache" / step))
        return steps.load_retrain(str(paths[config]), {}, store)

    try:
        if steps.retrain_scan(pod("scan"), run_id)["changed"] and \
                not steps.retrain_ingest(pod("ingest"), run_id, tmp / "records")["nothing_new"]:
            steps.retrain_preprocess(pod("preprocess"), run_id, tmp / "preprocessed")
            steps.retrain_build(pod("build"), run_id)
            trained = steps.retrain_train(pod("train"), run_id)
            steps.retrain_evaluate(pod("evaluate"), run_id, trained["run_uri"], tmp / "challenger")
            champion = None
            if trained["champion_uri"]:
                champion = tmp / "champion"
                steps.retrain_evaluate(pod("evaluate-2"), run_id, trained["champion_uri"], champion)
            verdict = steps.retrain_bless(pod("bless"), run_id, tmp / "challenger", champion, force_reason="",
                                          by=f"kfp:{PIPELINE}")
            version = steps.retrain_register(pod("register"), run_id, tmp / "challenger",
                                             Verdict.from_dict(verdict.to_dict()), pipeline=PIPELINE,
                                             by=f"kfp:{PIPELINE}")
            if verdict.blessed:
                steps.retrain_promote(pod("promote"), run_id, version.version, verdict, by=f"kfp:{PIPELINE}")
    finally:
        result, _ = steps.retrain_finalize(pod("exit"), run_id, failed=False)
    return result.to_dict()


def outcome(result: dict[str, Any]) -> dict[str, Any]:
    """What must agree: the status, ids, versions, champions and the verdict (numbers masked: two trainings)."""
    verdict = result.get("verdict") or {}
    return {"status": result["status"], "retrain_id": result["retrain_id"], "version": result.get("version"),
            "promoted": result.get("promoted"), "champion": (result.get("champion_before"), result["champion_after"]),
            "verdict": {"kind": verdict.get("kind"), "blessed": verdict.get("blessed"), "forced": verdict.get("forced"),
                        "champion": verdict.get("champion"), "deltas": sorted(verdict.get("deltas", {})),
                        "reason": re.sub(r"-?\d+\.\d+", "#", verdict.get("reason") or "")},
            "new_records": (result.get("ingest") or {}).get("new_records")}


def state_of(uri: Path) -> dict[str, Any]:
    state = RetrainState.load(uri)
    m = state.metrics
    return {"next_id": state.next_id, "in_progress": state.in_progress, "runs": m["runs_by_status"],
            "ingested": m["mammoflow_retrain_records_ingested_total"],
            "nothing_new": m["mammoflow_retrain_nothing_new_runs_total"],
            "champion": m["mammoflow_retrain_champion_version"]}


def registry_of(store: Path) -> dict[str, Any]:
    reg = ModelRegistry(str(store / "registry"))
    return {"versions": [(v.version, v.blessed, v.lineage["retrain_id"], v.lineage["parent_version"],
                          v.evaluation["split"]) for v in reg.versions()],
            "champion": reg.champion().version,
            "audit": [(e.action, e.version or e.to_version) for e in reg.audit_log()]}


@pytest.mark.slow
def test_retrain_once_and_the_pipeline_steps_reach_the_same_outcomes(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cli_site, kfp_site = site(tmp_path / "cli"), site(tmp_path / "kfp")
    batches = [phantom_batch(tmp_path, 16, 11), phantom_batch(tmp_path, 8, 12)]
    nights = [("lax", batches[0], 1), ("lax", None, 0), ("strict", batches[1], 17)]
    results: dict[str, list[dict[str, Any]]] = {"cli": [], "kfp": []}
    for night, (config, batch, first) in enumerate(nights, 1):
        for paths in (cli_site, kfp_site):
            if batch is not None:
                deliver_phantoms(paths["watched"], batch, first)
        results["cli"].append(once(cli_site, config))
        results["kfp"].append(pods(kfp_site, config, f"run-{night}", monkeypatch))

    cli_outcomes = [outcome(r) for r in results["cli"]]
    assert cli_outcomes == [outcome(r) for r in results["kfp"]]
    assert [(o["status"], o["retrain_id"], o["version"]) for o in cli_outcomes] == [
        ("blessed", "r0001", "v0001"), ("nothing_new", None, None), ("refused", "r0002", "v0002")]
    assert cli_outcomes[2]["champion"] == ("v0001", "v0001")
    assert cli_outcomes[2]["verdict"]["reason"].startswith("Not blessed: challenger r0002 does not meet the policy "
                                                           "against v0001")

    cli_state = state_of(cli_site["work"])
    assert cli_state == state_of(kfp_site["store"] / "retrain" / "site-c")
    assert cli_state["runs"] == {"blessed": 1, "nothing_new": 1, "refused": 1} and cli_state["in_progress"] is None
    assert (cli_state["next_id"], cli_state["ingested"], cli_state["champion"]) == (3, 24, 1)
    # The next run's baseline is the last ingest: records/r0002 in the work folder, <run-3>/records in the store.
    assert RetrainState.load(cli_site["work"]).last_records == "records/r0002"
    assert RetrainState.load(kfp_site["store"] / "retrain" / "site-c").last_records == \
        str(kfp_site["store"] / "retrain" / "site-c" / "run-3" / "records")

    cli_registry = registry_of(cli_site["store"])
    assert cli_registry == registry_of(kfp_site["store"])
    assert cli_registry["audit"] == [("register", "v0001"), ("bless", "v0001"), ("promote", "v0001"),
                                     ("register", "v0002"), ("refuse", "v0002")]
    # The lineage says which driver ran it; the decisions do not depend on it.
    kfp_v2 = ModelRegistry(str(kfp_site["store"] / "registry")).get("v0002")
    assert (kfp_v2.lineage["pipeline"], kfp_v2.lineage["pipeline_run_id"]) == (PIPELINE, "run-3")
    cli_v2 = ModelRegistry(str(cli_site["store"] / "registry")).get("v0002")
    assert (cli_v2.lineage["pipeline"], cli_v2.lineage["pipeline_run_id"]) == (None, None)
    # Both froze the config each run started with next to the records of its steps.
    cli_run, kfp_run = cli_site["work"] / "runs" / "r0002", kfp_site["store"] / "retrain" / "site-c" / "run-3"
    frozen = [json.loads((folder / "config.json").read_text()) for folder in (cli_run, kfp_run)]
    assert frozen[0]["blessing"]["rules"][0]["min_gain"] == 1.0
    assert [{k: f[k] for k in ("blessing", "train_overrides", "evaluation", "name")} for f in frozen] == \
        [{k: frozen[0][k] for k in ("blessing", "train_overrides", "evaluation", "name")}] * 2
    assert sorted(p.name for p in (kfp_run / "steps").iterdir()) == sorted(p.name for p in (cli_run / "steps").iterdir())


# ------------------------------------------------------------------------------------------- the config digest


def test_every_later_step_checks_the_config_the_scan_froze(tmp_path: Path) -> None:
    paths = site(tmp_path)
    deliver_phantoms(paths["watched"], phantom_batch(tmp_path, 4, 21), 1)
    store = str(paths["store"])
    cfg = steps.load_retrain(str(paths["lax"]), {}, store)
    scan = steps.retrain_scan(cfg, "run-1")
    assert scan["changed"] and scan["config_sha256"] == cfg.sha256()
    frozen = paths["store"] / "retrain" / "site-c" / "run-1" / "config.json"
    assert json.loads(frozen.read_text()) == cfg.to_dict()
    state = RetrainState.load(paths["store"] / "retrain" / "site-c")
    assert state.in_progress["config_sha256"] == cfg.sha256()

    # The config file edited mid-run: the next step refuses to go on, and says how to fix it.
    paths["lax"].write_text(yaml.safe_dump({**yaml.safe_load(paths["lax"].read_text()),
                                            "evaluation": {"split": "test", "n_bootstrap": 200}}))
    edited = steps.load_retrain(str(paths["lax"]), {}, store)
    with pytest.raises(ConfigError, match=r"run run-1: the retrain config given to this step .* changed mid-run\. "
                                          r"Fix: a run keeps the config it started with"):
        steps.retrain_ingest(edited, "run-1", tmp_path / "artifact")
    # So are other overrides than the scan's.
    with pytest.raises(ConfigError, match="changed mid-run"):
        steps.retrain_ingest(steps.load_retrain(str(paths["strict"]), {}, store), "run-1", tmp_path / "artifact")
    assert not (tmp_path / "artifact").exists()  # nothing was done

    # The frozen copy itself altered: its digest no longer matches the one the scan recorded.
    original = frozen.read_text()
    frozen.write_text(json.dumps({**json.loads(original), "warm_start": False}))
    with pytest.raises(InputError, match=r"config\.json: the frozen config's sha256 is .* \(the config changed "
                                         r"mid-run\)\. Fix: a run keeps the config it started with"):
        steps.retrain_ingest(cfg, "run-1", tmp_path / "artifact")
    frozen.write_text(original)

    # With the config it started with, the run goes on, on the frozen copy.
    delta = steps.retrain_ingest(cfg, "run-1", tmp_path / "artifact")
    assert delta["new_records"] == 4 and steps.read_steps(cfg, "run-1").keys() == {"scan", "ingest"}

    # The exit handler records the run whatever config it is given (the edited one here).
    result, metrics = steps.retrain_finalize(edited, "run-1", failed=True, error="Task retrain-preprocess failed.")
    assert result.status == "failed" and result.retrain_id == "r0001" and metrics["runs_by_status"] == {"failed": 1}
    assert RetrainState.load(paths["store"] / "retrain" / "site-c").in_progress is None


def test_a_local_run_checks_its_frozen_config_at_every_step(tmp_path: Path) -> None:
    from mammoflow.retrain.config import load_retrain_config

    paths = site(tmp_path)
    deliver_phantoms(paths["watched"], phantom_batch(tmp_path, 4, 21), 1)
    cfg = load_retrain_config(paths["lax"])
    run = RetrainRun(cfg, Layout.local(cfg), "local-1")
    assert stages.scan(run)["retrain_id"] == "r0001"
    frozen = paths["work"] / "runs" / "r0001" / "config.json"
    assert storage.exists(str(frozen))
    frozen.write_text(json.dumps({**json.loads(frozen.read_text()), "train": "yu2020"}))
    with pytest.raises(InputError, match="the frozen config's sha256"):
        stages.ingest(run)
    assert not (paths["work"] / "records" / "r0001").exists()
