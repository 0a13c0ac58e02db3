"""``mammoflow evaluate`` end to end on tiny shards and a run trained in the test, plus the metric wiring."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from tests.gcs_emulator import gcs_bucket, gcs_emulator  # noqa: F401  (fixtures)
from tests.test_evaluate_support import GRID, PATCH, ROI_SIDE, train_tiny_run, write_tiny_dataset

from mammoflow.cli import cli
from mammoflow.evaluation import evaluate as ev
from mammoflow.evaluation import levels as lv
from mammoflow.evaluation import outputs, predictions
from mammoflow.evaluation.metrics import metric_names
from mammoflow.training.package import load_package

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    data = write_tiny_dataset(root / "data")
    run = train_tiny_run(data, root / "run", root / "cache")
    return {"root": root, "data": data, "run": run, "cache": root / "cache"}


@pytest.fixture(scope="module")
def evaluated(tiny) -> Path:
    out = tiny["root"] / "eval"
    result = CliRunner().invoke(cli, ["evaluate", "--model", str(tiny["run"]), "--data", str(tiny["data"]),
                                      "--split", "test", "--out", str(out), "--calibrate", "--n-bootstrap", "300",
                                      "--cache-dir", str(tiny["cache"])])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    return out


def test_outputs_and_metrics_schema(evaluated):
    for name in ("metrics.json", "predictions.parquet", "classification_metrics.json", *outputs.FIGURES):
        assert (evaluated / name).stat().st_size > 0, name
    for name in outputs.FIGURES:
        assert (evaluated / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((evaluated / "metrics.json").read_text())
    assert m["kind"] == ev.METRICS_KIND and m["evaluation_schema_version"] == 1 and m["schema_version"] == 1
    assert m["split"] == "test" and m["class_names"] == ["normal", "tumour"] and m["positive_class"] == "tumour"
    assert m["primary_level"] == "roi" and m["bootstrap_unit"] == "patient"
    assert set(m["levels"]) == {"patch", "roi", "roi_soft", "breast", "patient"}
    for level, report in m["levels"].items():
        assert set(report["metrics"]) == set(metric_names(("normal", "tumour"))), level
        acc = report["metrics"]["accuracy"]
        assert acc["ci_low"] <= acc["value"] <= acc["ci_high"], level
        assert report["bootstrap"]["n_resamples"] == 300
        assert acc["degenerate"] and "only 300 resample(s)" in acc["degenerate_reason"]  # < 1,000: flagged
    assert m["selection_on_test_fold"] is False and "selection_note" not in m  # test split, no fold
    # 10 test patients, 2 ROIs each, 25 patches per ROI; the CIs resample the 10 patients at every level.
    assert m["levels"]["roi"]["n"] == 20 and m["levels"]["patch"]["n"] == 20 * 25
    assert m["levels"]["breast"]["n"] == 20 and m["levels"]["patient"]["n"] == 10
    assert {r["bootstrap"]["n_units"] for r in m["levels"].values()} == {10}
    assert set(m["curves"]) == {"patch", "roi"} and m["curves"]["roi"]["roc"]["auc"] > 0.5
    temp = m["calibration"]["temperature"]
    assert temp["fitted_on"] == "val" and temp["value"] > 0 and temp["n"] == 16 * 25
    assert set(m["calibration"]["calibrated"]) == {"patch", "roi"}
    assert m["model"]["name"] == "compact_fusion" and len(m["model"]["sha256"]) == 64
    assert m["paper_comparison"] is None  # our compact model has no paper counterpart
    kfp = json.loads((evaluated / "classification_metrics.json").read_text())
    assert kfp["confusion_matrix"]["categories"] == ["normal", "tumour"]
    assert np.sum(kfp["confusion_matrix"]["matrix"]) == 20
    assert len(kfp["roc"]["fpr"]) == len(kfp["roc"]["tpr"]) == len(kfp["roc"]["threshold"]) >= 2


def test_predictions_one_row_per_patch_and_roi(evaluated):
    df = pd.read_parquet(evaluated / "predictions.parquet")
    patches, rois = df[df["level"] == "patch"], df[df["level"] == "roi"]
    assert len(patches) == 20 * GRID[0] * GRID[1] and len(rois) == 20
    assert patches["id"].is_unique and rois["example_id"].is_unique
    assert (patches.groupby("example_id").size() == 25).all()
    # P(tumour) is the softmax column of label 1, not the top-class probability.
    assert np.allclose(patches["prob"], patches["p1"]) and np.allclose(patches["p0"] + patches["p1"], 1, atol=1e-5)
    # ROI probability = the mean of its patches' probabilities; decision = majority of patch labels.
    mean = patches.groupby("example_id")["prob"].mean()
    votes = patches.assign(v=patches["prob"] >= 0.5).groupby("example_id")["v"].sum()
    rois = rois.set_index("example_id")
    assert np.allclose(rois["prob"], mean[rois.index])
    assert (rois["votes_tumour"] == votes[rois.index]).all()
    assert (rois["pred"] == (votes[rois.index] > 12).astype(int)).all()  # 25 patches: no ties
    assert (rois["pred_alternative"] == (mean[rois.index] >= 0.5).astype(int)).all()
    # The grid origins are those of the input pipeline (5 x 5 windows of 24 in 48: stride 6).
    assert sorted(patches["patch_row"].unique()) == [0, 6, 12, 18, 24] == sorted(patches["patch_col"].unique())
    assert set(patches["patient_id"]) == set(rois["patient_id"]) and len(set(rois["patient_id"])) == 10
    assert patches["prob_calibrated"].between(0, 1).all()
    assert len(df[df["level"] == "breast"]) == 20 and len(df[df["level"] == "patient"]) == 10
    patient = df[df["level"] == "patient"].set_index("id")
    assert np.allclose(patient["prob"], rois.groupby("patient_id")["prob"].max()[patient.index])


def test_rerun_reuses_predictions(tiny, evaluated, caplog):
    before = pd.read_parquet(evaluated / "predictions.parquet")
    with caplog.at_level(logging.INFO, logger="mammoflow.evaluation.evaluate"):
        report = ev.evaluate(str(tiny["run"]), str(tiny["data"]), evaluated, split="test", calibrate=False,
                             n_bootstrap=300, cache_dir=tiny["cache"])
    assert "reusing the predictions" in caplog.text
    after = pd.read_parquet(evaluated / "predictions.parquet")
    assert "prob_calibrated" not in after.columns
    pd.testing.assert_series_equal(before["prob"], after["prob"])
    assert report["calibration"]["temperature"] is None


def test_soft_voting_and_keras_file(tiny, tmp_path):
    out = tmp_path / "soft"
    report = ev.evaluate(str(tiny["run"] / "model.keras"), str(tiny["data"]), out, method="soft", n_bootstrap=50,
                         cache_dir=tiny["cache"])
    assert set(report["levels"]) >= {"roi", "roi_majority"} and report["voting"]["method"] == "soft"
    rois = pd.read_parquet(out / "predictions.parquet").query("level == 'roi'")
    assert (rois["pred"] == (rois["prob"] >= 0.5).astype(int)).all()
    assert report["model"]["run_uri"] == str(tiny["run"])  # the .keras file's run folder is found


def test_calibrate_on_the_evaluated_split_is_refused(tiny, tmp_path):
    with pytest.raises(Exception, match="another split"):
        ev.evaluate(str(tiny["run"]), str(tiny["data"]), tmp_path, split="val", calibrate=True, n_bootstrap=10,
                    cache_dir=tiny["cache"])


def test_cross_validation_fold_of_each(tiny, tmp_path):
    """Two 'fold runs' (the tiny run with data.fold set to 0 and 1) each evaluated on its own fold."""
    data = write_tiny_dataset(tmp_path / "data_cv", seed=3, patients={"train": 12, "test": 4}, folds=2)
    runs = []
    for fold in (0, 1):
        run = tmp_path / f"fold{fold}"
        shutil.copytree(tiny["run"], run, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["data"]["fold"] = fold
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        runs.append(str(run))
    out = tmp_path / "cv"
    result = CliRunner().invoke(cli, ["evaluate", "--model", runs[0], "--model", runs[1], "--data", str(data),
                                      "--fold-of-each", "--out", str(out), "--n-bootstrap", "50",
                                      "--cache-dir", str(tiny["cache"])])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["kind"] == ev.CV_KIND and doc["split"] == ["train"]
    # Each run validated on the fold it is reported on (Xi et al.'s protocol): labelled as optimistic (issue 13).
    assert doc["selection_on_test_fold"] is True and "optimistic" in doc["selection_note"]
    assert all(json.loads((out / f"fold{k}" / "metrics.json").read_text())["selection_on_test_fold"] for k in (0, 1))
    (group,) = doc["groups"].values()
    assert group["folds"] == [0, 1] and group["runs"] == ["fold0", "fold1"]
    assert group["members"] == [{"run": f"fold{k}", "model": "compact_fusion", "fold": k, "uri": runs[k]}
                                for k in (0, 1)]
    roi = group["levels"]["roi"]
    assert roi["n_folds"] == 2 and roi["metrics"]["accuracy"]["n"] == 2
    accs = [json.loads((out / f"fold{k}" / "metrics.json").read_text())["levels"]["roi"]["metrics"]["accuracy"]["value"]
            for k in (0, 1)]
    assert roi["metrics"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    for k in (0, 1):  # each run saw only its fold: 6 patients x 2 ROIs
        rois = pd.read_parquet(out / f"fold{k}" / "predictions.parquet").query("level == 'roi'")
        assert len(rois) == 12 and (rois["fold"] == k).all()
    assert (out / "roc.png").exists()


def test_run_and_data_in_object_storage(tiny, evaluated, request, tmp_path):
    """A gs:// run folder and a gs:// dataset (a real GCS emulator) give the same predictions as local ones."""
    from mammoflow import storage

    bucket = request.getfixturevalue("gcs_bucket")

    for folder, prefix in ((tiny["run"], "runs/tiny"), (tiny["data"], "datasets/tiny")):
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and not rel.startswith(("checkpoints/", "tensorboard/")):
                storage.put_file(path, storage.join(bucket, prefix, rel))
    out = tmp_path / "remote"
    report = ev.evaluate(f"{bucket}/runs/tiny", f"{bucket}/datasets/tiny", out, n_bootstrap=50,
                         cache_dir=tmp_path / "cache")
    assert report["model"]["run_uri"] == f"{bucket}/runs/tiny" and report["model"]["name"] == "compact_fusion"
    local = pd.read_parquet(evaluated / "predictions.parquet").query("level == 'patch'").set_index("id")["prob"]
    remote = pd.read_parquet(out / "predictions.parquet").query("level == 'patch'").set_index("id")["prob"]
    np.testing.assert_allclose(remote[local.index], local, atol=1e-6)


def test_sweep_folder_as_model(tiny, tmp_path):
    """`--model SWEEP` evaluates every finished trial of a sweep folder (trials/<cell>/model.keras)."""
    sweep = tmp_path / "sweep"
    for cell in ("model.name=a", "model.name=b"):
        shutil.copytree(tiny["run"], sweep / "trials" / cell, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    (sweep / "trials" / "unfinished").mkdir()
    (sweep / "results.csv").write_text("trial,status\n")
    assert ev.is_sweep_folder(str(sweep))
    assert [Path(r).name for r in ev.sweep_trials(str(sweep))] == ["model.name=a", "model.name=b"]
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["evaluate", "--model", str(sweep), "--data", str(tiny["data"]), "--out",
                                      str(out), "--n-bootstrap", "20", "--cache-dir", str(tiny["cache"])])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["name"] for r in doc["runs"]] == ["model.name=a", "model.name=b"]
    (group,) = doc["groups"].values()  # identical configs: one group, zero spread
    assert group["levels"]["roi"]["metrics"]["accuracy"]["std"] == 0.0


def test_several_bare_keras_files_are_each_named_and_not_pooled_as_folds(tiny, tmp_path):
    """Two different .keras files without a run folder, both with the Keras name compact_fusion: each is its own
    group, named by its own model (not the first one's), and neither is summarised as a fold of the other."""
    from mammoflow.models import create_model

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(tiny["run"] / "model.keras", bare / "trained.keras")
    create_model("compact_fusion", input_shape=(24, 24, 1), widths=[4], fc_units=[4], seed=0).save(
        bare / "untrained.keras")
    uris = [str(bare / "trained.keras"), str(bare / "untrained.keras")]
    doc = ev.evaluate_many(uris, str(tiny["data"]), tmp_path / "many", n_bootstrap=20, cache_dir=tiny["cache"])
    assert len(doc["groups"]) == 2
    members = [g["members"] for g in doc["groups"].values()]
    assert sorted(m[0]["run"] for m in members) == ["trained", "untrained"] and all(len(m) == 1 for m in members)
    for group in doc["groups"].values():
        (member,) = group["members"]
        assert group["model"] == member["model"] and group["levels"]["roi"]["n_folds"] == 1
    # The same file given twice is one model: one group of two runs.
    twice = ev.evaluate_many([uris[0], uris[0]], str(tiny["data"]), tmp_path / "twice", n_bootstrap=20,
                             cache_dir=tiny["cache"])
    (group,) = twice["groups"].values()
    assert [m["run"] for m in group["members"]] == ["trained", "trained_"]


def test_evaluation_keeps_the_roi_features_of_its_prediction_pass(tiny, evaluated, tmp_path, caplog):
    """save_features: each ROI's mean penultimate features from the pass that predicts, equal to a separate
    feature extraction, with the predictions unchanged; a re-run reuses both."""
    from mammoflow.dataset.cache import LocalCache
    from mammoflow.reproduce.features import roi_features

    out = tmp_path / "with_features"
    ev.evaluate(str(tiny["run"]), str(tiny["data"]), out, n_bootstrap=20, cache_dir=tiny["cache"],
                save_features=True)
    rois, feats = outputs.read_roi_features(out)
    assert len(rois) == 20 and rois["example_id"].is_unique and set(rois["label"]) == {0, 1}
    assert feats.shape == (20, 16)  # fc_units [16]: the input of the softmax layer
    loaded = load_package(str(tiny["run"]))
    shards = LocalCache(tiny["cache"] / "shards").fetch(str(tiny["data"]))["test"]
    ref_rois, ref_feats = roi_features(loaded.model, [str(p) for p in shards], loaded.input_config())
    assert ref_rois["example_id"].tolist() == rois["example_id"].tolist()
    assert ref_rois["label"].tolist() == rois["label"].tolist()
    np.testing.assert_allclose(feats, ref_feats, rtol=1e-4, atol=1e-5)
    # The two-output forward pass predicts what the plain one did.
    plain = pd.read_parquet(evaluated / "predictions.parquet").query("level == 'patch'").set_index("id")["prob"]
    mine = pd.read_parquet(out / "predictions.parquet").query("level == 'patch'").set_index("id")["prob"]
    np.testing.assert_allclose(mine[plain.index], plain, atol=1e-6)
    with caplog.at_level(logging.INFO, logger="mammoflow.evaluation.evaluate"):
        ev.evaluate(str(tiny["run"]), str(tiny["data"]), out, n_bootstrap=20, cache_dir=tiny["cache"],
                    save_features=True)
    assert "reusing the predictions" in caplog.text and outputs.read_roi_features(out) is not None
    # Features of another evaluation are not taken for this one's.
    assert outputs.read_roi_features(out, fingerprint="0" * 64) is None
    assert outputs.read_roi_features(evaluated) is None  # evaluated without save_features


def test_report_of_an_ensemble_evaluation_names_every_member(tiny, evaluated, tmp_path):
    """An evaluation of an ensemble (``model.members``, as `mammoflow reproduce` writes) is reported as every
    member, not as its first one."""
    from mammoflow.evaluation.report import build_report

    evaluation = tmp_path / "ensemble_eval"
    shutil.copytree(evaluated, evaluation)
    doc = json.loads((evaluation / "metrics.json").read_text())
    members = [{**doc["model"], "uri": f"/runs/ours/member{k}", "sha256": f"{k}" * 64} for k in range(3)]
    doc["model"] = {**members[0], "members": members}
    (evaluation / "metrics.json").write_text(json.dumps(doc))
    paths = build_report(str(evaluation), tmp_path / "report")
    md, html = paths["markdown"].read_text(), paths["html"].read_text()
    assert "Evaluation of ensemble of 3 models (compact_fusion)" in md
    assert all(f"/runs/ours/member{k}" in md and f"{k}" * 64 in html for k in range(3))
    assert "first of the 3 ensemble members" in md


def test_whole_image_model(tmp_path):
    """A whole-image model is evaluated per image (one row per image, image-level metrics)."""
    from mammoflow.config import dump_yaml
    from mammoflow.models import create_model
    from mammoflow.training.config import load_train_config

    data = write_tiny_dataset(tmp_path / "data", seed=5, patients={"test": 6})
    run = tmp_path / "run"
    run.mkdir()
    model = create_model("compact_fusion", input_shape=(32, 32, 1), widths=[4, 8], fc_units=[8], seed=0)
    model.save(run / "model.keras")
    cfg = load_train_config({"model": {"name": "compact_fusion"},
                             "data": {"mode": "whole_image", "image_size": 32, "channels": 1, "centring": "none"}})
    (run / "config.yaml").write_text(dump_yaml(cfg.to_dict()))
    (run / "metrics.json").write_text(json.dumps({"label_names": {"0": "normal", "1": "tumour"}}))
    report = ev.evaluate(str(run), str(data), tmp_path / "eval", n_bootstrap=20, cache_dir=tmp_path / "cache")
    assert report["primary_level"] == "image" and report["voting"] is None
    assert set(report["levels"]) == {"image", "breast", "patient"}
    df = pd.read_parquet(tmp_path / "eval" / "predictions.parquet")
    assert len(df[df["level"] == "image"]) == 12 and "patch" not in set(df["level"])


# ------------------------------------------------------------------------------------ pure wiring (no model)


def _patches(rng: np.random.Generator, n_rois: int = 12, n_patches: int = 4) -> pd.DataFrame:
    rows = []
    for r in range(n_rois):
        label = r % 2
        for k in range(n_patches):
            rows.append({"example_id": f"roi{r:02d}", "patch_index": k, "label": label,
                         "patient_id": f"p{r // 3}", "breast_id": f"p{r // 3}:{'LR'[r % 2]}",
                         "record_id": f"rec{r}", "prob": float(np.clip(rng.normal(0.3 + 0.4 * label, 0.25), 0, 1))})
    df = pd.DataFrame(rows)
    df["label"] = df["label"].astype("Int64")
    return df


def test_compute_metrics_ties_levels_and_groups():
    patches = _patches(np.random.default_rng(0))
    # roi00: a 2-2 tie with mean P(tumour) below 0.5 -> normal; roi01: a tie with mean >= 0.5 -> tumour.
    patches.loc[patches["example_id"] == "roi00", "prob"] = [0.9, 0.6, 0.1, 0.2]
    patches.loc[patches["example_id"] == "roi01", "prob"] = [0.9, 0.7, 0.4, 0.3]
    part, tables = lv.compute_metrics(patches, n_bootstrap=200, seed=1)
    rois = tables.units.set_index("example_id")
    assert rois.loc["roi00", "decision"] == 0 and rois.loc["roi01", "decision"] == 1
    assert rois.loc["roi00", "votes_tumour"] == 2
    assert part["bootstrap_unit"] == "patient"
    assert part["levels"]["roi"]["bootstrap"]["n_units"] == 4  # 12 ROIs of 4 patients
    assert part["levels"]["patch"]["bootstrap"]["n_units"] == 4
    assert part["levels"]["patient"]["n"] == 4 and part["levels"]["breast"]["n"] == 8
    # Ranking metrics come from probabilities, so ROI AUC is not the AUC of the voted labels.
    from sklearn.metrics import roc_auc_score

    y = rois["label"].astype(int)
    assert part["levels"]["roi"]["metrics"]["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, rois["prob"]))


def test_compute_metrics_without_patient_ids_resamples_rois():
    patches = _patches(np.random.default_rng(1)).drop(columns=["patient_id", "breast_id"])
    patches["patient_id"] = None
    patches["breast_id"] = None
    part, tables = lv.compute_metrics(patches, n_bootstrap=50)
    assert part["bootstrap_unit"] == "roi" and set(part["levels"]) == {"patch", "roi", "roi_soft"}
    assert part["levels"]["roi"]["bootstrap"]["n_units"] == 12
    assert tables.breasts is None and tables.patients is None


def test_paper_entry_for_registered_models():
    cell = lv.paper_entry_for("vgg16_fusion1", {"branches": [4, 5]})
    assert (cell["paper"], cell["model"], cell["branches"]) == ("yu2020", "VGG16_Fusion1", [4, 5])
    assert lv.paper_entry_for("vgg19_fusion2", {})["branches"] == [1, 2, 3, 4, 5]
    assert lv.paper_entry_for("xi_vgg16")["model"] == "VGGNet"
    assert lv.paper_entry_for("jaamour_mobilenetv2")["model"] == "H"
    assert lv.paper_entry_for("compact_fusion") is None
    levels = {"roi": {"metrics": {"accuracy": {"value": 0.9, "ci_low": 0.8, "ci_high": 0.95}}}}
    comp = lv.paper_comparison("vgg16_fusion1", {"branches": [1, 2, 3, 4, 5]}, levels)
    (row,) = [r for r in comp["rows"] if r["metric"] == "accuracy"]
    assert row["paper"] == pytest.approx(0.8906) and row["paper_within_ci"] is True


def test_positive_probability_is_the_positive_column():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert predictions.positive_probability(probs).tolist() == [0.1, 0.8]
    with pytest.raises(ValueError):
        predictions.positive_probability(np.array([0.1, 0.2]))


def test_missing_model_is_a_clear_error(tmp_path):
    from mammoflow.errors import InputError

    with pytest.raises(InputError, match="neither a training run folder"):
        load_package(tmp_path)
    (tmp_path / "config.yaml").write_text("{}\n")
    with pytest.raises(InputError, match="no trained model here"):
        load_package(tmp_path)


def test_roi_means_average_each_roi_in_order_of_first_appearance():
    ids, means = predictions.roi_means(["b", "a", "b", "a", "c"], np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0],
                                                                  [9.0, 10.0]]))
    assert ids == ["b", "a", "c"]
    np.testing.assert_allclose(means, [[3.0, 4.0], [5.0, 6.0], [9.0, 10.0]])


def test_roi_constants_match_the_support_data():
    assert ROI_SIDE == 48 and PATCH == 24


def test_one_model_package_serves_evaluate_and_predict(tiny, tmp_path):
    """A .keras file inside a run folder is the run's package (config, label names), and `predict` on one ROI gives
    the mean P(tumour) that evaluation's patch rows give for that ROI: one loader, one set of input settings."""
    from mammoflow.dataset.cache import LocalCache
    from mammoflow.dataset.shards import iter_examples
    from mammoflow.training.predict import Predictor

    package = load_package(str(tiny["run"] / "model.keras"))
    assert package.run_uri == str(tiny["run"]) and package.config is not None
    assert package.label_names == ["normal", "tumour"] and package.patch_size == PATCH
    shards = [str(p) for p in LocalCache(tiny["cache"] / "shards").fetch(str(tiny["data"]))["test"]]
    rows = predictions.predict_rows(package, shards, "test")[0]
    example = next(iter_examples(shards[0]))
    predicted = Predictor(None, package=package).predict_array(example.image, example.example_id)
    assert predicted.n_patches == GRID[0] * GRID[1]
    expected = rows.loc[rows["example_id"] == example.example_id, "prob"].mean()
    assert predicted.probabilities["tumour"] == pytest.approx(expected, abs=1e-5)
