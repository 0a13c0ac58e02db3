"""``train(config, data_uri, out_uri)``: the one training function behind the CLI, the KFP component and Ray Tune.

A run folder (local path or ``gs://``; :mod:`mammoflow.training.run_folder` holds its I/O) ends up holding::

    config.yaml          the resolved TrainConfig (re-run with `mammoflow train --config <run>/config.yaml`)
    run.json             code version, data manifest sha256, status, timings
    history.csv/.json    one row per epoch
    metrics.json         validation metrics of the best epoch
    model.keras          the best model (lowest validation loss; Yu et al. kept the best val loss too)
    checkpoints/         last.keras + state.json (resume point), best.keras
    tensorboard/         TensorBoard logs

On ``gs://`` the run is watchable while it trains: ``history.csv``/``history.json`` and the new TensorBoard event
files are published after every epoch (only what changed since the last push), so ``tensorboard --logdir gs://...``
or a look at the history shows a long run or a sweep trial before it ends.

Resume: the data of epoch ``e`` is a pure function of ``(seed, e)`` (the input pipeline is stateless) and every
epoch starts from a re-seeded RNG, so a run killed after any epoch (or after any checkpointed step) and started again
with the same command ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammoflow import __version__, storage
from mammoflow.config import dump_yaml
from mammoflow.errors import ConfigError
from mammoflow.training import distribute
from mammoflow.training.config import TrainConfig
from mammoflow.training.run_folder import (
    BEST_CKPT,
    LAST_CKPT,
    LAST_HEAD,
    META_FILE,
    STATE_FILE,
    WATCH_FILES,
    RunFolder,
    TrainResult,
    finished_result,
    load_checkpoint,
    write_history,
)

log = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, float], bool], None]
"""``epoch_callback(row, is_last)``: an epoch's history row, and whether the run is finished after it."""


class Preempted(RuntimeError):
    """The run was asked to stop (SIGTERM on a spot node); a checkpoint was written, rerun to resume."""


# ----------------------------------------------------------------------------------------------- helpers
def class_weight_map(spec: str | dict[str, float], counts: dict[int, int], names: dict[int, str]) -> dict[int, float] | None:
    """Keras ``class_weight`` from the config: none, balanced (n / (k * n_c)), or explicit per label name.

    Jaamour et al.'s code computed balanced weights and then discarded them (``return None``): here they are
    passed to ``fit`` and so reach the loss (tested).
    """
    if spec == "none":
        return None
    if spec == "balanced":
        total = sum(counts.values())
        k = len(counts)
        return {label: total / (k * n) for label, n in sorted(counts.items()) if n > 0}
    by_name = {v: k for k, v in names.items()}
    unknown = sorted(set(spec) - set(by_name))
    if unknown:
        raise ConfigError(f"class_weights: unknown label(s) {unknown}; the dataset has {sorted(by_name)}")
    return {by_name[name]: float(w) for name, w in spec.items()}


def _progress_bar() -> int:
    """Keras' step progress bar in an interactive terminal; silent in CI, pipelines and logs."""
    import sys

    return 1 if sys.stdout.isatty() and os.environ.get("CI") != "true" else 0


def _seed_everything(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)


def _reseed_layers(model, seed: int, steps_done: int = 0) -> None:
    """Set every layer's random stream (dropout, noise) from ``(seed, epoch)``, as if ``steps_done`` steps ran.

    Keras draws a layer's seed when the layer is built and does not save the stream's position with the model, so
    a resumed run would otherwise see other dropout masks than an uninterrupted one. Each step draws once per
    generator (the counter is the state's second word).
    """
    import numpy as np

    for i, var in enumerate(v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")):
        value = np.array([(seed * 7919 + i * 104729) % (2**31 - 1), steps_done], dtype=var.dtype)
        var.assign(value)


def _set_precision(mode: str) -> None:
    import keras
    import tensorflow as tf

    on = mode == "on" or (mode == "auto" and bool(tf.config.list_physical_devices("GPU")))
    keras.mixed_precision.set_global_policy("mixed_float16" if on else "float32")


def _make_optimizer(cfg: TrainConfig, lr: float, model):
    import keras

    from mammoflow.training.optim import HeadScaledSGD

    if cfg.optimizer.name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    if cfg.optimizer.head_lr_multiplier != 1.0:
        from mammoflow.models import head_variable_paths

        return HeadScaledSGD(learning_rate=lr, momentum=cfg.optimizer.momentum,
                             head_multiplier=cfg.optimizer.head_lr_multiplier,
                             head_paths=head_variable_paths(model))
    return keras.optimizers.SGD(learning_rate=lr, momentum=cfg.optimizer.momentum)


def _compile(model, cfg: TrainConfig, lr: float) -> None:
    model.compile(optimizer=_make_optimizer(cfg, lr, model), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=cfg.xla)


class _StepCheckpoint:
    """Mid-epoch checkpoints every N steps and on SIGTERM (spot preemption), as a Keras callback."""

    def __init__(self, save, every: int | None):
        import keras

        outer = self

        class _CB(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                outer.step += 1
                if outer.stop_requested or (every and outer.step % every == 0):
                    save(outer.step, logs or {})
                    if outer.stop_requested:
                        self.model.stop_training = True
                        outer.preempted = True

        self.callback = _CB()
        self.step = 0
        self.stop_requested = False
        self.preempted = False


def merge_epoch_means(prior: dict[str, Any] | None, steps: int, means: dict[str, Any]) -> dict[str, Any]:
    """The running training means of an epoch so far (``{"steps": n, "means": {name: value}}``) after ``steps``
    more steps whose own means are ``means``; weighted by steps (the epoch's last batch may be a little smaller)."""
    before = prior or {"steps": 0, "means": {}}
    now = {k: float(v) for k, v in means.items() if _is_number(v)}
    if steps <= 0:
        return {"steps": before["steps"], "means": dict(before["means"])}
    total = before["steps"] + steps
    merged = {k: (before["means"][k] * before["steps"] + v * steps) / total if k in before["means"] else v
              for k, v in now.items()}
    return {"steps": total, "means": merged}


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------- train
def train(config: TrainConfig, data_uri: str, out_uri: str, *, cache_dir: str | Path | None = None,
          stop_after_epochs: int | None = None, epoch_callback: EpochCallback | None = None) -> TrainResult:
    """Train ``config``'s model on the shards at ``data_uri``; write (or resume) the run folder at ``out_uri``.

    ``stop_after_epochs`` ends the call early after that many epochs *of this call* (used by tests and by Ray Tune
    trials that are paused); the run folder is then resumable. ``epoch_callback(row, is_last)`` is called after
    every epoch with that epoch's history row, once its checkpoint and history are written (and published, on
    ``gs://``); ``is_last`` is True when the run is finished after this epoch (its last epoch, or early stopping
    in the last phase): ``train()`` then writes ``model.keras`` and ``metrics.json`` and returns. Ray Tune
    reports from it.
    """
    from mammoflow.storage.copies import cache_dir as cache_root
    from mammoflow.storage.copies import uri_key
    from mammoflow.training.monitor import RunMetrics

    # First: a multi-worker strategy configures the TensorFlow runtime, which must not have started yet.
    cluster = distribute.resolve_cluster()
    strategy = distribute.make_strategy(config.distribute, cluster, config.distribute_peer_timeout_s)
    scratch = None
    if distribute.wants_multiworker(config.distribute, cluster) and not cluster.is_chief:
        scratch = distribute.scratch_dir(cache_root(cache_dir), uri_key(out_uri), cluster)
    # Served from the start, before the shards are fetched: a pod still downloading a large dataset is an up
    # target with no epoch yet, not a missing one (the target-down alert would fire during long fetches).
    metrics = RunMetrics(run=run_label(out_uri), port=config.metrics_port)
    try:
        return _train(config, data_uri, out_uri, metrics, _Workers(strategy, cluster, scratch), cache_dir=cache_dir,
                      stop_after_epochs=stop_after_epochs, epoch_callback=epoch_callback)
    finally:
        metrics.close()
        distribute.remove_scratch(scratch)


@dataclass(frozen=True)
class _Workers:
    """How this process trains: the strategy, its cluster (None: one worker), and a non-chief's scratch folder."""

    strategy: Any
    cluster: distribute.Cluster | None
    scratch: Path | None


def run_label(out_uri: str) -> str:
    """The ``run`` label of a run's metrics: the last part of its folder or URI (``gs://b/runs/r7`` -> ``r7``)."""
    return str(out_uri).rstrip("/").replace("\\", "/").rsplit("/", 1)[-1] or str(out_uri)


def _train(config: TrainConfig, data_uri: str, out_uri: str, metrics: Any, workers: _Workers, *,
           cache_dir: str | Path | None,
           stop_after_epochs: int | None, epoch_callback: EpochCallback | None) -> TrainResult:
    import keras
    import tensorflow as tf

    from mammoflow.dataset.cache import shard_cache
    from mammoflow.dataset.pipeline import eval_dataset
    from mammoflow.dataset.shards import read_manifest
    from mammoflow.models import create_model, model_meta
    from mammoflow.training.monitor import MonitorCallback

    t_start = time.perf_counter()
    run = RunFolder(out_uri, cache_dir, scratch=workers.scratch)
    cache = shard_cache(cache_dir)
    manifest_uri = storage.join(data_uri, "manifest.json")
    manifest_bytes = storage.get_bytes(manifest_uri)
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    manifest = read_manifest(data_uri)
    shards = cache.fetch(manifest_uri)
    label_names = {int(k): v for k, v in manifest["label_names"].items()}
    num_classes = len(label_names)
    input_cfg, val_cfg = _fold_configs(config, _input_config(config), manifest)
    val_split = config.data.train_split if config.data.fold is not None else config.data.val_split
    for split in (config.data.train_split, val_split):
        if not shards.get(split):
            raise ConfigError(f"{data_uri}: the dataset has no {split!r} shards (has {sorted(shards)}); "
                              "fix data.train_split / data.val_split or rebuild with a validation split")

    # Same config or refuse: resuming a folder with another config would mix two runs.
    cfg_yaml = dump_yaml(config.to_dict())
    if run.pull("config.yaml") and run.path("config.yaml").read_text() != cfg_yaml:
        raise ConfigError(f"{out_uri}: holds a run with a different config.yaml; use a new --out or the same config")
    done = finished_result(run, out_uri, manifest_sha)
    if done is not None:  # a re-run of a finished run: nothing to redo, nothing rewritten
        log.info("%s: already finished (best epoch %d of %d); nothing to do", out_uri, done.best_epoch,
                 done.epochs_run)
        done.model = config.model.name
        return done
    run.write_text("config.yaml", cfg_yaml)
    run.push("config.yaml")

    state: dict[str, Any] = {"epochs_done": 0, "step_in_epoch": 0, "best_val_loss": None, "best_epoch": None,
                             "history": [], "phase_wait": 0}
    resumed_from = None
    if run.pull(STATE_FILE) and run.pull(LAST_CKPT):
        state = json.loads(run.path(STATE_FILE).read_text())
        resumed_from = state["epochs_done"]
        run.pull(BEST_CKPT)
        log.info("resuming %s after epoch %d (step %d)", out_uri, state["epochs_done"], state["step_in_epoch"])

    _set_precision(config.mixed_precision)
    strategy = workers.strategy
    with strategy.scope():
        if resumed_from is not None:
            model = load_checkpoint(run, LAST_CKPT)
        else:
            _seed_everything(config.seed)
            phase0 = config.schedule.phases[0]
            model = create_model(config.model.name, input_shape=_input_shape(config), num_classes=num_classes,
                                 weights=config.model.weights,
                                 trainable_backbone=phase0.trainable_backbone,
                                 **config.model.params)
            if not config.head_cache:  # with a head cache only the head is compiled (below)
                _compile(model, config, phase0.learning_rate)
            run.write_text(META_FILE, json.dumps(model_meta(model).to_dict(), indent=2, sort_keys=True) + "\n")
            run.push(META_FILE)

    # head_cache: train only the head on features the frozen backbone computes once (same patches every epoch).
    fit_model, backbone = model, None
    if config.head_cache:
        from mammoflow.models import load_model, split_frozen_backbone

        backbone, fit_model = split_frozen_backbone(model)
        _compile(fit_model, config, config.phase_of_epoch(min(state["epochs_done"], config.total_epochs - 1))[1]
                 .learning_rate)
        if resumed_from is not None and run.pull(LAST_HEAD):
            _restore_optimizer(fit_model, load_model(run.path(LAST_HEAD)))

    counts = _patch_counts(manifest, config, label_names)
    class_weight = class_weight_map(config.class_weights, counts, label_names)
    examples_per_epoch = sum(counts.values())
    monitor = MonitorCallback(metrics, examples_per_epoch, state["epochs_done"], config.total_epochs)
    tensorboard = keras.callbacks.TensorBoard(log_dir=str(run.path("tensorboard/x").parent), write_graph=False)

    def save_checkpoint(epochs_done: int, step_in_epoch: int, so_far: dict[str, Any] | None = None) -> None:
        run.save_model(model, LAST_CKPT)
        if fit_model is not model:
            run.save_model(fit_model, LAST_HEAD)
        st = dict(state, epochs_done=epochs_done, step_in_epoch=step_in_epoch, epoch_so_far=so_far)
        run.write_text(STATE_FILE, json.dumps(st, indent=2))
        run.push(LAST_CKPT, LAST_HEAD, STATE_FILE)

    if config.data.mode == "whole_image":
        from mammoflow.dataset.pipeline import whole_image_dataset

        val_ds = whole_image_dataset(shards[val_split], val_cfg, config.data.image_size)
    else:
        val_ds = eval_dataset(shards[val_split], val_cfg)
    val_ds = distribute.shard_by_data(val_ds.map(lambda x, y, _id: (x, y)), strategy)
    cached_train = None
    if backbone is not None:
        t_cache = time.perf_counter()
        val_ds = _cached_features(backbone, val_ds, config.data.batch_size)
        cached_train = _cached_features(backbone, _epoch_data(config, shards, input_cfg, 0),
                                        config.data.batch_size)
        log.info("head cache: backbone features computed once in %.1f s", time.perf_counter() - t_cache)
    stepper = _StepCheckpoint(
        lambda step, logs: save_checkpoint(state["epochs_done"], state["step_in_epoch"] + step,
                                           merge_epoch_means(state.get("epoch_so_far"), step, logs)),
        config.schedule.checkpoint_every_steps)
    previous_handler = _install_sigterm(stepper)
    epochs_this_call = 0
    try:
        while state["epochs_done"] < config.total_epochs:
            epoch = state["epochs_done"]  # early stopping moves it to the next phase's first epoch
            phase_idx, phase = config.phase_of_epoch(epoch)
            phase_start = sum(p.epochs for p in config.schedule.phases[:phase_idx])
            if epoch == phase_start and epoch > 0 and state["step_in_epoch"] == 0:
                _enter_phase(model, fit_model, config, phase)
                state["phase_wait"] = 0
            _seed_everything(config.seed * 1000 + epoch)
            _reseed_layers(model, config.seed * 1000 + epoch, state["step_in_epoch"])
            ds = cached_train if cached_train is not None else _epoch_data(config, shards, input_cfg, epoch)
            if state["step_in_epoch"]:
                ds = ds.skip(state["step_in_epoch"])
            ds = distribute.shard_by_data(ds, strategy)
            stepper.step = 0
            distribute.prepare_model(fit_model, strategy)
            with warnings.catch_warnings():
                # One fit() per epoch over a finite dataset: Keras' "ran out of data" note is expected here.
                warnings.filterwarnings("ignore", message=".*ran out of data.*")
                hist = fit_model.fit(ds, epochs=epoch + 1, initial_epoch=epoch, validation_data=val_ds,
                                 class_weight=class_weight, verbose=_progress_bar(), shuffle=False,
                                 callbacks=[monitor, tensorboard, stepper.callback])
            if stepper.preempted:
                raise Preempted(f"stopped by SIGTERM during epoch {epoch + 1}; checkpoint saved, rerun to resume")
            row = {k: float(v[-1]) for k, v in hist.history.items()}
            # A resumed epoch's training means cover its steps before the checkpoint too (and an epoch resumed
            # after its last step ran none here): the whole epoch's, as without the interruption.
            trained = merge_epoch_means(state.get("epoch_so_far"), stepper.step,
                                        {k: v for k, v in row.items() if not k.startswith("val_")})
            row.update(trained["means"])
            state["epoch_so_far"] = None
            row["epoch"] = epoch + 1
            row["learning_rate"] = float(keras.ops.convert_to_numpy(fit_model.optimizer.learning_rate))
            state["history"].append(row)
            state["step_in_epoch"] = 0
            improved = state["best_val_loss"] is None or row["val_loss"] < state["best_val_loss"]
            if improved:
                state.update(best_val_loss=row["val_loss"], best_epoch=epoch + 1, phase_wait=0)
                run.save_model(model, BEST_CKPT)
                run.push(BEST_CKPT)
            else:
                state["phase_wait"] += 1
                _maybe_reduce_lr(fit_model, config, state)
            state["epochs_done"] = epoch + 1
            save_checkpoint(epoch + 1, 0)
            patience = config.schedule.early_stopping_patience
            phase_end = phase_start + phase.epochs
            if patience is not None and state["phase_wait"] >= patience and epoch + 1 < phase_end:
                log.info("early stopping phase %d after epoch %d (no val-loss improvement for %d epochs)",
                         phase_idx + 1, epoch + 1, patience)
                state["epochs_done"] = phase_end  # skip the rest of this phase
                if phase_end < config.total_epochs:
                    if fit_model is not model:
                        raise ConfigError("head_cache with early stopping between phases is not supported: use "
                                          "one phase, or head_cache: false")
                    with strategy.scope():
                        model = fit_model = load_checkpoint(run, BEST_CKPT)
                    _enter_phase(model, fit_model, config, config.phase_of_epoch(phase_end)[1])
                save_checkpoint(phase_end, 0)
            write_history(run, state["history"])
            run.push(*WATCH_FILES, best_effort=True)  # watchable while it trains; a failure waits for the next
            epochs_this_call += 1
            is_last = state["epochs_done"] >= config.total_epochs
            if epoch_callback is not None:
                epoch_callback(dict(row), is_last)
            if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
                break
    finally:
        _restore_sigterm(previous_handler)

    finished = state["epochs_done"] >= config.total_epochs
    result = TrainResult(run_uri=out_uri, best_epoch=state["best_epoch"] or 0,
                         best_val_loss=float(state["best_val_loss"] or float("nan")),
                         epochs_run=len(state["history"]), history=state["history"], resumed_from_epoch=resumed_from,
                         model=config.model.name)
    if finished:
        shutil.copyfile(run.path(BEST_CKPT), run.path("model.keras"))
        best_row = next(r for r in state["history"] if r["epoch"] == state["best_epoch"])
        result.metrics = {
            "best_epoch": state["best_epoch"], "epochs_run": len(state["history"]),
            "val_loss": best_row["val_loss"], "val_accuracy": best_row.get("val_accuracy"),
            "train_loss": best_row["loss"], "train_accuracy": best_row.get("accuracy"),
            "label_names": {str(k): v for k, v in label_names.items()},
        }
        run.write_text("metrics.json", json.dumps(result.metrics, indent=2, sort_keys=True) + "\n")
    run.write_text("run.json", json.dumps({
        "status": "finished" if finished else "paused", "code_version": __version__,
        "data_uri": data_uri, "data_manifest_sha256": manifest_sha, "model": config.model.name,
        "epochs_done": state["epochs_done"], "wall_time_s_this_call": round(time.perf_counter() - t_start, 2),
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "distribute": dict(distribute.describe(workers.cluster)),
    }, indent=2, sort_keys=True) + "\n")
    # Not best-effort: whatever an epoch's push left pending is published here, or the error is raised.
    run.push("run.json", "metrics.json", "model.keras", META_FILE, *WATCH_FILES)
    return result


def _input_shape(cfg: TrainConfig) -> tuple[int, int, int]:
    side = cfg.data.image_size if cfg.data.mode == "whole_image" else cfg.data.patch_size
    if side is None:
        raise ConfigError("data.image_size is required in whole_image mode")
    return (side, side, cfg.data.channels)


def _input_config(cfg: TrainConfig):
    from mammoflow.dataset.pipeline import InputConfig

    d = cfg.data
    return InputConfig(patch_size=d.patch_size, patches_per_roi=dict(d.patches_per_roi), batch_size=d.batch_size,
                       channels=d.channels, centring=d.centring, seed=cfg.seed, eval_grid=tuple(d.eval_grid),
                       **d.augment)


def _epoch_data(cfg: TrainConfig, shards: dict[str, list], input_cfg, epoch: int):
    """The training batches of one epoch: a pure function of (seed, epoch), or of seed alone without resampling."""
    from mammoflow.dataset.pipeline import train_dataset, whole_image_dataset

    data_epoch = epoch if cfg.data.resample_each_epoch else 0
    if cfg.data.mode == "whole_image":  # Jaamour et al.: the whole (resized) image is the input
        ds = whole_image_dataset(_train_shards(cfg, shards), input_cfg, cfg.data.image_size, training=True,
                                 seed=cfg.seed, epoch=data_epoch).map(lambda x, y, _id: (x, y))
    else:
        ds = train_dataset(_train_shards(cfg, shards), input_cfg, seed=cfg.seed, epoch=data_epoch)
    if cfg.schedule.steps_per_epoch:
        ds = ds.take(cfg.schedule.steps_per_epoch)
    return ds


def _cached_features(backbone, ds, batch_size: int):
    """Run the frozen backbone once over ``ds`` (x, y) and return a dataset of (features, y) in the same batches."""
    import numpy as np
    import tensorflow as tf

    feats: list[list[np.ndarray]] = []
    labels = []
    for x, y in ds:
        out = backbone.predict_on_batch(x)
        feats.append(list(out) if isinstance(out, (list, tuple)) else [out])
        labels.append(np.asarray(y))
    columns = [np.concatenate([f[i] for f in feats]) for i in range(len(feats[0]))]
    x_all = columns[0] if len(columns) == 1 else tuple(columns)
    # Every batch but the last is full, so re-batching the concatenation gives the very same batches.
    return tf.data.Dataset.from_tensor_slices((x_all, np.concatenate(labels))).batch(batch_size)


def _restore_optimizer(model, saved) -> None:
    """Copy a saved model's optimizer state (momenta, iteration count) into ``model``'s optimizer."""
    model.optimizer.build(model.trainable_variables)
    for dst, src in zip(model.optimizer.variables, saved.optimizer.variables, strict=True):
        dst.assign(src)


def _train_shards(cfg: TrainConfig, shards: dict[str, list]) -> list:
    return shards[cfg.data.train_split]


def _fold_configs(cfg: TrainConfig, input_cfg, manifest: dict[str, Any]):
    """(train, validation) input configs: the same, or for fold k of a k-fold dataset, folds != k and fold k."""
    import dataclasses

    if cfg.data.fold is None:
        return input_cfg, input_cfg
    k = (manifest.get("config", {}).get("splits") or {}).get("k_folds")
    if not k:
        raise ConfigError("data.fold is set but the dataset has no folds; build it with splits.k_folds")
    if not 0 <= cfg.data.fold < k:
        raise ConfigError(f"data.fold {cfg.data.fold} is outside the dataset's {k} folds (0..{k - 1})")
    train_folds = tuple(i for i in range(k) if i != cfg.data.fold)
    return dataclasses.replace(input_cfg, folds=train_folds), dataclasses.replace(input_cfg, folds=(cfg.data.fold,))


def _patch_counts(manifest: dict[str, Any], cfg: TrainConfig, names: dict[int, str]) -> dict[int, int]:
    """Training examples per label in one epoch: ROIs per class x patches per ROI of that class."""
    per_class = manifest["splits"][cfg.data.train_split]["counts"]
    counts = {}
    for label, name in names.items():
        n_rois = int(per_class.get(name, 0))
        per_roi = 1 if cfg.data.mode == "whole_image" else int(cfg.data.patches_per_roi.get(name, 1))
        counts[label] = n_rois * per_roi
    return counts


def _enter_phase(model, fit_model, cfg: TrainConfig, phase) -> None:
    from mammoflow.models import set_backbone_trainable

    set_backbone_trainable(model, phase.trainable_backbone)
    _compile(fit_model, cfg, phase.learning_rate)
    log.info("phase: backbone %s, learning rate %g", "trainable" if phase.trainable_backbone else "frozen",
             phase.learning_rate)


def _maybe_reduce_lr(model, cfg: TrainConfig, state: dict[str, Any]) -> None:
    plateau = cfg.schedule.reduce_lr_on_plateau
    if not plateau or state["phase_wait"] == 0 or state["phase_wait"] % int(plateau.get("patience", 2)):
        return
    lr = float(model.optimizer.learning_rate.numpy()) * float(plateau.get("factor", 0.5))
    lr = max(lr, float(plateau.get("min_lr", 1e-7)))
    model.optimizer.learning_rate.assign(lr)
    log.info("val loss on a plateau: learning rate -> %g", lr)


def _install_sigterm(stepper: _StepCheckpoint):
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):  # noqa: ARG001
        log.warning("SIGTERM received: checkpointing at the end of this step, then stopping")
        stepper.stop_requested = True

    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(previous) -> None:
    import threading

    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)
