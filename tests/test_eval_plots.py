"""Evaluation figures are written as real, non-empty PNG files, atomically, with nothing left open."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from mammoflow.evaluation.metrics import classification_report, roc_curve_points
from mammoflow.evaluation.plots import plot_confusion, plot_pr, plot_reliability, plot_roc

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def scores() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    return {
        "VGG16_Fusion1": (y, np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)),
        "VGG16": (y, np.clip(rng.normal(0.45 + 0.1 * y, 0.2), 0, 1)),
    }


def _check_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o644  # shared like every output, not owner-only like a temporary file


def test_plot_roc_and_pr(tmp_path, scores):
    _check_png(plot_roc(scores, tmp_path / "roc.png"))
    y, prob = scores["VGG16"]
    _check_png(plot_roc({"from saved points": roc_curve_points(y, prob)}, tmp_path / "roc_points.png"))
    _check_png(plot_pr(scores, tmp_path / "figs" / "pr.png"))


def test_plot_confusion_counts_and_normalised(tmp_path, scores):
    y, prob = scores["VGG16_Fusion1"]
    cm = classification_report(y, prob)["confusion_matrix"]["counts"]
    _check_png(plot_confusion(cm, ("normal", "tumour"), tmp_path / "cm.png"))
    _check_png(plot_confusion(cm, ("normal", "tumour"), tmp_path / "cm_norm.png", normalise=True))
    with pytest.raises(ValueError):
        plot_confusion(cm, ("normal", "benign", "malignant"), tmp_path / "bad.png")


def test_plot_reliability(tmp_path, scores):
    _check_png(plot_reliability(scores, tmp_path / "reliability.png", n_bins=10))


def test_plots_overwrite_and_leave_no_pyplot_figures(tmp_path, scores):
    import matplotlib.pyplot as plt

    path = tmp_path / "roc.png"
    path.write_bytes(b"stale")
    plot_roc(scores, path)
    _check_png(path)
    assert plt.get_fignums() == []
    with pytest.raises(ValueError):
        plot_roc({}, tmp_path / "empty.png")
