"""From patch predictions to ROI, breast and patient decisions.

Yu et al. 2020 (eq. 1) classify an ROI by the *mode* of the labels predicted for its 25 patches. The mode is
a hard decision: it cannot rank ROIs, so an ROI-level ROC/PR curve drawn from voted labels has a single
operating point and its "AUC" is really a balanced accuracy. The papers' released code did exactly that;
here every aggregated row carries a **probability** (`prob`, the mean patch P(tumour)) next to its decision,
and ROI/breast/patient AUCs must be computed from `prob`, never from `decision`.

Input: a patch-level DataFrame with columns ``roi_id`` (or whatever ``by`` names), ``prob`` = P(positive)
of the patch, optionally ``label`` (true 0/1, constant within an ROI) and ``pred`` (the patch's hard label;
derived as ``prob >= threshold`` when absent).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from mammoflow.errors import InputError

log = logging.getLogger(__name__)

Method = Literal["majority", "soft"]
GroupHow = Literal["max", "mean"]


def _binary_int(values: object, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1, got {sorted(set(np.unique(arr).tolist()))[:5]}")
    return arr.astype(np.int64)


def _probabilities(values: object, name: str = "probabilities") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any() or (arr > 1).any():
        raise ValueError(f"{name} must be finite probabilities in [0, 1]")
    return arr


def majority_vote(patch_labels: Sequence[int] | np.ndarray, patch_probs: Sequence[float] | np.ndarray,
                  tie_threshold: float = 0.5) -> int:
    """ROI label as the mode of its patch labels (Yu et al. 2020, eq. 1).

    Ties (possible with an even number of patches) are broken by the ROI's mean P(tumour): ``mean >=
    tie_threshold`` (0.5) gives tumour, otherwise normal. Ties at exactly 0.5 go to tumour on purpose: in
    screening a missed tumour costs more than a second look at a normal ROI.
    """
    labels = _binary_int(patch_labels, "patch_labels")
    probs = _probabilities(patch_probs, "patch_probs")
    if labels.size == 0:
        raise ValueError("majority_vote needs at least one patch")
    if labels.size != probs.size:
        raise ValueError(f"{labels.size} patch labels but {probs.size} patch probabilities")
    votes, n = int(labels.sum()), labels.size
    if 2 * votes != n:
        return int(2 * votes > n)
    return int(probs.mean() >= tie_threshold)


def soft_vote(patch_probs: Sequence[float] | np.ndarray) -> float:
    """ROI probability as the mean of its patches' P(tumour) (the score ROI-level AUCs are computed from)."""
    probs = _probabilities(patch_probs, "patch_probs")
    if probs.size == 0:
        raise ValueError("soft_vote needs at least one patch")
    return float(probs.mean())


def _check_columns(df: pd.DataFrame, needed: Sequence[str], what: str, source: str) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise InputError(source, f"{what} lack column(s) {missing} (have {list(df.columns)})",
                         f"provide columns {list(needed)}", code="missing_column")


def _constant_within(df: pd.DataFrame, by: str, column: str, source: str) -> pd.Series:
    """The one value of ``column`` in each group; refuses groups whose rows disagree."""
    grouped = df.groupby(by, sort=True)[column]
    n_values = grouped.nunique(dropna=False)
    bad = n_values[n_values > 1]
    if len(bad):
        ids = ", ".join(map(str, bad.index[:5]))
        raise InputError(source, f"column {column!r} differs between rows of the same {by} ({ids})",
                         f"every row of one {by} must carry the same {column}; check the predictions table",
                         code=f"inconsistent_{column}")
    return grouped.first()


def aggregate(df: pd.DataFrame, by: str = "roi_id", method: Method = "majority", threshold: float = 0.5,
              keep: Sequence[str] = (), source: str = "patch predictions") -> pd.DataFrame:
    """One row per ROI from patch rows: the decision by ``method`` and the ROI probability for AUCs.

    Output columns: ``by``, ``label`` (true label, <NA> when the input has none), ``n_patches``,
    ``votes_tumour`` (patches predicted positive), ``mean_prob``, ``decision`` (0/1) and ``prob``.
    ``method="majority"`` decides by :func:`majority_vote` (ties broken by ``mean_prob >= threshold``);
    ``"soft"`` by ``mean_prob >= threshold``. In both cases ``prob`` is ``mean_prob``: ranking metrics
    (ROC-AUC, PR-AUC) must use ``prob``, never the hard ``decision`` (see module docstring).
    ``keep`` names columns constant within an ROI to carry over (e.g. ``patient_id``, ``breast_id``).
    """
    if method not in ("majority", "soft"):
        raise ValueError(f"method must be 'majority' or 'soft', got {method!r}")
    _check_columns(df, [by, "prob", *keep], "patch predictions", source)
    if df.empty:
        raise InputError(source, "no patch predictions", "predict at least one patch", code="empty")
    prob = _probabilities(df["prob"].to_numpy(), "prob")
    pred = (_binary_int(df["pred"].to_numpy(), "pred") if "pred" in df.columns
            else (prob >= threshold).astype(np.int64))
    work = pd.DataFrame({by: df[by].to_numpy(), "prob": prob, "pred": pred})
    grouped = work.groupby(by, sort=True)
    out = pd.DataFrame({
        "n_patches": grouped.size(),
        "votes_tumour": grouped["pred"].sum(),
        "mean_prob": grouped["prob"].mean(),
    })
    n, votes = out["n_patches"].to_numpy(), out["votes_tumour"].to_numpy()
    tie_break = (out["mean_prob"].to_numpy() >= threshold).astype(np.int64)
    if method == "majority":
        decision = np.where(2 * votes > n, 1, np.where(2 * votes < n, 0, tie_break))
        n_ties = int((2 * votes == n).sum())
        if n_ties:
            log.info("%d of %d ROIs had tied votes, broken by mean P(tumour) >= %.2f", n_ties, len(out), threshold)
    else:
        decision = tie_break
    out["decision"] = decision.astype(np.int64)
    out["prob"] = out["mean_prob"]
    if "label" in df.columns and df["label"].notna().any():
        work["label"] = _binary_int(df["label"].to_numpy(), "label")
        out.insert(0, "label", _constant_within(work, by, "label", source).astype("Int64"))
    else:
        out.insert(0, "label", pd.array([pd.NA] * len(out), dtype="Int64"))
    for column in keep:
        out[column] = _constant_within(df, by, column, source)
    return out.reset_index()


def aggregate_groups(df: pd.DataFrame, by: str, how: GroupHow = "max", threshold: float = 0.5,
                     keep: Sequence[str] = (), source: str = "predictions") -> pd.DataFrame:
    """One row per breast / patient / image from ROI- or image-level rows (columns ``by``, ``prob``, ``label``).

    ``prob`` of a group is the ``max`` (default: a breast is as suspicious as its most suspicious view or ROI,
    the usual breast-level convention) or the ``mean`` of its rows' ``prob``; ``label`` is positive if any
    row is positive; ``decision`` is ``prob >= threshold``. Output: ``by``, ``label``, ``n_items``, ``prob``,
    ``decision`` and the ``keep`` columns.
    """
    if how not in ("max", "mean"):
        raise ValueError(f"how must be 'max' or 'mean', got {how!r}")
    _check_columns(df, [by, "prob", *keep], "predictions", source)
    if df.empty:
        raise InputError(source, "no predictions to aggregate", "predict at least one item", code="empty")
    work = pd.DataFrame({by: df[by].to_numpy(), "prob": _probabilities(df["prob"].to_numpy(), "prob")})
    has_label = "label" in df.columns and df["label"].notna().any()
    if has_label:
        work["label"] = _binary_int(df["label"].to_numpy(), "label")
    grouped = work.groupby(by, sort=True)
    out = pd.DataFrame({"n_items": grouped.size(), "prob": grouped["prob"].agg(how)})
    label = grouped["label"].max().astype("Int64") if has_label else pd.array([pd.NA] * len(out), dtype="Int64")
    out.insert(0, "label", label)
    out["decision"] = (out["prob"].to_numpy() >= threshold).astype(np.int64)
    for column in keep:
        out[column] = _constant_within(df, by, column, source)
    return out.reset_index()
