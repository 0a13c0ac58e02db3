"""The steps of one scheduled retraining run as the KFP pipeline runs them, one per pod (scan -> ingest ->
preprocess -> build -> train -> evaluate -> bless -> register -> promote, then finalize).

Each is a thin call into :mod:`mammoflow.retrain.stages`, the same step functions ``mammoflow retrain --once`` runs
in one process. What a run keeps lives under ``<storage_root>/retrain/<name>/<run id>/`` (see
:class:`mammoflow.retrain.run.Layout`). The scan freezes the config into that folder; every later step is given the
same config parameters only to find the run, and works with the frozen copy after checking that both have the
sha256 the scan recorded (a config changed mid-run is an error naming the fix).

:func:`retrain_once` and :func:`retrain_every` run all of them in this process (``mammoflow retrain``), through
:mod:`mammoflow.retrain.loop`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from mammoflow import storage
from mammoflow.config import plain_numbers
from mammoflow.errors import ConfigError, MammoflowError
from mammoflow.registry import ModelRegistry
from mammoflow.retrain import stages
from mammoflow.retrain.run import Layout, RetrainRun
from mammoflow.retrain.state import RETRAIN_STEPS, STATE_FILE, read_state, result_from_steps, update_state
from mammoflow.steps.data import require_root
from mammoflow.storage import copies

__all__ = ["RETRAIN_STEPS", "load_retrain", "load_retrain_state", "read_steps", "retrain_bless", "retrain_build",
           "retrain_evaluate", "retrain_finalize", "retrain_ingest", "retrain_markdown", "retrain_preprocess",
           "retrain_promote", "retrain_register", "retrain_result", "retrain_run_uri", "retrain_scan", "retrain_train",
           "retrain_uri", "update_retrain_state", "retrain_once", "retrain_every"]

log = logging.getLogger(__name__)

CacheDir = str | os.PathLike[str] | None


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) \
            else value
    return out


def load_retrain(config_ref: str, overrides: Mapping[str, Any] | None = None, storage_root: str = "", *,
                 cache_dir: CacheDir = None) -> Any:
    """The :class:`~mammoflow.retrain.config.RetrainConfig` a pipeline step is given.

    ``config_ref``: a retrain YAML (local path or ``gs://`` URI); ``overrides``: a nested mapping merged into it
    (``{"train_overrides": {"seed": 3}, "blessing": {"n_bootstrap": 500}}``; numbers arrive as floats from KFP and
    are made plain again); ``storage_root``: the pipeline's, which wins over the config's. A cluster has no shared
    local disk, so the config's ``work_dir`` is not used: everything a run keeps is under the storage root.
    """
    from mammoflow.config import from_dict
    from mammoflow.retrain.config import RetrainConfig, load_retrain_config

    if not config_ref:
        raise ConfigError("config is empty. Fix: pass config=gs://BUCKET/retrain.yaml (or a local YAML path): the "
                          "retrain config naming the watched source, the train preset and the blessing policy")
    cfg = load_retrain_config(copies.local_config(config_ref, cache_dir))
    data = cfg.to_dict()
    if overrides:
        data = _deep_merge(data, plain_numbers(dict(overrides)))
    if storage_root:
        data["storage_root"] = storage_root
    cfg = from_dict(RetrainConfig, data, "retrain config")
    require_root(cfg.storage_root or "")
    return cfg


def _layout(cfg: Any, cache_dir: CacheDir = None) -> Layout:
    require_root(cfg.storage_root or "")
    layout = Layout.shared(cfg)
    return dataclasses.replace(layout, cache=str(cache_dir)) if cache_dir else layout


def retrain_uri(cfg: Any, *parts: str) -> str:
    """``<storage_root>/retrain/<name>/<parts>``: where a retraining keeps its state and its runs."""
    return storage.join(_layout(cfg).base, *parts)


def retrain_run_uri(cfg: Any, run_id: str, *parts: str) -> str:
    """The folder of one pipeline run of a retraining (stable across retries of its steps)."""
    return RetrainRun(cfg, _layout(cfg), run_id).at(*parts)


def load_retrain_state(cfg: Any) -> tuple[Any, storage.ObjectInfo | None]:
    """The retraining's :class:`~mammoflow.retrain.state.RetrainState` and the version read (None: none yet)."""
    return read_state(retrain_uri(cfg, STATE_FILE))


def update_retrain_state(cfg: Any, change: Callable[[Any], Any], attempts: int = 5) -> Any:
    """Apply ``change`` to the retraining's state, guarded against a concurrent writer
    (:func:`mammoflow.retrain.state.update_state`)."""
    return update_state(retrain_uri(cfg, STATE_FILE), change, name=cfg.name, attempts=attempts)


def read_steps(cfg: Any, run_id: str) -> dict[str, dict[str, Any]]:
    """Step name -> its record, for the steps of run ``run_id`` that finished."""
    return RetrainRun(cfg, _layout(cfg), run_id).load_steps()


def _open(cfg: Any, run_id: str, cache_dir: CacheDir = None, pipeline: str | None = None) -> RetrainRun:
    return RetrainRun.open(cfg, run_id, layout=_layout(cfg, cache_dir), pipeline=pipeline)


def retrain_scan(cfg: Any, run_id: str, *, cache_dir: CacheDir = None) -> dict[str, Any]:
    """Step 1 (:func:`mammoflow.retrain.stages.scan`): freezes ``cfg`` into the run folder."""
    return stages.scan(RetrainRun(cfg, _layout(cfg, cache_dir), run_id, pipeline_run_id=run_id))


def retrain_ingest(cfg: Any, run_id: str, out: str | os.PathLike[str], *, cache_dir: CacheDir = None
                   ) -> dict[str, Any]:
    """Step 2 (:func:`mammoflow.retrain.stages.ingest`) into ``out``, kept as ``<run>/records``."""
    return stages.ingest(_open(cfg, run_id, cache_dir), out)


def retrain_preprocess(cfg: Any, run_id: str, out: str | os.PathLike[str], *, cache_dir: CacheDir = None
                       ) -> dict[str, Any]:
    """Step 3 (:func:`mammoflow.retrain.stages.preprocess`); ``out`` gets the run's preprocessed table."""
    return stages.preprocess(_open(cfg, run_id, cache_dir), out)


def retrain_build(cfg: Any, run_id: str, *, cache_dir: CacheDir = None) -> dict[str, Any]:
    """Step 4 (:func:`mammoflow.retrain.stages.build`): shards under ``<run>/data``."""
    return stages.build(_open(cfg, run_id, cache_dir))


def retrain_train(cfg: Any, run_id: str, *, metrics_port: int | None = None, cache_dir: CacheDir = None
                  ) -> dict[str, Any]:
    """Step 5 (:func:`mammoflow.retrain.stages.train`): the challenger under ``<run>/train``."""
    return stages.train(_open(cfg, run_id, cache_dir), metrics_port=metrics_port)


def retrain_evaluate(cfg: Any, run_id: str, model_uri: str, out: str | os.PathLike[str], *,
                     cache_dir: CacheDir = None) -> dict[str, Any]:
    """Step 6 (:func:`mammoflow.retrain.stages.evaluate`) of one model on the run's evaluation split into ``out``."""
    return stages.evaluate(_open(cfg, run_id, cache_dir), model_uri, out)


def retrain_bless(cfg: Any, run_id: str, challenger_eval: str | os.PathLike[str],
                  champion_eval: str | os.PathLike[str] | None, *, force_reason: str | None = None,
                  by: str | None = None) -> Any:
    """Step 7 (:func:`mammoflow.retrain.stages.bless`); an empty ``force_reason`` means no override."""
    return stages.bless(_open(cfg, run_id), challenger_eval, champion_eval, force_reason=force_reason or None, by=by)


def retrain_register(cfg: Any, run_id: str, eval_dir: str | os.PathLike[str], verdict: Any, *, pipeline: str,
                     by: str) -> Any:
    """Step 8 (:func:`mammoflow.retrain.stages.register`), the pipeline named in the lineage."""
    return stages.register(_open(cfg, run_id, pipeline=pipeline), eval_dir, verdict, by=by)


def retrain_promote(cfg: Any, run_id: str, version: str, verdict: Any, *, by: str) -> Any:
    """Step 9 (:func:`mammoflow.retrain.stages.promote`, blessed challengers only)."""
    return stages.promote(_open(cfg, run_id), version, verdict, by=by)


def retrain_result(cfg: Any, run_id: str, steps: Mapping[str, Mapping[str, Any]], *, failed: bool,
                   error: str | None = None) -> Any:
    """The :class:`~mammoflow.retrain.state.RetrainResult` of a pipeline run, from its steps' records."""
    return result_from_steps(steps, ModelRegistry(cfg.registry_uri), {"run": retrain_run_uri(cfg, run_id)},
                             failed=failed, error=error)


def retrain_finalize(cfg: Any, run_id: str, *, failed: bool, error: str | None = None,
                     push_gateway: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The exit handler's step (:func:`mammoflow.retrain.stages.finalize`): whatever happened, record the run's
    outcome and push the retraining's metrics. It works with the run's frozen config when there is one and it is
    intact, else with ``cfg`` (a run that failed before or because of its config is recorded too)."""
    run = RetrainRun(cfg, _layout(cfg), run_id, pipeline_run_id=run_id)
    run.retrain_id = run.load_steps().get("scan", {}).get("retrain_id")
    if "scan" in run.steps:
        try:
            run.check()
        except MammoflowError as exc:
            log.warning("recording the run with the config given to this step: %s", exc)
    return stages.finalize(run, failed=failed, error=error, push_gateway=push_gateway)


def retrain_markdown(cfg: Any, run_id: str, result: Any, gateway: str | None) -> str:
    """The run's summary for people (the KFP UI shows it; a local run writes it as ``report.md``)."""
    title = {"nothing_new": "nothing new", "blessed": "BLESSED", "refused": "NOT BLESSED", "failed": "FAILED"}
    lines = [f"# Retrain {cfg.name}: {title[result.status]}", "", result.summary(), "",
             "| | |", "| --- | --- |", f"| pipeline run | `{run_id}` |",
             f"| retrain id | {result.retrain_id or '(none: nothing changed)'} |"]
    ingest = result.ingest or {}
    if "mode" in ingest:
        lines.append(f"| ingest | {ingest['new_records']} new, {ingest['changed_records']} changed, "
                     f"{ingest['removed_records']} removed records ({ingest['total_records']} in the table); "
                     f"{ingest['quarantined_new']} newly quarantined |")
    elif ingest.get("files"):
        files = ingest["files"]
        lines.append(f"| watched files | {files.get('scanned', 0)} scanned, none new, changed or removed |")
    if result.version:
        lines.append(f"| registered | {result.version} ({'promoted' if result.promoted else 'not promoted'}) |")
    if result.pushed:
        pushed = f"pushed to {gateway}"
    else:
        pushed = "not pushed: " + ("the Pushgateway was unreachable" if gateway else "no push.gateway configured")
    lines += [f"| champion | {result.champion_before or '(none)'} -> {result.champion_after or '(none)'} |",
              f"| metrics | {pushed} |", f"| run folder | `{retrain_run_uri(cfg, run_id)}` |", ""]
    if result.error:
        lines += ["## Error", "", result.error, ""]
    return "\n".join(lines)


def retrain_once(config_ref: str, *, force_bless_reason: str | None = None, by: str | None = None) -> Any:
    """One whole retraining run in this process (every step above, in order): its ``RetrainResult``."""
    from mammoflow.retrain.config import load_retrain_config
    from mammoflow.retrain.loop import retrain_once as run_once

    return run_once(load_retrain_config(config_ref), force_bless_reason=force_bless_reason, by=by)


def retrain_every(config_ref: str, interval: float, *, max_runs: int | None = None, by: str | None = None) -> list[Any]:
    """:func:`retrain_once` every ``interval`` seconds until stopped (Ctrl-C) or ``max_runs``: their results."""
    from mammoflow.retrain.config import load_retrain_config
    from mammoflow.retrain.loop import retrain_forever

    return retrain_forever(load_retrain_config(config_ref), interval, max_runs=max_runs, by=by)
