"""ROI features from a patch model's penultimate layer and their t-SNE map (Yu et al. 2020, Fig. 1).

Yu et al. show a t-SNE of the ROIs to argue that fused features separate normal from tumour ROIs. Here an ROI's
feature vector is the mean, over its evaluation-grid patches (25 for the paper's 5x5 grid), of the model's
penultimate layer: the input of the final softmax layer. For a whole-ROI model it is that layer on the ROI itself.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def roi_features(model: Any, shard_paths: Sequence[str], input_cfg: Any,
                 image_size: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """(one row per ROI: ``example_id``, ``label``; features ``[n_rois, d]``), the mean over each ROI's patches.

    For a model without an evaluation to reuse: ``evaluate(..., save_features=True)`` keeps the same features
    from its prediction pass (:func:`mammoflow.evaluation.outputs.read_roi_features`).
    """
    from mammoflow.dataset.pipeline import eval_dataset, whole_image_dataset
    from mammoflow.evaluation.predictions import roi_means, run_model

    paths = list(map(str, shard_paths))
    data = eval_dataset(paths, input_cfg) if image_size is None else \
        whole_image_dataset(paths, input_cfg, int(image_size))
    out = run_model(model, data, "ROI features", with_features=True)
    if not out.ids:
        raise ValueError(f"no ROI in {paths}")
    ids, feats = roi_means(out.ids, out.features)  # type: ignore[arg-type]
    first = pd.Series(out.labels).groupby(pd.Series(out.ids)).first()
    return pd.DataFrame({"example_id": ids, "label": [int(first[i]) for i in ids]}), feats


def tsne_embedding(features: np.ndarray, seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    """2-D t-SNE of ``features`` (standardised first), seeded; perplexity defaults to min(30, (n - 1) / 3)."""
    from sklearn.manifold import TSNE

    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 5:
        raise ValueError(f"t-SNE needs at least 5 rows of features, got shape {x.shape}")
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    perplexity = perplexity or min(30.0, (x.shape[0] - 1) / 3.0)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def plot_tsne(embedding: np.ndarray, labels: Sequence[int], path: Path | str, title: str,
              class_names: Sequence[str] = ("normal", "tumour")) -> Path:
    """Scatter plot of a t-SNE embedding coloured by class, written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from mammoflow.storage import atomic_write_bytes

    labels = np.asarray(labels)
    fig = Figure(figsize=(5.5, 5.0), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas: no display, no pyplot global state
    ax = fig.add_subplot()
    for value, (name, colour, marker) in enumerate(zip(class_names, ("#1f77b4", "#d62728"), ("o", "^"), strict=False)):
        mask = labels == value
        ax.scatter(embedding[mask, 0], embedding[mask, 1], s=28, c=colour, marker=marker, alpha=0.8,
                   label=f"{name} ({int(mask.sum())})", edgecolors="none")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    fig.clear()
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def write_tsne(rois: pd.DataFrame, features: np.ndarray, out: Path, title: str, seed: int = 0) -> dict[str, Any]:
    """``tsne.png`` and ``tsne.csv`` (example_id, label, x, y) of ROI features (:func:`roi_features`, or those an
    evaluation kept) into ``out``."""
    from mammoflow.storage import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    emb = tsne_embedding(features, seed=seed)
    table = rois[["example_id", "label"]].assign(x=emb[:, 0], y=emb[:, 1])
    atomic_write_text(out / "tsne.csv", table.to_csv(index=False))
    plot_tsne(emb, rois["label"].to_numpy(), out / "tsne.png", title)
    log.info("t-SNE of %d ROIs (%d features each) written to %s", len(rois), features.shape[1], out / "tsne.png")
    return {"png": str(out / "tsne.png"), "csv": str(out / "tsne.csv"), "n_rois": len(rois),
            "n_features": int(features.shape[1])}
