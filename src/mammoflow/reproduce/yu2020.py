"""``mammoflow reproduce yu2020``: Yu et al. 2020's protocol end to end on their released MIAS ROIs.

Stages, each resumable (re-running the same command skips finished work; a training run resumes after its last
finished epoch)::

    OUT/records/        ingest of MIAS_ROIs.zip (the released split kept: train 125/72, val 41/24, test 41/23)
    OUT/dataset/        build-dataset with the yu2020 preset (the ROIs kept as they are)
    OUT/runs/<cell>/    one training run per cell (fast, cpu) or OUT/sweep/ (paper: the yu2020_branches sweep)
    OUT/evaluations/<cell>/   mammoflow evaluate on the test split: 25-patch majority vote per ROI, 95% CIs
    OUT/reports/<cell>/       the per-cell report (mammoflow report)
    OUT/tsne/           t-SNE of the test ROIs' penultimate-layer features (the paper's Fig. 1)
    OUT/report.md, OUT/report.html, OUT/summary.json    every cell next to the paper's (Tables 1-3)

``weights``: ``imagenet`` is the faithful reproduction (``keras.applications`` downloads the VGG weights, so it
needs the network; offline the model registry raises its explanation); ``none`` trains on random frozen features
(checks the plumbing only); a ``.weights.h5`` path or URI loads a whole-model file; any other ``.h5`` file is taken
as a ``keras.applications`` backbone file (e.g. a mirrored ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``);
an installed named weight (``hed-bsds500`` for the VGG16 cells) is passed on by name. ``--weights hed-bsds500`` or
``torchvision-imagenet`` without ``--budget`` runs ``--budget cpu-pretrained`` (:mod:`mammoflow.reproduce.pretrained`:
OUT/runs/<cell>/<stage>/, OUT/predictions/, OUT/evaluations/<cell>/ and ours/).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammoflow.errors import ConfigError
from mammoflow.reproduce.budgets import Budget, Cell, get_budget
from mammoflow.reproduce.cells import train_cell
from mammoflow.storage import atomic_write_text

log = logging.getLogger(__name__)

DATASET_PRESET = "yu2020"
OURS_CELL = "ours"


@dataclass
class ReproduceResult:
    """What a reproduction wrote: the report files and, per cell, its run and evaluation folders."""

    out: Path
    budget: str
    weights: str | None
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ data


def prepare_dataset(data: str | Path, out: Path) -> str:
    """Ingest the released ROIs (zip or extracted folder) and build the ``yu2020`` dataset; return its folder."""
    from mammoflow.dataset.build import build_dataset
    from mammoflow.sources import SourceOptions, read_source

    records, dataset = out / "records", out / "dataset"
    if not (records / "records.jsonl").exists():
        table = read_source("mias-rois", SourceOptions(root=Path(data)))
        table.write(records)
    if not (dataset / "manifest.json").exists():
        result = build_dataset(records, DATASET_PRESET, str(dataset))
        log.info("dataset built: %s", result.manifest["counts"])
    return str(dataset)


# ------------------------------------------------------------------------------------------------ configs


def weights_overrides(weights: str | None) -> dict[str, Any]:
    """Train-config overrides for ``--weights``: imagenet | none | whole-model ``.weights.h5`` | backbone ``.h5``."""
    from mammoflow.models.pretrained import CATALOGUE

    if weights is None or weights in ("imagenet", "none"):
        return {"model.weights": weights or "imagenet"}
    text = str(weights)
    if text in CATALOGUE:  # installed named weights (hed-bsds500, ...): create_model checks they fit the backbone
        return {"model.weights": text}
    if text.endswith(".weights.h5"):
        return {"model.weights": text}
    if text.endswith(".h5"):
        return {"model.weights": "none", "model.params.backbone_weights": text}
    raise ConfigError(f"--weights {text!r}: expected imagenet, none, {', '.join(n for n in CATALOGUE if n != 'imagenet')}"
                      ", a whole-model .weights.h5 file or a keras.applications backbone .h5 file")


def cell_config(budget: Budget, cell: Cell | None, weights: str | None, overrides: Mapping[str, Any] | None = None):
    """The validated TrainConfig of one cell: the budget's preset, its counts, the cell, the weights, overrides."""
    from mammoflow.training.config import load_train_config

    merged: dict[str, Any] = {**budget.overrides()}
    if cell is not None:
        merged.update(cell.overrides())
        merged.update(weights_overrides(weights))
    merged.update(overrides or {})
    return load_train_config(budget.preset, merged)


# ------------------------------------------------------------------------------------------------ stages


def paper_sweep_spec(budget: Budget, weights: str | None, overrides: Mapping[str, Any] | None = None,
                     address: str | None = None):
    """The sweep of ``--budget paper``: the ``yu2020_branches`` cells on the yu2020 preset with ``weights``.

    On a local Ray (no ``address``) each trial takes every core and a GPU only if there is one, so trials run one
    at a time; on a cluster the spec's own resources apply.
    """
    import dataclasses

    from mammoflow.sweep.spec import load_spec

    spec = load_spec(budget.sweep or "yu2020_branches")
    weight_keys = weights_overrides(weights)
    base = cell_config(budget, None, None, {**weight_keys, **(overrides or {})}).to_dict()
    extra = [dict(t) for t in spec.extra_trials]
    backbone_file = weight_keys.get("model.params.backbone_weights")
    if backbone_file:  # extra trials replace model.params: keep the backbone file in them
        for trial in extra:
            if "model.params" in trial:
                trial["model.params"] = {**trial["model.params"], "backbone_weights": backbone_file}
    resources = dict(spec.resources)
    if address is None:
        resources = {"cpu": float(os.cpu_count() or 1), "gpu": float(min(1, _gpu_count()))}
    return dataclasses.replace(spec, base=base, extra_trials=extra, resources=resources)


def _paper_sweep(budget: Budget, weights: str | None, dataset: str, out: Path, overrides: Mapping[str, Any] | None,
                 address: str | None, cache_dir: str | None) -> list[str]:
    """Train every cell of Tables 1-3 through the sweep machinery; return the finished trial run folders."""
    from mammoflow.evaluation.evaluate import sweep_trials
    from mammoflow.sweep.runner import run_sweep

    spec = paper_sweep_spec(budget, weights, overrides, address)
    run_sweep(spec, {"default": dataset}, str(out / "sweep"), address=address,
              resume=(out / "sweep" / "spec.yaml").exists(), cache_dir=cache_dir)
    return sweep_trials(str(out / "sweep"))


def _gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def _evaluate_cell(run: str, dataset: str, out: Path, n_bootstrap: int, seed: int,
                   cache_dir: str | None) -> dict[str, Any]:
    from mammoflow.evaluation.evaluate import evaluate

    # save_features: the t-SNE (Fig. 1) reuses the penultimate features of this prediction pass.
    return evaluate(run, dataset, out, split="test", method="majority", n_bootstrap=n_bootstrap, seed=seed,
                    cache_dir=cache_dir, save_features=True)


def _cell_report(run: str, evaluation: Path, out: Path, cache_dir: str | None) -> str | None:
    """The per-cell report of the report module; a failure there only loses that page (logged)."""
    from mammoflow.evaluation.report import build_report

    try:
        return str(build_report(run, out, evaluation=str(evaluation), cache_dir=cache_dir)["html"])
    except Exception as exc:  # noqa: BLE001 - the summary report must still be written
        log.warning("per-cell report for %s not written: %s", run, exc)
        return None


def _tsne(info: Mapping[str, Any], dataset: str, out: Path, title: str, seed: int,
          cache_dir: str | None) -> dict[str, Any] | None:
    """t-SNE of the cell's test-ROI features: those its evaluation kept from its prediction pass, else (our
    ensemble, whose evaluation averages the members) the first member's, computed here."""
    from mammoflow.evaluation.outputs import read_roi_features
    from mammoflow.reproduce.features import roi_features, write_tsne

    kept = read_roi_features(info["evaluation"]) if info.get("evaluation") else None
    if kept is not None:
        log.info("t-SNE: reusing the ROI features of the evaluation in %s", info["evaluation"])
        rois, feats = kept
    else:
        from mammoflow.evaluation.evaluate import dataset_files, split_shards
        from mammoflow.training.package import load_package

        loaded = load_package(info["run"], cache_dir)
        _, shards, _ = dataset_files(dataset, cache_dir)
        size = loaded.config.data.image_size if loaded.whole_image and loaded.config is not None else None
        rois, feats = roi_features(loaded.model, split_shards(shards, "test", dataset), loaded.input_config(),
                                   image_size=size)
    return write_tsne(rois, feats, out, title, seed=seed)


# ------------------------------------------------------------------------------------------------ entry point


def reproduce_yu2020(data: str | Path, out: str | Path, *, weights: str | None = None, budget: str | None = None,
                     overrides: Mapping[str, Any] | None = None, n_bootstrap: int = 2000, seed: int = 0,
                     address: str | None = None, cache_dir: str | None = None, tsne: bool = True,
                     pretrained_cells: Any = None) -> ReproduceResult:
    """Run the reproduction (see the module docstring); return what was written.

    ``overrides`` (dotted train-config keys, e.g. ``{"schedule.steps_per_epoch": 5}``) apply to every trained
    cell; the report lists them. ``weights`` defaults to ``imagenet`` for the paper's models and must be left
    unset for ``budget="cpu"`` (our model is trained from scratch). ``budget`` None: ``cpu-pretrained`` for
    ``hed-bsds500`` / ``torchvision-imagenet``, else ``fast``.
    """
    from mammoflow.reproduce import report as rep
    from mammoflow.reproduce.budgets import default_budget
    from mammoflow.reproduce.ours import CPU_PROTOCOL, PAPER_RULE, evaluate_ours

    b = get_budget(budget or default_budget(weights))
    if b.name == "cpu-pretrained":
        from mammoflow.reproduce.pretrained import cells_for

        cells_for(weights)  # refuses other weights before any work
    if b.name == "cpu" and weights not in (None, "none"):
        raise ConfigError("--budget cpu trains our model from scratch: --weights does not apply. Fix: leave it out, "
                          "or use --budget fast/paper for the paper's ImageNet models")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    dataset = prepare_dataset(data, out)
    result = ReproduceResult(out=out, budget=b.name, weights=None if b.name == "cpu" else (weights or "imagenet"))
    pretrained = None
    if b.name == "cpu-pretrained":
        from mammoflow.reproduce.pretrained import run_protocol

        result.weights = "hed-bsds500 + torchvision-imagenet"
        pretrained = run_protocol(dataset, out, weights=weights, overrides=overrides, n_bootstrap=n_bootstrap,
                                  seed=seed, cache_dir=cache_dir, cells=pretrained_cells)
        result.cells = pretrained["cells"]
        tsne = False  # the t-SNE would predict the test split once more (a VGG16 pass); see the per-cell folders
    elif b.name == "cpu":
        protocol = CPU_PROTOCOL
        base = cell_config(b, None, None, overrides)
        info: dict[str, Any] = {"model": base.model.name, "config": base.to_dict(), "members": [],
                                "train_wall_s": 0.0}
        for k in range(protocol.members):  # an ensemble: the same preset with seeds seed, seed + 1, ...
            config = cell_config(b, None, None, {**(overrides or {}), "seed": base.seed + k})
            member = train_cell(config, dataset, out / "runs" / OURS_CELL / f"member{k}", cache_dir)
            info["members"].append(member)
            info["train_wall_s"] += member["train_wall_s"] or 0.0
        info["run"] = info["members"][0]["run"]
        runs = [m["run"] for m in info["members"]]
        info["evaluation"] = str(out / "evaluations" / OURS_CELL)
        info["report"] = evaluate_ours(runs, dataset, info["evaluation"], protocol, n_bootstrap=n_bootstrap,
                                       seed=seed, cache_dir=cache_dir)
        # The first member under the paper's decision rule (one view, majority vote at 0.5), for comparison.
        info["paper_rule_evaluation"] = str(out / "evaluations" / f"{OURS_CELL}_paper_rule")
        info["paper_rule_report"] = evaluate_ours(runs[0], dataset, info["paper_rule_evaluation"], PAPER_RULE,
                                                  n_bootstrap=n_bootstrap, seed=seed, cache_dir=cache_dir)
        result.cells[OURS_CELL] = info
    else:
        if b.sweep:
            runs = _paper_sweep(b, weights, dataset, out, overrides, address, cache_dir)
            cells = {Path(r).name: {"run": r} for r in runs}
        else:
            cells = {}
            for cell in b.cells:
                config = cell_config(b, cell, weights, overrides)
                cells[cell.name] = train_cell(config, dataset, out / "runs" / cell.name, cache_dir)
        for name, info in cells.items():
            info["evaluation"] = str(out / "evaluations" / name)
            info["report"] = _evaluate_cell(info["run"], dataset, Path(info["evaluation"]), n_bootstrap, seed,
                                            cache_dir)
            info["model"] = info["report"]["model"]["name"]
        result.cells = cells

    for name, info in result.cells.items():
        if pretrained is not None:
            break  # no per-cell page: it would run the model again for its figures
        info["cell_report"] = _cell_report(info["run"], Path(info["evaluation"]), out / "reports" / name, cache_dir)
    if tsne and result.cells:
        name = _tsne_cell(result.cells)
        what = "ours, ensemble member 1" if name == OURS_CELL else name
        result.cells[name]["tsne"] = _tsne(result.cells[name], dataset, out / "tsne",
                                           f"t-SNE of the test ROIs' features ({what})", seed, cache_dir)
    result.summary = rep.summarise(result, overrides=dict(overrides or {}), n_bootstrap=n_bootstrap,
                                   wall_time_s=time.perf_counter() - t_start, budget=b)
    if pretrained is not None:
        from mammoflow.reproduce.pretrained_report import section

        result.summary["pretrained"] = section(pretrained, n_bootstrap)
    atomic_write_text(out / "summary.json", json.dumps(rep.jsonable(result.summary), indent=2) + "\n")
    result.report = rep.write_report(result.summary, out)
    return result


def _tsne_cell(cells: Mapping[str, Mapping[str, Any]]) -> str:
    """The cell whose features Fig. 1 shows: ours, else VGG16 Fusion1 over all blocks, else the best accuracy."""
    if OURS_CELL in cells:
        return OURS_CELL
    for name, info in cells.items():
        report = info["report"]
        params = ((report.get("model") or {}).get("config") or {}).get("model", {}).get("params", {})
        if info.get("model") == "vgg16_fusion1" and list(params.get("branches") or [1, 2, 3, 4, 5]) == [1, 2, 3, 4, 5]:
            return name
    return max(cells, key=lambda n: cells[n]["report"]["levels"]["roi"]["metrics"]["accuracy"]["value"])
