"""Are the probabilities honest? Reliability curves, calibration errors and temperature scaling.

Jaamour et al. 2023 list "a probability/confidence with every prediction" as future work; a probability is only
useful to a clinician if a predicted 0.8 is a tumour about 80% of the time. Deep networks are typically
over-confident; temperature scaling (Guo et al. 2017) divides the logits by one scalar T > 0 fitted on the
validation split (never the test split) by minimising the negative log-likelihood. It does not change the
ranking, so AUCs are unchanged; only the probabilities (and thresholded decisions at 0.5) move.

Binning: ``n_bins`` equal-width bins on [0, 1]; bin ``i`` covers ``[i/n, (i+1)/n)`` and the last bin also
holds 1.0. ECE = sum over bins of ``(n_bin / N) * |observed - predicted|``, where for ``kind="positive"``
(default, the quantity the reliability diagram shows) predicted = mean P(positive) and observed = fraction
of positives in the bin; for ``kind="top_label"`` (Guo et al.'s definition) predicted = mean confidence
``max(p, 1 - p)`` and observed = accuracy of the thresholded decision in the bin.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before taking logs (Keras' epsilon)
_LOG_T_BOUNDS = (float(np.log(0.01)), float(np.log(100.0)))


def _binary_inputs(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape or y.size == 0:
        raise ValueError(f"y_true and y_prob must be non-empty 1-D arrays of one length, got {y.shape}, {p.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("y_prob must be probabilities P(positive) in [0, 1]")
    return y.astype(np.int64), p


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.digitize(p, edges[1:-1], right=False)


def reliability_curve(y_true: Any, y_prob: Any, n_bins: int = 10) -> dict[str, list]:
    """Per equal-width bin: ``bin_lower``, ``bin_upper``, ``count``, ``mean_predicted`` and
    ``fraction_positive`` (None for empty bins), as JSON-ready lists."""
    y, p = _binary_inputs(y_true, y_prob)
    idx = _bin_index(p, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    mean_p = [float(s / c) if c else None for s, c in zip(sum_p, count, strict=True)]
    frac = [float(s / c) if c else None for s, c in zip(sum_y, count, strict=True)]
    return {"bin_lower": edges[:-1].tolist(), "bin_upper": edges[1:].tolist(), "count": count.tolist(),
            "mean_predicted": mean_p, "fraction_positive": frac}


def expected_calibration_error(y_true: Any, y_prob: Any, n_bins: int = 10,
                               kind: Literal["positive", "top_label"] = "positive",
                               threshold: float = 0.5) -> float:
    """ECE with equal-width bins (definition in the module docstring); 0 is perfectly calibrated."""
    y, p = _binary_inputs(y_true, y_prob)
    if kind == "positive":
        conf, outcome = p, y.astype(np.float64)
    elif kind == "top_label":
        pred = (p >= threshold).astype(np.int64)
        conf, outcome = np.maximum(p, 1 - p), (pred == y).astype(np.float64)
    else:
        raise ValueError(f"kind must be 'positive' or 'top_label', got {kind!r}")
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    gap = np.abs(np.bincount(idx, weights=outcome, minlength=n_bins) - np.bincount(idx, weights=conf, minlength=n_bins))
    # sum_b (n_b / N) |mean_outcome_b - mean_conf_b| = sum_b |sum_outcome_b - sum_conf_b| / N
    return float(gap.sum() / count.sum())


def negative_log_likelihood(y_true: Any, y_prob: Any) -> float:
    """Mean binary cross-entropy of P(positive), probabilities clipped to [1e-7, 1 - 1e-7]."""
    y, p = _binary_inputs(y_true, y_prob)
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def calibration_summary(y_true: Any, y_prob: Any, n_bins: int = 10) -> dict[str, float]:
    """ECE (both kinds), maximum calibration error, Brier score and NLL, for a report."""
    y, p = _binary_inputs(y_true, y_prob)
    curve = reliability_curve(y, p, n_bins)
    gaps = [abs(f - m) for f, m in zip(curve["fraction_positive"], curve["mean_predicted"], strict=True)
            if f is not None]
    return {"ece": expected_calibration_error(y, p, n_bins),
            "ece_top_label": expected_calibration_error(y, p, n_bins, kind="top_label"),
            "mce": float(max(gaps)), "brier": float(np.mean((p - y) ** 2)),
            "nll": negative_log_likelihood(y, p), "n_bins": n_bins}


def _logits(scores: Any, from_logits: bool) -> np.ndarray:
    """Binary scores (N,) or class scores (N, K) as logits (log-probabilities for K classes)."""
    z = np.asarray(scores, dtype=np.float64)
    if z.ndim not in (1, 2) or z.shape[0] == 0:
        raise ValueError(f"scores must be a non-empty (N,) or (N, K) array, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("scores must be finite")
    if from_logits:
        return z
    if (z < 0).any() or (z > 1).any():
        raise ValueError("probabilities must be in [0, 1]; pass from_logits=True for logits")
    p = np.clip(z, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p) if z.ndim == 1 else np.log(p)


def _nll_at(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    from scipy.special import logsumexp

    s = z / temperature
    if s.ndim == 1:  # binary cross-entropy with logits: log(1 + e^s) - y s
        return float(np.mean(np.logaddexp(0.0, s) - y * s))
    return float(np.mean(logsumexp(s, axis=1) - s[np.arange(s.shape[0]), y]))


def fit_temperature(scores_val: Any, y_val: Any, from_logits: bool = False) -> float:
    """Temperature T > 0 minimising the validation NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    ``scores_val``: P(positive) of shape (N,) or class probabilities (N, K), or logits with
    ``from_logits=True`` (prefer logits: probabilities saturated at 0 or 1 have lost information).
    ``y_val``: 0/1 labels, or class indices for (N, K). T > 1 softens over-confident outputs. Searched in
    [0.01, 100] on a log scale (scipy's bounded scalar minimiser).
    """
    from scipy.optimize import minimize_scalar

    z = _logits(scores_val, from_logits)
    y = np.asarray(y_val).astype(np.int64)
    if y.shape != (z.shape[0],):
        raise ValueError(f"y_val must have one label per row ({z.shape[0]}), got shape {y.shape}")
    n_classes = 2 if z.ndim == 1 else z.shape[1]
    if (y < 0).any() or (y >= n_classes).any():
        raise ValueError(f"y_val must hold class indices in [0, {n_classes - 1}]")
    result = minimize_scalar(lambda log_t: _nll_at(z, y, float(np.exp(log_t))), bounds=_LOG_T_BOUNDS,
                             method="bounded", options={"xatol": 1e-5})
    temperature = float(np.exp(result.x))
    if np.isclose(result.x, _LOG_T_BOUNDS, atol=1e-3).any():
        log.warning("temperature %.3g is at the edge of the search range: the validation set may be "
                    "separable or a single class", temperature)
    log.info("temperature scaling: T = %.4f (validation NLL %.4f -> %.4f)", temperature,
             _nll_at(z, y, 1.0), _nll_at(z, y, temperature))
    return temperature


def apply_temperature(scores: Any, temperature: float, from_logits: bool = False) -> np.ndarray:
    """Calibrated probabilities, same shape as ``scores``: sigmoid(z / T) for (N,), softmax(z / T) for (N, K)."""
    from scipy.special import expit, softmax

    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    z = _logits(scores, from_logits) / temperature
    return expit(z) if z.ndim == 1 else softmax(z, axis=1)
