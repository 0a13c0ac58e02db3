"""Metric assembly of one evaluation: prediction rows -> ROI decisions (voting), breast and patient rows, and every
level's report with 95% CIs, curves and calibration (the ``levels``/``curves``/``calibration`` part of
``metrics.json``), with the paper's numbers for the same protocol beside ours.

ROI decisions are by majority vote of the patch labels (Yu et al., eq. 1; ties broken by the ROI's mean
P(tumour) >= 0.5, which sends exact ties to tumour) or by soft voting (mean P(tumour) >= 0.5); the other method is
reported beside the chosen one. Every ROI carries its mean P(tumour), from which ROC-AUC and PR-AUC are computed
(never from voted labels). A breast / patient is as suspicious as its most suspicious ROI or image (max
P(tumour)). The bootstrap resamples *patients* when the rows name them (else ROIs), never correlated rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from mammoflow.errors import ConfigError
from mammoflow.evaluation import calibration, metrics, papers, voting

Method = Literal["majority", "soft"]

TIE_BREAK = ("a tied vote (possible only with an even number of patches) goes to the positive class when the ROI's "
             "mean P(positive) is at or above the threshold, else to the negative class")


def _has_ids(df: pd.DataFrame, column: str) -> bool:
    return column in df.columns and bool(df[column].notna().all()) and bool((df[column].astype(str) != "").all())


def _level_report(df: pd.DataFrame, *, level: str, unit: str, decision: str | None, class_names: Sequence[str],
                  groups: Any, n_bootstrap: int, seed: int, threshold: float,
                  y_pred: Any = None) -> dict[str, Any] | None:
    labelled = df[df["label"].notna()]
    if labelled.empty:
        return None
    g = None if groups is None else np.asarray(groups)[df["label"].notna().to_numpy()]
    pred = None if y_pred is None else np.asarray(y_pred)[df["label"].notna().to_numpy()]
    report = metrics.report_with_ci(labelled["label"].astype(int).to_numpy(), labelled["prob"].to_numpy(), pred,
                                    threshold=threshold, class_names=class_names, groups=g,
                                    n_resamples=n_bootstrap, seed=seed)
    report["level"] = level
    report["unit"] = unit
    report["decision"] = decision or f"P({class_names[1]}) >= {threshold}"
    return report


def _curves(df: pd.DataFrame, max_points: int = 400) -> dict[str, Any] | None:
    labelled = df[df["label"].notna()]
    y = labelled["label"].astype(int).to_numpy()
    if labelled.empty or np.unique(y).size < 2:
        return None
    p = labelled["prob"].to_numpy()
    return {"roc": metrics.roc_curve_points(y, p, max_points), "pr": metrics.pr_curve_points(y, p, max_points)}


def _calibration(df: pd.DataFrame, column: str = "prob", n_bins: int = 10) -> dict[str, Any] | None:
    labelled = df[df["label"].notna()]
    if labelled.empty:
        return None
    y, p = labelled["label"].astype(int).to_numpy(), labelled[column].to_numpy()
    return {**calibration.calibration_summary(y, p, n_bins), "reliability": calibration.reliability_curve(y, p, n_bins)}


def aggregate_levels(units: pd.DataFrame, by: str, how: str = "max", threshold: float = 0.5
                     ) -> pd.DataFrame | None:
    """Breast or patient rows from ROI / image rows (None when the ids are missing)."""
    if not _has_ids(units, by):
        return None
    keep = ["patient_id"] if by == "breast_id" and _has_ids(units, "patient_id") else []
    out = voting.aggregate_groups(units, by=by, how=how, threshold=threshold,  # type: ignore[arg-type]
                                  keep=keep)
    return out


def paper_entry_for(model_name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The paper cell of a registered model (Yu's VGG/Fusion models, Jaamour's baseline and model H, Xi's four
    networks), or None for models of our own."""
    params = params or {}
    yu = {"vgg16_gap": "VGG16", "vgg19_gap": "VGG19"}
    xi = {"xi_vgg16": "VGGNet", "xi_resnet50": "ResNet", "xi_alexnet": "AlexNet", "xi_inceptionv3": "GoogLeNet"}
    jaamour = {"jaamour_vgg19": "baseline", "jaamour_mobilenetv2": "H"}
    try:
        if model_name in yu:
            return papers.paper_cell("yu2020", yu[model_name])
        if model_name.startswith(("vgg16_fusion", "vgg19_fusion")):
            backbone, variant = model_name.split("_")
            branches = list(params.get("branches") or (1, 2, 3, 4, 5))
            return papers.paper_cell("yu2020", f"{backbone.upper()}_{variant.capitalize()}", branches=branches)
        if model_name in xi:
            return papers.paper_cell("xi2018", xi[model_name], subset="all")
        if model_name in jaamour:
            return papers.paper_cell("jaamour2023", jaamour[model_name])
    except KeyError:
        return None
    return None


def paper_comparison(model_name: str, params: Mapping[str, Any] | None, levels: Mapping[str, Any]
                     ) -> dict[str, Any] | None:
    """Our numbers next to the paper's at the level the paper reports (Yu: ROI, Jaamour: image, Xi: patch)."""
    entry = paper_entry_for(model_name, params)
    if entry is None:
        return None
    level = str(entry.get("protocol", {}).get("level", "")).lower()
    report = levels.get(level)
    if report is None:
        return None
    return {"paper": entry["paper"], "model": entry["model"], "branches": entry.get("branches"),
            "subset": entry.get("subset"), "level": level, "source": entry.get("source"),
            "protocol": entry.get("protocol"), "rows": papers.compare_with_paper(report, entry)}


@dataclass
class Tables:
    """The prediction tables of one evaluation, one per level (None when the level does not apply)."""

    patches: pd.DataFrame | None
    units: pd.DataFrame  # ROI rows (patch models) or image rows (whole-image models)
    alternative: pd.DataFrame | None  # ROI rows decided by the other voting method
    breasts: pd.DataFrame | None
    patients: pd.DataFrame | None


def vote(patches: pd.DataFrame, method: Method, threshold: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROI rows by ``method`` and by the other method (both with ``prob`` = mean patch P(tumour))."""
    keep = [c for c in ("record_id", "patient_id", "breast_id", "label_name", "split", "fold")
            if c in patches.columns]
    work = patches.copy()
    for column in keep:  # aggregate's consistency check cannot compare None with None
        work[column] = work[column].astype(object).where(work[column].notna(), "")
    other: Method = "soft" if method == "majority" else "majority"
    rois = voting.aggregate(work, by="example_id", method=method, threshold=threshold, keep=keep)
    alt = voting.aggregate(work, by="example_id", method=other, threshold=threshold, keep=keep)
    for table in (rois, alt):
        for column in keep:
            table[column] = table[column].replace("", None)
    if "prob_calibrated" in patches.columns:
        cal = patches.groupby("example_id", sort=True)["prob_calibrated"].mean()
        rois["prob_calibrated"] = rois["example_id"].map(cal).to_numpy()
        alt["prob_calibrated"] = alt["example_id"].map(cal).to_numpy()
    return rois, alt


def compute_metrics(patches: pd.DataFrame | None, units: pd.DataFrame | None = None, *,
                    class_names: Sequence[str] = ("normal", "tumour"), method: Method = "majority",
                    n_bootstrap: int = 2000, seed: int = 0, threshold: float = 0.5
                    ) -> tuple[dict[str, Any], Tables]:
    """Every level's report, curves and calibration from patch rows (patch models) or image rows (``units``).

    Returns the ``levels``/``curves``/``calibration`` part of ``metrics.json`` and the tables behind it.
    """
    class_names = tuple(class_names)
    if method not in ("majority", "soft"):
        raise ConfigError(f"method must be majority or soft, got {method!r}")
    if patches is not None:
        units, alternative = vote(patches, method, threshold)
        unit_level, other = "roi", ("soft" if method == "majority" else "majority")
    elif units is not None:
        alternative, unit_level, other = None, "image", None
    else:
        raise ValueError("give patch rows or image rows")
    by_patient = _has_ids(units, "patient_id")
    unit_name = "patient" if by_patient else unit_level
    unit_groups = units["patient_id"].to_numpy() if by_patient else None
    levels: dict[str, Any] = {}
    common = {"class_names": class_names, "n_bootstrap": n_bootstrap, "seed": seed, "threshold": threshold}
    if patches is not None:
        patch_groups = patches["patient_id"].to_numpy() if by_patient else patches["example_id"].to_numpy()
        levels["patch"] = _level_report(patches, level="patch", unit=unit_name if by_patient else "roi",
                                        decision=None, groups=patch_groups, **common)
        decision = {"majority": f"majority vote of the patch labels; {TIE_BREAK}",
                    "soft": f"soft vote: mean patch P({class_names[1]}) >= {threshold}"}
        levels["roi"] = _level_report(units, level="roi", unit=unit_name, decision=decision[method],
                                      groups=unit_groups, y_pred=units["decision"].to_numpy(), **common)
        levels[f"roi_{other}"] = _level_report(alternative, level=f"roi_{other}", unit=unit_name,  # type: ignore[arg-type]
                                               decision=decision[other], groups=unit_groups,  # type: ignore[index]
                                               y_pred=alternative["decision"].to_numpy(), **common)  # type: ignore[index]
    else:
        levels["image"] = _level_report(units, level="image", unit=unit_name, decision=None, groups=unit_groups,
                                        **common)
    items = "ROIs" if unit_level == "roi" else "images"
    breasts = aggregate_levels(units, "breast_id", threshold=threshold)
    patients = aggregate_levels(units, "patient_id", threshold=threshold)
    if breasts is not None:
        groups = breasts["patient_id"].to_numpy() if "patient_id" in breasts.columns else None
        levels["breast"] = _level_report(breasts, level="breast", unit="patient" if groups is not None else "breast",
                                         decision=f"max P({class_names[1]}) over the breast's {items} >= "
                                                  f"{threshold}", groups=groups, **common)
    if patients is not None:
        levels["patient"] = _level_report(patients, level="patient", unit="patient",
                                          decision=f"max P({class_names[1]}) over the patient's {items} >= "
                                                   f"{threshold}", groups=None, **common)
    levels = {k: v for k, v in levels.items() if v is not None}
    curves = {name: c for name, table in (("patch", patches), (unit_level, units)) if table is not None
              for c in [_curves(table)] if c is not None}
    calib: dict[str, Any] = {}
    for name, table in (("patch", patches), (unit_level, units)):
        if table is not None:
            summary = _calibration(table)
            if summary is not None:
                calib[name] = summary
    if patches is not None and "prob_calibrated" in patches.columns:
        calib["calibrated"] = {name: _calibration(table, "prob_calibrated")
                               for name, table in (("patch", patches), (unit_level, units))}
    part = {"primary_level": unit_level, "bootstrap_unit": unit_name, "levels": levels, "curves": curves,
            "calibration": calib,
            "voting": None if patches is None else {
                "method": method, "alternative": other, "tie_break": TIE_BREAK if method == "majority" else None,
                "roi_probability": "mean patch P(positive) (ROC/PR at ROI level use it, never the voted labels)"}}
    return part, Tables(patches=patches, units=units, alternative=alternative, breasts=breasts, patients=patients)
