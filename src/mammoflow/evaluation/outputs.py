"""What one evaluation writes: predictions.parquet, roi_features.npz, the figures and classification_metrics.json."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammoflow.evaluation import plots
from mammoflow.evaluation.levels import Tables
from mammoflow.evaluation.predictions import roi_means

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.parquet"
FEATURES_FILE = "roi_features.npz"  # with save_features: each ROI's mean penultimate features (t-SNE, Fig. 1)
METRICS_FILE = "metrics.json"
KFP_METRICS_FILE = "classification_metrics.json"
FIGURES = ("roc.png", "pr.png", "confusion.png", "confusion_normalised.png", "calibration.png")


def predictions_table(tables: Tables, model_name: str) -> pd.DataFrame:
    """predictions.parquet: one row per patch, ROI or image, breast and patient (``level`` says which)."""
    parts = []
    if tables.patches is not None:
        p = tables.patches.copy()
        p.insert(0, "level", "patch")
        p.insert(1, "id", p["example_id"] + "#p" + p["patch_index"].astype(str).str.zfill(2))
        p["pred"] = (p["prob"] >= 0.5).astype("Int64")
        parts.append(p)
    u = tables.units.drop(columns=["mean_prob"], errors="ignore")  # equal to prob for ROIs
    u.insert(0, "level", "roi" if tables.patches is not None else "image")
    u.insert(1, "id", u["example_id"])
    if "decision" in u.columns:
        u["pred"] = u["decision"].astype("Int64")
        u = u.drop(columns=["decision"])
    else:
        u["pred"] = (u["prob"] >= 0.5).astype("Int64")
    if tables.alternative is not None:
        alt = tables.alternative.set_index("example_id")["decision"]
        u["pred_alternative"] = u["example_id"].map(alt).astype("Int64")
    parts.append(u)
    for level, table, by in (("breast", tables.breasts, "breast_id"), ("patient", tables.patients, "patient_id")):
        if table is not None:
            t = table.copy()
            t.insert(0, "level", level)
            t.insert(1, "id", t[by])
            t["pred"] = t.pop("decision").astype("Int64")
            parts.append(t)
    out = pd.concat(parts, ignore_index=True, sort=False)
    out["model"] = model_name
    for column in ("label", "pred", "patch_index", "patch_row", "patch_col", "n_patches", "votes_tumour", "n_items",
                   "pred_alternative", "fold"):
        if column in out.columns:
            out[column] = out[column].astype("Int64")
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].astype("string")
    return out


def write_roi_features(rows: pd.DataFrame, features: np.ndarray, path: Path, fingerprint: str) -> Path:
    """``roi_features.npz``: per ROI (or image) its ``example_id``, ``label`` (-1: none) and the mean of its rows'
    penultimate features, with the evaluation's fingerprint (which model, data, split and fold they belong to)."""
    from mammoflow.storage import atomic_write_bytes

    ids, means = roi_means(rows["example_id"].tolist(), features)
    first = rows.groupby("example_id", sort=False)["label"].first()
    labels = np.array([-1 if pd.isna(first[i]) else int(first[i]) for i in ids], np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, example_id=np.array(ids, dtype=str), label=labels, features=means.astype(np.float32),
                        fingerprint=np.array(fingerprint))
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_roi_features(out: str | Path, fingerprint: str | None = None) -> tuple[pd.DataFrame, np.ndarray] | None:
    """(ROI rows ``example_id``, ``label``; features ``[n, D]``) that :func:`evaluate` wrote into ``out`` with
    ``save_features``, or None when there are none, or none of the evaluation now in ``out`` (or of
    ``fingerprint``)."""
    out = Path(out)
    path = out / FEATURES_FILE
    if fingerprint is None:
        try:
            fingerprint = json.loads((out / METRICS_FILE).read_text()).get("fingerprint")
        except (OSError, ValueError):
            return None
    try:
        with np.load(path) as npz:
            if str(npz["fingerprint"]) != fingerprint:
                return None
            rois = pd.DataFrame({"example_id": npz["example_id"].astype(str).tolist(), "label": npz["label"]})
            return rois, np.asarray(npz["features"], np.float64)
    except (OSError, ValueError, KeyError):
        return None


def write_parquet(df: pd.DataFrame, path: Path) -> Path:
    """Write a DataFrame as Parquet atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def kfp_classification_metrics(part: Mapping[str, Any], split: str) -> dict[str, Any]:
    """ROC points and the confusion matrix of the primary level, in the argument shapes of KFP's
    ``ClassificationMetrics.log_roc_curve(fpr, tpr, threshold)`` and ``log_confusion_matrix(categories, matrix)``."""
    level = part["primary_level"]
    report = part["levels"].get(level)
    curve = part["curves"].get(level, {}).get("roc")
    return {
        "level": level, "split": split,
        "roc": None if curve is None else {"fpr": curve["fpr"], "tpr": curve["tpr"],
                                           "threshold": curve["thresholds"], "auc": curve["auc"]},
        "confusion_matrix": None if report is None else {
            "categories": report["confusion_matrix"]["labels"], "matrix": report["confusion_matrix"]["counts"]},
    }


def write_figures(part: Mapping[str, Any], tables: Tables, out: Path, class_names: Sequence[str], split: str) -> list[str]:
    """roc.png, pr.png, confusion(_normalised).png and calibration.png; figures that cannot be drawn (one class
    only) are skipped with a warning."""
    level = part["primary_level"]
    names = {"patch": "patch", "roi": "ROI (mean P)", "image": "image"}
    written = []
    curves = {names[k]: v for k, v in part["curves"].items()}
    if curves:
        plots.plot_roc({k: v["roc"] for k, v in curves.items()}, out / "roc.png", title=f"ROC curve ({split} split)")
        plots.plot_pr({k: v["pr"] for k, v in curves.items()}, out / "pr.png",
                      title=f"Precision-recall curve ({split} split)")
        written += ["roc.png", "pr.png"]
    else:
        log.warning("ROC and PR curves need both classes in the %s split: not drawn", split)
    report = part["levels"].get(level)
    if report is not None:
        counts = report["confusion_matrix"]["counts"]
        what = "ROI" if level == "roi" else level
        plots.plot_confusion(counts, class_names, out / "confusion.png", title=f"{what} confusion matrix ({split})")
        plots.plot_confusion(counts, class_names, out / "confusion_normalised.png", normalise=True,
                             title=f"{what} confusion ({split})")
        written += ["confusion.png", "confusion_normalised.png"]
    rel: dict[str, tuple[Any, Any]] = {}
    for key, table in (("patch", tables.patches), (level, tables.units)):
        if table is None:
            continue
        labelled = table[table["label"].notna()]
        if labelled.empty:
            continue
        y = labelled["label"].astype(int).to_numpy()
        rel[names[key]] = (y, labelled["prob"].to_numpy())
        if "prob_calibrated" in labelled.columns and labelled["prob_calibrated"].notna().all():
            rel[f"{names[key]}, temperature-scaled"] = (y, labelled["prob_calibrated"].to_numpy())
    if rel:
        plots.plot_reliability(rel, out / "calibration.png", title=f"Reliability diagram ({split} split)")
        written.append("calibration.png")
    return written
