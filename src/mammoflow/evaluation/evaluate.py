"""``mammoflow evaluate``: a trained model on one split of a dataset -> predictions, metrics with CIs, figures.

What it does (the model is a :class:`~mammoflow.training.package.ModelPackage`; its predictions come from
:mod:`~mammoflow.evaluation.predictions`, the metric assembly from :mod:`~mammoflow.evaluation.levels` over the
numeric core of :mod:`~.voting`, :mod:`~.metrics`, :mod:`~.calibration` and :mod:`~.papers`, and the files from
:mod:`~mammoflow.evaluation.outputs`; this module is the job that wires them to shards and folders):

1. **Patch predictions** on the deterministic grid of every ROI (Yu et al. 2020: 25 patches, a 5x5 grid of
   72x72 windows), from :func:`mammoflow.dataset.pipeline.eval_dataset`, the same input pipeline the model was
   validated with. A patch's probability is P(positive) = the softmax column of the positive label (label 1:
   ``tumour``, ``malignant``), never the top-class probability (a bug of the papers' released code).
   Whole-image models (Jaamour et al. 2023) give one prediction per image instead.
2. **ROI decisions** by majority vote of the patch labels (Yu et al., eq. 1; ties broken by the ROI's mean
   P(tumour) >= 0.5, which sends exact ties to tumour) or by soft voting (mean P(tumour) >= 0.5); the other
   method is reported beside the chosen one. Every ROI carries its mean P(tumour), from which ROC-AUC and PR-AUC
   are computed (never from voted labels).
3. **Breast and patient level** (where the shards carry the ids): a breast / patient is as suspicious as its
   most suspicious ROI or image (max P(tumour)); its label is positive if any of its ROIs is.
4. **Metrics with 95% CIs**: every level gets :func:`~mammoflow.evaluation.metrics.report_with_ci`, the
   bootstrap resampling *patients* when the shards name them (else ROIs), never correlated rows.
5. **Calibration**: reliability diagram and ECE; with ``calibrate``, a temperature fitted on the *validation*
   split's patch predictions (never the test split) is applied to the evaluated split.

Outputs in ``out`` (schema of ``metrics.json`` in :data:`METRICS_DOC`)::

    metrics.json                 every level's report with CIs, curves, calibration, paper comparison
    predictions.parquet          one row per patch, ROI (or image), breast and patient: ids, label, P(tumour)
    roi_features.npz             (with save_features) each ROI's mean penultimate-layer features
    roc.png pr.png               patch and ROI curves (ROI curves from mean P(tumour))
    confusion.png confusion_normalised.png    ROI decisions (image decisions for whole-image models)
    calibration.png              reliability diagram (before / after temperature scaling)
    classification_metrics.json  ROC points + confusion matrix in the shape KFP's ClassificationMetrics logs

Re-running on the same model, data and split reuses ``predictions.parquet`` (the model is not run again) and
recomputes everything else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mammoflow import storage
from mammoflow.errors import ConfigError, InputError
from mammoflow.evaluation import calibration, caveats, metrics, plots
from mammoflow.evaluation.levels import Method, compute_metrics, paper_comparison
from mammoflow.evaluation.outputs import (
    FEATURES_FILE,
    KFP_METRICS_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    kfp_classification_metrics,
    predictions_table,
    read_roi_features,
    write_figures,
    write_parquet,
    write_roi_features,
)
from mammoflow.evaluation.predictions import predict_rows
from mammoflow.training.package import ModelPackage, load_package

log = logging.getLogger(__name__)

METRICS_KIND = "mammoflow.evaluation"
CV_KIND = "mammoflow.evaluation.cross_validation"
EVALUATION_SCHEMA_VERSION = 1

METRICS_DOC = """\
metrics.json (kind "mammoflow.evaluation", evaluation_schema_version 1):
  kind, evaluation_schema_version, split, threshold
  model: {uri, name, sha256, run_uri, config}     data: {uri, manifest_sha256}
  class_names, positive_class, primary_level ("roi" or "image")
  voting: {method, alternative, tie_break, roi_probability}
  bootstrap_unit: "patient" | "roi" | "image"     (what the CIs resample)
  levels: {patch, roi, roi_<alternative>, image, breast, patient} -> metrics.report_with_ci schema
          (each also has "level", "unit" and "decision"); absent levels are left out
  curves: {level: {roc: roc_curve_points, pr: pr_curve_points}}
  calibration: {level: calibration_summary + reliability_curve, temperature: {value, fitted_on, ...} | null,
                calibrated: {level: calibration_summary}}
  paper_comparison: {paper, model, branches, subset, level, source, protocol, rows: compare_with_paper} | null
"""


# ============================================================================================ evaluate


def dataset_files(data_uri: str, cache_dir: str | os.PathLike[str] | None = None
                  ) -> tuple[dict[str, Any], dict[str, list[str]], str]:
    """(manifest, verified local shard paths per split, sha256 of manifest.json) of a dataset folder or URI."""
    from mammoflow.dataset.cache import shard_cache
    from mammoflow.dataset.shards import read_manifest

    manifest_uri = storage.join(data_uri, "manifest.json")
    sha = hashlib.sha256(storage.get_bytes(manifest_uri)).hexdigest()
    manifest = read_manifest(data_uri)
    shards = shard_cache(cache_dir).fetch(manifest_uri)
    return manifest, {k: [str(p) for p in v] for k, v in shards.items()}, sha


def split_shards(shards: Mapping[str, list[str]], split: str, data_uri: str) -> list[str]:
    """The local shard paths of ``split``; a missing or empty split is a ConfigError naming the dataset."""
    paths = shards.get(split)
    if not paths:
        raise ConfigError(f"{data_uri}: the dataset has no {split!r} split (has {sorted(shards)}). "
                          "Fix: --split one of those")
    return paths


def _fingerprint(package: ModelPackage, data_sha: str, split: str, fold: int | None) -> str:
    text = json.dumps({"model": package.sha256, "data": data_sha, "split": split, "fold": fold}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _cached_predictions(out: Path, fingerprint: str) -> pd.DataFrame | None:
    path, meta = out / PREDICTIONS_FILE, out / METRICS_FILE
    if not (path.exists() and meta.exists()):
        return None
    try:
        if json.loads(meta.read_text()).get("fingerprint") != fingerprint:
            return None
        return pd.read_parquet(path)
    except (OSError, ValueError):
        return None


def _restore_rows(cached: pd.DataFrame, level: str) -> pd.DataFrame:
    """The raw prediction rows of one level from a previous predictions.parquet."""
    rows = cached[cached["level"] == level].drop(columns=["level", "id", "model", "pred"], errors="ignore")
    rows = rows.dropna(axis=1, how="all").reset_index(drop=True)
    for column in rows.columns:
        if str(rows[column].dtype) == "string":
            rows[column] = rows[column].astype(object).where(rows[column].notna(), None)
    if "label" in rows.columns:
        rows["label"] = rows["label"].astype("Int64")
    for column in ("patient_id", "breast_id", "fold"):
        if column not in rows.columns:
            rows[column] = None
    return rows


def fit_calibration(package: ModelPackage, shards: Mapping[str, list[str]], val_split: str, data_uri: str,
                    batch_size: int | None) -> tuple[float, dict[str, Any]]:
    """Temperature fitted on the validation split's patch (or image) predictions (Guo et al. 2017)."""
    paths = split_shards(shards, val_split, data_uri)
    rows = predict_rows(package, paths, val_split, batch_size)[0]
    rows = rows[rows["label"].notna()]
    probs = rows[[c for c in rows.columns if c.startswith("p") and c[1:].isdigit()]].to_numpy()
    y = rows["label"].astype(int).to_numpy()
    temperature = calibration.fit_temperature(probs, y)
    p_val = rows["prob"].to_numpy()
    p_cal = calibration.apply_temperature(probs, temperature)[:, package.positive_index]
    return temperature, {"value": temperature, "fitted_on": val_split, "n": int(len(rows)),
                         "unit": "image" if package.whole_image else "patch",
                         "val_ece_before": calibration.expected_calibration_error(y, p_val),
                         "val_ece_after": calibration.expected_calibration_error(y, p_cal)}


def evaluate(model_uri: str, data_uri: str, out: str | Path, *, split: str = "test", method: Method = "majority",
             calibrate: bool = False, n_bootstrap: int = 2000, seed: int = 0, threshold: float = 0.5,
             batch_size: int | None = None, fold: int | None = None, cache_dir: str | os.PathLike[str] | None = None,
             package: ModelPackage | None = None, save_features: bool = False) -> dict[str, Any]:
    """Evaluate one model on one split; write every output into ``out`` (see module docstring); return metrics.

    ``fold``: evaluate only the examples of that cross-validation fold within ``split`` (Xi et al. 2018's
    five-fold protocol: each fold's model on its own held-out fold). ``save_features``: also write
    ``roi_features.npz`` (:func:`read_roi_features`), each ROI's mean penultimate-layer features, taken from the
    forward pass that makes the predictions (no second pass over the split).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    package = package or load_package(model_uri, cache_dir)
    if len(package.label_names) != 2:
        raise ConfigError(f"{model_uri}: evaluation is binary (negative vs positive class); this model has "
                          f"{len(package.label_names)} classes {package.label_names}")
    manifest, shards, data_sha = dataset_files(data_uri, cache_dir)
    class_names = tuple(package.label_names)
    manifest_names = manifest.get("label_names")
    if manifest_names and [manifest_names[str(i)] for i in range(len(manifest_names))] != list(class_names):
        raise ConfigError(f"{data_uri}: the dataset's classes {manifest_names} differ from the model's "
                          f"{list(class_names)}. Fix: evaluate on a dataset built with the model's label scheme")
    paths = split_shards(shards, split, data_uri)
    fingerprint = _fingerprint(package, data_sha, split, fold)
    cached = _cached_predictions(out, fingerprint)
    if cached is not None and save_features and read_roi_features(out, fingerprint) is None:
        cached = None  # the features come from the prediction pass: run it once more, for both
    level = "image" if package.whole_image else "patch"
    if cached is not None:
        log.info("%s: reusing the predictions of an earlier run on the same model, data and split", out)
        rows = _restore_rows(cached, level)
    else:
        rows, features = predict_rows(package, paths, split, batch_size, with_features=save_features)
        if fold is not None:
            keep = (rows["fold"] == fold).to_numpy()
            rows = rows[keep].reset_index(drop=True)
            features = None if features is None else features[keep]
            if rows.empty:
                raise ConfigError(f"{data_uri}: no {split!r} example belongs to fold {fold}")
        if features is not None:
            write_roi_features(rows, features, out / FEATURES_FILE, fingerprint)
    temperature_info = None
    if calibrate:
        val_split = package.config.data.val_split if package.config is not None else "val"
        if val_split == split:
            raise ConfigError(f"temperature scaling must be fitted on another split than the evaluated one "
                              f"({split!r}). Fix: evaluate --split test")
        temperature, temperature_info = fit_calibration(package, shards, val_split, data_uri, batch_size)
        probs = rows[[c for c in rows.columns if c.startswith("p") and c[1:].isdigit()]].to_numpy()
        rows["prob_calibrated"] = calibration.apply_temperature(probs, temperature)[:, package.positive_index]
    elif "prob_calibrated" in rows.columns:
        rows = rows.drop(columns=["prob_calibrated"])
    part, tables = compute_metrics(rows if level == "patch" else None, rows if level == "image" else None,
                                   class_names=class_names, method=method, n_bootstrap=n_bootstrap, seed=seed,
                                   threshold=threshold)
    part["calibration"]["temperature"] = temperature_info
    params = package.config.model.params if package.config is not None else {}
    report = {
        "kind": METRICS_KIND, "evaluation_schema_version": EVALUATION_SCHEMA_VERSION,
        "schema_version": metrics.METRICS_SCHEMA_VERSION, "split": split, "fold": fold, "threshold": threshold,
        "fingerprint": fingerprint, "model": package.describe(), **caveats.fold_selection(package.fold, fold),
        "data": {"uri": data_uri, "manifest_sha256": data_sha,
                 "counts": (manifest.get("splits", {}).get(split) or {}).get("counts"),
                 "patients": (manifest.get("splits", {}).get(split) or {}).get("patients")},
        "class_names": list(class_names), "positive_class": class_names[1],
        **part,
        "paper_comparison": paper_comparison(package.name, params, part["levels"]),
        "n_bootstrap": n_bootstrap, "seed": seed,
    }
    write_parquet(predictions_table(tables, package.name), out / PREDICTIONS_FILE)
    report["figures"] = write_figures(part, tables, out, class_names, split)
    metrics.write_metrics_json(kfp_classification_metrics(part, split), out / KFP_METRICS_FILE)
    metrics.write_metrics_json(report, out / METRICS_FILE)
    _log_summary(report)
    return report


def _log_summary(report: Mapping[str, Any]) -> None:
    level = report["primary_level"]
    m = report["levels"].get(level, {}).get("metrics", {})
    acc, auc = m.get("accuracy", {}), m.get("roc_auc", {})
    if acc:
        log.info("%s level on %s: accuracy %.4f [%s, %s], ROC-AUC %s", level, report["split"], acc["value"],
                 _fmt(acc.get("ci_low")), _fmt(acc.get("ci_high")), _fmt(auc.get("value")))


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# ============================================================================================ several models


def sweep_trials(sweep_uri: str) -> list[str]:
    """The finished trial run folders of a sweep folder (``OUT/trials/<cell>/model.keras``), sorted."""
    files = storage.list(storage.join(sweep_uri, "trials"))
    runs = sorted({f.rsplit("/", 1)[0] for f in files if f.endswith("/model.keras")})
    if not runs:
        raise InputError(sweep_uri, "no finished trial (trials/<name>/model.keras) in this sweep folder",
                         "run or resume the sweep until trials finish", code="missing_file")
    return runs


def _group_key(package: ModelPackage) -> str:
    """Runs that differ only by their cross-validation fold share a key. A bare .keras file (no config.yaml) has
    no known fold or setup, so it is a group of its own (unless the very same file is given twice): pooling it
    with another model of the same Keras name (often just ``functional``) would summarise two models as folds."""
    from mammoflow.config import to_dict

    if package.config is None:
        return f"{package.name}-{package.sha256[:8]}"
    cfg = to_dict(package.config)
    cfg["data"].pop("fold", None)
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]
    return f"{package.name}-{digest}"


def evaluate_many(model_uris: Sequence[str], data_uri: str, out: str | Path, *, split: str | None = None,
                  fold_of_each: bool = False, method: Method = "majority", calibrate: bool = False,
                  n_bootstrap: int = 2000, seed: int = 0, threshold: float = 0.5, batch_size: int | None = None,
                  cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Evaluate several runs (e.g. the five folds of a cross-validation) and summarise them (Xi et al. 2018).

    Each run is evaluated into ``out/<run name>/``. Runs whose configs differ only by ``data.fold`` form one
    group; each group gets :func:`~mammoflow.evaluation.metrics.cross_validation_summary` (mean, sd, min, max
    over folds) per level. ``fold_of_each`` evaluates every run on its own fold (``data.fold`` of its config)
    within ``split`` (default: the runs' training split, where build-dataset puts the K folds), instead of all of
    ``split`` (default ``test``); temperature scaling is refused then, as the fold is also the validation data.
    Writes ``out/metrics.json`` (kind ``mammoflow.evaluation.cross_validation``; each group as
    :func:`group_summary`, naming every member run and its model) and ``out/roc.png`` with one curve per run.
    """
    out = Path(out)
    if fold_of_each and calibrate:
        raise ConfigError("--calibrate cannot be combined with --fold-of-each: each run's held-out fold is also its "
                          "validation data, so a temperature fitted there would be tested on its own fitting data")
    runs: list[dict[str, Any]] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    roc: dict[str, Any] = {}
    used: set[str] = set()
    for uri in model_uris:
        package = load_package(uri, cache_dir)
        name = uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".keras") or "model"
        while name in used:
            name += "_"
        used.add(name)
        fold = package.fold if fold_of_each else None
        if fold_of_each and fold is None:
            raise ConfigError(f"{uri}: --fold-of-each needs runs trained with data.fold set (this one has none)")
        run_split = split or (package.config.data.train_split if fold_of_each and package.config is not None
                              else "test")
        report = evaluate(uri, data_uri, out / name, split=run_split, method=method, calibrate=calibrate,
                          n_bootstrap=n_bootstrap, seed=seed, threshold=threshold, batch_size=batch_size,
                          fold=fold, cache_dir=cache_dir, package=package)
        entry = {"name": name, "uri": uri, "model": package.name, "fold": package.fold, "metrics": f"{name}/{METRICS_FILE}",
                 "group": _group_key(package), "report": report}
        runs.append(entry)
        groups.setdefault(entry["group"], []).append(entry)
        level = report["primary_level"]
        if level in report["curves"]:
            roc[f"{name} ({level})"] = report["curves"][level]["roc"]
    summary = {key: group_summary(members) for key, members in groups.items()}
    if roc:
        plots.plot_roc(roc, out / "roc.png", title="ROC curves per run")
    doc = {"kind": CV_KIND, "evaluation_schema_version": EVALUATION_SCHEMA_VERSION,
           "split": sorted({r["report"]["split"] for r in runs}),
           "fold_of_each": fold_of_each, **caveats.cv_selection(fold_of_each), "data": {"uri": data_uri},
           "runs": [{k: v for k, v in r.items() if k != "report"} for r in runs], "groups": summary}
    metrics.write_metrics_json(doc, out / METRICS_FILE)
    return doc


def group_summary(members: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One group of ``metrics.json`` (kind ``mammoflow.evaluation.cross_validation``): every member run with its
    model and fold, and per level the mean, sd, min and max over the members."""
    models = list(dict.fromkeys(str(m["model"]) for m in members))
    levels = sorted({lvl for m in members for lvl in m["report"]["levels"]})
    return {
        "model": " / ".join(models), "models": models,
        "members": [{"run": m["name"], "model": m["model"], "fold": m["fold"], "uri": m["uri"]} for m in members],
        "runs": [m["name"] for m in members], "folds": [m["fold"] for m in members],
        "levels": {lvl: metrics.cross_validation_summary([m["report"]["levels"][lvl] for m in members
                                                          if lvl in m["report"]["levels"]]) for lvl in levels},
    }


def is_sweep_folder(uri: str) -> bool:
    return storage.exists(storage.join(uri, "results.csv")) or storage.exists(storage.join(uri, "summary.json"))
