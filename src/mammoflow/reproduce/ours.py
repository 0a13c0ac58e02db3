"""Evaluation of our from-scratch model (``--budget cpu``): TTA, a threshold fitted on val, temperature scaling.

Everything that is chosen is chosen on the **validation** split: the TTA views and the voting rule are fixed in
:class:`OursProtocol` (picked in the validation experiments logged in ``EXPERIMENTS.md``), the decision threshold
is fitted on the validation ROIs (:func:`mammoflow.reproduce.predict.choose_threshold`) and the temperature on the
validation patches. The test split is predicted once, at the end, and only reported.

The output folder has the layout and ``metrics.json`` schema of ``mammoflow evaluate`` (so ``mammoflow report``
renders it), plus ``protocol.json`` (the threshold and temperature with what they gave on validation).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mammoflow.evaluation import calibration, metrics
from mammoflow.evaluation.evaluate import EVALUATION_SCHEMA_VERSION, METRICS_KIND, dataset_files, split_shards
from mammoflow.evaluation.levels import compute_metrics
from mammoflow.evaluation.outputs import (
    KFP_METRICS_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    kfp_classification_metrics,
    predictions_table,
    write_figures,
    write_parquet,
)
from mammoflow.reproduce.predict import average_members, choose_threshold, grid_predictions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OursProtocol:
    """How our model's ROI decisions are made (fixed on validation, see EXPERIMENTS.md)."""

    members: int = 1  # ensemble: the preset trained with seeds seed, seed + 1, ...; probabilities averaged
    tta_views: int = 8  # dihedral views per patch (1 = none)
    method: str = "soft"  # ROI vote: soft (mean P(tumour) >= threshold) or majority
    target_recall: float = 0.9565  # tumour recall the threshold must keep on validation (the paper's best: 22/23)
    fit_threshold: bool = True  # False: threshold 0.5 (the paper's rule)
    calibrate: bool = True  # temperature fitted on validation patches (reported; decisions use the threshold)

    def __post_init__(self) -> None:
        from mammoflow.errors import ConfigError

        if self.members < 1 or self.method not in ("soft", "majority") or not 0 < self.target_recall <= 1:
            raise ConfigError(f"OursProtocol: members must be >= 1, method soft or majority and target_recall in "
                              f"(0, 1]; got {self.members}, {self.method!r}, {self.target_recall}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The protocol of ``--budget cpu`` (chosen on the validation split, EXPERIMENTS.md e11): three members, eight views.
CPU_PROTOCOL = OursProtocol(members=3, tta_views=8, method="soft", target_recall=0.9565)

#: Our model under the paper's decision rule: one model, one view, majority vote of the 25 patches at 0.5.
PAPER_RULE = OursProtocol(members=1, tta_views=1, method="majority", fit_threshold=False, calibrate=False)


def _prob_columns(df: Any) -> list[str]:
    return [c for c in df.columns if c.startswith("p") and c[1:].isdigit()]


def ensemble_predictions(models: Sequence[Any], shard_paths: Sequence[str], input_cfg: Any, n_views: int,
                         image_size: int | None = None) -> Any:
    """Grid-patch rows with the members' softmax outputs averaged, matched by ROI id and patch position (refused on
    a mismatch, see :func:`~mammoflow.reproduce.predict.average_members`); one member: its own rows."""
    tables = [grid_predictions(m, shard_paths, input_cfg, n_views, image_size=image_size) for m in models]
    return average_members(tables)


def evaluate_ours(runs: str | Sequence[str], data_uri: str, out: str | Path, protocol: OursProtocol = OursProtocol(),
                  *, split: str = "test", n_bootstrap: int = 2000, seed: int = 0,
                  cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate one training run folder, or the members of an ensemble, under ``protocol``; write ``metrics.json``
    & co. into ``out``; return the report (``mammoflow evaluate``'s schema, with ``protocol`` added).

    The first ``protocol.members`` runs are used; their input configs must agree (one preset, several seeds).
    """
    from mammoflow.errors import ConfigError
    from mammoflow.training.package import load_package

    runs = [runs] if isinstance(runs, str) else list(runs)[:protocol.members]
    if len(runs) < protocol.members:
        raise ConfigError(f"protocol asks for {protocol.members} ensemble members, {len(runs)} run(s) given")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    members = [load_package(r, cache_dir) for r in runs]
    loaded = members[0]
    manifest, shards, data_sha = dataset_files(data_uri, cache_dir)
    cfg = loaded.input_config()
    if any(m.input_config().replace(seed=cfg.seed) != cfg for m in members[1:]):
        raise ConfigError(f"ensemble members {runs} were trained on different inputs; use one preset and seeds")
    image_size = loaded.config.data.image_size if loaded.whole_image and loaded.config is not None else None
    val_split = loaded.config.data.val_split if loaded.config is not None else "val"
    models = [m.model for m in members]

    chosen: dict[str, Any] = {"threshold": 0.5, "fitted_on": None}
    temperature_info = None
    if protocol.fit_threshold or protocol.calibrate:
        val = ensemble_predictions(models, split_shards(shards, val_split, data_uri), cfg, protocol.tta_views,
                                   image_size)
        if protocol.fit_threshold:
            chosen = choose_threshold(val, protocol.method, protocol.target_recall).to_dict()
        if protocol.calibrate:
            probs = val[_prob_columns(val)].to_numpy()
            y = val["label"].astype(int).to_numpy()
            temperature = calibration.fit_temperature(probs, y)
            temperature_info = {"value": temperature, "fitted_on": val_split, "n": len(val), "unit": "patch",
                                "val_ece_before": calibration.expected_calibration_error(y, val["prob"].to_numpy()),
                                "val_ece_after": calibration.expected_calibration_error(
                                    y, calibration.apply_temperature(probs, temperature)[:, 1])}
    # The test split is predicted once, after every choice above is fixed.
    rows = ensemble_predictions(models, split_shards(shards, split, data_uri), cfg, protocol.tta_views, image_size)
    rows["split"] = split
    if temperature_info is not None:
        rows["prob_calibrated"] = calibration.apply_temperature(rows[_prob_columns(rows)].to_numpy(),
                                                                temperature_info["value"])[:, 1]
    return _write_report(rows, loaded, out, float(chosen["threshold"]), protocol.method, temperature_info,
                         {**protocol.to_dict(), "threshold": chosen, "runs": runs},
                         members=[m.describe() for m in members], data=(data_uri, manifest, data_sha), split=split,
                         n_bootstrap=n_bootstrap, seed=seed)


def _write_report(rows: Any, loaded: Any, out: Path | None, threshold: float, method: str,
                  temperature_info: Mapping[str, Any] | None, protocol: Mapping[str, Any], *, members: list[Any],
                  data: tuple[str, Mapping[str, Any], str], split: str, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Metrics with CIs of prediction ``rows`` at ``threshold``; written as ``mammoflow evaluate``'s files into
    ``out`` (nothing written when ``out`` is None); return the report."""
    data_uri, manifest, data_sha = data
    part, tables = compute_metrics(rows, class_names=tuple(loaded.label_names), method=method,  # type: ignore[arg-type]
                                   n_bootstrap=n_bootstrap, seed=seed, threshold=threshold)
    part["calibration"]["temperature"] = temperature_info
    report = {
        "kind": METRICS_KIND, "evaluation_schema_version": EVALUATION_SCHEMA_VERSION,
        "schema_version": metrics.METRICS_SCHEMA_VERSION, "split": split, "fold": None, "threshold": threshold,
        "model": {**loaded.describe(), "members": members},
        "data": {"uri": data_uri, "manifest_sha256": data_sha,
                 "counts": (manifest.get("splits", {}).get(split) or {}).get("counts"),
                 "patients": (manifest.get("splits", {}).get(split) or {}).get("patients")},
        "class_names": list(loaded.label_names), "positive_class": loaded.label_names[1],
        **part, "paper_comparison": None, "n_bootstrap": n_bootstrap, "seed": seed, "protocol": dict(protocol),
    }
    if out is None:
        return report
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(predictions_table(tables, loaded.name), out / PREDICTIONS_FILE)
    report["figures"] = write_figures(part, tables, out, tuple(loaded.label_names), split)
    metrics.write_metrics_json(kfp_classification_metrics(part, split), out / KFP_METRICS_FILE)
    metrics.write_metrics_json(report, out / METRICS_FILE)
    metrics.write_metrics_json(report["protocol"], out / "protocol.json")
    return report


def rows_report(rows: Any, data_uri: str, out: Path | None, loaded: Any, choice: Mapping[str, Any] | None, *,
                method: str = "soft", split: str = "test", n_bootstrap: int = 2000, seed: int = 0,
                cache_dir: str | Path | None = None, protocol: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report of prediction rows made elsewhere (the pretrained protocol: one prediction pass per model, reused
    by its ensembles) at a threshold ``choice`` fitted on validation (None: the paper's 0.5). ``loaded``: the
    (first) model's package (:func:`mammoflow.training.package.load_package`), for its names and description."""
    manifest, _, data_sha = dataset_files(data_uri, cache_dir)
    rows = rows.copy()
    rows["split"] = split
    threshold = 0.5 if choice is None else float(choice["threshold"])
    return _write_report(rows, loaded, out, threshold, method, None,
                         {**(protocol or {}), "threshold": dict(choice) if choice else {"threshold": 0.5,
                                                                                        "fitted_on": None}},
                         members=[], data=(data_uri, manifest, data_sha), split=split, n_bootstrap=n_bootstrap,
                         seed=seed)


def headline(report: Mapping[str, Any], level: str = "roi") -> dict[str, Any]:
    """The numbers the target is judged on: ROI accuracy, tumour recall/precision, ROC-AUC (each with its CI)."""
    pos = report["positive_class"]
    m = report["levels"][level]["metrics"]
    keys = ("accuracy", f"{pos}_recall", f"{pos}_precision", "roc_auc", "pr_auc", "specificity", "balanced_accuracy")
    return {k: m[k] for k in keys if k in m}


def target_check(report: Mapping[str, Any], accuracy: float = 0.90, recall: float = 0.9565) -> dict[str, Any]:
    """Whether the ROI-level test numbers reach the target, and by how much they miss it."""
    h = headline(report)
    pos = report["positive_class"]
    acc, rec = h["accuracy"]["value"], h[f"{pos}_recall"]["value"]
    return {"accuracy_target": accuracy, "recall_target": recall, "accuracy": acc, "recall": rec,
            "accuracy_met": acc >= accuracy - 1e-9, "recall_met": rec >= recall - 1e-9,
            "accuracy_shortfall": max(0.0, accuracy - acc), "recall_shortfall": max(0.0, recall - rec),
            "met": acc >= accuracy - 1e-9 and rec >= recall - 1e-9}
