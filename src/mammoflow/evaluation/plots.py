"""Evaluation figures as PNG files: ROC, precision-recall, confusion matrix, reliability diagram.

Yu et al. show ROC and PR curves in the paper but their released code never saved them; here every figure is
a file, written atomically (temporary file, then rename), so a report can always link to it. Figures are built
with matplotlib's object API on the Agg canvas: no display, no pyplot global state, nothing left open.

Curve arguments map a legend name to either ``(y_true, y_prob)`` arrays or, for ROC/PR, the dict returned by
:func:`~mammoflow.evaluation.metrics.roc_curve_points` / :func:`~mammoflow.evaluation.metrics.pr_curve_points`
(so a report can redraw curves from saved JSON).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mammoflow.evaluation.calibration import expected_calibration_error, reliability_curve
from mammoflow.evaluation.metrics import pr_curve_points, roc_curve_points

CurveInput = tuple[Any, Any] | Mapping[str, Any]

_FIGSIZE = (5.5, 5.0)
_DPI = 120


def _figure(figsize: tuple[float, float] = _FIGSIZE) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path | str) -> Path:
    """Save as PNG atomically (:func:`mammoflow.storage.atomic_file`) and release the figure's memory."""
    from mammoflow.storage import atomic_file

    path = Path(path)
    try:
        with atomic_file(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        fig.clear()
    return path


def _curve(data: CurveInput, kind: str) -> Mapping[str, Any]:
    if isinstance(data, Mapping):
        return data
    y_true, y_prob = data
    return roc_curve_points(y_true, y_prob) if kind == "roc" else pr_curve_points(y_true, y_prob)


def _check_curves(curves: Mapping[str, Any]) -> None:
    if not curves:
        raise ValueError("give at least one curve (a mapping of legend name to (y_true, y_prob))")


def plot_roc(curves: Mapping[str, CurveInput], path: Path | str, title: str = "ROC curve") -> Path:
    """ROC curves of one or more models, AUC in the legend, chance diagonal dashed."""
    _check_curves(curves)
    fig = _figure()
    ax = fig.add_subplot()
    for name, data in curves.items():
        c = _curve(data, "roc")
        ax.plot(c["fpr"], c["tpr"], lw=2, label=f"{name} (AUC {c['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance (AUC 0.500)")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal", title=title,
           xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_pr(curves: Mapping[str, CurveInput], path: Path | str, title: str = "Precision-recall curve") -> Path:
    """Precision-recall curves, average precision in the legend, prevalence (a random ranking) dashed."""
    _check_curves(curves)
    fig = _figure()
    ax = fig.add_subplot()
    prevalences = []
    for name, data in curves.items():
        c = _curve(data, "pr")
        ax.step(c["recall"], c["precision"], where="post", lw=2, label=f"{name} (AP {c['average_precision']:.3f})")
        prevalences.append(c["prevalence"])
    if len(set(np.round(prevalences, 6))) == 1:
        ax.axhline(prevalences[0], ls="--", color="grey", lw=1, label=f"chance (prevalence {prevalences[0]:.3f})")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal", title=title,
           xlabel="Recall (sensitivity)", ylabel="Precision (positive predictive value)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    return _save(fig, path)


def plot_confusion(cm: Any, class_names: Sequence[str], path: Path | str, normalise: bool = False,
                   title: str = "Confusion matrix") -> Path:
    """Confusion matrix (rows = true class, columns = predicted). ``normalise`` colours each true-class row
    by its fraction (the per-class recall on the diagonal) and prints fraction and count in each cell."""
    counts = np.asarray(cm, dtype=np.int64)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"cm must be {k}x{k} for {k} class names, got shape {counts.shape}")
    support = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    shown = fractions if normalise else counts
    fig = _figure((4.8, 4.2))
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalise else max(int(counts.max()), 1))
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class" if normalise else "count")
    threshold = (1 if normalise else max(int(counts.max()), 1)) / 2
    for i in range(k):
        for j in range(k):
            text = f"{fractions[i, j]:.2f}\n({counts[i, j]})" if normalise else str(counts[i, j])
            ax.text(j, i, text, ha="center", va="center", fontsize="large",
                    color="white" if shown[i, j] > threshold else "black")
    ax.set(xticks=range(k), yticks=range(k), xticklabels=class_names, yticklabels=class_names,
           xlabel="Predicted class", ylabel="True class", title=title + (" (normalised by true class)" if normalise else ""))
    return _save(fig, path)


def plot_reliability(curves: Mapping[str, tuple[Any, Any]], path: Path | str, n_bins: int = 10,
                     title: str = "Reliability diagram") -> Path:
    """Observed fraction of positives against mean predicted P(positive) per bin, ECE in the legend, the
    perfectly calibrated diagonal dashed; below, how many predictions fall in each bin."""
    _check_curves(curves)
    fig = _figure((5.5, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    edges = np.linspace(0, 1, n_bins + 1)
    width = 1 / n_bins / (len(curves) + 1)
    for i, (name, (y_true, y_prob)) in enumerate(curves.items()):
        curve = reliability_curve(y_true, y_prob, n_bins)
        filled = [b for b, c in enumerate(curve["count"]) if c]
        ece = expected_calibration_error(y_true, y_prob, n_bins)
        top.plot([curve["mean_predicted"][b] for b in filled], [curve["fraction_positive"][b] for b in filled],
                 marker="o", lw=2, label=f"{name} (ECE {ece:.3f})")
        bottom.bar(edges[:-1] + (i + 0.5) * width, curve["count"], width=width, align="edge", label=name)
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    top.set(xlim=(0, 1), ylim=(-0.01, 1.01), ylabel="Observed fraction of positives", title=title)
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize="small")
    bottom.set(xlabel="Predicted probability P(positive)", ylabel="Count")
    bottom.grid(alpha=0.3)
    return _save(fig, path)
