"""The evaluation steps over URIs: voting evaluation with CIs, class activation maps, the report, predictions."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mammoflow import storage
from mammoflow.errors import InputError
from mammoflow.steps.data import localise_records
from mammoflow.storage import atomic_write_text as write_text
from mammoflow.storage import copies

log = logging.getLogger(__name__)


def evaluate(model_dir: str, data_uri: str, out: str | os.PathLike[str], *, split: str = "test",
             method: str = "majority", calibrate: bool = False, n_bootstrap: int = 2000, seed: int = 0,
             threshold: float = 0.5, batch_size: int | None = None, cache_dir: str | os.PathLike[str] | None = None
             ) -> dict[str, Any]:
    """Evaluate a run (folder or package) on one split (``mammoflow evaluate``); returns metrics.json's content."""
    from mammoflow.evaluation.evaluate import evaluate as run_evaluation

    return run_evaluation(model_dir, data_uri, out, split=split, method=method,  # type: ignore[arg-type]
                          calibrate=calibrate, n_bootstrap=n_bootstrap, seed=seed, threshold=threshold,
                          batch_size=batch_size, cache_dir=copies.cache_dir(cache_dir))


def evaluate_runs(models: Sequence[str], data_uri: str, out: str | os.PathLike[str], *, split: str | None = None,
                  fold_of_each: bool = False, method: str = "majority", calibrate: bool = False,
                  n_bootstrap: int = 2000, seed: int = 0, threshold: float = 0.5, batch_size: int | None = None,
                  cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Evaluate one or several runs (``mammoflow evaluate --model ...``): a sweep folder stands for its finished
    trials. One run (without ``fold_of_each``): :func:`evaluate` on ``split`` (default ``test``), returning its
    metrics.json; several: each into ``out/<run>/`` and a cross-validation summary (kind
    ``mammoflow.evaluation.cross_validation``) returned."""
    from mammoflow.evaluation.evaluate import evaluate_many, is_sweep_folder, sweep_trials

    uris: list[str] = []
    for uri in models:
        uris += sweep_trials(uri) if is_sweep_folder(uri) else [uri]
    common = dict(method=method, calibrate=calibrate, n_bootstrap=n_bootstrap, seed=seed, threshold=threshold,
                  batch_size=batch_size)
    if len(uris) == 1 and not fold_of_each:
        return evaluate(uris[0], data_uri, out, split=split or "test", cache_dir=cache_dir,  # type: ignore[arg-type]
                        **common)
    return evaluate_many(uris, data_uri, out, split=split, fold_of_each=fold_of_each,  # type: ignore[arg-type]
                         cache_dir=copies.cache_dir(cache_dir), **common)


def primary_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """Flat scalar metrics of an evaluation (``<level>_<metric>`` and its 95% CI bounds), for dashboards.

    ``<level>_<metric>_ci_degenerate`` is 1.0 when the interval is flagged as no real 95% CI (zero width, too few
    resampling units), 0.0 when it is one."""
    out: dict[str, float] = {}
    levels = report.get("levels", {})
    for level in dict.fromkeys([report.get("primary_level"), "patch"]):
        metrics = (levels.get(level) or {}).get("metrics", {})
        for name in ("accuracy", "roc_auc", "sensitivity", "specificity", "balanced_accuracy"):
            cell = metrics.get(name) or {}
            for key, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
                if isinstance(cell.get(key), (int, float)):
                    out[f"{level}_{name}{suffix}"] = float(cell[key])
            if isinstance(cell.get("degenerate"), bool) and f"{level}_{name}_ci_low" in out:
                out[f"{level}_{name}_ci_degenerate"] = float(cell["degenerate"])
    return out


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


def explain(model_dir: str, records_dir: str | os.PathLike[str], out: str | os.PathLike[str], *,
            data_uri: str | None = None, limit: int = 4, cache_dir: str | os.PathLike[str] | None = None
            ) -> dict[str, Any]:
    """The CAM gallery of a pipeline run: the :func:`records_to_explain` of ``records_dir``, explained."""
    ids = records_to_explain(records_dir, data_uri, limit)
    if not ids:
        raise InputError(records_dir, "no record to explain", "check the records folder", code="empty")
    return explain_images(model_dir, out, images=ids, records=localise_records(records_dir, cache_dir),
                          cache_dir=cache_dir)


def explain_images(model_dir: str, out: str | os.PathLike[str], *, images: Sequence[str] = (),
                   records: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None,
                   **options: Any) -> dict[str, Any]:
    """CAMs of the model over whole images given as paths or record ids of ``records`` (``mammoflow explain``);
    ``options`` are :func:`mammoflow.evaluation.explain.explain`'s (preprocess, circles, mask_paths, limit,
    stride, tile, method, layer, iou_fraction, tolerance)."""
    from mammoflow.evaluation.explain import explain as run_explain

    return run_explain(model_dir, out=out, images=images, records=records, cache_dir=copies.cache_dir(cache_dir),
                       **options)


def report(run: str, out: str | os.PathLike[str], *, evaluation: str | None = None, explain: str | None = None,
           n_worst: int = 8, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """report.html + report.md for a run, an evaluation or a sweep folder (``mammoflow report``)."""
    from mammoflow.evaluation.report import build_report

    return build_report(run, out, evaluation=evaluation, explain=explain, n_worst=n_worst,
                        cache_dir=copies.cache_dir(cache_dir))


def image_files(images: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files, and the files of image folders (sorted, recursively), in the order given."""
    files: list[Path] = []
    for item in map(Path, images):
        files += sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item]
    return files


def predict(model_dir: str, images: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None, *,
            preprocess: str | None = None, cache_dir: str | os.PathLike[str] | None = None) -> tuple[list[str], int]:
    """Class probabilities of image files or folders (``mammoflow predict``): (one JSON line per predicted image,
    how many could not be read). An unreadable image is logged with its reason and skipped. ``out`` is written
    atomically, and only when an image was predicted (an earlier ``out`` is otherwise left as it was)."""
    from mammoflow.training.predict import Predictor

    files = image_files(images)
    predictor = Predictor(model_dir, copies.cache_dir(cache_dir))
    lines, failed = [], 0
    for path in files:
        try:
            lines.append(json.dumps(asdict(predictor.predict_file(path, preprocess)), sort_keys=True))
        except InputError as exc:
            failed += 1
            log.error("%s", exc)
    if lines and out is not None:
        write_text(out, "\n".join(lines) + "\n")  # a reader never sees half a file
    return lines, failed


def reproduce_yu2020(data: str, out: str | os.PathLike[str], **options: Any) -> Any:
    """Yu et al. 2020's Tables 1-3 on the released ROIs (``mammoflow reproduce yu2020``): ingest, build, train the
    budget's cells and evaluate them beside the paper's numbers. ``options`` are those of
    :func:`mammoflow.reproduce.yu2020.reproduce_yu2020` (weights, budget, overrides, n_bootstrap, seed, ...)."""
    from mammoflow.reproduce.yu2020 import reproduce_yu2020 as run_reproduction

    return run_reproduction(data, out, **options)
