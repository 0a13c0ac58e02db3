"""``--budget cpu-pretrained``: the papers' transfer-learning protocols on Yu et al.'s released ROIs, on 2 CPU cores.

Three cells, each on the pretrained weights its backbone takes (:func:`mammoflow.models.pretrained.accepted_by`):

- ``hed_vgg16_fusion1`` / ``hed_vgg16_fusion2``: Yu et al.'s Fusion1 / Fusion2 over all five VGG16 blocks on
  ``hed-bsds500`` (HED's VGG16 convolutions: BSDS500 edge detection, initialised from ImageNet VGG16; *not*
  ImageNet weights), 72x72 patches with ``caffe`` scaling. Stage 1: convs frozen, the head trained on features the
  backbone computes once (``head_cache``). Stage 2: a second training run initialised from stage 1's whole-model
  weights (``weights: <stage 1>/model.weights.h5``), every conv unfrozen, one epoch of fresh patches at Yu's SGD
  rate 1e-4 (momentum 0.9: low for pretrained convs). All 13 convs, not just block 5: Fusion1/Fusion2 tap every
  block, so the head already reads block 1-4 features directly, and the training loop unfreezes the backbone as
  a whole (``trainable_backbone``). (Its head cache forbids a trainable phase in the same run, hence two runs.)
- ``tv_mobilenetv2``: Jaamour et al.'s ``jaamour_mobilenetv2`` on ``torchvision-imagenet`` (torchvision's ImageNet
  MobileNetV2), the whole 120x120 ROI upscaled to 144x144 (MobileNetV2 divides its input by 32: a 72x72 patch
  ends in 3x3 maps), ``torch`` scaling; Jaamour's two phases in one run: backbone frozen, then unfrozen at 1e-5.

Choices on the **validation** split only: each training run keeps its epoch of lowest validation loss; a cell's
final model is the stage with the lower validation loss; each model's ROI threshold is fitted on validation
(soft vote, tumour recall >= 0.9565, :func:`~mammoflow.reproduce.predict.choose_threshold`); "ours" is the cell or
ROI-level ensemble of cells with the best validation accuracy at its validation threshold (ties: validation
ROC-AUC). The test split is predicted once per final model; the ensembles reuse those predictions.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammoflow.errors import ConfigError

log = logging.getLogger(__name__)

PRESET = "yu2020"
TARGET_RECALL = 0.9565
ALL = [1, 2, 3, 4, 5]

# Weights named as what they are (never "ImageNet" for HED).
WEIGHTS_LABEL = {"hed-bsds500": "HED (BSDS500 edges, VGG16 initialised from ImageNet)",
                 "torchvision-imagenet": "torchvision ImageNet MobileNetV2"}

# Yu's optimiser (SGD, momentum 0.9, 1e-4; the released code) in both stages: Adam at 1e-4 over-fitted the head in
# its first epoch on validation (EXPERIMENTS.md, p01).
_VGG_DATA = {"data.patch_size": 72, "data.channels": 3, "data.centring": "caffe", "class_weights": "balanced",
             "optimizer.name": "sgd", "optimizer.momentum": 0.9}


@dataclass(frozen=True)
class PretrainedCell:
    """One model of the protocol: its train-config overrides per stage (on the ``yu2020`` preset)."""

    name: str
    model: str
    weights: str
    common: Mapping[str, Any]  # overrides of every stage (model, data, optimiser)
    frozen: Mapping[str, Any]  # stage 1
    finetune: Mapping[str, Any] | None = None  # stage 2, initialised from stage 1's weights (None: no stage 2)
    tta_views: int = 1
    paper: str = "yu2020"

    @property
    def weights_label(self) -> str:
        return WEIGHTS_LABEL.get(self.weights, self.weights)

    def stages(self) -> list[str]:
        return ["frozen"] + (["finetune"] if self.finetune is not None else [])

    def overrides(self, stage: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        own = self.frozen if stage == "frozen" else self.finetune
        if own is None:
            raise ConfigError(f"cell {self.name!r} has no stage {stage!r}")
        return {**self.common, "model.name": self.model, "model.weights": self.weights, **own, **(extra or {})}


def _fusion(name: str, model: str) -> PretrainedCell:
    return PretrainedCell(
        name=name, model=model, weights="hed-bsds500",
        common={**_VGG_DATA, "model.params": {"branches": ALL, "fc_units": [1024, 1024]}},
        frozen={"head_cache": True, "data.resample_each_epoch": False,
                "data.patches_per_roi": {"normal": 16, "tumour": 28},
                "schedule.phases": [{"epochs": 15, "learning_rate": 1.0e-4, "trainable_backbone": False}]},
        finetune={"data.patches_per_roi": {"normal": 6, "tumour": 10},
                  "schedule.phases": [{"epochs": 1, "learning_rate": 1.0e-4, "trainable_backbone": True}]})


CELLS: tuple[PretrainedCell, ...] = (
    _fusion("hed_vgg16_fusion1", "vgg16_fusion1"),
    _fusion("hed_vgg16_fusion2", "vgg16_fusion2"),
    PretrainedCell(
        name="tv_mobilenetv2", model="jaamour_mobilenetv2", weights="torchvision-imagenet", paper="jaamour2023",
        common={"model.params": {}, "data.mode": "whole_image", "data.image_size": 144, "data.channels": 1,
                "data.centring": "torch", "class_weights": "balanced", "optimizer.name": "adam",
                "data.augment": {"rotation_deg": 180, "zoom": 0.2, "hflip": True, "vflip": True}},
        frozen={"schedule.phases": [{"epochs": 10, "learning_rate": 1.0e-3, "trainable_backbone": False},
                                    {"epochs": 10, "learning_rate": 1.0e-5, "trainable_backbone": True}]},
        tta_views=8),
)


def cells_for(weights: str | None) -> tuple[PretrainedCell, ...]:
    """The protocol's cells; ``--weights`` names one of the protocol's weights (or is left out): all cells run,
    each on the weights its backbone takes."""
    if weights not in (None, *WEIGHTS_LABEL):
        raise ConfigError(f"--budget cpu-pretrained: --weights {weights!r} is not one of {', '.join(WEIGHTS_LABEL)}. "
                          "Fix: leave --weights out or give hed-bsds500 / torchvision-imagenet (each cell gets the "
                          "weights its backbone takes)")
    return CELLS


def stage_config(cell: PretrainedCell, stage: str, init: str | None = None, extra: Mapping[str, Any] | None = None):
    """The validated TrainConfig of one stage; ``init``: whole-model weights that stage 2 starts from."""
    from mammoflow.training.config import load_train_config

    over = cell.overrides(stage, extra)
    if init is not None:
        over["model.weights"] = init
    return load_train_config(PRESET, over)


# ------------------------------------------------------------------------------------------------ training


def whole_model_weights(run: Path) -> Path:
    """``run/model.weights.h5`` (the best model's weights, what ``weights:`` loads), written once from model.keras."""
    path = run / "model.weights.h5"
    if not path.exists():
        import os
        import tempfile

        from mammoflow.models import load_model

        model = load_model(run / "model.keras", compile=False)
        with tempfile.TemporaryDirectory(dir=run, prefix=".weights-") as tmp:  # Keras wants the .weights.h5 name
            model.save_weights(str(Path(tmp) / path.name))
            os.replace(Path(tmp) / path.name, path)  # atomic: a partial file is never seen under the final name
    return path


def _best(run: Path) -> dict[str, Any]:
    history = json.loads((run / "history.json").read_text())
    best = min(history, key=lambda h: h["val_loss"])
    return {"best_epoch": best["epoch"], "epochs": len(history), "best_val_loss": float(best["val_loss"]),
            "best_val_accuracy": best.get("val_accuracy")}


def _recorded_wall(run: Path) -> float | None:
    path = run / "run.json"
    return json.loads(path.read_text()).get("wall_time_s_this_call") if path.exists() else None


def stage_label(stage: str, config: Mapping[str, Any]) -> str:
    """``frozen`` / ``finetune``, or what a one-run cell's phases do (Jaamour's frozen-then-unfrozen run)."""
    phases = (config.get("schedule") or {}).get("phases") or []
    if stage == "frozen" and any(p.get("trainable_backbone") for p in phases):
        return "one run: " + ", then ".join(f"{p['epochs']} epochs {'unfrozen' if p['trainable_backbone'] else 'frozen'}"
                                             f" at {p['learning_rate']:g}" for p in phases)
    return stage


def train_cell(cell: PretrainedCell, dataset: str, runs: Path, overrides: Mapping[str, Any] | None,
               cache_dir: str | None) -> dict[str, Any]:
    """Train every stage of ``cell``; pick the final stage by validation loss; return what happened."""
    from mammoflow.reproduce.cells import train_cell as train_run

    stages: dict[str, Any] = {}
    init = None
    for stage in cell.stages():
        config = stage_config(cell, stage, init, overrides)
        info = train_run(config, dataset, runs / cell.name / stage, cache_dir)
        info.update(_best(Path(info["run"])), config=config.to_dict())
        if info["train_wall_s"] is None:  # a finished run reused: the wall time its run folder recorded
            info["train_wall_s"] = _recorded_wall(Path(info["run"]))
        stages[stage] = info
        if stage == "frozen" and cell.finetune is not None:
            init = str(whole_model_weights(Path(info["run"])))
    final = min(stages, key=lambda s: stages[s]["best_val_loss"])
    log.info("%s: final stage %s (validation loss %s)", cell.name, final,
             {s: round(v["best_val_loss"], 4) for s, v in stages.items()})
    return {"cell": cell.name, "model": cell.model, "weights": cell.weights, "weights_label": cell.weights_label,
            "stages": stages, "final_stage": final, "run": stages[final]["run"],
            "final_label": stage_label(final, stages[final]["config"]),
            "train_wall_s": sum(v["train_wall_s"] or 0.0 for v in stages.values())}


# ------------------------------------------------------------------------------------------------ predictions


def predict_split(loaded: Any, dataset: str, split: str, n_views: int, cache_dir: str | None,
                  out: Path) -> pd.DataFrame:
    """Grid (or whole-ROI) prediction rows of a loaded run on one split, saved as ``out`` (re-used when present)."""
    from mammoflow.evaluation.evaluate import dataset_files, split_shards
    from mammoflow.reproduce.predict import grid_predictions

    if out.exists():
        return pd.read_parquet(out)
    _, shards, _ = dataset_files(dataset, cache_dir)
    size = loaded.config.data.image_size if loaded.whole_image and loaded.config is not None else None
    rows = grid_predictions(loaded.model, split_shards(shards, split, dataset), loaded.input_config(), n_views,
                            image_size=size)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(out)
    return rows


def roi_level(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per ROI: the mean of its patch probabilities (``prob``, ``p0``..), ``patch_index`` 0."""
    probs = ["prob", *(c for c in rows.columns if c.startswith("p") and c[1:].isdigit())]
    out = rows.groupby("example_id", sort=True).agg({**{c: "mean" for c in probs}, "label": "first"}).reset_index()
    out["patch_index"] = 0
    return out


def ensemble_rows(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """ROI-level rows of several models averaged (patch and whole-ROI models alike), matched by ROI id."""
    from mammoflow.reproduce.predict import average_members

    return average_members([roi_level(t) for t in tables])


def roi_auc(rows: pd.DataFrame) -> float:
    from sklearn.metrics import roc_auc_score

    r = roi_level(rows)
    y = r["label"].astype(int).to_numpy()
    return float(roc_auc_score(y, r["prob"].to_numpy())) if 0 < y.sum() < len(y) else float("nan")


@dataclass
class Candidate:
    """A cell or an ensemble of cells, with what it gave on validation."""

    name: str
    members: tuple[str, ...]
    threshold: dict[str, Any] = field(default_factory=dict)
    val_auc: float = float("nan")

    @property
    def key(self) -> tuple[float, float, float]:
        t = self.threshold
        return (float(t["met_target"]), float(t["val_accuracy"]), np.nan_to_num(self.val_auc, nan=-1.0))


def candidates(val: Mapping[str, pd.DataFrame], target_recall: float = TARGET_RECALL) -> list[Candidate]:
    """Every cell and every ROI-level ensemble of two or more cells, scored on validation (threshold fitted there)."""
    from mammoflow.reproduce.predict import choose_threshold

    names = list(val)
    out = []
    for k in range(1, len(names) + 1):
        for members in itertools.combinations(names, k):
            rows = val[members[0]] if k == 1 else ensemble_rows([val[m] for m in members])
            choice = choose_threshold(rows, "soft", target_recall).to_dict()
            out.append(Candidate("+".join(members), members, choice, roi_auc(rows)))
    return out


def choose(cands: Sequence[Candidate]) -> Candidate:
    """The validation winner: target recall met, then validation accuracy, then validation ROC-AUC (first on ties)."""
    best = cands[0]
    for c in cands[1:]:
        if c.key > best.key:
            best = c
    return best


# ------------------------------------------------------------------------------------------------ entry point


def run_protocol(dataset: str, out: Path, *, weights: str | None = None, overrides: Mapping[str, Any] | None = None,
                 n_bootstrap: int = 2000, seed: int = 0, cache_dir: str | None = None,
                 cells: Sequence[PretrainedCell] | None = None) -> dict[str, Any]:
    """Train the cells, make every choice on validation, predict the test split once per final model, and write
    ``OUT/evaluations/<cell>/`` (and ``OUT/evaluations/ours/``); return the per-cell and ``ours`` information."""
    from mammoflow.reproduce.ours import rows_report
    from mammoflow.training.package import load_package

    cells = list(cells if cells is not None else cells_for(weights))
    infos: dict[str, dict[str, Any]] = {}
    val: dict[str, pd.DataFrame] = {}
    t_train = time.perf_counter()
    for cell in cells:
        info = train_cell(cell, dataset, out / "runs", overrides, cache_dir)
        info["tta_views"] = cell.tta_views
        info["paper"] = cell.paper
        infos[cell.name] = info
    train_wall = time.perf_counter() - t_train
    t_eval = time.perf_counter()
    packages = {name: load_package(info["run"], cache_dir) for name, info in infos.items()}  # each loaded once
    for name, info in infos.items():  # validation only: every choice is made here
        val[name] = predict_split(packages[name], dataset, "val", info["tta_views"], cache_dir,
                                  out / "predictions" / name / "val.parquet")
    cands = candidates(val)
    chosen = choose(cands)
    log.info("ours (chosen on validation): %s, threshold %.2f (val accuracy %.4f, recall %.4f, AUC %.4f)",
             chosen.name, chosen.threshold["threshold"], chosen.threshold["val_accuracy"],
             chosen.threshold["val_recall"], chosen.val_auc)
    by_name = {c.name: c for c in cands}
    test: dict[str, pd.DataFrame] = {}
    for name, info in infos.items():  # the test split, once per final model, after every choice is fixed
        test[name] = predict_split(packages[name], dataset, "test", info["tta_views"], cache_dir,
                                   out / "predictions" / name / "test.parquet")
        choice = by_name[name].threshold
        info["val"] = {"threshold": choice, "roc_auc": by_name[name].val_auc}
        info["evaluation"] = str(out / "evaluations" / name)
        info["report"] = rows_report(test[name], dataset, Path(info["evaluation"]), packages[name], choice,
                                     n_bootstrap=n_bootstrap, seed=seed, cache_dir=cache_dir,
                                     protocol={"tta_views": info["tta_views"], "method": "soft",
                                               "target_recall": TARGET_RECALL, "stage": info["final_stage"]})
        info["paper_rule_report"] = rows_report(test[name], dataset, None, packages[name], None, method="majority",
                                                n_bootstrap=n_bootstrap, seed=seed, cache_dir=cache_dir)
    ours_rows = test[chosen.members[0]] if len(chosen.members) == 1 else \
        ensemble_rows([test[m] for m in chosen.members])
    ours = {"name": chosen.name, "members": list(chosen.members), "val": {"threshold": chosen.threshold,
                                                                          "roc_auc": chosen.val_auc},
            "evaluation": str(out / "evaluations" / "ours"),
            "candidates": [{"name": c.name, "members": list(c.members), "val_auc": c.val_auc, **c.threshold}
                           for c in cands]}
    ours["report"] = rows_report(ours_rows, dataset, Path(ours["evaluation"]), packages[chosen.members[0]],
                                 chosen.threshold, n_bootstrap=n_bootstrap, seed=seed, cache_dir=cache_dir,
                                 protocol={"members": list(chosen.members), "method": "soft",
                                           "target_recall": TARGET_RECALL, "level": "roi ensemble"})
    return {"cells": infos, "ours": ours, "train_wall_s": round(train_wall, 1),
            "recorded_train_wall_s": round(sum(i["train_wall_s"] or 0.0 for i in infos.values()), 1),
            "eval_wall_s": round(time.perf_counter() - t_eval, 1)}
