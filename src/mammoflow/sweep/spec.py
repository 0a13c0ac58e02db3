"""Sweep specs: a base training config + axes, expanded into the trials of an ablation study.

A spec (YAML, or a shipped name under ``mammoflow/presets/sweep/``)::

    name: yu2020_branches
    base: yu2020                  # a train preset, a YAML path, or an inline mapping
    design: grid                  # grid (every combination) | one_at_a_time (vary one axis around the base)
    axes:                         # dotted train-config keys
      model.name: {grid: [vgg16_fusion1, vgg19_fusion1]}
      model.params.branches: {grid: [[5], [4, 5]]}
      optimizer.momentum: {uniform: [0.8, 0.99]}     # sampled axes: uniform, loguniform, choice
    extra_trials:                 # cells outside the grid (e.g. the paper's baselines)
      - {model.name: vgg16_gap, model.params: {}}
    num_samples: 1                # samples of the sampled axes per grid cell (grid search), or trials (optuna)
    metric: val_loss
    mode: min
    scheduler: {name: asha, grace_period: 1, reduction_factor: 2}   # asha | median | pbt | fifo
    search: {name: grid}          # grid | optuna
    resources: {cpu: 1, gpu: 0}   # per trial; gpu may be a fraction
    max_concurrent: null
    max_failures: 2

``one_at_a_time`` is Jaamour et al.'s divide-and-conquer design: each axis is varied alone around the baseline
(their models A..V each change one thing), so n axes with k_i values give 1 + sum(k_i - 1) cells, not prod(k_i).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from mammoflow.config import from_dict, resolve_config
from mammoflow.errors import ConfigError
from mammoflow.training.config import load_train_config

SAMPLED = ("uniform", "loguniform", "choice", "randint")


@dataclass
class SweepSpec:
    name: str
    base: str | dict[str, Any] = "demo"
    design: str = "grid"
    axes: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra_trials: list[dict[str, Any]] = field(default_factory=list)
    num_samples: int = 1
    metric: str = "val_loss"
    mode: str = "min"
    scheduler: dict[str, Any] = field(default_factory=lambda: {"name": "asha"})
    search: dict[str, Any] = field(default_factory=lambda: {"name": "grid"})
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    max_concurrent: int | None = None
    max_failures: int = 2
    description: str = ""
    # A `dataset` axis picks among datasets built differently (preprocessing, mass/calc/all): its values are names
    # that `mammoflow sweep --data NAME=URI` maps to dataset URIs.
    datasets: list[str] = field(default_factory=lambda: ["default"])

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError(f"sweep name {self.name!r}: use letters, digits, _ . - only")
        if self.design not in ("grid", "one_at_a_time"):
            raise ConfigError(f"design: {self.design!r} is not grid or one_at_a_time")
        if self.mode not in ("min", "max"):
            raise ConfigError(f"mode: {self.mode!r} is not min or max")
        for key, axis in self.axes.items():
            if not isinstance(axis, dict) or len(axis) != 1:
                raise ConfigError(f"axes.{key}: give exactly one of grid, {', '.join(SAMPLED)}")
            kind, values = next(iter(axis.items()))
            if kind not in ("grid",) + SAMPLED:
                raise ConfigError(f"axes.{key}: unknown kind {kind!r} (grid, {', '.join(SAMPLED)})")
            if kind in ("uniform", "loguniform", "randint") and (not isinstance(values, list) or len(values) != 2):
                raise ConfigError(f"axes.{key}: {kind} takes [low, high]")
            if kind in ("grid", "choice") and (not isinstance(values, list) or not values):
                raise ConfigError(f"axes.{key}: {kind} takes a non-empty list")
        if self.design == "one_at_a_time" and self.sampled_axes:
            raise ConfigError("design one_at_a_time: every axis must be a grid")
        if self.scheduler.get("name", "asha") not in ("asha", "median", "pbt", "fifo"):
            raise ConfigError(f"scheduler.name: {self.scheduler.get('name')!r} is not asha, median, pbt or fifo")
        if self.search.get("name", "grid") not in ("grid", "optuna"):
            raise ConfigError(f"search.name: {self.search.get('name')!r} is not grid or optuna")

    @property
    def grid_axes(self) -> dict[str, list[Any]]:
        return {k: v["grid"] for k, v in self.axes.items() if "grid" in v}

    @property
    def sampled_axes(self) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.axes.items() if "grid" not in v}


def load_spec(name_or_path: str | dict[str, Any]) -> SweepSpec:
    data = resolve_config(name_or_path, "sweep")
    if "name" not in data:
        raise ConfigError(f"{name_or_path}: a sweep spec needs a name")
    return from_dict(SweepSpec, data, f"sweep spec {data['name']}")


def expand_cells(spec: SweepSpec) -> list[dict[str, Any]]:
    """The grid cells (override dicts) of a spec, in a stable order, baseline-first for one_at_a_time."""
    grid = spec.grid_axes
    if spec.design == "one_at_a_time":
        base = load_train_config(spec.base).to_dict()
        cells: list[dict[str, Any]] = [{}]
        for key, values in grid.items():
            current = _get_dotted(base, key)
            cells += [{key: v} for v in values if v != current]
    else:
        keys = list(grid)
        cells = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]
    cells += [dict(extra) for extra in spec.extra_trials]
    unique: list[dict[str, Any]] = []
    seen: set[str] = set()
    for cell in cells:
        key = json.dumps(cell, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(cell)
    return unique


def cell_name(cell: dict[str, Any]) -> str:
    """A short, readable, stable trial name: the axis values plus a hash of the whole cell."""
    if not cell:
        return "baseline"
    parts = []
    for key, value in cell.items():
        short = key.rsplit(".", 1)[-1]
        if isinstance(value, list):
            text = "-".join(map(str, value))
        elif isinstance(value, dict):
            text = "+".join(f"{k}{v}" for k, v in value.items()) or "default"
        else:
            text = str(value)
        parts.append(f"{short}={text}")
    digest = hashlib.sha256(json.dumps(cell, sort_keys=True).encode()).hexdigest()[:6]
    return re.sub(r"[^A-Za-z0-9_.=,-]", "_", ",".join(parts))[:80] + f"_{digest}"


def split_cell(cell: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(dataset name, training-config overrides) of one cell."""
    overrides = dict(cell)
    return str(overrides.pop("dataset", "default")), overrides


def validate_cells(spec: SweepSpec, cells: list[dict[str, Any]]) -> None:
    """Every cell must make a valid training config (fail before any trial starts, not in trial 37)."""
    for cell in cells:
        dataset, overrides = split_cell(cell)
        if dataset not in spec.datasets:
            raise ConfigError(f"sweep {spec.name}, trial {cell_name(cell)}: dataset {dataset!r} is not in "
                              f"datasets {spec.datasets}")
        try:
            load_train_config(spec.base, overrides)
        except ConfigError as exc:
            raise ConfigError(f"sweep {spec.name}, trial {cell_name(cell)}: {exc}") from None


def _get_dotted(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
