"""Binary classification metrics with bootstrap confidence intervals, in one stable JSON schema.

None of the three papers gives an interval: Yu et al.'s 0.8906 accuracy rests on 64 test ROIs, where one ROI
moves the accuracy by 1.6 points. Following the evaluation practice of nyukat/mammography_metarepository,
every metric here comes with a 2,000-replicate percentile bootstrap 95% CI; when rows are correlated (patches
of one ROI, ROIs of one patient) the bootstrap resamples the *groups*, not the rows.

Conventions
-----------
* Labels are 0/1 with 1 the positive class (``class_names[1]``, "tumour" by default); ``y_prob`` is
  P(positive) (for a softmax model the probability of class 1, never the top-class probability).
* Hard predictions are ``y_prob >= threshold`` unless ``y_pred`` is given (e.g. ROI majority votes).
  ROC-AUC and PR-AUC are always computed from ``y_prob``.
* A precision/recall/F1 whose denominator is zero is reported as 0.0 (scikit-learn's ``zero_division=0``,
  and what Yu et al.'s Table 1 prints); ROC-AUC and PR-AUC with a single class are ``null``. In the
  bootstrap, resamples where a metric is undefined are left out of that metric's interval and counted in
  ``bootstrap.skipped``.
* ``pr_auc`` is the average precision (step-wise, as ``sklearn.metrics.average_precision_score``), not the
  trapezoidal area, which is optimistic for PR curves.
* A percentile interval that cannot be trusted is flagged ``"degenerate": true`` with a ``degenerate_reason``
  (:func:`degenerate_reason`): zero width (every resample gave the same value, e.g. [1.0, 1.0] when all 9
  patients are right), fewer than :data:`MIN_UNITS` resampling units, or fewer than :data:`MIN_RESAMPLES`
  resamples where the metric is defined. ``bootstrap.degenerate`` lists the flagged metrics.

JSON schema (``METRICS_SCHEMA_VERSION = 1``)
--------------------------------------------
``classification_report`` and ``report_with_ci`` return (and ``write_metrics_json`` writes)::

    {
      "schema_version": 1,
      "class_names": ["normal", "tumour"],       # index = label value
      "positive_class": "tumour",
      "threshold": 0.5,                          # null when y_pred was given
      "n": 64,                                   # rows evaluated
      "support": {"normal": 41, "tumour": 23},
      "metrics": {                               # keys from metric_names(class_names)
        "accuracy": 0.89,                        # classification_report: a number (or null)
        "roc_auc": {"value": 0.93, "ci_low": 0.86, "ci_high": 0.98, "n": 64,    # report_with_ci
                    "degenerate": false, "degenerate_reason": null},
        ...
      },
      "confusion_matrix": {
        "labels": ["normal", "tumour"],          # rows = true class, columns = predicted class
        "counts": [[tn, fp], [fn, tp]],
        "normalised": [[tn/41, fp/41], [fn/23, tp/23]]   # each row divided by its support
      },
      "bootstrap": {                             # report_with_ci only
        "n_resamples": 2000, "alpha": 0.05, "method": "percentile", "seed": 0,
        "unit": "row" | "group", "n_units": 64,
        "skipped": {"roc_auc": 0, ...},          # resamples where the metric was undefined
        "degenerate": ["sensitivity", ...]       # metrics whose interval is flagged degenerate
      }
    }

Metric keys: ``accuracy``, ``balanced_accuracy``, ``sensitivity`` (= positive-class recall),
``specificity`` (= negative-class recall), ``roc_auc``, ``pr_auc`` and, per class ``c``, ``c_recall``,
``c_precision``, ``c_f1``. Adding a key is backwards compatible; renaming or removing one bumps the version.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammoflow.storage import atomic_write_text

log = logging.getLogger(__name__)

METRICS_SCHEMA_VERSION = 1
RANK_METRICS = ("roc_auc", "pr_auc")
# Elements per (resamples x rows) block: bounds the bootstrap's memory to ~100 MB whatever the data size.
_BLOCK_ELEMENTS = 1_000_000
# Below these a percentile interval is flagged degenerate: with fewer than 10 resampled units (patients, ROIs) the
# bootstrap distribution is a handful of values and misses its nominal coverage; fewer than 1,000 defined resamples
# put only ~25 draws in each 2.5% tail (Efron & Tibshirani 1993, ch. 13: B >= 1,000 for percentile intervals).
MIN_UNITS = 10
MIN_RESAMPLES = 1000

MetricFn = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


def metric_names(class_names: Sequence[str] = ("normal", "tumour")) -> tuple[str, ...]:
    """The metric keys a report holds, in a stable order."""
    neg, pos = _check_class_names(class_names)
    return ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "roc_auc", "pr_auc",
            f"{neg}_recall", f"{neg}_precision", f"{neg}_f1", f"{pos}_recall", f"{pos}_precision", f"{pos}_f1")


def _check_class_names(class_names: Sequence[str]) -> tuple[str, str]:
    names = tuple(class_names)
    if len(names) != 2 or names[0] == names[1] or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"class_names must be two distinct non-empty names, got {class_names!r}")
    return names  # type: ignore[return-value]


def _inputs(y_true: Any, y_prob: Any, y_pred: Any = None,
            threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (labels, probabilities, predictions) as int8 / float64 / int8 arrays of one length."""
    y = np.asarray(y_true)
    prob = np.asarray(y_prob, dtype=np.float64)
    if y.ndim != 1 or prob.ndim != 1:
        raise ValueError(f"y_true and y_prob must be one-dimensional, got shapes {y.shape} and {prob.shape}")
    if y.size == 0:
        raise ValueError("no samples to evaluate")
    if y.size != prob.size:
        raise ValueError(f"{y.size} labels but {prob.size} probabilities")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if not np.isfinite(prob).all() or (prob < 0).any() or (prob > 1).any():
        raise ValueError("y_prob must be finite probabilities P(positive) in [0, 1]")
    if y_pred is None:
        pred = (prob >= threshold).astype(np.int8)
    else:
        pred = np.asarray(y_pred)
        if pred.shape != y.shape or not np.isin(pred, (0, 1)).all():
            raise ValueError("y_pred must be 0/1 labels of the same length as y_true")
        pred = pred.astype(np.int8)
    return y.astype(np.int8), prob, pred


@dataclass(frozen=True)
class _Ranked:
    """Rows sorted by score once, with the extent of each group of tied scores (for weighted AUC/AP)."""

    order: np.ndarray  # ascending score order
    pos_sorted: np.ndarray  # float 0/1
    level_start: np.ndarray  # per sorted position: first position of its tie group
    level_end: np.ndarray  # per sorted position: one past the last position of its tie group

    @classmethod
    def build(cls, y: np.ndarray, score: np.ndarray) -> _Ranked:
        order = np.argsort(score, kind="stable")
        s = score[order]
        new_level = np.r_[True, s[1:] != s[:-1]]
        starts = np.flatnonzero(new_level)
        ends = np.r_[starts[1:], s.size]
        level = np.cumsum(new_level) - 1
        return cls(order, (y[order] == 1).astype(np.float64), starts[level], ends[level])


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den > 0)


def _rank_metrics(weights_sorted: np.ndarray, ranked: _Ranked) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and average precision for each row of a (resamples x rows) weight matrix in score order.

    AUC = P(score_pos > score_neg) + 0.5 P(tie) over weighted pairs (Mann-Whitney); AP = sum over positives
    of the precision at their score level (ties form one level, as in scikit-learn), divided by P. Integer
    weights give exactly the metrics of the resample that repeats row i weights[i] times.
    """
    pos_w = weights_sorted * ranked.pos_sorted
    neg_w = weights_sorted - pos_w
    b, n = weights_sorted.shape
    cum_pos = np.zeros((b, n + 1))
    cum_neg = np.zeros((b, n + 1))
    np.cumsum(pos_w, axis=1, out=cum_pos[:, 1:])
    np.cumsum(neg_w, axis=1, out=cum_neg[:, 1:])
    p_total, n_total = cum_pos[:, -1], cum_neg[:, -1]
    neg_below = cum_neg[:, ranked.level_start]
    neg_tied = cum_neg[:, ranked.level_end] - neg_below
    auc = _ratio(np.einsum("ij,ij->i", pos_w, neg_below + 0.5 * neg_tied), p_total * n_total)
    # Predicting positive at a level's score means everything at or above the level is predicted positive.
    tp_at = p_total[:, None] - cum_pos[:, ranked.level_start]
    fp_at = n_total[:, None] - neg_below
    precision_at = np.divide(tp_at, tp_at + fp_at, out=np.zeros_like(tp_at), where=(tp_at + fp_at) > 0)
    # With no negatives AP is trivially 1; treated as undefined like the AUC, so both skip the same resamples.
    ap = _ratio(np.einsum("ij,ij->i", pos_w, precision_at), p_total * (n_total > 0))
    return auc, ap


def _weighted_metrics(weights: np.ndarray, y: np.ndarray, pred: np.ndarray, ranked: _Ranked,
                      class_names: tuple[str, str]) -> dict[str, np.ndarray]:
    """Every metric for each row of a (resamples x rows) matrix of row weights; NaN where undefined."""
    pos, pp = y == 1, pred == 1
    tp = weights @ (pos & pp).astype(np.float64)
    fn = weights @ (pos & ~pp).astype(np.float64)
    fp = weights @ (~pos & pp).astype(np.float64)
    tn = weights @ (~pos & ~pp).astype(np.float64)
    neg_name, pos_name = class_names
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    auc, ap = _rank_metrics(weights[:, ranked.order], ranked)
    return {
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "balanced_accuracy": (sens + spec) / 2,
        "sensitivity": sens,
        "specificity": spec,
        "roc_auc": auc,
        "pr_auc": ap,
        f"{neg_name}_recall": spec,
        f"{neg_name}_precision": _ratio(tn, tn + fn),
        f"{neg_name}_f1": _ratio(2 * tn, 2 * tn + fn + fp),
        f"{pos_name}_recall": sens,
        f"{pos_name}_precision": _ratio(tp, tp + fp),
        f"{pos_name}_f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _point_value(name: str, value: float) -> float | None:
    """Report convention for a metric that is undefined on the full data (see module docstring)."""
    if math.isnan(value):
        return None if name in RANK_METRICS else 0.0
    return float(value)


def _confusion(y: np.ndarray, pred: np.ndarray, class_names: tuple[str, str]) -> dict[str, Any]:
    counts = np.zeros((2, 2), dtype=np.int64)
    np.add.at(counts, (y, pred), 1)
    support = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, support, out=np.zeros((2, 2)), where=support > 0)
    return {"labels": list(class_names), "counts": counts.tolist(), "normalised": normalised.tolist()}


def _report_header(y: np.ndarray, class_names: tuple[str, str], threshold: float | None) -> dict[str, Any]:
    n_pos = int(y.sum())
    return {
        "schema_version": METRICS_SCHEMA_VERSION,
        "class_names": list(class_names),
        "positive_class": class_names[1],
        "threshold": threshold,
        "n": int(y.size),
        "support": {class_names[0]: int(y.size - n_pos), class_names[1]: n_pos},
    }


def classification_report(y_true: Any, y_prob: Any, threshold: float = 0.5, y_pred: Any = None,
                          class_names: Sequence[str] = ("normal", "tumour")) -> dict[str, Any]:
    """Point estimates of every metric (schema in the module docstring; metric values are numbers)."""
    names = _check_class_names(class_names)
    y, prob, pred = _inputs(y_true, y_prob, y_pred, threshold)
    values = _weighted_metrics(np.ones((1, y.size)), y, pred, _Ranked.build(y, prob), names)
    report = _report_header(y, names, None if y_pred is not None else float(threshold))
    report["metrics"] = {k: _point_value(k, float(v[0])) for k, v in values.items()}
    report["confusion_matrix"] = _confusion(y, pred, names)
    return report


def _units(groups: Any, n: int) -> tuple[np.ndarray | None, int]:
    """Per-row index of its resampling unit (None: rows are the units) and the number of units."""
    if groups is None:
        return None, n
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must give one group per row ({n}), got shape {g.shape}")
    _, inverse = np.unique(g, return_inverse=True)
    return inverse.ravel(), int(inverse.max()) + 1


def _resampled_weights(rng: np.random.Generator, n_resamples: int, n_rows: int,
                       unit_of_row: np.ndarray | None, n_units: int) -> Any:
    """Yield (block x rows) matrices of how often each row is drawn, resampling units with replacement."""
    block = max(1, min(n_resamples, _BLOCK_ELEMENTS // max(n_rows, n_units)))
    done = 0
    while done < n_resamples:
        size = min(block, n_resamples - done)
        draws = rng.integers(0, n_units, size=(size, n_units))
        flat = draws + (np.arange(size) * n_units)[:, None]
        counts = np.bincount(flat.ravel(), minlength=size * n_units).reshape(size, n_units).astype(np.float64)
        yield counts if unit_of_row is None else counts[:, unit_of_row]
        done += size


def _percentile_ci(stats: np.ndarray, alpha: float) -> tuple[float | None, float | None, int]:
    """Percentile interval of the defined (non-NaN) resample statistics, and how many were undefined."""
    valid = stats[~np.isnan(stats)]
    skipped = int(stats.size - valid.size)
    if valid.size == 0:
        return None, None, skipped
    lo, hi = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi), skipped


def degenerate_reason(value: float | None, lo: float | None, hi: float | None, n_defined: int,
                      n_units: int) -> str | None:
    """Why a percentile interval cannot be trusted as a 95% CI, or None when it can (or there is no value)."""
    if value is None:
        return None
    reasons = []
    if lo is None or hi is None:
        reasons.append("no resample where the metric is defined")
    elif hi - lo <= 1e-12:
        reasons.append(f"zero width ([{lo:.4g}, {hi:.4g}]): every resample gave the same value, which says the "
                       "sample is too small or too uniform, not that the value is certain")
    if n_units < MIN_UNITS:
        reasons.append(f"only {n_units} resampling unit(s) (< {MIN_UNITS})")
    if 0 < n_defined < MIN_RESAMPLES:
        reasons.append(f"only {n_defined} resample(s) where the metric is defined (< {MIN_RESAMPLES})")
    return "; ".join(reasons) or None


def _flag(cell: dict[str, Any], n_defined: int, n_units: int) -> dict[str, Any]:
    reason = degenerate_reason(cell["value"], cell["ci_low"], cell["ci_high"], n_defined, n_units)
    cell.update(degenerate=reason is not None, degenerate_reason=reason)
    return cell


def _check_bootstrap_args(n_resamples: int, alpha: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _bootstrap_all(y: np.ndarray, prob: np.ndarray, pred: np.ndarray, class_names: tuple[str, str],
                   groups: Any, n_resamples: int, seed: int | np.random.Generator) -> tuple[dict[str, np.ndarray], int]:
    unit_of_row, n_units = _units(groups, y.size)
    rng = np.random.default_rng(seed)
    ranked = _Ranked.build(y, prob)
    parts: dict[str, list[np.ndarray]] = {}
    for weights in _resampled_weights(rng, n_resamples, y.size, unit_of_row, n_units):
        for name, values in _weighted_metrics(weights, y, pred, ranked, class_names).items():
            parts.setdefault(name, []).append(values)
    return {k: np.concatenate(v) for k, v in parts.items()}, n_units


def bootstrap_ci(metric_fn: str | MetricFn, y_true: Any, y_prob: Any, y_pred: Any = None, *,
                 n_resamples: int = 2000, alpha: float = 0.05, seed: int | np.random.Generator = 0,
                 groups: Any = None, threshold: float = 0.5, class_names: Sequence[str] = ("normal", "tumour"),
                 needs_both_classes: bool = False) -> dict[str, Any]:
    """Percentile bootstrap (1 - alpha) CI of one metric, resampling ``groups`` (ROIs, patients) if given.

    ``metric_fn`` is a metric key (see :func:`metric_names`; computed vectorised, 2,000 resamples of a few
    thousand rows in well under a second) or any ``f(y_true, y_prob, y_pred) -> float`` (called once per
    resample; resamples where it returns NaN/None, or that hold one class when ``needs_both_classes``, are
    skipped). Returns ``{"value", "ci_low", "ci_high", "n", "n_resamples", "n_skipped", "alpha", "unit",
    "degenerate", "degenerate_reason"}``.
    """
    _check_bootstrap_args(n_resamples, alpha)
    names = _check_class_names(class_names)
    y, prob, pred = _inputs(y_true, y_prob, y_pred, threshold)
    if isinstance(metric_fn, str):
        if metric_fn not in metric_names(names):
            raise ValueError(f"unknown metric {metric_fn!r}; use one of {metric_names(names)} or a callable")
        value = classification_report(y, prob, threshold, pred, names)["metrics"][metric_fn]
        stats, _ = _bootstrap_all(y, prob, pred, names, groups, n_resamples, seed)
        resampled = stats[metric_fn]
    else:
        value = _callable_value(metric_fn, y, prob, pred, needs_both_classes)
        resampled = _bootstrap_callable(metric_fn, y, prob, pred, groups, n_resamples, seed, needs_both_classes)
    lo, hi, skipped = _percentile_ci(resampled, alpha)
    if skipped:
        log.info("bootstrap of %s: %d of %d resamples undefined and skipped", metric_fn, skipped, n_resamples)
    out = {"value": value, "ci_low": lo, "ci_high": hi, "n": int(y.size), "n_resamples": n_resamples,
           "n_skipped": skipped, "alpha": alpha, "unit": "row" if groups is None else "group"}
    return _flag(out, n_resamples - skipped, _units(groups, y.size)[1])


def _callable_value(fn: MetricFn, y: np.ndarray, prob: np.ndarray, pred: np.ndarray,
                    needs_both_classes: bool) -> float | None:
    if needs_both_classes and np.unique(y).size < 2:
        return None
    out = fn(y, prob, pred)
    return None if out is None or math.isnan(float(out)) else float(out)


def _bootstrap_callable(fn: MetricFn, y: np.ndarray, prob: np.ndarray, pred: np.ndarray, groups: Any,
                        n_resamples: int, seed: int | np.random.Generator, needs_both_classes: bool) -> np.ndarray:
    unit_of_row, n_units = _units(groups, y.size)
    rng = np.random.default_rng(seed)
    rows = np.arange(y.size)
    stats = []
    for weights in _resampled_weights(rng, n_resamples, y.size, unit_of_row, n_units):
        for counts in weights.astype(np.int64):
            idx = np.repeat(rows, counts)
            value = _callable_value(fn, y[idx], prob[idx], pred[idx], needs_both_classes)
            stats.append(np.nan if value is None else value)
    return np.asarray(stats, dtype=np.float64)


def report_with_ci(y_true: Any, y_prob: Any, y_pred: Any = None, *, threshold: float = 0.5,
                   class_names: Sequence[str] = ("normal", "tumour"), groups: Any = None,
                   n_resamples: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """:func:`classification_report` with every metric as ``{"value", "ci_low", "ci_high", "n"}``.

    One set of bootstrap resamples serves all metrics (so their intervals are consistent with each other).
    Pass ``groups`` (e.g. the ROI id of each patch, the patient id of each ROI) whenever rows are not
    independent: resampling rows would then give intervals that are too narrow.
    """
    _check_bootstrap_args(n_resamples, alpha)
    names = _check_class_names(class_names)
    y, prob, pred = _inputs(y_true, y_prob, y_pred, threshold)
    report = classification_report(y, prob, threshold, pred, names)
    report["threshold"] = None if y_pred is not None else float(threshold)
    stats, n_units = _bootstrap_all(y, prob, pred, names, groups, n_resamples, seed)
    skipped: dict[str, int] = {}
    metrics: dict[str, dict[str, Any]] = {}
    for name, value in report["metrics"].items():
        lo, hi, skipped[name] = _percentile_ci(stats[name], alpha)
        if value is None:
            lo = hi = None
        metrics[name] = _flag({"value": value, "ci_low": lo, "ci_high": hi, "n": int(y.size)},
                              n_resamples - skipped[name], n_units)
    report["metrics"] = metrics
    degenerate = [name for name, cell in metrics.items() if cell["degenerate"]]
    if degenerate:
        log.warning("degenerate bootstrap interval(s) over %d %s(s): %s", n_units,
                    "row" if groups is None else "group", ", ".join(degenerate))
    report["bootstrap"] = {"n_resamples": n_resamples, "alpha": alpha, "method": "percentile", "seed": seed,
                           "unit": "row" if groups is None else "group", "n_units": n_units,
                           "skipped": skipped, "degenerate": degenerate}
    return report


def _finite_threshold(thresholds: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """scikit-learn marks the 'predict nothing positive' point with +inf; JSON and KFP need a number."""
    out = np.asarray(thresholds, dtype=np.float64).copy()
    above = np.nextafter(max(1.0, float(scores.max())), np.inf)
    out[~np.isfinite(out)] = above
    return out


def _thin(n: int, max_points: int | None) -> np.ndarray:
    if max_points is None or n <= max_points:
        return np.arange(n)
    if max_points < 2:
        raise ValueError("max_points must be at least 2 (the two ends of the curve)")
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))


def roc_curve_points(y_true: Any, y_prob: Any, max_points: int | None = None) -> dict[str, Any]:
    """ROC curve as lists ``fpr``, ``tpr``, ``thresholds`` (+ ``auc``), ready for JSON, plots and KFP's
    ``ClassificationMetrics.log_roc_curve(fpr, tpr, threshold)``. ``max_points`` thins long curves evenly."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y, prob, _ = _inputs(y_true, y_prob)
    if np.unique(y).size < 2:
        raise ValueError("a ROC curve needs both classes in y_true")
    fpr, tpr, thr = roc_curve(y, prob)
    keep = _thin(fpr.size, max_points)
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(),
            "thresholds": _finite_threshold(thr, prob)[keep].tolist(), "auc": float(roc_auc_score(y, prob))}


def pr_curve_points(y_true: Any, y_prob: Any, max_points: int | None = None) -> dict[str, Any]:
    """Precision-recall curve as equal-length lists ``precision``, ``recall``, ``thresholds`` (the last
    point, recall 0 and precision 1, gets a threshold above every score) + ``average_precision`` and
    ``prevalence`` (the precision of a random ranking, the baseline of the plot)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, prob, _ = _inputs(y_true, y_prob)
    if y.sum() == 0:
        raise ValueError("a precision-recall curve needs at least one positive in y_true")
    precision, recall, thr = precision_recall_curve(y, prob)
    thresholds = _finite_threshold(np.r_[thr, np.inf], prob)
    keep = _thin(precision.size, max_points)
    return {"precision": precision[keep].tolist(), "recall": recall[keep].tolist(),
            "thresholds": thresholds[keep].tolist(), "average_precision": float(average_precision_score(y, prob)),
            "prevalence": float(y.mean())}


def _scalar_metrics(fold: Mapping[str, Any]) -> dict[str, float]:
    """Metric -> number from a report (point or with CI) or from a flat ``{metric: number}`` dict."""
    metrics = fold.get("metrics", fold)
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, Mapping):
            value = value.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            continue
        out[name] = float(value)
    return out


def cross_validation_summary(folds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof=1; null with one fold), min and max of each metric over folds.

    Xi et al. 2018 report the mean accuracy of five folds; the spread shows how much of a difference between
    two models is fold noise. Each fold is a report from this module or a flat ``{metric: value}`` dict;
    undefined (null) values are left out and ``n`` says how many folds a metric's numbers come from.
    """
    if not folds:
        raise ValueError("cross_validation_summary needs at least one fold")
    per_fold = [_scalar_metrics(f) for f in folds]
    names = list(dict.fromkeys(name for fold in per_fold for name in fold))
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        values = np.array([fold[name] for fold in per_fold if name in fold])
        summary[name] = {"mean": float(values.mean()),
                         "std": float(values.std(ddof=1)) if values.size > 1 else None,
                         "min": float(values.min()), "max": float(values.max()), "n": int(values.size)}
    return {"schema_version": METRICS_SCHEMA_VERSION, "n_folds": len(folds), "metrics": summary}


def jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps(allow_nan=False)`` accepts: numpy scalars/arrays to Python, NaN to null."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_metrics_json(report: Mapping[str, Any], path: Path | str) -> Path:
    """Write a report atomically as sorted, indented JSON (NaN written as null)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(jsonable(report), indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path
