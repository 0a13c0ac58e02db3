"""Metrics against scikit-learn, bootstrap confidence intervals, curves and cross-validation summaries."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from sklearn import metrics as skm

from mammoflow.evaluation.metrics import (
    METRICS_SCHEMA_VERSION,
    bootstrap_ci,
    classification_report,
    cross_validation_summary,
    metric_names,
    pr_curve_points,
    report_with_ci,
    roc_curve_points,
    write_metrics_json,
)


def _scores(n: int, seed: int, separation: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Labels and P(positive) with a given class separation; rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    prob = np.clip(rng.normal(0.4 + separation * y, 0.2), 0, 1).round(2)
    return y, prob


@pytest.mark.parametrize("threshold", [0.5, 0.35])
def test_every_metric_matches_scikit_learn(threshold):
    y, prob = _scores(300, seed=3)
    pred = (prob >= threshold).astype(int)
    report = classification_report(y, prob, threshold=threshold)
    m = report["metrics"]
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, labels=[0, 1])
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    for i, name in enumerate(("normal", "tumour")):
        assert m[f"{name}_precision"] == pytest.approx(precision[i])
        assert m[f"{name}_recall"] == pytest.approx(recall[i])
        assert m[f"{name}_f1"] == pytest.approx(f1[i])
        assert report["support"][name] == support[i]
    assert m["sensitivity"] == pytest.approx(recall[1])
    assert m["specificity"] == pytest.approx(recall[0])
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, prob))
    cm = skm.confusion_matrix(y, pred, labels=[0, 1])
    assert report["confusion_matrix"]["counts"] == cm.tolist()
    np.testing.assert_allclose(report["confusion_matrix"]["normalised"],
                               skm.confusion_matrix(y, pred, labels=[0, 1], normalize="true"))
    assert report["threshold"] == threshold


def test_given_predictions_override_the_threshold_but_not_the_auc():
    y, prob = _scores(200, seed=4)
    votes = np.random.default_rng(0).integers(0, 2, y.size)
    report = classification_report(y, prob, y_pred=votes, class_names=("benign", "malignant"))
    assert report["threshold"] is None
    assert report["metrics"]["accuracy"] == pytest.approx(skm.accuracy_score(y, votes))
    assert report["metrics"]["malignant_recall"] == pytest.approx(skm.recall_score(y, votes))
    assert report["metrics"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob))
    assert set(report["metrics"]) == set(metric_names(("benign", "malignant")))


def test_undefined_metrics_follow_the_documented_conventions():
    y = np.array([0, 0, 1, 1])
    everything_positive = classification_report(y, [0.9, 0.8, 0.7, 0.6])
    assert everything_positive["metrics"]["normal_precision"] == 0.0  # sklearn zero_division=0
    assert everything_positive["metrics"]["normal_precision"] == skm.precision_score(y, [1] * 4, pos_label=0,
                                                                                   zero_division=0)
    one_class = classification_report([1, 1, 1], [0.2, 0.6, 0.9])
    assert one_class["metrics"]["roc_auc"] is None
    assert one_class["metrics"]["pr_auc"] is None


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        classification_report([0, 1], [0.5])
    with pytest.raises(ValueError):
        classification_report([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError):
        classification_report([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError):
        classification_report([0, 1], [0.2, 0.7], class_names=("a", "a"))


def test_vectorised_bootstrap_equals_a_plain_loop_over_the_same_resamples():
    # The callable path draws the same resamples from the same seed, one sklearn call per resample.
    y, prob = _scores(120, seed=5)
    groups = np.arange(y.size) // 4
    for g in (None, groups):
        fast = bootstrap_ci("roc_auc", y, prob, n_resamples=300, seed=11, groups=g)
        slow = bootstrap_ci(lambda t, p, _: skm.roc_auc_score(t, p), y, prob, n_resamples=300, seed=11,
                            groups=g, needs_both_classes=True)
        assert fast["value"] == pytest.approx(slow["value"])
        assert fast["ci_low"] == pytest.approx(slow["ci_low"])
        assert fast["ci_high"] == pytest.approx(slow["ci_high"])
        fast_ap = bootstrap_ci("pr_auc", y, prob, n_resamples=200, seed=2, groups=g)
        slow_ap = bootstrap_ci(lambda t, p, _: skm.average_precision_score(t, p), y, prob, n_resamples=200,
                               seed=2, groups=g, needs_both_classes=True)
        assert fast_ap["ci_low"] == pytest.approx(slow_ap["ci_low"])
        assert fast_ap["ci_high"] == pytest.approx(slow_ap["ci_high"])


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_data():
    widths = {}
    for n in (50, 2000):
        y, prob = _scores(n, seed=n)
        for name in ("accuracy", "roc_auc", "tumour_f1"):
            ci = bootstrap_ci(name, y, prob, seed=1)
            assert ci["ci_low"] <= ci["value"] <= ci["ci_high"], (n, name, ci)
            assert ci["n"] == n and ci["n_resamples"] == 2000
            widths[n, name] = ci["ci_high"] - ci["ci_low"]
    for name in ("accuracy", "roc_auc", "tumour_f1"):
        # width shrinks roughly as 1 / sqrt(n): sqrt(2000 / 50) ~ 6.3
        assert widths[50, name] > 3 * widths[2000, name], (name, widths)


def test_group_resampling_is_wider_than_row_resampling_for_correlated_rows():
    # 40 ROIs of 25 patches each; patches of one ROI share most of their score (a strong ROI effect).
    rng = np.random.default_rng(7)
    n_groups, per_group = 40, 25
    roi_label = rng.integers(0, 2, n_groups)
    roi_score = rng.normal(0.45 + 0.1 * roi_label, 0.15)
    groups = np.repeat(np.arange(n_groups), per_group)
    y = roi_label[groups]
    prob = np.clip(roi_score[groups] + rng.normal(0, 0.02, groups.size), 0, 1)
    by_row = report_with_ci(y, prob, n_resamples=1000, seed=0)
    by_group = report_with_ci(y, prob, n_resamples=1000, seed=0, groups=groups)
    assert by_group["bootstrap"]["unit"] == "group" and by_group["bootstrap"]["n_units"] == n_groups
    for name in ("accuracy", "roc_auc"):
        row = by_row["metrics"][name]["ci_high"] - by_row["metrics"][name]["ci_low"]
        grp = by_group["metrics"][name]["ci_high"] - by_group["metrics"][name]["ci_low"]
        assert grp > 2.5 * row, (name, row, grp)


def test_resamples_with_one_class_are_skipped_and_counted_for_auc():
    y = np.array([0, 0, 0, 0, 0, 1])
    prob = np.array([0.1, 0.2, 0.3, 0.4, 0.7, 0.6])
    report = report_with_ci(y, prob, n_resamples=2000, seed=3)
    skipped = report["bootstrap"]["skipped"]
    # P(no positive among 6 draws) = (5/6)^6 = 0.335
    assert 550 < skipped["roc_auc"] < 800
    assert skipped["pr_auc"] == skipped["roc_auc"]
    assert skipped["accuracy"] == 0
    auc = report["metrics"]["roc_auc"]
    assert auc["value"] == pytest.approx(0.8)
    assert auc["ci_low"] is not None and 0 <= auc["ci_low"] <= auc["ci_high"] <= 1


def test_bootstrap_is_seeded():
    y, prob = _scores(100, seed=8)
    a = bootstrap_ci("accuracy", y, prob, n_resamples=500, seed=42)
    b = bootstrap_ci("accuracy", y, prob, n_resamples=500, seed=42)
    c = bootstrap_ci("accuracy", y, prob, n_resamples=500, seed=43)
    assert a == b
    assert (a["ci_low"], a["ci_high"]) != (c["ci_low"], c["ci_high"])


def test_bootstrap_of_a_few_thousand_rows_is_fast():
    y, prob = _scores(3000, seed=9)
    start = time.perf_counter()
    report_with_ci(y, prob, n_resamples=2000, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"2,000 resamples of 3,000 rows took {elapsed:.1f} s (target < 2 s on one core)"


def test_report_with_ci_schema_is_json_and_stable(tmp_path):
    y, prob = _scores(80, seed=10)
    report = report_with_ci(y, prob, n_resamples=200, seed=0)
    assert report["schema_version"] == METRICS_SCHEMA_VERSION
    assert list(report["metrics"]) == list(metric_names())
    for cell in report["metrics"].values():
        assert set(cell) == {"value", "ci_low", "ci_high", "n", "degenerate", "degenerate_reason"}
        assert cell["n"] == 80
    assert set(report) >= {"class_names", "positive_class", "threshold", "n", "support", "confusion_matrix",
                           "bootstrap"}
    path = write_metrics_json(report, tmp_path / "out" / "metrics.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_roc_curve_points_match_scikit_learn_and_are_json_ready():
    y, prob = _scores(500, seed=12)
    points = roc_curve_points(y, prob)
    fpr, tpr, _ = skm.roc_curve(y, prob)
    np.testing.assert_allclose(points["fpr"], fpr)
    np.testing.assert_allclose(points["tpr"], tpr)
    assert points["auc"] == pytest.approx(skm.roc_auc_score(y, prob))
    assert all(np.isfinite(points["thresholds"])) and points["thresholds"][0] > 1.0
    json.dumps(points, allow_nan=False)
    thin = roc_curve_points(y, prob, max_points=10)
    assert len(thin["fpr"]) <= 10
    assert (thin["fpr"][0], thin["tpr"][0], thin["fpr"][-1], thin["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)


def test_pr_curve_points_are_equal_length_lists():
    y, prob = _scores(300, seed=13)
    points = pr_curve_points(y, prob)
    precision, recall, _ = skm.precision_recall_curve(y, prob)
    np.testing.assert_allclose(points["precision"], precision)
    np.testing.assert_allclose(points["recall"], recall)
    assert len(points["thresholds"]) == len(points["precision"])
    assert points["average_precision"] == pytest.approx(skm.average_precision_score(y, prob))
    assert points["prevalence"] == pytest.approx(y.mean())
    with pytest.raises(ValueError):
        roc_curve_points([1, 1], [0.3, 0.4])


def test_cross_validation_summary_over_five_folds():
    folds = []
    for k in range(5):
        y, prob = _scores(100, seed=100 + k)
        folds.append(classification_report(y, prob) if k % 2 else report_with_ci(y, prob, n_resamples=50))
    summary = cross_validation_summary(folds)
    assert summary["n_folds"] == 5
    acc = np.array([f["metrics"]["accuracy"] if k % 2 else f["metrics"]["accuracy"]["value"]
                    for k, f in enumerate(folds)])
    cell = summary["metrics"]["accuracy"]
    assert cell["mean"] == pytest.approx(acc.mean())
    assert cell["std"] == pytest.approx(acc.std(ddof=1))
    assert (cell["min"], cell["max"], cell["n"]) == (pytest.approx(acc.min()), pytest.approx(acc.max()), 5)
    flat = cross_validation_summary([{"accuracy": 0.9, "roc_auc": None}])
    assert flat["metrics"] == {"accuracy": {"mean": 0.9, "std": None, "min": 0.9, "max": 0.9, "n": 1}}
