"""Grid predictions with test-time augmentation (TTA) and ROI decisions with a threshold chosen on validation.

Yu et al. 2020 classify a test ROI from the 25 patches of a 5x5 grid (72x72 windows, stride 12). Our from-scratch
model keeps that grid and adds two things that need no extra training:

- **TTA over the dihedral group**: every grid patch is also shown rotated by 90/180/270 degrees and mirrored
  (up to 8 views); its P(tumour) is the mean over the views. Mammographic texture has no preferred orientation
  (the training augmentation already rotates up to 180 degrees), so the views are equally valid inputs, and the
  mean is less noisy than one view. Patch-wise centring commutes with these transforms, so they are applied to
  the pipeline's finished patches.
- **A decision threshold fitted on the validation split** (:func:`choose_threshold`): the smallest patch
  threshold whose ROI decisions keep the validation tumour recall at the target, breaking ties by validation
  accuracy. The test split is never looked at.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: The eight symmetries of the square, as (quarter turns, mirror first).
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, m) for m in (False, True) for k in range(4))


def dihedral(x: np.ndarray, index: int) -> np.ndarray:
    """View ``index`` (0..7) of a batch ``[B, H, W, C]``: optionally mirrored left-right, then ``k`` quarter turns.

    View 0 is the identity. Pure numpy; square patches keep their shape.
    """
    if not 0 <= index < len(DIHEDRAL):
        raise ValueError(f"dihedral view index must be in 0..7, got {index}")
    quarter_turns, mirror = DIHEDRAL[index]
    out = x[:, :, ::-1, :] if mirror else x
    return np.rot90(out, k=quarter_turns, axes=(1, 2))


def tta_views(n_views: int) -> tuple[int, ...]:
    """Which dihedral views ``n_views`` uses: 1 (none), 2 (+ mirror), 4 (rotations), 8 (all)."""
    views = {1: (0,), 2: (0, 4), 4: (0, 1, 2, 3), 8: tuple(range(8))}
    if n_views not in views:
        raise ValueError(f"tta must be 1, 2, 4 or 8 views, got {n_views}")
    return views[n_views]


def predict_tta(model: Any, x: np.ndarray, n_views: int = 1) -> np.ndarray:
    """Softmax outputs ``[B, K]`` of ``model`` on batch ``x``, averaged over ``n_views`` dihedral views."""
    views = tta_views(n_views)
    stacked = np.concatenate([dihedral(x, v) for v in views], axis=0)
    out = np.asarray(model.predict_on_batch(stacked), np.float64)
    return out.reshape(len(views), x.shape[0], -1).mean(axis=0)


def grid_predictions(model: Any, shard_paths: Sequence[str], input_cfg: Any, n_views: int = 1,
                     positive_index: int = 1, image_size: int | None = None) -> pd.DataFrame:
    """One row per grid patch of every ROI in ``shard_paths``: ``example_id``, ``label``, ``prob`` (P(tumour),
    TTA-averaged), ``p0``..``pK-1``, ``patch_index`` (row-major grid position).

    With ``image_size`` the model is a whole-ROI model: one row per ROI, resized to ``image_size`` (the
    ``whole_image`` data mode). The rows feed :func:`mammoflow.evaluation.levels.compute_metrics` (voting,
    metrics with CIs) unchanged.
    """
    from mammoflow.dataset.pipeline import eval_dataset, whole_image_dataset
    from mammoflow.logs import progress

    paths = list(map(str, shard_paths))
    data = eval_dataset(paths, input_cfg) if image_size is None else \
        whole_image_dataset(paths, input_cfg, int(image_size))
    ids: list[str] = []
    labels: list[np.ndarray] = []
    outputs: list[np.ndarray] = []
    for x, y, example_ids in progress(data, desc="predict", unit="batch"):
        outputs.append(predict_tta(model, np.asarray(x), n_views))
        labels.append(np.asarray(y))
        ids.extend(i.decode() if isinstance(i, bytes) else str(i) for i in np.asarray(example_ids).tolist())
    probs = np.concatenate(outputs)
    df = pd.DataFrame({"example_id": ids})
    df["patch_index"] = df.groupby("example_id", sort=False).cumcount()
    df["label"] = pd.array(np.concatenate(labels).astype(np.int64), dtype="Int64")
    df["prob"] = np.clip(probs[:, positive_index], 0.0, 1.0)
    for j in range(probs.shape[1]):
        df[f"p{j}"] = probs[:, j]
    return df


#: What identifies one prediction row: the ROI (or image) and the grid position of the patch within it.
ROW_KEY = ("example_id", "patch_index")


def _keys(table: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_frame(table[list(ROW_KEY)].astype({"patch_index": "int64"}))


def _labels(table: pd.DataFrame) -> np.ndarray:
    return table["label"].to_numpy(dtype="float64", na_value=np.nan)


def average_members(tables: Sequence[pd.DataFrame], names: Sequence[str] | None = None) -> pd.DataFrame:
    """The members' rows with ``prob`` and ``p0``..``pK-1`` averaged, matched by ROI id and patch position (never
    by row order). Refused (:class:`~mammoflow.errors.ConfigError`) when a member predicted other rows than the
    first (missing, extra or repeated ids) or gives a row another label: averaging those would mix up ROIs."""
    from mammoflow.errors import ConfigError

    if not tables:
        raise ValueError("average_members: no member predictions")
    names = list(names) if names is not None else [f"member {k + 1}" for k in range(len(tables))]
    base = _keys(tables[0])
    fix = "Fix: evaluate every ensemble member on the same dataset split (one preset, one dataset, several seeds)"
    for name, table in zip(names, tables, strict=True):
        if _keys(table).has_duplicates:
            dup = _keys(table)[_keys(table).duplicated()][0]
            raise ConfigError(f"ensemble {name}: the row {dup} appears more than once in its predictions. {fix}")
    rows = tables[0].copy()
    prob_columns = ["prob", *(c for c in rows.columns if c.startswith("p") and c[1:].isdigit())]
    sums = rows[prob_columns].to_numpy(np.float64).copy()
    for name, table in zip(names[1:], tables[1:], strict=True):
        keys = _keys(table)
        missing, extra = base.difference(keys), keys.difference(base)
        if len(missing) or len(extra):
            raise ConfigError(f"ensemble {name} predicted other ROIs than {names[0]}: {len(missing)} row(s) missing "
                              f"(e.g. {list(missing[:2])}), {len(extra)} extra (e.g. {list(extra[:2])}). {fix}")
        aligned = table.set_index(keys).loc[base]
        if "label" in rows and not np.array_equal(_labels(aligned), _labels(rows), equal_nan=True):
            raise ConfigError(f"ensemble {name} gives some ROIs another label than {names[0]}. {fix}")
        sums += aligned[prob_columns].to_numpy(np.float64)
    rows[prob_columns] = sums / len(tables)
    return rows


def roi_table(patches: pd.DataFrame, method: str = "soft", threshold: float = 0.5) -> pd.DataFrame:
    """ROI rows (``example_id``, ``label``, ``prob`` = mean patch P(tumour), ``decision``) by majority or soft vote."""
    from mammoflow.evaluation import voting

    return voting.aggregate(patches[["example_id", "label", "prob"]].assign(label=patches["label"].astype(int)),
                            by="example_id", method=method, threshold=threshold)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ThresholdChoice:
    """A decision threshold chosen on the validation split and what it gave there."""

    threshold: float
    method: str
    target_recall: float
    val_recall: float
    val_accuracy: float
    met_target: bool

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "method": self.method, "target_recall": self.target_recall,
                "val_recall": self.val_recall, "val_accuracy": self.val_accuracy, "met_target": self.met_target,
                "fitted_on": "val"}


def roi_scores(y: np.ndarray, decision: np.ndarray) -> tuple[float, float]:
    """(tumour recall, accuracy) of ROI decisions."""
    y = np.asarray(y, np.int64)
    decision = np.asarray(decision, np.int64)
    positives = max(int(y.sum()), 1)
    return float((decision[y == 1] == 1).sum() / positives), float((decision == y).mean())


def choose_threshold(val_patches: pd.DataFrame, method: str = "soft", target_recall: float = 0.95,
                     grid: Sequence[float] | None = None) -> ThresholdChoice:
    """The patch-probability threshold for ROI decisions, fitted on validation patch rows only.

    Among thresholds (default 0.05..0.95 in steps of 0.01) whose validation ROI tumour recall reaches
    ``target_recall``, the one with the best validation accuracy (the largest such threshold on ties, i.e. the
    fewest false alarms). When none reaches the target, the one with the highest recall, then accuracy.
    """
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2) if grid is None else np.asarray(grid, np.float64)
    best: tuple[tuple[float, ...], ThresholdChoice] | None = None
    for t in grid:
        rois = roi_table(val_patches, method, float(t))
        recall, acc = roi_scores(rois["label"].to_numpy(), rois["decision"].to_numpy())
        met = recall >= target_recall - 1e-12
        key = (1.0, acc, float(t)) if met else (0.0, recall, acc, -float(t))
        choice = ThresholdChoice(float(t), method, target_recall, recall, acc, met)
        if best is None or key > best[0]:
            best = (key, choice)
    assert best is not None
    log.info("threshold %.2f chosen on val (%s vote): tumour recall %.4f, accuracy %.4f%s", best[1].threshold,
             method, best[1].val_recall, best[1].val_accuracy, "" if best[1].met_target else
             f" (target recall {target_recall} not reached)")
    return best[1]
