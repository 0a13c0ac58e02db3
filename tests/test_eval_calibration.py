"""Reliability curves, expected calibration error and temperature scaling on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit, softmax
from sklearn.metrics import log_loss, roc_auc_score

from mammoflow.evaluation.calibration import (
    apply_temperature,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_curve,
)


def _calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """P(positive) drawn uniformly and labels drawn with exactly that probability."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.01, 0.99, n)
    return (rng.uniform(size=n) < p).astype(int), p


def _overconfident(p: np.ndarray, factor: float = 4.0) -> np.ndarray:
    """The same ranking with logits multiplied by ``factor``: what an over-confident network outputs."""
    return expit(factor * logit(p))


def test_reliability_curve_bins_hand_computed():
    y = [0, 1, 1, 0, 1]
    p = [0.05, 0.15, 0.95, 0.92, 1.0]  # 1.0 belongs to the last bin
    curve = reliability_curve(y, p, n_bins=10)
    assert curve["count"] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 3]
    assert curve["mean_predicted"][0] == pytest.approx(0.05)
    assert curve["mean_predicted"][2] is None and curve["fraction_positive"][2] is None
    assert curve["fraction_positive"][9] == pytest.approx(2 / 3)
    assert curve["mean_predicted"][9] == pytest.approx((0.95 + 0.92 + 1.0) / 3)
    assert curve["bin_lower"][9] == pytest.approx(0.9) and curve["bin_upper"][9] == pytest.approx(1.0)


def test_ece_hand_computed():
    y = [0, 1, 1, 0]
    p = [0.1, 0.3, 0.8, 0.9]
    # bins of width 0.5: [0.1, 0.3] -> |1/2 - 0.2| = 0.3; [0.8, 0.9] -> |1/2 - 0.85| = 0.35; weights 1/2 each
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.325)
    # top label: confidences 0.9, 0.7, 0.8, 0.9; correct 1, 0, 1, 0 -> one bin [0.5, 1]: |0.5 - 0.825|
    assert expected_calibration_error(y, p, n_bins=2, kind="top_label") == pytest.approx(0.325)


def test_ece_is_near_zero_when_calibrated_and_large_when_overconfident():
    y, p = _calibrated(20000, seed=0)
    assert expected_calibration_error(y, p) < 0.02
    assert expected_calibration_error(y, p, kind="top_label") < 0.02
    assert expected_calibration_error(y, _overconfident(p)) > 0.1
    assert expected_calibration_error(y, _overconfident(p), kind="top_label") > 0.1


def test_nll_matches_scikit_learn():
    y, p = _calibrated(500, seed=1)
    assert negative_log_likelihood(y, p) == pytest.approx(log_loss(y, p))


def test_temperature_scaling_fixes_overconfidence_on_held_out_data():
    y_val, p_val = _calibrated(4000, seed=2)
    y_test, p_test = _calibrated(4000, seed=3)
    t = fit_temperature(_overconfident(p_val), y_val)
    assert 3.3 < t < 4.8  # the logits were multiplied by 4
    raw, scaled = _overconfident(p_test), apply_temperature(_overconfident(p_test), t)
    assert negative_log_likelihood(y_test, scaled) < negative_log_likelihood(y_test, raw) - 0.1
    assert expected_calibration_error(y_test, scaled) < 0.03 < expected_calibration_error(y_test, raw)
    assert roc_auc_score(y_test, scaled) == pytest.approx(roc_auc_score(y_test, raw))  # ranking unchanged


def test_temperature_is_about_one_for_calibrated_data_and_accepts_logits():
    y, p = _calibrated(5000, seed=4)
    assert fit_temperature(p, y) == pytest.approx(1.0, abs=0.12)
    t = fit_temperature(3.0 * logit(p), y, from_logits=True)
    assert t == pytest.approx(3.0, rel=0.15)
    np.testing.assert_allclose(apply_temperature(3.0 * logit(p), t, from_logits=True), expit(3.0 * logit(p) / t))


def test_temperature_scaling_for_softmax_outputs():
    rng = np.random.default_rng(5)
    true_logits = rng.normal(0, 1.5, (3000, 3))
    y = np.array([rng.choice(3, p=row) for row in softmax(true_logits, axis=1)])
    overconfident = softmax(3.0 * true_logits, axis=1)
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.15)
    calibrated = apply_temperature(overconfident, t)
    assert calibrated.shape == overconfident.shape
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)
    assert log_loss(y, calibrated) < log_loss(y, overconfident)


def test_calibration_summary_and_bad_input():
    y, p = _calibrated(1000, seed=6)
    summary = calibration_summary(y, p)
    assert set(summary) == {"ece", "ece_top_label", "mce", "brier", "nll", "n_bins"}
    assert summary["mce"] >= summary["ece"]
    assert summary["brier"] == pytest.approx(np.mean((p - y) ** 2))
    with pytest.raises(ValueError):
        apply_temperature(p, 0.0)
    with pytest.raises(ValueError):
        fit_temperature(p * 3, y)  # not probabilities and not declared as logits
    with pytest.raises(ValueError):
        expected_calibration_error(y, p, kind="bogus")  # type: ignore[arg-type]
