"""Sweep specs: a base training config + axes, expanded into the trials of an ablation study.

A spec (YAML, or a shipped name under ``mammoflow/presets/sweep/``)::

    name: yu2020_branches
    base: yu2020                  # a train preset, a YAML path, or an inline mapping
    design: grid                  # grid (every combination) | one_at_a_time (vary one axis around the base)
    axes:                         # dotted train-config keys, plus `dataset` (see below)
      model.name: {grid: [vgg16_fusion1, vgg19_fusion1]}
      model.params.branches: {grid: [[5], [4, 5]]}
      optimizer.momentum: {uniform: [0.8, 0.99]}     # sampled axes: uniform, loguniform, choice, randint
    extra_trials:                 # cells outside the grid (e.g. the paper's baselines)
      - {model.name: vgg16_gap, model.params: {}}
    num_samples: 1                # repeats: of the sampled axes per grid cell, seeds of a pure grid, or optuna trials
    metric: val_loss
    mode: min
    scheduler: {name: sha, grace_period: 1, reduction_factor: 2}    # sha | asha | median | fifo
    search: {name: grid}          # grid | optuna
    resources: {cpu: 1, gpu: 0}   # per trial; gpu may be a fraction
    max_concurrent: null
    max_failures: 2

``one_at_a_time`` is Jaamour et al.'s divide-and-conquer design (2023, Fig. 2): each axis is varied alone around
the baseline (their models A..V each change one thing), so n axes with k_i values give 1 + sum(k_i - 1) cells
(the baseline value of each axis is not repeated), not prod(k_i). Cells that resolve to the same training config
and dataset are run once.

A cell is a dict of dotted overrides; its ``dataset`` key (default ``default``) names one of the datasets given
with ``mammoflow sweep --data NAME=URI``, so preprocessing or subset ablations (built as separate datasets) are
axes like any other.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mammoflow.config import from_dict, resolve_config
from mammoflow.errors import ConfigError
from mammoflow.training.config import TrainConfig, load_train_config

SAMPLED = ("uniform", "loguniform", "choice", "randint")
SCHEDULERS = ("sha", "asha", "median", "fifo")
HALVING = ("sha", "asha")  # the schedulers that halve the trials at rungs on the epoch axis
DATASET_KEY = "dataset"
DEFAULT_DATASET = "default"


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
    datasets: list[str] = field(default_factory=lambda: [DEFAULT_DATASET])

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError(f"sweep name {self.name!r}: use letters, digits, _ . - only")
        if self.design not in ("grid", "one_at_a_time"):
            raise ConfigError(f"design: {self.design!r} is not grid or one_at_a_time")
        if self.mode not in ("min", "max"):
            raise ConfigError(f"mode: {self.mode!r} is not min or max")
        if self.num_samples < 1:
            raise ConfigError(f"num_samples: {self.num_samples} must be at least 1")
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
        if DATASET_KEY in self.sampled_axes:
            raise ConfigError("axes.dataset: give the datasets as a grid")
        if self.design == "one_at_a_time" and self.sampled_axes:
            raise ConfigError("design one_at_a_time: every axis must be a grid")
        scheduler = self.scheduler.get("name", "asha")
        if scheduler == "pbt":
            # PBT's exploit step copies another trial's weights into a trial *and changes its config*; a mammoflow
            # trial is a run folder whose config.yaml is fixed (train() refuses to resume it with another config).
            raise ConfigError("scheduler.name: pbt is not supported (a trial's config is fixed by its run folder); "
                              "use sha, asha, median or fifo")
        if scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler.name: {scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        if self.search.get("name", "grid") not in ("grid", "optuna"):
            raise ConfigError(f"search.name: {self.search.get('name')!r} is not grid or optuna")
        if self.search.get("name") == "optuna" and self.design != "grid":
            raise ConfigError("search optuna: needs design grid (it samples among the grid's cells)")

    @property
    def grid_axes(self) -> dict[str, list[Any]]:
        return {k: v["grid"] for k, v in self.axes.items() if "grid" in v}

    @property
    def sampled_axes(self) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.axes.items() if "grid" not in v}

    @property
    def search_name(self) -> str:
        return str(self.search.get("name", "grid"))

    @property
    def one_folder_per_cell(self) -> bool:
        """Whether a cell identifies a trial: a pure grid. With sampled axes or optuna two trials may share a cell
        (a repeated choice), so their run folders also carry Ray's trial id."""
        return self.search_name == "grid" and not self.sampled_axes


def load_spec(name_or_path: str | dict[str, Any]) -> SweepSpec:
    """A validated spec from a shipped name, a YAML path or a dict."""
    data = resolve_config(name_or_path, "sweep")
    if "name" not in data:
        raise ConfigError(f"{name_or_path}: a sweep spec needs a name")
    return from_dict(SweepSpec, data, f"sweep spec {data['name']}")


def base_config(spec: SweepSpec) -> dict[str, Any]:
    """The spec's base training config as a plain dict, resolved once by the driver.

    Trials get this dict rather than the preset name or path: a relative YAML path would not resolve in a Ray
    worker (another working directory, maybe another machine).
    """
    return load_train_config(spec.base).to_dict()


def trial_config(base: Mapping[str, Any], cell: Mapping[str, Any]) -> tuple[str, TrainConfig]:
    """(dataset name, validated TrainConfig) of one cell on the resolved base config."""
    dataset, overrides = split_cell(cell)
    return dataset, load_train_config(copy.deepcopy(dict(base)), overrides)


def expand_cells(spec: SweepSpec) -> list[dict[str, Any]]:
    """The cells (override dicts) of a spec, in a stable order (baseline first for one_at_a_time).

    Repeats of a pure grid (``num_samples`` > 1 without sampled axes) become cells with seeds ``seed + k``: the
    same config trained twice with the same seed would give the same numbers.
    """
    base = base_config(spec)
    grid = spec.grid_axes
    if spec.design == "one_at_a_time":
        cells: list[dict[str, Any]] = [{}]
        for key, values in grid.items():
            current = DEFAULT_DATASET if key == DATASET_KEY else _get_dotted(base, key)
            cells += [{key: v} for v in values if v != current]
    else:
        keys = list(grid)
        cells = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]
    cells += [dict(extra) for extra in spec.extra_trials]
    if spec.num_samples > 1 and spec.one_folder_per_cell:
        cells = [cell if k == 0 else {**cell, "seed": int(base.get("seed", 0)) + k}
                 for cell in cells for k in range(spec.num_samples)]
    unique: list[dict[str, Any]] = []
    seen: set[str] = set()
    for cell in cells:
        key = _resolved_key(base, cell)
        if key not in seen:
            seen.add(key)
            unique.append(cell)
    return unique


def _resolved_key(base: dict[str, Any], cell: dict[str, Any]) -> str:
    """Identity of a cell by what it trains: {dataset: default} and {} are the same trial."""
    try:
        dataset, config = trial_config(base, cell)
    except ConfigError:
        return json.dumps(cell, sort_keys=True)  # validate_cells reports it
    return json.dumps([dataset, config.to_dict()], sort_keys=True)


def cell_name(cell: Mapping[str, Any]) -> str:
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
        elif isinstance(value, float):
            text = f"{value:.4g}"
        else:
            text = str(value)
        parts.append(f"{short}={text}")
    digest = hashlib.sha256(json.dumps(dict(cell), sort_keys=True, default=str).encode()).hexdigest()[:6]
    return re.sub(r"[^A-Za-z0-9_.=,-]", "_", ",".join(parts))[:80] + f"_{digest}"


def split_cell(cell: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(dataset name, training-config overrides) of one cell."""
    overrides = dict(cell)
    return str(overrides.pop(DATASET_KEY, DEFAULT_DATASET)), overrides


def trial_cell(params: Mapping[str, Any], cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The full cell of a Ray trial: its grid cell (``cell``, or ``cell_index`` under optuna) + sampled values."""
    if "cell" in params:
        cell = dict(params["cell"])
    else:
        cell = dict(cells[int(params["cell_index"])])
    cell.update({k: v for k, v in params.items() if k not in ("cell", "cell_index")})
    return cell


def validate_cells(spec: SweepSpec, cells: list[dict[str, Any]]) -> None:
    """Every cell must make a valid training config (fail before any trial starts, not in trial 37)."""
    base = base_config(spec)
    for cell in cells:
        dataset = split_cell(cell)[0]
        if dataset not in spec.datasets:
            raise ConfigError(f"sweep {spec.name}, trial {cell_name(cell)}: dataset {dataset!r} is not in "
                              f"datasets {spec.datasets}")
        try:
            trial_config(base, cell)
        except ConfigError as exc:
            raise ConfigError(f"sweep {spec.name}, trial {cell_name(cell)}: {exc}") from None


def _get_dotted(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def rung_epochs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs after which successive halving ranks the trials: ``grace * rf**k`` (rounded up), below ``max_t``.

    ``[1, 2]`` for grace 1, factor 2 and 4-epoch trials. The same milestones as Ray's ASHA for integer factors.
    """
    if grace_period < 1 or reduction_factor <= 1:
        raise ConfigError(f"scheduler: grace_period {grace_period} must be >= 1 and reduction_factor "
                          f"{reduction_factor} > 1")
    rungs: list[int] = []
    k = 0
    while (rung := math.ceil(grace_period * reduction_factor ** k - 1e-9)) < max_t:
        if not rungs or rung > rungs[-1]:
            rungs.append(rung)
        k += 1
    return rungs


def survivors(n: int, reduction_factor: float) -> int:
    """How many of ``n`` trials at a rung go on: the best ``1/rf``, rounded down, at least one."""
    return max(1, int(n / reduction_factor))


def expected_trial_epochs(epochs: list[int], scheduler: Mapping[str, Any]) -> int:
    """The trial-epochs a sweep of trials of ``epochs`` epochs is expected to run under ``scheduler``.

    FIFO and median stopping: every epoch (median stopping depends on the curves: an upper bound). ``sha``
    (synchronous successive halving, :mod:`mammoflow.sweep.halving`) runs exactly this (grace period 1 and
    reduction factor 4 unless given, as Ray's ASHA): at each rung (:func:`rung_epochs`) only the best ``1/rf`` of
    the trials go on, at least one; trials shorter than a rung stop at their own end. ``asha`` has the same rungs
    but is asynchronous: the first trials to reach a rung go on before it fills, so a run can exceed this (the
    demo spec: 8 expected, 10 measured).
    """
    if not epochs:
        return 0
    name = scheduler.get("name", "asha")
    if name not in HALVING:
        return sum(epochs)
    factor = float(scheduler.get("reduction_factor", 4))
    max_t = int(scheduler.get("max_t", max(epochs)))
    alive = sorted(epochs, reverse=True)  # which trials go on is decided by their metrics: count the longest
    total, reached = 0, 0
    for rung in rung_epochs(int(scheduler.get("grace_period", 1)), factor, max_t) + [max_t]:
        total += sum(max(0, min(e, rung) - reached) for e in alive)
        reached = rung
        alive = alive[:survivors(len(alive), factor)]
    return total
