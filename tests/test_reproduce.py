"""`mammoflow reproduce yu2020`: TTA, threshold choice on validation, the paper pairing, and the real-data path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammoflow.errors import ConfigError
from mammoflow.reproduce.predict import (
    choose_threshold,
    dihedral,
    predict_tta,
    roi_scores,
    roi_table,
    tta_views,
)
from mammoflow.reproduce.report import metric_cells, paper_model_of, paper_tables, render_html, verdict
from mammoflow.reproduce.yu2020 import reproduce_yu2020, weights_overrides

# --------------------------------------------------------------------------------------------- TTA


def test_dihedral_views_are_the_eight_distinct_symmetries_of_the_square():
    x = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    views = [dihedral(x, i) for i in range(8)]
    assert np.array_equal(views[0], x)
    assert len({v.tobytes() for v in views}) == 8
    assert all(v.shape == x.shape for v in views)
    # view 1 is one quarter turn: four of them are the identity
    turned = x
    for _ in range(4):
        turned = dihedral(turned, 1)
    assert np.array_equal(turned, x)
    # a mirror applied twice is the identity, and views keep each patch's pixel multiset
    assert np.array_equal(dihedral(dihedral(x, 4), 4), x)
    assert np.array_equal(np.sort(views[5][1].ravel()), np.sort(x[1].ravel()))
    with pytest.raises(ValueError):
        dihedral(x, 8)
    with pytest.raises(ValueError):
        tta_views(3)


def test_predict_tta_averages_views_of_a_real_keras_model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    # A 3x3 conv without symmetry, so the views give different outputs.
    h = keras.layers.Conv2D(4, 3, padding="valid")(inputs)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(2, activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(1).normal(size=(3, 8, 8, 1)).astype(np.float32)
    single = predict_tta(model, x, 1)
    assert np.allclose(single, model.predict_on_batch(x), atol=1e-6)
    eight = predict_tta(model, x, 8)
    by_hand = np.mean([model.predict_on_batch(dihedral(x, i)) for i in range(8)], axis=0)
    assert np.allclose(eight, by_hand, atol=1e-6)
    assert not np.allclose(eight, single, atol=1e-4)
    assert np.allclose(eight.sum(axis=1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------------------------- threshold


def _patch_rows(roi_probs: list[float], labels: list[int], patches: int = 5) -> pd.DataFrame:
    rows = []
    for i, (p, y) in enumerate(zip(roi_probs, labels, strict=True)):
        rows += [{"example_id": f"r{i:02d}", "label": y, "prob": p} for _ in range(patches)]
    df = pd.DataFrame(rows)
    df["label"] = df["label"].astype("Int64")
    return df


def test_choose_threshold_keeps_the_target_recall_with_the_fewest_false_alarms():
    # Tumour ROIs at 0.30, 0.45, 0.70, 0.90; normal ROIs at 0.10, 0.20, 0.35, 0.60.
    val = _patch_rows([0.30, 0.45, 0.70, 0.90, 0.10, 0.20, 0.35, 0.60], [1, 1, 1, 1, 0, 0, 0, 0])
    choice = choose_threshold(val, "soft", target_recall=1.0)
    # Every tumour must be found: threshold <= 0.30; the best accuracy there is at (0.20, 0.30].
    assert choice.met_target and choice.val_recall == 1.0
    assert 0.20 < choice.threshold <= 0.30
    assert choice.val_accuracy == pytest.approx(6 / 8)
    rois = roi_table(val, "soft", choice.threshold)
    assert roi_scores(rois["label"].to_numpy(), rois["decision"].to_numpy()) == (1.0, 6 / 8)
    # A lower target lets the threshold rise and drop a false alarm.
    assert choose_threshold(val, "soft", target_recall=0.75).threshold > 0.30
    assert choose_threshold(val, "soft", target_recall=0.75).to_dict()["fitted_on"] == "val"


def test_choose_threshold_reports_an_unreachable_target():
    val = _patch_rows([0.99, 0.98], [0, 1])  # the tumour scores below a normal: recall 1 forces a false alarm
    choice = choose_threshold(val, "soft", target_recall=1.0, grid=[0.985, 0.995])
    assert not choice.met_target and choice.val_recall == 0.0


# --------------------------------------------------------------------------------------------- report pieces


def test_verdict_against_our_interval():
    assert verdict(0.89, 0.80, 0.95) == "match"
    assert verdict(0.70, 0.80, 0.95) == "beat"
    assert verdict(0.97, 0.80, 0.95) == "miss"
    assert verdict(None, 0.8, 0.9) == "n/a"


def test_paper_model_names_and_weights_options():
    assert paper_model_of("vgg16_fusion1", [4, 5]) == ("VGG16_Fusion1", [4, 5])
    assert paper_model_of("vgg19_fusion2", None) == ("VGG19_Fusion2", [1, 2, 3, 4, 5])
    assert paper_model_of("vgg16_gap", None) == ("VGG16", None)
    assert paper_model_of("compact_fusion", None) is None
    assert weights_overrides(None) == {"model.weights": "imagenet"}
    assert weights_overrides("none") == {"model.weights": "none"}
    assert weights_overrides("gs://b/m.weights.h5") == {"model.weights": "gs://b/m.weights.h5"}
    assert weights_overrides("/m/vgg16_notop.h5") == {"model.weights": "none",
                                                       "model.params.backbone_weights": "/m/vgg16_notop.h5"}
    with pytest.raises(ConfigError):
        weights_overrides("model.pt")


def test_paper_tables_pair_a_cell_with_its_row_and_leave_the_rest_not_run():
    ours = {"accuracy": {"value": 0.80, "ci_low": 0.70, "ci_high": 0.88},
            "tumour_recall": {"value": 0.95, "ci_low": 0.85, "ci_high": 1.0}}
    report = {"model": {"name": "vgg16_fusion2", "config": {"model": {"params": {"branches": [3, 4, 5]}}}},
              "levels": {"roi": {"metrics": ours}}}
    tables = paper_tables({"cellA": {"report": report, "cell_report": None}}, n_bootstrap=200)
    assert [t["table"] for t in tables] == ["Table 1", "Table 2", "Table 3"]
    rows = [r for t in tables for r in t["rows"]]
    paired = [r for r in rows if r["cell"] == "cellA"]
    assert len(paired) == 1 and paired[0]["model"] == "VGG16_Fusion2" and paired[0]["branches"] == [3, 4, 5]
    acc = next(c for c in paired[0]["metrics"] if c["metric"] == "accuracy")
    assert acc["paper"] == 0.8438 and acc["ours"] == 0.80 and acc["verdict"] == "match"
    rec = next(c for c in paired[0]["metrics"] if c["metric"] == "tumour_recall")
    assert rec["paper"] == 0.9130 and rec["verdict"] == "match"
    # the paper's own interval, from its implied confusion counts (32+... of 64 ROIs), contains its value
    assert acc["paper_ci_low"] < 0.8438 < acc["paper_ci_high"]
    others = [r for r in rows if r["cell"] is None]
    assert others and all(c["verdict"] == "not run" for r in others for c in r["metrics"])


def test_metric_cells_without_our_run():
    cells = metric_cells({"metrics": {"accuracy": 0.9}}, None, None)
    assert next(c for c in cells if c["metric"] == "accuracy")["verdict"] == "not run"


def test_html_rendering_escapes_and_embeds_images():
    md = "# T\n\n> **Note:** a <b> note\n\n| a | b |\n| --- | --- |\n| 0.9 / 0.8 [0.7, 0.9] match | x |\n\n![t](f.png)\n"
    html = render_html(md, "Title <x>", {"f.png": "data:image/png;base64,AAAA"})
    assert "&lt;b&gt;" in html and "<b>Note:</b>" in html and "Title &lt;x&gt;" in html
    assert '<span class="match">match</span>' in html and 'src="data:image/png;base64,AAAA"' in html
    assert html.count("<tr>") == 2


def test_cpu_budget_refuses_pretrained_weights(tmp_path):
    with pytest.raises(ConfigError, match="from scratch"):
        reproduce_yu2020(tmp_path / "missing.zip", tmp_path / "out", weights="imagenet", budget="cpu")


# --------------------------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.realdata
def test_fast_reproduction_on_the_released_rois(mias_rois_zip: Path, tmp_path: Path):
    """The whole path on Yu et al.'s real ROIs, reduced: one cell, 2/4 patches per ROI, one short epoch."""
    from click.testing import CliRunner

    from mammoflow.cli import cli

    out = tmp_path / "yu"
    args = ["reproduce", "yu2020", "--data", str(mias_rois_zip), "--out", str(out), "--budget", "fast",
            "--weights", "none", "--set", "data.patches_per_roi={normal: 2, tumour: 4}",
            "--set", "schedule.steps_per_epoch=6", "--n-bootstrap", "300"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "vgg16_fusion1_b12345: ROI accuracy" in result.output

    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["counts"]["test"] == {"normal": 41, "tumour": 23}
    assert summary["weights"] == "none" and summary["budget"]["name"] == "fast"
    # 25 grid patches per test ROI were voted into 64 ROI decisions
    preds = pd.read_parquet(out / "evaluations" / "vgg16_fusion1_b12345" / "predictions.parquet")
    rois = preds[preds["level"] == "roi"]
    assert len(rois) == 64 and set(rois["n_patches"]) == {25}
    assert len(preds[preds["level"] == "patch"]) == 64 * 25

    row = next(r for t in summary["tables"] for r in t["rows"]
               if r["model"] == "VGG16_Fusion1" and r["branches"] == [1, 2, 3, 4, 5])
    assert row["cell"] == "vgg16_fusion1_b12345"
    acc = next(c for c in row["metrics"] if c["metric"] == "accuracy")
    ours = summary["cells"]["vgg16_fusion1_b12345"]["roi"]["accuracy"]
    assert acc["paper"] == 0.8906 and acc["ours"] == ours["value"]
    assert acc["ci_low"] <= acc["ours"] <= acc["ci_high"] and acc["verdict"] in ("match", "beat", "miss")
    # votes over 64 ROIs: accuracy is a multiple of 1/64
    assert round(ours["value"] * 64) == pytest.approx(ours["value"] * 64)

    md = (out / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| **VGG16_Fusion1** | [1,2,3,4,5]"))
    assert f"0.8906 / {ours['value']:.4f} [{ours['ci_low']:.4f}, {ours['ci_high']:.4f}]" in line
    assert "0.9130 / " in line  # the paper's tumour recall beside ours
    assert "weights: none" in md and "not the paper's protocol" in md
    html = (out / "report.html").read_text()
    assert "0.8906 / " in html and "data:image/png;base64," in html
    assert (out / "tsne" / "tsne.png").stat().st_size > 1000
    tsne = pd.read_csv(out / "tsne" / "tsne.csv")
    assert len(tsne) == 64 and set(tsne["label"]) == {0, 1}
    # The t-SNE reuses the features of the evaluation's prediction pass (the model is not run again for it).
    from mammoflow.evaluation.outputs import read_roi_features

    kept, _feats = read_roi_features(out / "evaluations" / "vgg16_fusion1_b12345")
    assert tsne["example_id"].tolist() == kept["example_id"].tolist() == rois["example_id"].tolist()
    assert tsne["label"].tolist() == rois["label"].astype(int).tolist()
    assert (out / "reports" / "vgg16_fusion1_b12345" / "report.html").exists()


@pytest.mark.slow
@pytest.mark.realdata
def test_cpu_budget_on_the_released_rois_fits_its_choices_on_validation(mias_rois_zip: Path, tmp_path: Path):
    """Our from-scratch path, shrunk (a tiny network, a few steps): threshold and temperature come from the
    validation split, the test split is reported with CIs, and the report states the target check."""
    out = tmp_path / "cpu"
    tiny = {"model.params": {"widths": [4, 8], "fc_units": [8]}, "schedule.steps_per_epoch": 3,
            "data.patches_per_roi": {"normal": 1, "tumour": 1},
            "schedule.phases": [{"epochs": 1, "learning_rate": 1.0e-3, "trainable_backbone": True}]}
    result = reproduce_yu2020(mias_rois_zip, out, budget="cpu", overrides=tiny, n_bootstrap=200)
    info = result.cells["ours"]
    report = info["report"]
    protocol = json.loads((out / "evaluations" / "ours" / "protocol.json").read_text())
    assert protocol["threshold"]["fitted_on"] == "val" and protocol["tta_views"] == 8
    assert report["threshold"] == protocol["threshold"]["threshold"]
    assert report["calibration"]["temperature"]["fitted_on"] == "val"
    roi = report["levels"]["roi"]
    assert roi["n"] == 64 and roi["support"] == {"normal": 41, "tumour": 23}
    acc = roi["metrics"]["accuracy"]
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]
    # the paper's decision rule on the same model: one view, majority vote at 0.5
    rule = info["paper_rule_report"]
    assert rule["threshold"] == 0.5 and rule["voting"]["method"] == "majority"
    assert rule["protocol"]["tta_views"] == 1

    summary = json.loads((out / "summary.json").read_text())
    ours = summary["ours"]
    assert ours["model"] == "compact_fusion" and ours["train_wall_s"] > 0
    assert ours["target"]["met"] == (ours["target"]["accuracy_met"] and ours["target"]["recall_met"])
    assert [c["model"] for c in ours["comparisons"]] == ["VGG16_Fusion1", "VGG16_Fusion2"]
    md = (out / "report.md").read_text()
    assert "## Our from-scratch CPU model" in md and "fitted on validation" in md
    assert ("**met**" in md) == ours["target"]["met"]
    assert (out / "tsne" / "tsne.png").exists()


def test_paper_budget_sweeps_every_cell_of_tables_1_to_3_with_the_paper_counts():
    from mammoflow.reproduce.budgets import get_budget
    from mammoflow.reproduce.yu2020 import paper_sweep_spec
    from mammoflow.sweep.spec import base_config, expand_cells, trial_config, validate_cells

    spec = paper_sweep_spec(get_budget("paper"), "/mirror/vgg_notop.h5")
    cells = expand_cells(spec)
    validate_cells(spec, cells)
    configs = [trial_config(base_config(spec), c)[1] for c in cells]
    assert len(configs) == 22  # 4 fusion models x 5 branch subsets + the VGG16/VGG19 GAP baselines
    names = {(c.model.name, tuple(c.model.params.get("branches", ()))) for c in configs}
    assert ("vgg19_fusion2", (2, 3, 4, 5)) in names and ("vgg16_gap", ()) in names
    for c in configs:  # the paper's protocol (Sec. 3.2 and the released code) in every trial
        assert c.data.patches_per_roi == {"normal": 500, "tumour": 2000} and c.total_epochs == 5
        assert c.data.patch_size == 72 and c.data.eval_grid == (5, 5) and c.data.centring == "patch_mean"
        assert c.model.params["backbone_weights"] == "/mirror/vgg_notop.h5"  # also in the baselines
    assert spec.resources["gpu"] in (0.0, 1.0) and spec.resources["cpu"] >= 1  # a local Ray can run it
    assert paper_sweep_spec(get_budget("paper"), None, address="auto").resources == {"cpu": 4, "gpu": 1}
