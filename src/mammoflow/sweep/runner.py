"""Running a sweep on Ray Tune: every trial calls the same ``train(config)`` as the CLI and the pipelines.

Layout under the sweep folder ``OUT`` (local path or ``gs://``)::

    OUT/spec.yaml                  the spec as run
    OUT/ray/<name>/                Ray Tune's experiment state (Tuner.restore reads it: --resume)
    OUT/trials/<cell name>/        one training run folder per trial (TensorBoard: tensorboard --logdir OUT/trials)
    OUT/results.csv, results.md    one row per trial, sorted by the sweep's metric
    OUT/best_config.yaml           the best trial's resolved training config, ready for `mammoflow train`

A trial's run folder is keyed by its cell, not by Ray's trial id, so a trial restarted after a failure or a
``--resume`` continues its own checkpoints instead of starting over, and no finished trial is trained twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from mammoflow import storage
from mammoflow.config import dump_yaml
from mammoflow.errors import ConfigError
from mammoflow.sweep.spec import SweepSpec, cell_name, expand_cells, split_cell, validate_cells

log = logging.getLogger(__name__)


def _search_space(spec: SweepSpec, cells: list[dict[str, Any]]) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {"cell": tune.grid_search(cells)}
    makers = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    for key, axis in spec.sampled_axes.items():
        kind, values = next(iter(axis.items()))
        space[key] = tune.choice(values) if kind == "choice" else makers[kind](*values)
    return space


def _scheduler(spec: SweepSpec, max_epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, PopulationBasedTraining

    opts = {k: v for k, v in spec.scheduler.items() if k != "name"}
    name = spec.scheduler.get("name", "asha")
    if name == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=opts.pop("max_t", max_epochs), **opts)
    if name == "median":
        return MedianStoppingRule(time_attr="training_iteration", **opts)
    if name == "pbt":
        return PopulationBasedTraining(time_attr="training_iteration", **opts)
    return FIFOScheduler()


def _search_alg(spec: SweepSpec):
    if spec.search.get("name", "grid") != "optuna":
        return None
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:  # optuna is optional
        raise ConfigError("search: optuna needs the optuna package (pip install optuna)") from exc
    return OptunaSearch(seed=spec.search.get("seed", 0))


def make_trainable(spec: SweepSpec, data_uris: dict[str, str], trials_uri: str, cache_dir: str | None):
    """The Ray Tune function trainable: config -> train(), one report per epoch."""

    def trial(params: dict[str, Any]) -> None:
        from ray import tune

        from mammoflow.training.config import load_train_config
        from mammoflow.training.loop import train

        full = {**params["cell"], **{k: v for k, v in params.items() if k != "cell"}}
        data_name, overrides = split_cell(full)
        if data_name not in data_uris:
            raise ConfigError(f"trial dataset {data_name!r}: no --data {data_name}=URI given "
                              f"(have {sorted(data_uris)})")
        config = load_train_config(spec.base, overrides)
        name = cell_name(full)
        out = storage.join(trials_uri, name)
        _trial_gauges().set_running(name, 1)
        try:
            train(config, data_uris[data_name], out, cache_dir=cache_dir,
                  epoch_callback=lambda row: _report(tune, name, row))
        finally:
            _trial_gauges().set_running(name, 0)

    return trial


def _report(tune, name: str, row: dict[str, float]) -> None:
    _trial_gauges().epoch(name, row)
    tune.report({**row, "trial_name": name})


class _TrialGauges:
    """Per-trial Prometheus metrics through ray.util.metrics (exported by Ray's metrics agent)."""

    def __init__(self) -> None:
        from ray.util.metrics import Gauge

        keys = ("trial",)
        self.running = Gauge("mammoflow_trial_running", "1 while a trial trains", tag_keys=keys)
        self.epoch_g = Gauge("mammoflow_trial_epoch", "Last finished epoch of a trial", tag_keys=keys)
        self.loss = Gauge("mammoflow_trial_val_loss", "Validation loss of a trial's last epoch", tag_keys=keys)

    def set_running(self, name: str, value: int) -> None:
        self.running.set(value, tags={"trial": name})

    def epoch(self, name: str, row: dict[str, float]) -> None:
        self.epoch_g.set(row["epoch"], tags={"trial": name})
        if "val_loss" in row:
            self.loss.set(row["val_loss"], tags={"trial": name})


_GAUGES: _TrialGauges | None = None


def _trial_gauges() -> _TrialGauges:
    global _GAUGES
    if _GAUGES is None:
        _GAUGES = _TrialGauges()
    return _GAUGES


def _sweep_callback(spec: SweepSpec):
    """Driver-side counters: trials finished / stopped early / failed, best metric so far."""
    from ray.tune import Callback
    from ray.util.metrics import Counter, Gauge

    class SweepMetrics(Callback):
        def __init__(self) -> None:
            tags = ("sweep",)
            self.done = Counter("mammoflow_sweep_trials_finished", "Trials that ran to the end", tag_keys=tags)
            self.stopped = Counter("mammoflow_sweep_trials_stopped_early", "Trials stopped by the scheduler",
                                   tag_keys=tags)
            self.failed = Counter("mammoflow_sweep_trials_failed", "Trials that errored", tag_keys=tags)
            self.best = Gauge("mammoflow_sweep_best_metric", f"Best {spec.metric} so far", tag_keys=tags)
            self.best_value: float | None = None
            self.tags = {"sweep": spec.name}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            value = result.get(spec.metric)
            if value is None:
                return
            better = self.best_value is None or (value < self.best_value if spec.mode == "min"
                                                 else value > self.best_value)
            if better:
                self.best_value = float(value)
                self.best.set(self.best_value, tags=self.tags)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done.inc(tags=self.tags)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.failed.inc(tags=self.tags)

    return SweepMetrics()


def run_sweep(spec: SweepSpec, data_uris: dict[str, str], out_uri: str, *, address: str | None = None,
              resume: bool = False, max_concurrent: int | None = None, num_cpus: int | None = None,
              cache_dir: str | None = None) -> dict[str, Any]:
    """Run (or resume) a sweep; returns the summary written beside the results."""
    import ray
    from ray import tune

    cells = expand_cells(spec)
    validate_cells(spec, cells)
    from mammoflow.training.config import load_train_config

    max_epochs = load_train_config(spec.base).total_epochs
    storage.put_bytes(storage.join(out_uri, "spec.yaml"), dump_yaml(_spec_dict(spec)).encode())
    trials_uri = storage.join(out_uri, "trials")
    fs, ray_path = storage.pyarrow_filesystem(storage.join(out_uri, "ray"))

    if not ray.is_initialized():
        init_kw: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False}
        if address is None:
            init_kw["num_cpus"] = num_cpus or os.cpu_count()
        ray.init(**init_kw)
    resources = {k: v for k, v in spec.resources.items() if v}
    trainable = tune.with_resources(make_trainable(spec, data_uris, trials_uri, cache_dir), resources)
    experiment = f"{ray_path.rstrip('/')}/{spec.name}"
    t0 = time.perf_counter()
    if resume and tune.Tuner.can_restore(experiment, storage_filesystem=fs):
        log.info("resuming sweep %s from %s", spec.name, experiment)
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, restart_errored=True,
                                   storage_filesystem=fs)
    else:
        if resume:
            log.warning("--resume: no sweep state at %s, starting it", experiment)
        tuner = tune.Tuner(
            trainable,
            param_space=_search_space(spec, cells),
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, scheduler=_scheduler(spec, max_epochs),
                search_alg=_search_alg(spec), num_samples=spec.num_samples,
                max_concurrent_trials=max_concurrent or spec.max_concurrent,
                trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=ray_path, storage_filesystem=fs,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                callbacks=[_sweep_callback(spec)], verbose=0),
        )
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    from mammoflow.sweep.results import write_results

    return write_results(spec, grid, out_uri, max_epochs=max_epochs, wall_time_s=wall, n_cells=len(cells))


def _spec_dict(spec: SweepSpec) -> dict[str, Any]:
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(spec)))


def dry_run_lines(spec: SweepSpec) -> list[str]:
    """One line per trial the sweep would run (cells x samples), then the count."""
    cells = expand_cells(spec)
    validate_cells(spec, cells)
    lines = []
    sampled = ", ".join(f"{k}~{next(iter(v))}{next(iter(v.values()))}" for k, v in spec.sampled_axes.items())
    for cell in cells:
        for s in range(spec.num_samples):
            suffix = f"  [{sampled}, sample {s + 1}]" if sampled else ""
            lines.append(f"{cell_name(cell)}  {json.dumps(cell, sort_keys=True)}{suffix}")
    lines.append(f"{len(lines)} trials")
    return lines

