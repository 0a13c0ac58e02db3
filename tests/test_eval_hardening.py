"""Issue 13, build item 8: the evaluation details an audit found. The pointing game's chance level follows its own
hit rule (the tolerance), Xi-style cross-validation is labelled as selecting on its test fold, ensemble members
are averaged by ROI id (refused on a mismatch), and degenerate bootstrap intervals are flagged."""

from __future__ import annotations

import numpy as np
import pytest

from mammoflow.evaluation import pointing

# ------------------------------------------------------------------------------------------- (a) pointing game


def _scene(shape=(60, 80), lesion=(30, 30, 5)):
    breast = np.zeros(shape, bool)
    breast[:, :64] = True
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    mask = (rows - lesion[0]) ** 2 + (cols - lesion[1]) ** 2 <= lesion[2] ** 2
    return mask, breast


@pytest.mark.parametrize("tolerance", [0.0, 4.0, 12.0])
def test_chance_is_the_hit_rate_of_a_peak_drawn_uniformly_in_the_breast(tolerance):
    """Enumerate every breast pixel as the map's peak, play the game at that tolerance: the share of hits is the
    chance level, exactly."""
    lesion, breast = _scene()
    hits = []
    for r, c in np.argwhere(breast):
        cam = np.zeros(lesion.shape, np.float32)
        cam[r, c] = 1.0
        hits.append(pointing.pointing_game(cam, lesion, breast, tolerance)["hit"])
    assert pointing.chance_hit_rate(lesion, breast, tolerance) == pytest.approx(np.mean(hits))


def test_chance_with_a_tolerance_is_the_dilated_lesion_not_the_lesion():
    """A 5 px lesion with a 12 px tolerance: the hit region is a disc of about 17 px, so chance is ~11x the lesion
    area over the breast (the old rule reported the bare lesion area)."""
    lesion, breast = _scene()
    bare = pointing.chance_hit_rate(lesion, breast)
    assert bare == pytest.approx(lesion.sum() / breast.sum())
    tolerant = pointing.chance_hit_rate(lesion, breast, 12.0)
    disc = np.pi * 17 ** 2 / breast.sum()
    assert tolerant == pytest.approx(disc, rel=0.08) and tolerant > 8 * bare
    # The cam module serves the same functions (its public API).
    from mammoflow.evaluation import cam as C

    assert C.chance_hit_rate(lesion, breast, 12.0) == tolerant


# ------------------------------------------------------------------------------------------- (d) degenerate CIs


def test_a_collapsed_interval_over_9_patients_is_flagged():
    """9 patients, every one right: the percentile interval of accuracy is [1.0, 1.0]. It is flagged (zero width,
    fewer than 10 units), and so is every metric of the report; 60 patients with errors are not flagged."""
    from mammoflow.evaluation.metrics import bootstrap_ci, report_with_ci

    y = np.array([0, 1] * 9)
    prob = np.where(y == 1, 0.9, 0.1)
    patients = np.repeat(np.arange(9), 2)
    report = report_with_ci(y, prob, groups=patients, n_resamples=2000, seed=0)
    acc = report["metrics"]["accuracy"]
    assert (acc["ci_low"], acc["ci_high"]) == (1.0, 1.0)
    assert acc["degenerate"] is True
    assert "zero width" in acc["degenerate_reason"] and "only 9 resampling unit" in acc["degenerate_reason"]
    assert "accuracy" in report["bootstrap"]["degenerate"]
    single = bootstrap_ci("accuracy", y, prob, groups=patients, n_resamples=2000)
    assert single["degenerate"] is True and "zero width" in single["degenerate_reason"]

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    prob = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.25, 120), 0, 1)
    fine = report_with_ci(y, prob, groups=np.repeat(np.arange(60), 2), n_resamples=2000, seed=0)
    assert fine["metrics"]["accuracy"]["degenerate"] is False
    assert fine["metrics"]["accuracy"]["degenerate_reason"] is None and fine["bootstrap"]["degenerate"] == []


def test_too_few_resamples_is_flagged():
    from mammoflow.evaluation.metrics import report_with_ci

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    prob = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.25, 200), 0, 1)
    cell = report_with_ci(y, prob, n_resamples=200, seed=0)["metrics"]["roc_auc"]
    assert cell["degenerate"] and "only 200 resample(s)" in cell["degenerate_reason"]


def _patches(n_patients: int, rng: np.random.Generator):
    """Patch rows of 2 ROIs (one normal, one tumour) per patient, 4 patches each, all called right."""
    import pandas as pd

    rows = []
    for p in range(n_patients):
        for label in (0, 1):
            for k in range(4):
                rows.append({"example_id": f"p{p}-{label}", "patch_index": k, "label": label,
                             "patient_id": f"p{p}", "breast_id": f"p{p}:L", "record_id": f"p{p}-{label}",
                             "prob": float(0.85 if label else 0.15) + rng.uniform(-0.05, 0.05)})
    df = pd.DataFrame(rows)
    df["label"] = df["label"].astype("Int64")
    return df


def _evaluation_doc(n_patients: int, trained_fold=None, fold=None) -> dict:
    from mammoflow.evaluation import caveats
    from mammoflow.evaluation import evaluate as ev
    from mammoflow.evaluation.levels import compute_metrics

    part, _ = compute_metrics(_patches(n_patients, np.random.default_rng(0)), n_bootstrap=2000, seed=0)
    return {"kind": ev.METRICS_KIND, "split": "train" if fold is not None else "test", "fold": fold,
            "threshold": 0.5, "model": {"name": "tiny", "uri": "/runs/tiny", "sha256": "0" * 64},
            "class_names": ["normal", "tumour"], "positive_class": "tumour", **part, "paper_comparison": None,
            "n_bootstrap": 2000, "seed": 0, **caveats.fold_selection(trained_fold, fold)}


def test_the_report_flags_degenerate_intervals(tmp_path):
    import json

    from mammoflow.evaluation import report as rp

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(_evaluation_doc(9)))
    paths = rp.build_report(str(tmp_path / "eval"), tmp_path / "report")
    md, html = paths["markdown"].read_text(), paths["html"].read_text()
    for text in (md, html):
        assert "Patient level: the confidence intervals of accuracy" in text and "are degenerate (zero width" in text
        assert "100.0% to 100.0%, degenerate" in text
    assert "Optimistic estimate" not in md  # a plain test-split evaluation has no selection caveat


# ------------------------------------------------------------------------------------------- (b) CV on its fold


def test_an_evaluation_on_the_runs_own_validation_fold_is_labelled(tmp_path):
    import json

    from mammoflow.evaluation import caveats
    from mammoflow.evaluation import report as rp

    assert caveats.fold_selection(2, 2)["selection_on_test_fold"] is True
    assert caveats.fold_selection(None, None) == {"selection_on_test_fold": False}
    assert caveats.fold_selection(None, 2)["selection_on_test_fold"] is False  # a model trained without folds
    doc = _evaluation_doc(30, trained_fold=1, fold=1)
    assert doc["selection_on_test_fold"] is True and "optimistic" in doc["selection_note"]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(doc))
    paths = rp.build_report(str(tmp_path / "eval"), tmp_path / "report")
    md, html = paths["markdown"].read_text(), paths["html"].read_text()
    assert "**model selection on the reported fold**" in md and "<b>model selection on the reported fold</b>" in html
    assert "Optimistic estimate, model selection on the reported fold" in md


def test_a_cross_validation_summary_on_each_runs_own_fold_is_labelled(tmp_path):
    import json

    from mammoflow.evaluation import caveats
    from mammoflow.evaluation import report as rp

    level = {"metrics": {"accuracy": {"mean": 0.8, "std": 0.1, "min": 0.7, "max": 0.9, "n": 2}}, "n_folds": 2}
    members = [{"run": f"fold{k}", "model": "xi_vgg16", "fold": k, "uri": f"/runs/fold{k}"} for k in range(2)]
    for fold_of_each, expected in ((True, True), (False, False)):
        doc = {"kind": "mammoflow.evaluation.cross_validation", "split": ["train"], "fold_of_each": fold_of_each,
               **caveats.cv_selection(fold_of_each), "data": {"uri": "/data"},
               "groups": {"g": {"model": "xi_vgg16", "members": members, "runs": ["fold0", "fold1"],
                                "folds": [0, 1], "levels": {"roi": level}}}}
        folder = tmp_path / f"cv{fold_of_each}"
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps(doc))
        md = rp.build_report(str(folder), folder / "report")["markdown"].read_text()
        assert ("**model selection on the reported fold**, faithful to Xi et al. 2018 but optimistic" in md) is expected
        assert ("Optimistic estimate" in md) is expected
        assert rp.cv_section(doc)["selection_on_test_fold"] is expected


# ------------------------------------------------------------------------------------------- (c) ensembles by id


def _member(order: list[tuple[str, int]], probs: dict[tuple[str, int], float]):
    import pandas as pd

    df = pd.DataFrame({"example_id": [e for e, _ in order], "patch_index": [k for _, k in order]})
    df["label"] = pd.array([1 if e.startswith("t") else 0 for e, _ in order], dtype="Int64")
    df["prob"] = [probs[key] for key in order]
    df["p0"], df["p1"] = 1 - df["prob"], df["prob"]
    return df


def test_ensemble_members_are_averaged_by_roi_id_not_by_row_position():
    from mammoflow.reproduce.predict import average_members

    keys = [("n1", 0), ("n1", 1), ("t1", 0), ("t1", 1)]
    a = _member(keys, {("n1", 0): 0.1, ("n1", 1): 0.2, ("t1", 0): 0.8, ("t1", 1): 0.9})
    b = _member(keys[::-1], {("n1", 0): 0.3, ("n1", 1): 0.4, ("t1", 0): 0.6, ("t1", 1): 0.7})  # other row order
    mean = average_members([a, b])
    assert list(zip(mean["example_id"], mean["patch_index"], strict=True)) == keys
    np.testing.assert_allclose(mean["prob"], [0.2, 0.3, 0.7, 0.8])
    np.testing.assert_allclose(mean["p0"], 1 - mean["prob"])
    # Row position would have averaged n1's patches with t1's: 0.1 with 0.7 -> 0.4.
    np.testing.assert_allclose(average_members([a])["prob"], a["prob"])


@pytest.mark.parametrize("change", ["missing", "extra", "renamed", "duplicated", "relabelled"])
def test_ensemble_members_that_predicted_other_rois_are_refused(change):
    from mammoflow.errors import ConfigError
    from mammoflow.reproduce.predict import average_members

    keys = [("n1", 0), ("t1", 0), ("t2", 0)]
    probs = {k: 0.5 for k in [*keys, ("t3", 0)]}
    a = _member(keys, probs)
    other = {"missing": keys[:2], "extra": [*keys, ("t3", 0)], "renamed": [keys[0], keys[1], ("t3", 0)],
             "duplicated": [keys[0], keys[0], keys[1], keys[2]], "relabelled": keys}[change]
    b = _member(other, probs)
    if change == "relabelled":
        b.loc[b["example_id"] == "t2", "label"] = 0
    with pytest.raises(ConfigError) as err:
        average_members([a, b], names=["seed 0", "seed 1"])
    assert "seed 1" in str(err.value) and "Fix:" in str(err.value)


def test_the_reproduction_report_marks_degenerate_intervals():
    from mammoflow.reproduce.report import _pair, fmt_ci, metric_cells

    flat = {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0, "degenerate": True}
    assert fmt_ci(flat) == "1.0000 [1.0000, 1.0000] (degenerate interval)"
    assert "degenerate" not in fmt_ci({**flat, "ci_low": 0.9, "degenerate": False})
    cells = metric_cells({"metrics": {"accuracy": 0.9}}, {"accuracy": flat}, None)
    acc = next(c for c in cells if c["metric"] == "accuracy")
    assert acc["degenerate"] is True and "(degenerate interval)" in _pair(acc)


def test_a_cross_validation_sweep_report_says_its_numbers_are_on_the_validation_fold(tmp_path):
    import json

    from mammoflow.evaluation import report as rp

    for axis, expected in (("data.fold", True), ("model.name", False)):
        sweep = tmp_path / axis
        sweep.mkdir()
        (sweep / "results.csv").write_text(f"trial,status,epochs,best_val_loss,axis:{axis}\n"
                                           f"{axis}=0,finished,5,0.31,0\n{axis}=1,finished,5,0.35,1\n")
        (sweep / "summary.json").write_text(json.dumps({"trials": 2, "finished": 2, "stopped_early": 0, "failed": 0,
                                                        "metric": "val_loss", "mode": "min", "best_trial": "0"}))
        md = rp.build_report(str(sweep), tmp_path / f"out-{axis}")["markdown"].read_text()
        assert ("Cross-validation sweep: each trial's numbers are on the fold it validated on" in md) is expected


def test_a_degenerate_interval_is_flagged_in_the_flat_dashboard_metrics():
    """The flat metrics (KFP's Metrics artifact, ``pipeline run``'s terminal lines) carry the flag beside the
    bounds: 1.0 for the collapsed interval over 9 patients, 0.0 for a real one over 60."""
    from mammoflow.evaluation.metrics import report_with_ci
    from mammoflow.steps import primary_metrics

    y = np.array([0, 1] * 9)
    collapsed = report_with_ci(y, np.where(y == 1, 0.9, 0.1), groups=np.repeat(np.arange(9), 2), n_resamples=2000,
                               seed=0)
    rng = np.random.default_rng(0)
    y2 = rng.integers(0, 2, 120)
    fine = report_with_ci(y2, np.clip(0.3 + 0.4 * y2 + rng.normal(0, 0.25, 120), 0, 1),
                          groups=np.repeat(np.arange(60), 2), n_resamples=2000, seed=0)
    flat = primary_metrics({"primary_level": "roi", "levels": {"roi": collapsed, "patch": fine}})
    assert flat["roi_accuracy_ci_degenerate"] == 1.0 and flat["roi_accuracy_ci_low"] == 1.0
    assert flat["patch_accuracy_ci_degenerate"] == 0.0
    assert set(flat) >= {"roi_accuracy", "roi_accuracy_ci_high", "patch_accuracy_ci_low"}
