"""Whole pipelines run locally with kfp.local on tiny phantom data: the training pipeline on built-in phantoms
with object storage in a real GCS emulator, the sweep pipeline on a dataset folder (the other branch of the data
source) with a local Ray, and the failures a user meets first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mammoflow import storage
from mammoflow.cli import cli
from mammoflow.errors import ConfigError
from mammoflow.pipelines.local import LocalRunError, run_local

pytest_plugins = ["tests.gcs_emulator"]  # the gcs_bucket fixture

# A training run of seconds: one epoch of a few steps on few patches.
TINY_TRAIN = {"schedule.phases": [{"epochs": 1, "learning_rate": 0.001, "trainable_backbone": True}],
              "schedule.steps_per_epoch": 4, "data.patches_per_roi": {"normal": 4, "tumour": 8}}
TINY = {"n_demo_images": 24, "train_overrides": TINY_TRAIN, "n_bootstrap": 50, "n_explain": 2}
#: The data steps after ingest, with partitions=1: one iteration of each ParallelFor (a folder of its own).
DATA_STEPS = ["partition-list", "for-loop-4-iteration-0", "plan-dataset", "for-loop-5-iteration-0", "merge-dataset"]
TRAINING_STEPS = ["ingest", *DATA_STEPS, "train", "evaluate", "explain", "report"]


def run_dir(root: Path) -> Path:
    """The one pipeline-run folder kfp.local wrote under root/kfp."""
    (run,) = (root / "kfp").iterdir()
    return run


def outputs(root: Path, step: str) -> dict[str, dict[str, Any]]:
    """Output artifacts of one step (name -> uri and metadata), from its executor_output.json."""
    doc = json.loads((run_dir(root) / step / "executor_output.json").read_text())
    return {name: a["artifacts"][0] for name, a in doc.get("artifacts", {}).items()}


def check_metrics(metrics: dict[str, float]) -> None:
    for key, value in metrics.items():
        if key.endswith(("accuracy", "specificity", "sensitivity", "roc_auc")):
            assert 0.0 <= value <= 1.0, (key, value)
            low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
            if low is not None:
                assert low <= value <= high, (key, low, value, high)
    assert "roi_accuracy" in metrics and "patch_accuracy" in metrics


@pytest.mark.slow
def test_training_pipeline_on_phantoms_with_object_storage(tmp_path: Path, gcs_bucket: str) -> None:
    root = tmp_path / "run"
    store = f"{gcs_bucket}/mammoflow"
    summary = run_local("training", root, {**TINY, "storage_root": store})

    assert summary["status"] == "succeeded" and summary["storage_root"] == store
    check_metrics(summary["metrics"])
    report = Path(summary["report"])
    assert report == root / "report.html"
    html = report.read_text()
    assert "<html" in html and "test split" in html and "data:image/png;base64," in html
    assert json.loads((root / "summary.json").read_text())["report"] == str(report)

    # The phantom branch ran, the real-data branch did not; every later step ran once.
    steps = {p.name for p in run_dir(root).iterdir()}
    assert steps == {"demo-data", *TRAINING_STEPS, "push-pipeline-status"}  # the status push ran last

    # Shards, phantoms and the run folder are in the bucket, where each step found them.
    objects = storage.list(store)
    assert f"{store}/raw/phantoms-n24-s0/ground_truth.json" in objects
    dataset_uri = outputs(root, "merge-dataset")["dataset"]["metadata"]["uri"]
    assert dataset_uri.startswith(f"{store}/datasets/yu2020-") and f"{dataset_uri}/manifest.json" in objects
    model = outputs(root, "train")["model"]
    run_uri = model["metadata"]["run_uri"]
    assert run_uri.startswith(f"{store}/runs/") and f"{run_uri}/model.keras" in objects
    # The model artifact is a self-contained package whose config has the (integer) overrides applied.
    package = Path(model["uri"])
    assert {"model.keras", "config.yaml", "metrics.json", "run.json"} <= {p.name for p in package.iterdir()}
    assert "steps_per_epoch: 4\n" in (package / "config.yaml").read_text()
    # The records of ingest point at the phantoms in the bucket, not at a pod's local cache.
    records = Path(outputs(root, "ingest")["records"]["uri"])
    assert json.loads((records / "records_meta.json").read_text())["image_root"] == f"{store}/raw/phantoms-n24-s0"

    # KFP's views: the ROC curve / confusion matrix artifact and the evaluation folder.
    ev = outputs(root, "evaluate")
    matrix = ev["classification"]["metadata"]["confusionMatrix"]
    assert [s["displayName"] for s in matrix["annotationSpecs"]] == ["normal", "tumour"]
    manifest = json.loads(storage.get_bytes(f"{dataset_uri}/manifest.json"))
    assert sum(sum(r["row"]) for r in matrix["rows"]) == sum(manifest["counts"]["test"].values())
    evaluation = json.loads((Path(ev["evaluation"]["uri"]) / "metrics.json").read_text())
    assert evaluation["split"] == "test" and evaluation["data"]["uri"] == dataset_uri
    cams = Path(outputs(root, "explain")["cams"]["uri"])
    index = json.loads((cams / "explain.json").read_text())
    assert index["summary"]["n_images"] == 2 and len(list(cams.glob("*_overlay.png"))) == 2


TINY_SPEC = {
    "name": "tiny", "design": "grid", "metric": "val_loss", "mode": "min", "scheduler": {"name": "fifo"},
    "resources": {"cpu": 1, "gpu": 0}, "max_failures": 0, "axes": {"class_weights": {"grid": ["none", "balanced"]}},
    "base": {"model": {"name": "compact_fusion", "weights": "none"},
             "data": {"patch_size": 32, "channels": 1, "patches_per_roi": {"normal": 4, "tumour": 8}, "batch_size": 16},
             "optimizer": {"name": "adam"},
             "schedule": {"phases": [{"epochs": 2, "learning_rate": 0.001, "trainable_backbone": True}],
                          "steps_per_epoch": 2}}}


@pytest.mark.slow
def test_sweep_pipeline_on_a_real_dataset_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other branch of the data source (a MIAS-layout folder, given by a relative data_root), through the CLI,
    with the sweep pipeline: a local Ray runs the trials, the report lists them."""
    from mammoflow.synth.phantoms import write_mias_dataset

    write_mias_dataset(tmp_path / "mias", n_images=24, seed=3)
    (tmp_path / "tiny.yaml").write_text(json.dumps(TINY_SPEC))
    monkeypatch.chdir(tmp_path)
    args = ["pipeline", "run", "--local", "--pipeline", "sweep", "--root", "out", "--param", "source=mias",
            "--param", "data_root=mias", "--param", "spec=tiny.yaml"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    root = tmp_path / "out"
    assert f"report: {root / 'report.html'}" in result.stdout
    assert "trials: 2\n" in result.stdout and "failed: 0\n" in result.stdout
    assert {p.name for p in run_dir(root).iterdir()} == {"locate-data", "ingest", *DATA_STEPS,
                                                          "sweep", "sweep-report", "push-pipeline-status"}
    records = outputs(root, "ingest")["records"]
    assert records["metadata"]["data_root"] == str(tmp_path / "mias") and records["metadata"]["used"] == 24
    assert (root / "store" / "datasets").is_dir() and not (root / "store" / "raw").exists()
    results = outputs(root, "sweep")["results"]
    assert results["metadata"]["uri"].startswith(str(root / "store" / "sweeps"))
    rows = (Path(results["uri"]) / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and "class_weights" in rows[0]
    summary = json.loads((root / "summary.json").read_text())
    assert summary["metrics"]["best_val_loss"] > 0
    assert "Sweep" in (root / "report.html").read_text()


def test_missing_real_data_fails_in_the_else_branch_at_once(tmp_path: Path) -> None:
    root = tmp_path / "run"
    with pytest.raises(LocalRunError, match=r"Inner task failed: 'locate-data'.*Cause: InputError: .*absent: not "
                       r"found\. Fix: check data_root.*full log: .*pipeline\.log"):
        run_local("training", root, {"source": "mias", "data_root": str(tmp_path / "absent")})
    assert not list(root.glob("kfp/*/demo-data")) and not list(root.glob("kfp/*/ingest"))
    assert not (root / "store").exists()


def test_unknown_parameter_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown pipeline parameter.*'n_images'.*n_demo_images"):
        run_local("training", tmp_path / "run", {"n_images": 3})
    assert not (tmp_path / "run").exists()
