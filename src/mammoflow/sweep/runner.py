"""Running a sweep on Ray Tune: every trial calls the same ``train(config)`` as the CLI and the pipelines.

Layout under the sweep folder ``OUT`` (local path or ``gs://``)::

    OUT/spec.yaml                  the spec as run (base config resolved); --resume refuses a changed spec
    OUT/ray/<name>/                Ray Tune's experiment state (Tuner.restore reads it: --resume) and its
                                   per-trial TensorBoard files
    OUT/trials/<trial>/            one training run folder per trial (TensorBoard: tensorboard --logdir OUT/trials)
    OUT/trials/<trial>/sweep_trial.json   written by the driver when a trial ends: finished or stopped_early, and
                                   the trial's attempts (which Ray node ran it, after which epoch)
    OUT/trials/<trial>/attempts/   one record per start of the trial's process: its Ray node id, pid, host and
                                   the epochs already done (a trial restarted after a node died has two)
    OUT/results.csv, results.md    one row per trial, sorted by the sweep's metric
    OUT/summary.json               counts, trial-epochs run and saved by early stopping, wall time, best trial
    OUT/best_config.yaml           the best finished trial's resolved training config, ready for `mammoflow train`

Resume without repeats: a trial's run folder is keyed by its cell (not by Ray's trial id) and ``train()`` resumes
from it, so a trial restarted after a failure or a driver crash continues after its last finished epoch; and a
trial whose ``sweep_trial.json`` says it ended is never trained again, even if Ray's experiment state (saved
every few seconds) still listed it as running when the driver died.

Early stopping: the scheduler sees one result per epoch, with the epoch itself as its time axis (``epoch``, not
Ray's ``training_iteration``, which restarts at 1 when a trial is restarted). The last epoch of a trial (``train()``
says which: the last of its schedule, or the one where early stopping ended its last phase) is reported only after
``train()`` has returned, with ``run_finished: 1``, so that a scheduler stopping the trial at ``max_t`` cannot cut
the writing of its model and metrics short.

Monitoring: TensorBoard logs per trial (``OUT/trials/*/tensorboard``, written by ``train()`` and, on ``gs://``,
published after every epoch, as is each trial's ``history.csv``) and Tune's own per-trial
logs (``OUT/ray/<name>/*/events.out.tfevents.*``); Prometheus metrics through ray.util.metrics, exported by Ray's
metrics agent (needs ``ray[default]``) as ``ray_mammoflow_trial_{epoch,val_loss,running}{trial=...}`` from the
trials while they run and ``ray_mammoflow_sweep_trials_{finished,stopped_early,failed}_total{sweep=...}`` and
``ray_mammoflow_sweep_best_metric{sweep=...}`` from the driver.

Storage on ``gs://``: Ray's experiment state goes through pyarrow's GcsFileSystem
(:func:`mammoflow.storage.pyarrow_filesystem`, which honours ``STORAGE_EMULATOR_HOST``), the trials' run folders
and the results through :mod:`mammoflow.storage`. pyarrow creates zero-byte "directory" objects (``.../ray/``)
there, as GCS folders made in the console are.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import asdict
from typing import Any

from mammoflow import storage
from mammoflow.config import dump_yaml
from mammoflow.errors import ConfigError
from mammoflow.sweep.results import ATTEMPTS_DIR, read_attempts, resumes_pause, run_history, write_results
from mammoflow.sweep.spec import (
    SweepSpec,
    base_config,
    cell_name,
    expand_cells,
    expected_trial_epochs,
    trial_cell,
    trial_config,
    validate_cells,
)

log = logging.getLogger(__name__)

TRIAL_STATUS_FILE = "sweep_trial.json"
TIME_ATTR = "epoch"
# Environment a trial needs to reach the same object store as the driver (the emulator of tests and offline
# demos). Credentials are not forwarded: on a cluster the pods have their own identity.
FORWARDED_ENV = ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")


# ------------------------------------------------------------------------------------------- search space
def search_space(spec: SweepSpec, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Ray Tune's param_space: the cells as a grid (or a categorical index for optuna) + the sampled axes."""
    from ray import tune

    space: dict[str, Any] = {}
    if spec.search_name == "optuna":
        # Optuna's categorical distributions hold scalars only: it picks a cell by index.
        space["cell_index"] = tune.choice(list(range(len(cells))))
    else:
        space["cell"] = tune.grid_search(cells)
    makers = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    for key, axis in spec.sampled_axes.items():
        kind, values = next(iter(axis.items()))
        space[key] = tune.choice(values) if kind == "choice" else makers[kind](*values)
    return space


def tune_samples(spec: SweepSpec) -> int:
    """TuneConfig.num_samples: grid repeats already are cells (seeds); sampled axes and optuna draw."""
    return 1 if spec.one_folder_per_cell else spec.num_samples


def trial_count(spec: SweepSpec, cells: list[dict[str, Any]]) -> int:
    """How many trials the sweep runs: its cells times the samples drawn per cell, or optuna's samples."""
    return spec.num_samples if spec.search_name == "optuna" else tune_samples(spec) * len(cells)


def make_scheduler(spec: SweepSpec, max_epochs: int, *, n_trials: int = 1, out_uri: str | None = None):
    """The trial scheduler of ``spec.scheduler`` on the epoch axis (ASHA's max_t defaults to the longest trial;
    ``sha`` needs the number of trials, and keeps its rung table in ``out_uri``)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    opts = {k: v for k, v in spec.scheduler.items() if k != "name"}
    name = spec.scheduler.get("name", "asha")
    if name == "sha":
        from mammoflow.sweep.halving import make_sha

        return make_sha(opts, n_trials=n_trials, max_t=max_epochs, metric=spec.metric, mode=spec.mode,
                        out_uri=out_uri, where=f"sweep {spec.name}")
    try:
        if name == "asha":
            return ASHAScheduler(time_attr=TIME_ATTR, max_t=opts.pop("max_t", max_epochs), **opts)
        if name == "median":
            # Ray's default grace period (60) is in seconds of time_total_s; here the time axis is epochs.
            return MedianStoppingRule(time_attr=TIME_ATTR, **{"grace_period": 1, **opts})
    except (AssertionError, TypeError, ValueError) as exc:
        raise ConfigError(f"sweep {spec.name}: scheduler {spec.scheduler}: {exc or 'invalid options'}") from None
    return FIFOScheduler()


def make_search_alg(spec: SweepSpec):
    if spec.search_name != "optuna":
        return None
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:  # optuna is optional
        raise ConfigError("search: optuna needs the optuna package (pip install optuna)") from exc
    try:
        import optuna  # noqa: F401  (OptunaSearch imports lazily and fails late)
    except ImportError as exc:
        raise ConfigError("search: optuna needs the optuna package (pip install optuna)") from exc
    return OptunaSearch(seed=int(spec.search.get("seed", 0)))


# ------------------------------------------------------------------------------------------- trials
def trial_folder(cell: dict[str, Any], trial_id: str | None, one_per_cell: bool) -> str:
    """The run-folder name of a trial: its cell, plus Ray's trial id when two trials may share a cell."""
    name = cell_name(cell)
    return name if one_per_cell or not trial_id else f"{name}-{trial_id}"


def read_trial_status(run_uri: str) -> dict[str, Any] | None:
    """The driver's record of an ended trial (``sweep_trial.json``), or None while it has not ended."""
    uri = storage.join(run_uri, TRIAL_STATUS_FILE)
    if not storage.exists(uri):
        return None
    return json.loads(storage.get_bytes(uri))


def record_trial_end(run_uri: str, doc: dict[str, Any]) -> bool:
    """Write an ended trial's ``sweep_trial.json`` once; True if this call wrote it.

    A resumed driver sees a trial that had ended before the crash end again (the trainable reports its recorded
    result) and must leave its folder, bytes and times, as it was. So: nothing is written when the record exists,
    and the write itself is create-only (:func:`mammoflow.storage.put_bytes_if_absent`: a hard link locally,
    ``if_generation_match=0`` on GCS), so the record appears complete or not at all and two drivers cannot both
    write it. The existence check comes first because some GCS emulators ignore the precondition.
    """
    uri = storage.join(run_uri, TRIAL_STATUS_FILE)
    if not storage.exists(uri) and storage.put_bytes_if_absent(
            uri, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()):
        return True
    log.debug("trial record %s already written (the trial ended before): kept as it is", uri)
    return False


def record_attempt(run_uri: str) -> dict[str, Any]:
    """Write one record of this start of a trial's process into ``RUN/attempts/`` and return it.

    A trial runs again when its process or node dies (``max_failures``), the driver resumes, or scheduler ``sha``
    resumes it from a pause (``resumes_pause``); each start leaves a record, so the trial's ``sweep_trial.json``
    says which Ray nodes ran it and after which epoch each took over.
    """
    import ray

    done = len(run_history(run_uri))
    doc: dict[str, Any] = {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
                           "pid": os.getpid(), "started_at": round(time.time(), 3), "epochs_done": done}
    if resumes_pause(run_uri, done, read_attempts(run_uri)):
        doc["resumes_pause"] = done  # scheduler sha paused it after this epoch: a resumption, not a retry
    name = f"{time.time_ns()}-{doc['node_id'][:12]}-{doc['pid']}.json"
    storage.put_bytes(storage.join(run_uri, ATTEMPTS_DIR, name), (json.dumps(doc, sort_keys=True) + "\n").encode())
    return doc


def make_trainable(base: dict[str, Any], cells: list[dict[str, Any]], data_uris: dict[str, str], trials_uri: str,
                   *, one_per_cell: bool, cache_dir: str | None = None, env: dict[str, str] | None = None,
                   rereport: bool = False):
    """The Ray Tune function trainable: params -> the cell's TrainConfig -> ``train()``, one report per epoch.

    With ``rereport`` (scheduler ``sha``) a restarted trial first reports its last finished epoch again, so that
    the scheduler can pause it at a rung it reached before the restart (a driver --resume forgets the pauses).
    """
    forwarded = dict(env or {})

    def trial(params: dict[str, Any]) -> None:
        from ray import tune

        from mammoflow.training.loop import train

        os.environ.update(forwarded)
        cell = trial_cell(params, cells)
        dataset, config = trial_config(base, cell)
        if dataset not in data_uris:
            raise ConfigError(f"trial dataset {dataset!r}: no --data {dataset}=URI given (have {sorted(data_uris)})")
        name = trial_folder(cell, tune.get_context().get_trial_id(), one_per_cell)
        run_uri = storage.join(trials_uri, name)
        total = config.total_epochs
        extra = {"trial_name": name, "dataset": dataset, "total_epochs": total}

        ended = read_trial_status(run_uri)
        if ended is not None:
            # Ended before a driver crash that Ray's saved state did not see: report its last result, train nothing.
            log.info("trial %s already %s after epoch %s: not trained again", name, ended["status"],
                     ended["result"].get(TIME_ATTR))
            tune.report({**ended["result"], **extra, "run_finished": int(ended["status"] == "finished")})
            return

        extra["node_id"] = record_attempt(run_uri)["node_id"]
        reported: set[int] = set()
        done = run_history(run_uri) if rereport else []
        if done and int(done[-1]["epoch"]) < total:
            tune.report({**done[-1], **extra, "run_finished": 0})  # may pause or stop it here, before train()

        def on_epoch(row: dict[str, float], is_last: bool) -> None:
            _gauges().epoch(name, row)
            if not is_last:  # the last epoch is reported after train() has written the model
                reported.add(int(row["epoch"]))
                tune.report({**row, **extra, "run_finished": 0})

        _gauges().running(name, 1)
        try:
            result = train(config, data_uris[dataset], run_uri, cache_dir=cache_dir, epoch_callback=on_epoch)
        finally:
            _gauges().running(name, 0)
        if result.history and int(result.history[-1]["epoch"]) not in reported:
            tune.report({**result.history[-1], **extra, "run_finished": int(bool(result.metrics))})

    return trial


class _TrialGauges:
    """Per-trial Prometheus metrics through ray.util.metrics, exported by each node's metrics agent (Ray adds the
    prefix ``ray_``, e.g. ``ray_mammoflow_trial_epoch``)."""

    def __init__(self) -> None:
        from ray.util.metrics import Gauge

        keys = ("trial",)
        self._running = Gauge("mammoflow_trial_running", "1 while a sweep trial trains", tag_keys=keys)
        self._epoch = Gauge("mammoflow_trial_epoch", "Last finished epoch of a sweep trial", tag_keys=keys)
        self._loss = Gauge("mammoflow_trial_val_loss", "Validation loss of a sweep trial's last epoch",
                           tag_keys=keys)

    def running(self, name: str, value: int) -> None:
        self._running.set(value, tags={"trial": name})

    def epoch(self, name: str, row: dict[str, float]) -> None:
        self._epoch.set(row["epoch"], tags={"trial": name})
        if "val_loss" in row:
            self._loss.set(row["val_loss"], tags={"trial": name})


_GAUGES: _TrialGauges | None = None


def _gauges() -> _TrialGauges:
    global _GAUGES
    if _GAUGES is None:
        _GAUGES = _TrialGauges()
    return _GAUGES


def sweep_callback(spec: SweepSpec, trials_uri: str):
    """Driver-side: record each ended trial in its run folder; count trials finished / stopped early / failed and
    the best metric so far as ray.util.metrics (``ray_mammoflow_sweep_*``)."""
    from ray.tune import Callback
    from ray.tune.result import AUTO_RESULT_KEYS

    class SweepMonitor(Callback):
        def __init__(self) -> None:
            self.tags = {"sweep": spec.name}
            self.best_value: float | None = None
            self._metrics: dict[str, Any] | None = None

        def __getstate__(self) -> dict[str, Any]:  # Tune pickles the run config; metric handles stay behind
            return {**self.__dict__, "_metrics": None}

        def metrics(self) -> dict[str, Any]:
            if self._metrics is None:
                from ray.util.metrics import Counter, Gauge

                tags = ("sweep",)
                self._metrics = {
                    "finished": Counter("mammoflow_sweep_trials_finished", "Sweep trials that ran every epoch",
                                        tag_keys=tags),
                    "stopped_early": Counter("mammoflow_sweep_trials_stopped_early",
                                             "Sweep trials stopped by the scheduler", tag_keys=tags),
                    "failed": Counter("mammoflow_sweep_trials_failed", "Sweep trial errors", tag_keys=tags),
                    "best": Gauge("mammoflow_sweep_best_metric", f"Best {spec.metric} of the sweep so far",
                                  tag_keys=tags),
                }
            return self._metrics

        def on_trial_result(self, iteration, trials, trial, result, **info):
            value = result.get(spec.metric)
            if not isinstance(value, (int, float)):
                return
            if self.best_value is None or (value < self.best_value if spec.mode == "min" else value > self.best_value):
                self.best_value = float(value)
                self.metrics()["best"].set(self.best_value, tags=self.tags)

        def on_trial_complete(self, iteration, trials, trial, **info):
            last = trial.last_result or {}
            name = last.get("trial_name")
            status = "finished" if last.get("run_finished") else "stopped_early"
            self.metrics()[status].inc(tags=self.tags)
            if not name:
                return
            kept = {k: v for k, v in last.items() if k not in AUTO_RESULT_KEYS and k not in _TUNE_KEYS
                    and isinstance(v, (int, float, str))}
            run_uri = storage.join(trials_uri, name)
            attempts = read_attempts(run_uri)
            doc = {"status": status, "trial_id": trial.trial_id, "result": kept, "attempts": attempts,
                   "node_id": last.get("node_id") or (attempts[-1]["node_id"] if attempts else None)}
            if record_trial_end(run_uri, doc):
                log.info("trial %s %s after epoch %s", name, status.replace("_", " "), last.get(TIME_ATTR))

        def on_trial_error(self, iteration, trials, trial, **info):
            self.metrics()["failed"].inc(tags=self.tags)

    return SweepMonitor()


_TUNE_KEYS = ("done", "trial_id", "experiment_tag", "should_checkpoint", "run_finished", "trial_name", "dataset",
              "total_epochs", "node_id")


# ------------------------------------------------------------------------------------------- driver
def forwarded_env() -> dict[str, str]:
    """The :data:`FORWARDED_ENV` of this process when it talks to a storage emulator, else nothing."""
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        return {}
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}


def absolute_uri(uri: str) -> str:
    """Local paths made absolute: trials run in other working directories (and maybe on other machines)."""
    return uri if storage.is_remote(uri) else str(storage.local_path(uri).absolute())


def spec_yaml(spec: SweepSpec) -> str:
    """The spec as run, with its base config resolved (so the folder says exactly what was swept)."""
    data = json.loads(json.dumps(asdict(spec)))
    data["base"] = base_config(spec)
    return dump_yaml(data)


def ray_default_installed() -> bool:
    """Whether Ray's dashboard and metrics agent can run (``ray[default]``; ``ray[tune]`` alone is minimal)."""
    try:
        from ray._private.utils import get_dashboard_dependency_error
    except ImportError:  # pragma: no cover - a Ray without this helper
        return False
    return get_dashboard_dependency_error() is None


def _check_resources(spec: SweepSpec) -> None:
    """A local Ray never grows: refuse trials that ask for more than it has (they would wait forever)."""
    import ray

    have = ray.cluster_resources()
    for key, want in spec.resources.items():
        name = key.upper() if key in ("cpu", "gpu") else key
        if want and want > have.get(name, 0):
            raise ConfigError(f"sweep {spec.name}: each trial asks for {want} {key} but the local Ray has "
                              f"{have.get(name, 0)}. Fix: lower resources.{key} in the spec (a copy of it), or "
                              "give --address of a cluster that has them")


def experiment_path(spec: SweepSpec, out_uri: str):
    """(pyarrow filesystem, Tune's storage path ``OUT/ray``, the experiment's path ``OUT/ray/<name>``)."""
    fs, ray_path = storage.pyarrow_filesystem(storage.join(out_uri, "ray"))
    return fs, ray_path, f"{ray_path.rstrip('/')}/{spec.name}"


def check_spec(spec: SweepSpec, out_uri: str) -> str:
    """The spec as run (:func:`spec_yaml`); refuses a sweep folder that holds a sweep of another spec."""
    spec_uri = storage.join(out_uri, "spec.yaml")
    text = spec_yaml(spec)
    if storage.exists(spec_uri) and storage.get_bytes(spec_uri).decode() != text:
        raise ConfigError(f"{out_uri}: holds a sweep with a different spec (spec.yaml). Fix: use a new --out, "
                          "or the same spec to resume it")
    return text


def claim_folder(spec: SweepSpec, out_uri: str, resume: bool) -> bool:
    """Check the sweep folder ``out_uri`` before any work and write its ``spec.yaml``; True if it holds Ray Tune
    state to resume. Refuses a folder of another spec, and one holding state unless ``resume`` (the local driver
    and the Ray Jobs client apply the same rule)."""
    from ray import tune

    text = check_spec(spec, out_uri)
    fs, _, experiment = experiment_path(spec, out_uri)
    restorable = tune.Tuner.can_restore(experiment, storage_filesystem=fs)
    if restorable and not resume:
        raise ConfigError(f"{out_uri}: holds the state of sweep {spec.name}. Fix: add --resume to continue it, "
                          "or give a new --out")
    storage.put_bytes(storage.join(out_uri, "spec.yaml"), text.encode())
    return restorable


def run_sweep(spec: SweepSpec, data_uris: dict[str, str], out_uri: str, *, address: str | None = None,
              resume: bool = False, max_concurrent: int | None = None, num_cpus: int | None = None,
              cache_dir: str | None = None, dashboard: bool = False,
              metrics_export_port: int | None = None) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) a sweep; writes the results and returns the summary.

    Uses the running Ray if ``ray.init`` was already called; otherwise connects to ``address`` (``auto``,
    ``ray://host:10001``) or starts a local Ray with ``num_cpus`` (and the dashboard / a fixed metrics port when
    asked), shut down again at the end.
    """
    import ray
    from ray import tune

    if (dashboard or metrics_export_port) and address is None and not ray_default_installed():
        raise ConfigError("--dashboard / --metrics-export-port: this Ray is the minimal install (ray[tune]) without "
                          "dashboard or metrics agent. Fix: pip install 'ray[default,tune]' (the same version)")
    cells = expand_cells(spec)
    validate_cells(spec, cells)
    base = base_config(spec)
    max_epochs = max(trial_config(base, cell)[1].total_epochs for cell in cells)
    out_uri = absolute_uri(out_uri.rstrip("/"))
    data_uris = {name: absolute_uri(uri) for name, uri in data_uris.items()}
    if address and address.startswith("ray://") and not storage.is_remote(out_uri):
        log.warning("--address %s with a local --out: trials on the cluster cannot write there; "
                    "use a gs:// sweep folder", address)

    n_trials = trial_count(spec, cells)
    if spec.scheduler.get("name", "asha") == "sha":
        from mammoflow.sweep.halving import STATE_FILE, check_concurrency

        check_concurrency(n_trials, max_concurrent or spec.max_concurrent, f"sweep {spec.name}")
    trials_uri = storage.join(out_uri, "trials")
    restorable = claim_folder(spec, out_uri, resume)
    if not restorable and spec.scheduler.get("name", "asha") == "sha":
        storage.delete(storage.join(out_uri, STATE_FILE))  # a rung table left by a start that saved no Ray state
    fs, ray_path, experiment = experiment_path(spec, out_uri)

    started_ray = not ray.is_initialized()
    if started_ray:
        init_kw: dict[str, Any] = {"address": address, "log_to_driver": False}
        if address is None:
            init_kw.update(num_cpus=num_cpus or os.cpu_count(), include_dashboard=dashboard)
            if dashboard:
                init_kw["dashboard_host"] = "127.0.0.1"
            if metrics_export_port:
                init_kw["_metrics_export_port"] = metrics_export_port
        ray.init(**init_kw)
    try:
        if started_ray and address is None:
            _check_resources(spec)
        env = forwarded_env()
        halving = spec.scheduler.get("name", "asha") == "sha"
        trainable = tune.with_resources(
            make_trainable(base, cells, data_uris, trials_uri, one_per_cell=spec.one_folder_per_cell,
                           cache_dir=cache_dir, env=env, rereport=halving),
            {k: v for k, v in spec.resources.items() if v})
        t0 = time.perf_counter()
        if restorable:
            log.info("resuming sweep %s from %s", spec.name, experiment)
            tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, restart_errored=True,
                                       storage_filesystem=fs)
        else:
            if resume:
                log.warning("--resume: no sweep state at %s yet, starting sweep %s", experiment, spec.name)
            tuner = tune.Tuner(
                trainable,
                param_space=search_space(spec, cells),
                tune_config=tune.TuneConfig(
                    metric=spec.metric, mode=spec.mode,
                    scheduler=make_scheduler(spec, max_epochs, n_trials=n_trials, out_uri=out_uri),
                    search_alg=make_search_alg(spec), num_samples=tune_samples(spec),
                    max_concurrent_trials=max_concurrent or spec.max_concurrent,
                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname),
                run_config=tune.RunConfig(
                    name=spec.name, storage_path=ray_path, storage_filesystem=fs,
                    failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                    callbacks=[sweep_callback(spec, trials_uri)], verbose=0),
            )
        grid = tuner.fit()
        wall = time.perf_counter() - t0
    finally:
        if started_ray:
            ray.shutdown()
    return write_results(spec, grid, out_uri, base=base, cells=cells, max_epochs=max_epochs, wall_time_s=wall)


def _trial_label(trial) -> str:
    params = trial.config or {}
    cell = params.get("cell", {"cell_index": params.get("cell_index")})
    return cell_name({**cell, **{k: v for k, v in params.items() if k not in ("cell", "cell_index")}})


def _trial_name(trial) -> str:
    return f"{_trial_label(trial)}-{trial.trial_id}"


def _trial_dirname(trial) -> str:
    return f"{_trial_label(trial)[:60]}-{trial.trial_id}"


def dry_run_lines(spec: SweepSpec) -> list[str]:
    """One line per trial the sweep would run, then the count (``N trials``)."""
    cells = expand_cells(spec)
    validate_cells(spec, cells)
    base = base_config(spec)
    n_trials = trial_count(spec, cells)
    make_scheduler(spec, max(trial_config(base, cell)[1].total_epochs for cell in cells),  # fail here, not later
                   n_trials=n_trials)
    if spec.scheduler.get("name", "asha") == "sha":
        from mammoflow.sweep.halving import check_concurrency

        check_concurrency(n_trials, spec.max_concurrent, f"sweep {spec.name}")
    sampled = ", ".join(f"{k}~{next(iter(v))}{next(iter(v.values()))}" for k, v in spec.sampled_axes.items())
    lines = []
    if spec.search_name == "optuna":
        lines = [f"optuna trial {s + 1}: one of {len(cells)} cells" + (f"  [{sampled}]" if sampled else "")
                 for s in range(spec.num_samples)]
    else:
        for s in range(tune_samples(spec)):
            for cell in cells:
                suffix = f"  [{sampled}, sample {s + 1}]" if sampled else ""
                lines.append(f"{cell_name(cell)}  {json.dumps(cell, sort_keys=True)}{suffix}")
    n = len(lines)
    epochs = [trial_config(base, cell)[1].total_epochs for cell in cells] * max(1, n // max(len(cells), 1))
    name = spec.scheduler.get("name", "asha")
    expected = expected_trial_epochs(epochs, spec.scheduler)
    caveat = "; asynchronous: a run may exceed it" if name == "asha" else ""
    lines.append(f"expected trial-epochs with {name}: {expected} of {sum(epochs)} "
                 f"({expected / max(sum(epochs), 1):.2f} of the full grid{caveat})")
    lines.append(f"{n} trials")
    return lines
