"""The training steps over URIs: one training run, or a Ray Tune sweep of many, in a run folder under the storage
root that stays the same across retries (a retried step resumes)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from mammoflow import storage
from mammoflow.config import plain_numbers
from mammoflow.errors import ConfigError, InputError
from mammoflow.resources import available_cpus  # noqa: F401 - the step face offers it (steps.available_cpus)
from mammoflow.steps.data import require_root, safe_name
from mammoflow.storage import copies
from mammoflow.training.package import PACKAGE_FILES

log = logging.getLogger(__name__)

#: Files of a training run folder that make a self-contained model package (evaluate, explain and report read them).
RUN_PACKAGE_FILES = PACKAGE_FILES
#: Top-level files of a sweep folder worth keeping beside the pipeline (the trials stay in storage).
SWEEP_PACKAGE_FILES = ("spec.yaml", "results.csv", "results.md", "summary.json", "best_config.yaml")


def run_uri(storage_root: str, run_id: str, name: str = "train") -> str:
    """The training run folder of pipeline run ``run_id``; stable across retries, so a retried step resumes."""
    return storage.join(require_root(storage_root), "runs", safe_name(run_id), name)


def sweep_uri(storage_root: str, run_id: str) -> str:
    """The sweep folder of pipeline run ``run_id`` (stable across retries: a retried sweep resumes)."""
    return storage.join(require_root(storage_root), "sweeps", safe_name(run_id))


def train(config_ref: str, data_uri: str, out: str, *, overrides: Mapping[str, Any] | None = None,
          metrics_port: int | None = None, cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """One training run (``mammoflow train``): preset or YAML (local or ``gs://``) + dotted overrides.

    ``metrics_port`` serves the run's Prometheus gauges there (0 or None: not served). Re-running with the same
    ``out`` resumes; a preempted run raises :class:`mammoflow.training.loop.Preempted` after checkpointing.
    """
    from mammoflow.training.config import load_train_config
    from mammoflow.training.loop import train as train_loop

    values = plain_numbers(dict(overrides or {}))
    if metrics_port:
        values["metrics_port"] = int(metrics_port)
    config = load_train_config(copies.local_config(config_ref, cache_dir), values)
    return train_loop(config, data_uri, out, cache_dir=copies.cache_dir(cache_dir))


def package_run(run: str, out: str | os.PathLike[str]) -> list[str]:
    """Copy the files that make a run usable elsewhere (:data:`RUN_PACKAGE_FILES`) into the local folder ``out``."""
    copied = copies.copy_files(run, out, RUN_PACKAGE_FILES)
    if "model.keras" not in copied:
        raise InputError(storage.join(run, "model.keras"), "the run has no trained model",
                         "let the training run finish (re-run resumes it)", code="missing_file")
    return copied


class SweepDataError(ConfigError):
    """The datasets given to a sweep do not match its spec's dataset names."""


def sweep_datasets(spec_datasets: Sequence[str], data_uri: str | None, given: Mapping[str, str] | None = None
                   ) -> dict[str, str]:
    """Which dataset URI each dataset name of a sweep spec trains on. ``data_uri`` (the pipeline's one dataset, or
    the CLI's bare ``--data URI``) serves the spec's ``default`` (or its first dataset); a spec that ablates
    datasets (preprocessing, mass/calc) needs the others given by name, built beforehand. A missing one is an
    error, never ``data_uri`` under another name (that would report an ablation that did not happen)."""
    from mammoflow.sweep.spec import DEFAULT_DATASET

    given = {str(k): str(v) for k, v in (given or {}).items() if v}
    unknown = sorted(set(given) - set(spec_datasets))
    if unknown:
        raise SweepDataError(f"datasets {unknown} are not in the sweep spec (it has {list(spec_datasets)}). Fix: name "
                          "only the spec's datasets")
    own = DEFAULT_DATASET if DEFAULT_DATASET in spec_datasets else spec_datasets[0]
    mapping = {**({own: data_uri} if data_uri else {}), **given}
    missing = [name for name in spec_datasets if name not in mapping]
    if missing:
        raise SweepDataError(
            f"the sweep spec ablates datasets {list(spec_datasets)}, and the one dataset given (if any) is used as "
            f"{own!r}; {', '.join(sorted(missing))} have no dataset. Fix: build them (`mammoflow build-dataset "
            "--config ... --out gs://.../datasets/NAME`) and give each by name (`mammoflow sweep --data NAME=URI`, "
            "the pipeline's datasets={NAME: URI, ...}), or use a spec with one dataset")
    return mapping


def sweep_inputs(spec_ref: str, data_uri: str | None, datasets: Mapping[str, str] | None = None, *,
                 cache_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The dataset of every dataset name of a sweep spec (:func:`sweep_datasets`), checked before Ray starts."""
    from mammoflow.sweep.spec import load_spec

    return sweep_datasets(load_spec(copies.local_config(spec_ref, cache_dir)).datasets, data_uri, datasets)


def local_sweep_uri(spec_name: str) -> str:
    """Where ``mammoflow sweep`` puts a sweep when no ``--out`` is given."""
    return f"runs/sweeps/{spec_name}"


def sweep_plan(spec_ref: str, *, cache_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The trials a sweep spec would run, one line each, then their count (``mammoflow sweep --dry-run``)."""
    from mammoflow.sweep.runner import dry_run_lines
    from mammoflow.sweep.spec import load_spec

    return dry_run_lines(load_spec(copies.local_config(spec_ref, cache_dir)))


def sweep(spec_ref: str, data_uri: str | None, out: str | None = None, *, address: str | None = None,
          num_cpus: int | None = None, max_concurrent: int | None = None, datasets: Mapping[str, str] | None = None,
          resume: bool | None = None, dashboard: bool = False, metrics_export_port: int | None = None,
          cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run a sweep spec on Ray Tune (``mammoflow sweep``) on ``data_uri`` (plus, for a spec that ablates datasets,
    the other ones by name: :func:`sweep_datasets`) into ``out`` (default :func:`local_sweep_uri`).
    ``resume`` None resumes a sweep left by an earlier attempt at ``out`` (a retried step after
    preemption). ``address``: none (a local Ray), ``auto``, ``ray://HOST:10001`` (Ray Client), or the head's
    dashboard ``http(s)://HOST:8265``: then the sweep runs as a Ray job there (:mod:`mammoflow.sweep.jobs`) and
    this call follows it. ``dashboard`` / ``metrics_export_port``: those of a local Ray."""
    from mammoflow.sweep.jobs import is_jobs_address, submit_sweep
    from mammoflow.sweep.runner import run_sweep
    from mammoflow.sweep.spec import load_spec

    spec = load_spec(copies.local_config(spec_ref, cache_dir))
    data = sweep_datasets(spec.datasets, data_uri, datasets)
    out = out or local_sweep_uri(spec.name)
    if resume is None:
        resume = storage.exists(storage.join(out, "spec.yaml"))
    if is_jobs_address(address):
        return submit_sweep(spec, data, out, str(address), resume=resume, max_concurrent=max_concurrent)
    if not address and num_cpus is None:
        num_cpus = available_cpus()  # a local Ray: as many CPUs as this process (or its pod) may use
    return run_sweep(spec, data, out, address=address or None, resume=resume, num_cpus=num_cpus,
                     max_concurrent=max_concurrent, cache_dir=str(copies.cache_dir(cache_dir)), dashboard=dashboard,
                     metrics_export_port=metrics_export_port)
