"""``mammoflow evaluate``: a trained model on one split of a dataset -> predictions, metrics with CIs, figures.

What it does (the numeric core lives in :mod:`~mammoflow.evaluation.voting`, :mod:`~.metrics`,
:mod:`~.calibration`, :mod:`~.plots` and :mod:`~.papers`; this module wires them to models and shards):

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
import io
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from mammoflow import storage
from mammoflow.errors import ConfigError, InputError
from mammoflow.evaluation import calibration, caveats, metrics, papers, plots, voting

if TYPE_CHECKING:
    import keras

    from mammoflow.evaluation.cam import CamTarget
    from mammoflow.training.config import TrainConfig

log = logging.getLogger(__name__)

Method = Literal["majority", "soft"]

METRICS_KIND = "mammoflow.evaluation"
CV_KIND = "mammoflow.evaluation.cross_validation"
EVALUATION_SCHEMA_VERSION = 1
PREDICTIONS_FILE = "predictions.parquet"
FEATURES_FILE = "roi_features.npz"  # with save_features: each ROI's mean penultimate features (t-SNE, Fig. 1)
METRICS_FILE = "metrics.json"
KFP_METRICS_FILE = "classification_metrics.json"
FIGURES = ("roc.png", "pr.png", "confusion.png", "confusion_normalised.png", "calibration.png")
TIE_BREAK = ("a tied vote (possible only with an even number of patches) goes to the positive class when the ROI's "
             "mean P(positive) is at or above the threshold, else to the negative class")

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


# ============================================================================================ loading a model


@dataclass
class LoadedModel:
    """A Keras model with what its run folder says about it (config, class names, data it was trained on)."""

    model: keras.Model
    uri: str  # what the user gave
    local_path: Path  # the .keras file on local disk
    sha256: str
    config: TrainConfig | None = None
    label_names: list[str] = field(default_factory=lambda: ["normal", "tumour"])
    run_uri: str | None = None
    run_info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.model.name if self.config is not None else str(self.model.name)

    @property
    def whole_image(self) -> bool:
        return self.config is not None and self.config.data.mode == "whole_image"

    @property
    def patch_size(self) -> int:
        if self.config is not None and not self.whole_image:
            return int(self.config.data.patch_size)
        side = self.model.input_shape[1]
        if side is None:
            raise ConfigError(f"{self.uri}: the model takes any input size and no config.yaml gives the patch size. "
                              "Fix: pass the run folder (with config.yaml) instead of the .keras file")
        return int(side)

    @property
    def centring(self) -> str:
        return self.config.data.centring if self.config is not None else "patch_mean"

    @property
    def positive_index(self) -> int:
        return 1

    def cam_target(self, method: str | None = None, layer: str | None = None) -> CamTarget:
        from mammoflow.evaluation.cam import cam_target, has_gap_dense_head

        if layer is None and (method == "gradcam" or (method is None and not has_gap_dense_head(self.model))):
            layer = self.registry_cam_layer()
        return cam_target(self.model, patch_size=self.patch_size, centring=self.centring, layer=layer,
                          method=method, positive_index=self.positive_index,  # type: ignore[arg-type]
                          value_range=self.input_config().value_range)

    def registry_cam_layer(self) -> str | None:
        """The CAM layer the model registry names for this architecture (a loaded .keras file carries no registry
        metadata, so the model is built again, untrained, from its config to read it); None when unknown."""
        from mammoflow.errors import MammoflowError
        from mammoflow.models import create_model, model_meta

        if self.config is None:
            return None
        try:
            twin = create_model(self.config.model.name, input_shape=tuple(self.model.input_shape[1:]),
                                num_classes=int(self.model.output_shape[-1]), weights="none",
                                **self.config.model.params)
        except (MammoflowError, ValueError, TypeError) as exc:
            log.debug("no registry CAM layer for %s: %s", self.name, exc)
            return None
        layer = model_meta(twin).cam_layer
        names = {lay.name for lay in self.model.layers}
        return layer if layer in names else None

    def input_config(self, batch_size: int | None = None) -> Any:
        """The :class:`~mammoflow.dataset.pipeline.InputConfig` the model was validated with during training."""
        from mammoflow.dataset.pipeline import InputConfig

        if self.config is not None:
            d = self.config.data
            return InputConfig(patch_size=d.patch_size, patches_per_roi=dict(d.patches_per_roi),
                               channels=d.channels, centring=d.centring,  # type: ignore[arg-type]
                               eval_grid=tuple(d.eval_grid), batch_size=batch_size or d.batch_size,  # type: ignore[arg-type]
                               seed=self.config.seed)
        return InputConfig(patch_size=self.patch_size, channels=int(self.model.input_shape[-1]),
                           batch_size=batch_size or 32)

    def describe(self) -> dict[str, Any]:
        from mammoflow.config import to_dict

        return {"uri": self.uri, "name": self.name, "sha256": self.sha256, "run_uri": self.run_uri,
                "data_uri": self.run_info.get("data_uri"), "fold": self.fold,
                "config": to_dict(self.config) if self.config is not None else None}

    @property
    def fold(self) -> int | None:
        return self.config.data.fold if self.config is not None else None


def _cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir or Path(tempfile.gettempdir()) / "mammoflow-cache")


def _fetch(uri: str, cache: Path) -> Path | None:
    """A local copy of ``uri`` (the path itself when local); None when it does not exist."""
    if not storage.is_remote(uri):
        path = storage.local_path(uri)
        return path if path.is_file() else None
    if not storage.exists(uri):
        return None
    dest = cache / hashlib.sha256(uri.encode()).hexdigest()[:16] / uri.rsplit("/", 1)[-1]
    if not dest.exists():
        storage.get_file(uri, dest)
    return dest


def _is_run_folder(uri: str) -> bool:
    return not uri.endswith(".keras") and (storage.exists(storage.join(uri, "model.keras"))
                                           or storage.exists(storage.join(uri, "config.yaml")))


def _run_of_keras_file(uri: str) -> str | None:
    """The run folder a ``.keras`` file belongs to (``run/model.keras``, ``run/checkpoints/best.keras``)."""
    parent = uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri else "."
    for candidate in (parent, parent.rsplit("/", 1)[0] if "/" in parent else None):
        if candidate and storage.exists(storage.join(candidate, "config.yaml")):
            return candidate
    return None


def load_model(uri: str | Path, cache_dir: str | Path | None = None) -> LoadedModel:
    """Load a model from a training run folder (local or ``gs://``, holding ``model.keras``) or a ``.keras`` file.

    The run folder's ``config.yaml`` gives the patch size, channels, centring and mode; ``metrics.json`` the class
    names (label index -> name); ``run.json`` the data it was trained on.
    """
    import keras

    from mammoflow.training.config import load_train_config

    uri = str(uri).rstrip("/")
    cache = _cache_root(cache_dir) / "models"
    if _is_run_folder(uri):
        run_uri: str | None = uri
        model_uri = storage.join(uri, "model.keras")
    elif uri.endswith(".keras"):
        run_uri, model_uri = _run_of_keras_file(uri), uri
    else:
        raise InputError(uri, "neither a training run folder (with model.keras) nor a .keras file",
                         "give the --out folder of `mammoflow train` or a .keras model file", code="missing_file")
    model_path = _fetch(model_uri, cache)
    if model_path is None:
        raise InputError(model_uri, "no trained model here (the run may not have finished)",
                         "finish or resume the training run (`mammoflow train` with the same --out)",
                         code="missing_file")
    config = None
    label_names = ["normal", "tumour"]
    run_info: dict[str, Any] = {}
    if run_uri is not None:
        cfg_path = _fetch(storage.join(run_uri, "config.yaml"), cache)
        config = load_train_config(str(cfg_path)) if cfg_path is not None else None
        metrics_path = _fetch(storage.join(run_uri, "metrics.json"), cache)
        if metrics_path is not None:
            names = json.loads(metrics_path.read_text()).get("label_names")
            if names:
                label_names = [names[str(i)] for i in range(len(names))]
        run_path = _fetch(storage.join(run_uri, "run.json"), cache)
        if run_path is not None:
            run_info = json.loads(run_path.read_text())
    try:
        model = keras.models.load_model(model_path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad archive
        raise InputError(model_uri, f"cannot be loaded as a Keras model ({type(exc).__name__}: {exc})",
                         "give a .keras file written by `mammoflow train`", code="corrupt") from None
    n_out = int(model.output_shape[-1])
    if n_out != len(label_names):
        if n_out == 2:
            label_names = ["normal", "tumour"]
        else:
            label_names = [str(i) for i in range(n_out)]
    return LoadedModel(model=model, uri=uri, local_path=model_path, sha256=storage.file_sha256(model_path),
                       config=config, label_names=label_names, run_uri=run_uri, run_info=run_info)


# ============================================================================================ predictions


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


def predict_rows(loaded: LoadedModel, shard_paths: Sequence[str | Path], split: str,
                 batch_size: int | None = None, *, with_features: bool = False
                 ) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The model's rows on ``shard_paths``: one per grid patch (patch models) or per image (whole-image models):
    ids, label, softmax outputs ``p0..`` and P(positive) ``prob``; patch rows also their index and origin.

    ``with_features``: the penultimate-layer features of each row too (``[rows, D]``, row-aligned), from the same
    forward pass (the t-SNE of Yu et al.'s Fig. 1 reuses them instead of running the model again).
    """
    from mammoflow.dataset.pipeline import eval_dataset, whole_image_dataset

    cfg = loaded.input_config(batch_size)
    paths = list(map(str, shard_paths))
    if loaded.whole_image:
        size = (loaded.config.data.image_size if loaded.config is not None else None) or loaded.model.input_shape[1]
        if not size:
            raise ConfigError(f"{loaded.uri}: whole-image model without data.image_size in its config.yaml")
        data = whole_image_dataset(paths, cfg, int(size))
    else:
        data = eval_dataset(paths, cfg)
    meta = _shard_metadata(shard_paths)
    result = run_model(loaded.model, data, f"predict {split}", with_features=with_features)
    if not result.ids:
        raise InputError(split, "the split holds no examples", "evaluate a split the dataset has", code="empty")
    df = pd.DataFrame({"example_id": result.ids})
    if not loaded.whole_image:
        _add_patch_positions(df, meta, cfg)
    _attach_meta(df, meta, split)
    df["prob"] = positive_probability(result.probs, loaded.positive_index)
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


def predict_patches(loaded: LoadedModel, shard_paths: Sequence[str | Path], split: str,
                    batch_size: int | None = None) -> pd.DataFrame:
    """One row per grid patch: ids, patch index and origin, label, softmax outputs and P(positive)."""
    if loaded.whole_image:
        raise ConfigError(f"{loaded.uri}: a whole-image model has no grid patches; use predict_images")
    return predict_rows(loaded, shard_paths, split, batch_size)[0]


def predict_images(loaded: LoadedModel, shard_paths: Sequence[str | Path], split: str,
                   batch_size: int | None = None) -> pd.DataFrame:
    """Whole-image models: one row per image."""
    if not loaded.whole_image:
        raise ConfigError(f"{loaded.uri}: a patch model is evaluated per grid patch; use predict_patches")
    return predict_rows(loaded, shard_paths, split, batch_size)[0]


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


# ============================================================================================ metrics


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


# ============================================================================================ outputs


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
    from mammoflow.io.images import atomic_write_bytes

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


# ============================================================================================ evaluate


def _data_files(data_uri: str, cache_dir: str | Path | None) -> tuple[dict[str, Any], dict[str, list[str]], str]:
    from mammoflow.dataset.cache import LocalCache
    from mammoflow.dataset.shards import read_manifest

    manifest_uri = storage.join(data_uri, "manifest.json")
    sha = hashlib.sha256(storage.get_bytes(manifest_uri)).hexdigest()
    manifest = read_manifest(data_uri)
    shards = LocalCache(_cache_root(cache_dir) / "shards").fetch(manifest_uri)
    return manifest, {k: [str(p) for p in v] for k, v in shards.items()}, sha


def _split_shards(shards: Mapping[str, list[str]], split: str, data_uri: str) -> list[str]:
    paths = shards.get(split)
    if not paths:
        raise ConfigError(f"{data_uri}: the dataset has no {split!r} split (has {sorted(shards)}). "
                          "Fix: --split one of those")
    return paths


def _fingerprint(loaded: LoadedModel, data_sha: str, split: str, fold: int | None) -> str:
    text = json.dumps({"model": loaded.sha256, "data": data_sha, "split": split, "fold": fold}, sort_keys=True)
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


def fit_calibration(loaded: LoadedModel, shards: Mapping[str, list[str]], val_split: str, data_uri: str,
                    batch_size: int | None) -> tuple[float, dict[str, Any]]:
    """Temperature fitted on the validation split's patch (or image) predictions (Guo et al. 2017)."""
    paths = _split_shards(shards, val_split, data_uri)
    rows = predict_rows(loaded, paths, val_split, batch_size)[0]
    rows = rows[rows["label"].notna()]
    probs = rows[[c for c in rows.columns if c.startswith("p") and c[1:].isdigit()]].to_numpy()
    y = rows["label"].astype(int).to_numpy()
    temperature = calibration.fit_temperature(probs, y)
    p_val = rows["prob"].to_numpy()
    p_cal = calibration.apply_temperature(probs, temperature)[:, loaded.positive_index]
    return temperature, {"value": temperature, "fitted_on": val_split, "n": int(len(rows)),
                         "unit": "image" if loaded.whole_image else "patch",
                         "val_ece_before": calibration.expected_calibration_error(y, p_val),
                         "val_ece_after": calibration.expected_calibration_error(y, p_cal)}


def evaluate(model_uri: str, data_uri: str, out: str | Path, *, split: str = "test", method: Method = "majority",
             calibrate: bool = False, n_bootstrap: int = 2000, seed: int = 0, threshold: float = 0.5,
             batch_size: int | None = None, fold: int | None = None, cache_dir: str | Path | None = None,
             loaded: LoadedModel | None = None, save_features: bool = False) -> dict[str, Any]:
    """Evaluate one model on one split; write every output into ``out`` (see module docstring); return metrics.

    ``fold``: evaluate only the examples of that cross-validation fold within ``split`` (Xi et al. 2018's
    five-fold protocol: each fold's model on its own held-out fold). ``save_features``: also write
    ``roi_features.npz`` (:func:`read_roi_features`), each ROI's mean penultimate-layer features, taken from the
    forward pass that makes the predictions (no second pass over the split).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = loaded or load_model(model_uri, cache_dir)
    if len(loaded.label_names) != 2:
        raise ConfigError(f"{model_uri}: evaluation is binary (negative vs positive class); this model has "
                          f"{len(loaded.label_names)} classes {loaded.label_names}")
    manifest, shards, data_sha = _data_files(data_uri, cache_dir)
    class_names = tuple(loaded.label_names)
    manifest_names = manifest.get("label_names")
    if manifest_names and [manifest_names[str(i)] for i in range(len(manifest_names))] != list(class_names):
        raise ConfigError(f"{data_uri}: the dataset's classes {manifest_names} differ from the model's "
                          f"{list(class_names)}. Fix: evaluate on a dataset built with the model's label scheme")
    paths = _split_shards(shards, split, data_uri)
    fingerprint = _fingerprint(loaded, data_sha, split, fold)
    cached = _cached_predictions(out, fingerprint)
    if cached is not None and save_features and read_roi_features(out, fingerprint) is None:
        cached = None  # the features come from the prediction pass: run it once more, for both
    level = "image" if loaded.whole_image else "patch"
    if cached is not None:
        log.info("%s: reusing the predictions of an earlier run on the same model, data and split", out)
        rows = _restore_rows(cached, level)
    else:
        rows, features = predict_rows(loaded, paths, split, batch_size, with_features=save_features)
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
        val_split = loaded.config.data.val_split if loaded.config is not None else "val"
        if val_split == split:
            raise ConfigError(f"temperature scaling must be fitted on another split than the evaluated one "
                              f"({split!r}). Fix: evaluate --split test")
        temperature, temperature_info = fit_calibration(loaded, shards, val_split, data_uri, batch_size)
        probs = rows[[c for c in rows.columns if c.startswith("p") and c[1:].isdigit()]].to_numpy()
        rows["prob_calibrated"] = calibration.apply_temperature(probs, temperature)[:, loaded.positive_index]
    elif "prob_calibrated" in rows.columns:
        rows = rows.drop(columns=["prob_calibrated"])
    part, tables = compute_metrics(rows if level == "patch" else None, rows if level == "image" else None,
                                   class_names=class_names, method=method, n_bootstrap=n_bootstrap, seed=seed,
                                   threshold=threshold)
    part["calibration"]["temperature"] = temperature_info
    params = loaded.config.model.params if loaded.config is not None else {}
    report = {
        "kind": METRICS_KIND, "evaluation_schema_version": EVALUATION_SCHEMA_VERSION,
        "schema_version": metrics.METRICS_SCHEMA_VERSION, "split": split, "fold": fold, "threshold": threshold,
        "fingerprint": fingerprint, "model": loaded.describe(), **caveats.fold_selection(loaded.fold, fold),
        "data": {"uri": data_uri, "manifest_sha256": data_sha,
                 "counts": (manifest.get("splits", {}).get(split) or {}).get("counts"),
                 "patients": (manifest.get("splits", {}).get(split) or {}).get("patients")},
        "class_names": list(class_names), "positive_class": class_names[1],
        **part,
        "paper_comparison": paper_comparison(loaded.name, params, part["levels"]),
        "n_bootstrap": n_bootstrap, "seed": seed,
    }
    write_parquet(predictions_table(tables, loaded.name), out / PREDICTIONS_FILE)
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


def _group_key(loaded: LoadedModel) -> str:
    """Runs that differ only by their cross-validation fold share a key. A bare .keras file (no config.yaml) has
    no known fold or setup, so it is a group of its own (unless the very same file is given twice): pooling it
    with another model of the same Keras name (often just ``functional``) would summarise two models as folds."""
    from mammoflow.config import to_dict

    if loaded.config is None:
        return f"{loaded.name}-{loaded.sha256[:8]}"
    cfg = to_dict(loaded.config)
    cfg["data"].pop("fold", None)
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]
    return f"{loaded.name}-{digest}"


def evaluate_many(model_uris: Sequence[str], data_uri: str, out: str | Path, *, split: str | None = None,
                  fold_of_each: bool = False, method: Method = "majority", calibrate: bool = False,
                  n_bootstrap: int = 2000, seed: int = 0, threshold: float = 0.5, batch_size: int | None = None,
                  cache_dir: str | Path | None = None) -> dict[str, Any]:
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
        loaded = load_model(uri, cache_dir)
        name = uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".keras") or "model"
        while name in used:
            name += "_"
        used.add(name)
        fold = loaded.fold if fold_of_each else None
        if fold_of_each and fold is None:
            raise ConfigError(f"{uri}: --fold-of-each needs runs trained with data.fold set (this one has none)")
        run_split = split or (loaded.config.data.train_split if fold_of_each and loaded.config is not None
                              else "test")
        report = evaluate(uri, data_uri, out / name, split=run_split, method=method, calibrate=calibrate,
                          n_bootstrap=n_bootstrap, seed=seed, threshold=threshold, batch_size=batch_size,
                          fold=fold, cache_dir=cache_dir, loaded=loaded)
        entry = {"name": name, "uri": uri, "model": loaded.name, "fold": loaded.fold, "metrics": f"{name}/{METRICS_FILE}",
                 "group": _group_key(loaded), "report": report}
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

