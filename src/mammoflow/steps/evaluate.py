"""The evaluation steps over URIs: voting evaluation with CIs, class activation maps, the report."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mammoflow import storage
from mammoflow.errors import InputError
from mammoflow.steps.data import localise_records
from mammoflow.storage.copies import cache_dir

log = logging.getLogger(__name__)


def evaluate(model_dir: str, data_uri: str, out_dir: str | os.PathLike[str], *, split: str = "test",
             method: str = "majority", n_bootstrap: int = 2000, seed: int = 0,
             cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Evaluate a run (folder or package) on one split (``mammoflow evaluate``); returns metrics.json's content."""
    from mammoflow.evaluation.evaluate import evaluate as run_evaluation

    return run_evaluation(model_dir, data_uri, out_dir, split=split, method=method,  # type: ignore[arg-type]
                          n_bootstrap=n_bootstrap, seed=seed, cache_dir=cache_dir(cache))


def primary_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """Flat scalar metrics of an evaluation (``<level>_<metric>`` and its 95% CI bounds), for dashboards."""
    out: dict[str, float] = {}
    levels = report.get("levels", {})
    for level in dict.fromkeys([report.get("primary_level"), "patch"]):
        metrics = (levels.get(level) or {}).get("metrics", {})
        for name in ("accuracy", "roc_auc", "sensitivity", "specificity", "balanced_accuracy"):
            cell = metrics.get(name) or {}
            for key, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
                if isinstance(cell.get(key), (int, float)):
                    out[f"{level}_{name}{suffix}"] = float(cell[key])
    return out


def log_kfp_evaluation(report: Mapping[str, Any], evaluation_dir: str | os.PathLike[str], metrics: Any,
                       classification: Any) -> None:
    """Show an evaluation in the KFP UI: the scalar metrics (:func:`primary_metrics`) on a ``Metrics`` artifact, the
    ROC curve and confusion matrix of ``classification_metrics.json`` on a ``ClassificationMetrics`` artifact."""
    for name, value in primary_metrics(report).items():
        metrics.log_metric(name, value)
    with open(os.path.join(evaluation_dir, "classification_metrics.json")) as fh:
        kfp_view = json.load(fh)
    if kfp_view.get("roc"):
        roc = kfp_view["roc"]
        classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["threshold"])
    if kfp_view.get("confusion_matrix"):
        cm = kfp_view["confusion_matrix"]
        classification.log_confusion_matrix(cm["categories"], cm["matrix"])


def records_to_explain(records_dir: str | os.PathLike[str], data_uri: str | None, limit: int) -> list[str]:
    """Record ids for the CAM gallery: held-out (test split) records first, those with known lesions first among
    them, then other abnormal ones, then normal ones; at most ``limit``."""
    from mammoflow.dataset.build import PLAN_FILE
    from mammoflow.records import RecordsTable

    table = RecordsTable.read(records_dir)
    test: set[str] = set()
    if data_uri and storage.exists(storage.join(data_uri, PLAN_FILE)):
        plan = json.loads(storage.get_bytes(storage.join(data_uri, PLAN_FILE)))
        test = {rid for rid, split in plan.get("assignments", {}).items() if split == "test"}

    def rank(rec: Any) -> tuple[int, int, int]:
        has_geometry = any(les.has_geometry for les in rec.lesions)
        abnormal = rec.label not in (None, "normal")
        return (rec.record_id not in test, not has_geometry, not abnormal)

    ordered = sorted(table.records, key=rank)  # stable: ties keep the table's order
    return [rec.record_id for rec in ordered[:limit]]


def explain(model_dir: str, records_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
            data_uri: str | None = None, limit: int = 4, cache: str | os.PathLike[str] | None = None
            ) -> dict[str, Any]:
    """CAMs of the model over whole (preprocessed) images of ``records_dir`` (``mammoflow explain``)."""
    from mammoflow.evaluation.cam import explain as run_explain

    ids = records_to_explain(records_dir, data_uri, limit)
    if not ids:
        raise InputError(records_dir, "no record to explain", "check the records folder", code="empty")
    return run_explain(model_dir, out=out_dir, images=ids, records=localise_records(records_dir, cache),
                       cache_dir=cache_dir(cache))


def report(run: str, out_dir: str | os.PathLike[str], *, evaluation: str | None = None, explain: str | None = None,
           cache: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """report.html + report.md for a run, an evaluation or a sweep folder (``mammoflow report``)."""
    from mammoflow.evaluation.report import build_report

    return build_report(run, out_dir, evaluation=evaluation, explain=explain, cache_dir=cache_dir(cache))
