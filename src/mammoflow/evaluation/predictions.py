"""Patch and image predictions of a model package on a dataset's shards: one forward pass -> one row per grid
patch (patch models; Yu et al. 2020: 25 patches, a 5x5 grid of windows per ROI) or per image (whole-image models,
Jaamour et al. 2023), with ids, label and P(positive).

A row's probability is P(positive) = the softmax column of the positive label (label 1: ``tumour``,
``malignant``), never the top-class probability (a bug of the papers' released code). The rows come from
:func:`mammoflow.dataset.pipeline.eval_dataset`, the same input pipeline the model was validated with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mammoflow.errors import ConfigError, InputError

if TYPE_CHECKING:
    import keras

    from mammoflow.training.package import ModelPackage

def positive_probability(probs: np.ndarray, positive_index: int = 1) -> np.ndarray:
    """P(positive) of each row of a softmax output (the positive label's column, not the top class)."""
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"expected softmax outputs of shape (N, classes >= 2), got {probs.shape}")
    return np.clip(probs[:, positive_index], 0.0, 1.0)


def _shard_metadata(shard_paths: Sequence[str | Path]) -> dict[str, dict[str, Any]]:
    """example_id -> ids, label and ROI shape, read from the shards (the images are not kept)."""
    from mammoflow.dataset.shards import iter_examples

    meta: dict[str, dict[str, Any]] = {}
    for path in shard_paths:
        for ex in iter_examples(path):
            meta[ex.example_id] = {
                "record_id": ex.record_id, "patient_id": ex.patient_id or None, "breast_id": ex.breast_id or None,
                # The shards write -1 for "no label" and "no fold".
                "label": int(ex.label) if ex.label is not None and ex.label >= 0 else None,
                "label_name": ex.label_name or None, "fold": ex.fold if ex.fold is not None and ex.fold >= 0 else None,
                "roi_shape": tuple(int(s) for s in ex.image.shape[:2]),
            }
    return meta


@dataclass
class ModelOutputs:
    """One forward pass over a dataset of ``(x, y, example_id)`` batches, one entry per input row."""

    ids: list[str]
    labels: np.ndarray  # the dataset's y (-1: unlabelled)
    probs: np.ndarray  # softmax outputs [N, K]
    features: np.ndarray | None = None  # penultimate-layer features [N, D], when asked for


def penultimate_and_output(model: keras.Model) -> keras.Model:
    """``model`` with two outputs: the input of its last layer (the classifier's features, the penultimate layer)
    and its own output, so that one forward pass gives both."""
    import keras

    return keras.Model(model.inputs, [model.layers[-1].input, model.outputs[0]], name=f"{model.name}_features")


def run_model(model: keras.Model, data: Any, desc: str, *, with_features: bool = False) -> ModelOutputs:
    """Run ``model`` over every batch of ``data``; with ``with_features`` also keep its penultimate features."""
    from mammoflow.logs import progress

    net = penultimate_and_output(model) if with_features else model
    ids: list[str] = []
    labels: list[np.ndarray] = []
    outputs: list[np.ndarray] = []
    features: list[np.ndarray] = []
    for x, y, example_ids in progress(data, desc=desc, unit="batch"):
        out = net.predict_on_batch(x)
        if with_features:
            feats, out = out
            features.append(np.asarray(feats, np.float32).reshape(int(x.shape[0]), -1))
        outputs.append(np.asarray(out, np.float64))
        labels.append(np.asarray(y, np.int64))
        ids.extend(i.decode() if isinstance(i, bytes) else str(i) for i in np.asarray(example_ids).tolist())
    if not ids:
        empty = np.zeros((0, 0))
        return ModelOutputs([], np.zeros(0, np.int64), empty, empty if with_features else None)
    return ModelOutputs(ids, np.concatenate(labels), np.concatenate(outputs),
                        np.concatenate(features) if with_features else None)


def predict_rows(package: ModelPackage, shard_paths: Sequence[str | Path], split: str,
                 batch_size: int | None = None, *, with_features: bool = False
                 ) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The model's rows on ``shard_paths``: one per grid patch (patch models) or per image (whole-image models):
    ids, label, softmax outputs ``p0..`` and P(positive) ``prob``; patch rows also their index and origin.

    ``with_features``: the penultimate-layer features of each row too (``[rows, D]``, row-aligned), from the same
    forward pass (the t-SNE of Yu et al.'s Fig. 1 reuses them instead of running the model again).
    """
    from mammoflow.dataset.pipeline import eval_dataset, whole_image_dataset

    cfg = package.input_config(batch_size)
    paths = list(map(str, shard_paths))
    if package.whole_image:
        data = whole_image_dataset(paths, cfg, int(package.image_size))  # type: ignore[arg-type]
    else:
        data = eval_dataset(paths, cfg)
    meta = _shard_metadata(shard_paths)
    result = run_model(package.model, data, f"predict {split}", with_features=with_features)
    if not result.ids:
        raise InputError(split, "the split holds no examples", "evaluate a split the dataset has", code="empty")
    df = pd.DataFrame({"example_id": result.ids})
    if not package.whole_image:
        _add_patch_positions(df, meta, cfg)
    _attach_meta(df, meta, split)
    df["prob"] = positive_probability(result.probs, package.positive_index)
    for j in range(result.probs.shape[1]):
        df[f"p{j}"] = result.probs[:, j]
    return df, result.features


def _add_patch_positions(df: pd.DataFrame, meta: Mapping[str, Mapping[str, Any]], cfg: Any) -> None:
    """``patch_index`` (row-major grid position) and the patch's origin ``patch_row``/``patch_col`` in its ROI."""
    from mammoflow.dataset.pipeline import grid_patch_origins

    df["patch_index"] = df.groupby("example_id", sort=False).cumcount()
    origins: dict[str, list[tuple[int, int]]] = {}
    rows, cols = [], []
    for ex_id, k in zip(df["example_id"], df["patch_index"], strict=True):
        if ex_id not in origins:
            shape = meta[ex_id]["roi_shape"]
            origins[ex_id] = [(int(r), int(c)) for r, c in grid_patch_origins(shape, cfg.patch_size, cfg.eval_grid)]
        grid = origins[ex_id]
        r, c = grid[k] if k < len(grid) else (None, None)
        rows.append(r)
        cols.append(c)
    df["patch_row"] = pd.array(rows, dtype="Int64")
    df["patch_col"] = pd.array(cols, dtype="Int64")


def predict_patches(package: ModelPackage, shard_paths: Sequence[str | Path], split: str,
                    batch_size: int | None = None) -> pd.DataFrame:
    """One row per grid patch: ids, patch index and origin, label, softmax outputs and P(positive)."""
    if package.whole_image:
        raise ConfigError(f"{package.uri}: a whole-image model has no grid patches; use predict_images")
    return predict_rows(package, shard_paths, split, batch_size)[0]


def predict_images(package: ModelPackage, shard_paths: Sequence[str | Path], split: str,
                   batch_size: int | None = None) -> pd.DataFrame:
    """Whole-image models: one row per image."""
    if not package.whole_image:
        raise ConfigError(f"{package.uri}: a patch model is evaluated per grid patch; use predict_patches")
    return predict_rows(package, shard_paths, split, batch_size)[0]


def roi_means(example_ids: Sequence[str], values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(example ids in order of first appearance, the mean of ``values``' rows per id): ROI features from patch
    features (Yu et al. 2020, Fig. 1: an ROI is the mean of its grid patches)."""
    ids = pd.Series(list(example_ids), dtype=object)
    order = list(pd.unique(ids))
    codes = pd.Categorical(ids, categories=order).codes
    values = np.asarray(values, np.float64).reshape(len(ids), -1)
    sums = np.zeros((len(order), values.shape[1]))
    np.add.at(sums, codes, values)
    return order, sums / np.bincount(codes, minlength=len(order))[:, None]


def _attach_meta(df: pd.DataFrame, meta: Mapping[str, Mapping[str, Any]], split: str) -> None:
    missing = sorted(set(df["example_id"]) - set(meta))
    if missing:
        raise InputError(missing[0], "a predicted example is not in the shards' metadata",
                         "rebuild the dataset; the shards are inconsistent", code="inconsistent_shards")
    for column in ("record_id", "patient_id", "breast_id", "label_name", "fold"):
        df[column] = [meta[i][column] for i in df["example_id"]]
    df["label"] = pd.array([meta[i]["label"] for i in df["example_id"]], dtype="Int64")
    df["split"] = split
