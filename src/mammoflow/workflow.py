"""The pipeline's steps as plain functions over URIs: what each Kubeflow component calls, usable without KFP.

Every step takes its inputs as local folders or URIs (local paths or ``gs://``) and writes its outputs to a local
folder (a KFP output artifact) or under a storage root, so each step can run in its own pod with nothing but its
inputs: no step relies on a file another step left on a local disk.

Where things live, under a ``storage_root`` (local folder or ``gs://bucket/prefix``)::

    raw/phantoms-n<N>-s<seed>/             built-in phantom mammograms (demo data)
    datasets/<config>-<sha16>/             shards + manifest.json, content-addressed by records and config
    runs/<run id>/train/                   the training run folder (checkpoints, TensorBoard, model.keras)
    sweeps/<run id>/                       a sweep folder (Ray Tune state, one run folder per trial, results)

Records folders (with the preprocessed images) travel as KFP artifacts, self-contained folders; raw images stay
where they are: when a source is in object storage, ingest writes its URI as the records' ``image_root`` and the
next step fetches the images into a local cache (:func:`localise_records`), since every reader of the library
takes local files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mammoflow import storage
from mammoflow.errors import ConfigError, InputError

log = logging.getLogger(__name__)

CACHE_ENV = "MAMMOFLOW_CACHE"
PHANTOM_SOURCE = "phantoms"  # the pipelines' name for the built-in demo data (read as MIAS)
PHANTOM_SIZE = 1024  # MIAS images are 1024x1024; the mias reader refuses other sizes
#: Sources whose images were already preprocessed by their authors (Yu et al. released processed 120x120 ROIs).
PREPROCESSED_SOURCES = {"mias-rois": "none"}
#: Files of a training run folder that make a self-contained model package (evaluate, explain and report read them).
RUN_PACKAGE_FILES = ("model.keras", "config.yaml", "metrics.json", "run.json", "history.csv", "history.json")
#: Top-level files of a sweep folder worth keeping beside the pipeline (the trials stay in storage).
SWEEP_PACKAGE_FILES = ("spec.yaml", "results.csv", "results.md", "summary.json", "best_config.yaml")


# ============================================================================================ set-up


def setup_step_logging() -> None:
    """Log at ``$MAMMOFLOW_LOG_LEVEL`` (default INFO) in a pipeline step. KFP's executor installs a root handler
    first; then only the level is set, so that every line is printed once."""
    from mammoflow.logs import setup_logging

    level = os.environ.get("MAMMOFLOW_LOG_LEVEL", "INFO").upper()
    root = logging.getLogger()
    if root.handlers:
        root.setLevel(level)
    else:
        setup_logging(level)


# ============================================================================================ local copies


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where remote inputs are cached: ``explicit``, else ``$MAMMOFLOW_CACHE``, else the system temp folder."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path(tempfile.gettempdir()) / "mammoflow-cache"


def _uri_key(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def fetch_tree(uri: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """A local copy of the file or folder at ``uri``; a local ``uri`` is returned as it is (absolute).

    Remote objects are downloaded once into the cache (an object already there with the same size is kept), so
    a retried step does not fetch a large dataset again.
    """
    if not storage.is_remote(uri):
        path = storage.local_path(uri).absolute()
        if not path.exists():
            raise InputError(path, "not found", "check the path (relative paths are taken from the current "
                             "folder)", code="missing_file")
        return path
    objects = storage.list(uri)
    if not objects:
        raise InputError(uri, "no object at or under this URI", "check the bucket and prefix", code="missing_file")
    base = cache_dir(cache) / "inputs" / _uri_key(uri)
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    single = objects == [uri.rstrip("/")]
    for obj in objects:
        dest = base / name if single else base / name / obj[len(uri.rstrip("/")) + 1:]
        info = storage.stat(obj)
        if dest.is_file() and info is not None and dest.stat().st_size == info.size:
            continue
        storage.get_file(obj, dest)
    log.info("fetched %s (%d object(s)) into %s", uri, len(objects), base / name)
    return base / name


def publish_tree(local: str | os.PathLike[str], uri: str) -> list[str]:
    """Copy every file under the local folder ``local`` to the same relative path under ``uri``."""
    root = Path(local)
    written = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        dest = storage.join(uri, path.relative_to(root).as_posix())
        storage.put_file(path, dest)
        written.append(dest)
    return written


def copy_files(src_uri: str, dest: str | os.PathLike[str], names: Sequence[str]) -> list[str]:
    """Copy the named files of the folder ``src_uri`` (local or remote) into the local folder ``dest``; files
    that do not exist are skipped. Returns the names copied."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in names:
        uri = storage.join(src_uri, name)
        if storage.exists(uri):
            storage.get_file(uri, dest / name)
            copied.append(name)
    return copied


# ============================================================================================ data


def phantoms_uri(storage_root: str, n_images: int, seed: int) -> str:
    """Where the built-in phantom dataset of ``n_images`` images and ``seed`` is written under a storage root."""
    return storage.join(require_root(storage_root), "raw", f"phantoms-n{n_images}-s{seed}")


def require_root(storage_root: str) -> str:
    if not storage_root:
        raise ConfigError("storage_root is empty. Fix: pass storage_root=gs://BUCKET/mammoflow (or a local "
                          "folder); `mammoflow pipeline run --local` sets it under --root")
    return storage_root


def demo_data(out_uri: str, n_images: int, seed: int, cache: str | os.PathLike[str] | None = None
              ) -> dict[str, Any]:
    """Write the MIAS-like phantom dataset to ``out_uri`` (once: an existing identical dataset is kept).

    Returns its ground truth summary with ``source`` (``mias``) and ``data_root`` (``out_uri``) for ingest.
    """
    from mammoflow.synth.phantoms import write_mias_dataset

    if storage.is_remote(out_uri):
        local = cache_dir(cache) / "phantoms" / _uri_key(out_uri)
        truth = write_mias_dataset(local, n_images=n_images, seed=seed, size=PHANTOM_SIZE)
        # ground_truth.json goes last: its presence tells a reader the dataset is complete.
        files = sorted(p for p in local.iterdir() if p.is_file() and p.name != "ground_truth.json")
        for path in [*files, local / "ground_truth.json"]:
            storage.put_file(path, storage.join(out_uri, path.name))
    else:
        truth = write_mias_dataset(storage.local_path(out_uri), n_images=n_images, seed=seed, size=PHANTOM_SIZE)
    images = truth["images"]
    return {"source": "mias", "data_root": out_uri, "images": len(images),
            "images_with_lesions": sum(1 for im in images if im["lesions"]),
            "lesions": sum(len(im["lesions"]) for im in images), "seed": seed}


def locate_data(source: str, data_root: str) -> str:
    """Check that ``source`` is a known reader and ``data_root`` exists; returns ``data_root`` made absolute
    when local (pipeline steps may run from another folder)."""
    from mammoflow.sources import SOURCES

    if source not in SOURCES:
        raise ConfigError(f"source {source!r} is not one of {PHANTOM_SOURCE}, {', '.join(SOURCES)}")
    if not data_root:
        raise ConfigError(f"source {source!r} needs data_root: the dataset's folder, zip or gs:// URI")
    if storage.is_remote(data_root):
        if not storage.list(data_root):
            raise InputError(data_root, "no object at or under this URI", "check the bucket and prefix",
                             code="missing_file")
        return data_root
    path = storage.local_path(data_root).absolute()
    if not path.exists():
        raise InputError(path, "not found", "check data_root (relative paths are taken from the current folder)",
                         code="missing_file")
    return str(path)


def ingest(source: str, data_root: str, out_dir: str | os.PathLike[str], *, salt: str | None = None,
           cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read a dataset into a records folder (``mammoflow ingest``); returns the ingest summary.

    A remote ``data_root`` is fetched into the cache and the records' ``image_root`` is written as the remote URI,
    so that the records folder stays valid in the next step's pod.
    """
    from mammoflow.sources import SALT_ENV, SourceOptions, read_source

    local_root = fetch_tree(data_root, cache)
    table = read_source(source, SourceOptions(root=local_root, salt=salt))
    if storage.is_remote(data_root):
        table.image_root = _portable_root(table.image_root, local_root, data_root)
    site_salt = bool(salt or os.environ.get(SALT_ENV))
    table.meta["ingest"] = {"source": source, "data_root": data_root, "metadata_only": False,
                            "salt": "site salt" if site_salt else "public default salt (set MAMMOFLOW_SALT)"}
    out_dir = Path(out_dir)
    summary = table.write(out_dir)
    if summary["used"] == 0:
        raise InputError(out_dir / "quarantine.md", f"nothing usable was read from {data_root}",
                         "see the quarantine report for each file's problem and fix", code="empty")
    return summary


def _portable_root(image_root: str, local_root: Path, remote_root: str) -> str:
    """The remote URI standing for a local image root inside the fetched copy of ``remote_root``."""
    rel = Path(image_root).resolve().relative_to(local_root.resolve()).as_posix()
    return remote_root.rstrip("/") if rel == "." else storage.join(remote_root, rel)


def localise_records(records_dir: str | os.PathLike[str], cache: str | os.PathLike[str] | None = None) -> Path:
    """A records folder whose images are on local disk.

    When the records' ``image_root`` is a remote URI (see :func:`ingest`), the images are fetched into the cache
    and a copy of the records folder pointing at them is returned; otherwise ``records_dir`` itself.
    """
    from mammoflow.records import META_FILE, RecordsTable

    records_dir = Path(records_dir)
    meta = json.loads((records_dir / META_FILE).read_text()) if (records_dir / META_FILE).exists() else {}
    image_root = str(meta.get("image_root", "."))
    if not storage.is_remote(image_root):
        return records_dir
    table = RecordsTable.read(records_dir)
    table.image_root = str(fetch_tree(image_root, cache))
    digest = hashlib.sha256((records_dir / "records.jsonl").read_bytes()).hexdigest()[:16]
    local = cache_dir(cache) / "records" / f"{_uri_key(image_root)}-{digest}"
    table.write(local)
    return local


def preprocess_config_for(source: str, preset: str, preprocess_config: str = "auto") -> str:
    """The preprocessing chain a pipeline applies: ``preprocess_config`` unless ``auto``, which is ``none`` for
    sources released already processed (Yu et al.'s ROIs) and the paper ``preset`` otherwise."""
    if preprocess_config and preprocess_config != "auto":
        return preprocess_config
    return PREPROCESSED_SOURCES.get(source, preset)


def preprocess(records_dir: str | os.PathLike[str], config: str, out_dir: str | os.PathLike[str], *,
               workers: int = 1, cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Preprocess a records folder into ``out_dir`` (``mammoflow preprocess``); returns the run's counts."""
    from dataclasses import asdict

    from mammoflow.preprocess.run import preprocess_records

    summary = preprocess_records(localise_records(records_dir, cache), config, out_dir, None, workers)
    if summary.usable == 0:
        raise InputError(Path(out_dir) / "quarantine.md", "no usable record left after preprocessing",
                         "see the quarantine report for each record's problem and fix", code="empty")
    return {**asdict(summary), "usable": summary.usable}


def _config_name(ref: str) -> str:
    stem = Path(ref).stem if ref.endswith((".yaml", ".yml")) else ref
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "dataset"


def dataset_uri(storage_root: str, records_dir: str | os.PathLike[str], config: str) -> str:
    """The dataset folder for these records and this dataset config: ``datasets/<config>-<sha16>``.

    Content-addressed (records table + resolved config), so the same inputs land in the same folder (a re-run
    resumes and reuses its shards) and different inputs never overwrite each other.
    """
    from mammoflow.config import dump_yaml, to_dict
    from mammoflow.dataset.build import DatasetConfig

    resolved = dump_yaml(to_dict(DatasetConfig.load(config)))
    digest = hashlib.sha256((Path(records_dir) / "records.jsonl").read_bytes() + resolved.encode()).hexdigest()
    return storage.join(require_root(storage_root), "datasets", f"{_config_name(config)}-{digest[:16]}")


def build_dataset(records_dir: str | os.PathLike[str], config: str, storage_root: str) -> Any:
    """Shards + manifest for a records folder (``mammoflow build-dataset``) at :func:`dataset_uri`."""
    from mammoflow.dataset.build import build_dataset as build

    return build(records_dir, config, dataset_uri(storage_root, records_dir, config))


# ============================================================================================ training


def run_uri(storage_root: str, run_id: str, name: str = "train") -> str:
    """The training run folder of pipeline run ``run_id``; stable across retries, so a retried step resumes."""
    return storage.join(require_root(storage_root), "runs", _config_name(run_id), name)


def sweep_uri(storage_root: str, run_id: str) -> str:
    """The sweep folder of pipeline run ``run_id`` (stable across retries: a retried sweep resumes)."""
    return storage.join(require_root(storage_root), "sweeps", _config_name(run_id))


def _local_config(ref: str, cache: str | os.PathLike[str] | None) -> str:
    """A preset name or local YAML path as it is; a remote YAML URI fetched to a local file."""
    return str(fetch_tree(ref, cache)) if storage.is_remote(ref) else ref


def plain_numbers(value: Any) -> Any:
    """``value`` with integral floats turned back into ints, recursively.

    Dict and list parameters reach a KFP step through a protobuf Struct, where every number is a float, so an
    override ``{"schedule.steps_per_epoch": 10}`` arrives as ``10.0``; config fields typed ``int`` refuse that,
    while ``float`` fields accept ints.
    """
    if isinstance(value, dict):
        return {k: plain_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def train(config_ref: str, data_uri: str, out_uri: str, *, overrides: Mapping[str, Any] | None = None,
          metrics_port: int | None = None, cache: str | os.PathLike[str] | None = None) -> Any:
    """One training run (``mammoflow train``): preset or YAML (local or ``gs://``) + dotted overrides.

    ``metrics_port`` serves the run's Prometheus gauges there (0 or None: not served). Re-running with the same
    ``out_uri`` resumes; a preempted run raises :class:`mammoflow.training.loop.Preempted` after checkpointing.
    """
    from mammoflow.training.config import load_train_config
    from mammoflow.training.loop import train as train_loop

    values = plain_numbers(dict(overrides or {}))
    if metrics_port:
        values["metrics_port"] = int(metrics_port)
    config = load_train_config(_local_config(config_ref, cache), values)
    return train_loop(config, data_uri, out_uri, cache_dir=cache_dir(cache))


def package_run(run: str, dest: str | os.PathLike[str]) -> list[str]:
    """Copy the files that make a run usable elsewhere (:data:`RUN_PACKAGE_FILES`) into the local ``dest``."""
    copied = copy_files(run, dest, RUN_PACKAGE_FILES)
    if "model.keras" not in copied:
        raise InputError(storage.join(run, "model.keras"), "the run has no trained model",
                         "let the training run finish (re-run resumes it)", code="missing_file")
    return copied


def available_cpus(cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: the container's CPU limit (cgroup v2 ``cpu.max`` or v1 CFS quota), else the
    CPUs it may run on. ``os.cpu_count()`` gives the node's count, which would start a Ray with far more trial
    slots than the pod's limit allows."""
    import math

    root = Path(cgroup_root)
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = period = None
    try:
        if (root / "cpu.max").is_file():
            q, p = (root / "cpu.max").read_text().split()[:2]
            quota, period = (None if q == "max" else int(q)), int(p)
        elif (root / "cpu" / "cpu.cfs_quota_us").is_file():
            q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
            quota = q if q > 0 else None
            period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        quota = None
    if quota is not None and period:
        count = min(count, max(1, math.ceil(quota / period)))
    return count


def sweep(spec_ref: str, data_uri: str, out_uri: str, *, address: str | None = None, num_cpus: int | None = None,
          max_concurrent: int | None = None, cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run a sweep spec on Ray Tune (``mammoflow sweep``) over one dataset; resumes a sweep left by an earlier
    attempt at ``out_uri`` (a retried step after preemption)."""
    from mammoflow.sweep.runner import run_sweep
    from mammoflow.sweep.spec import load_spec

    spec = load_spec(_local_config(spec_ref, cache))
    resume = storage.exists(storage.join(out_uri, "spec.yaml"))
    if not address and num_cpus is None:
        num_cpus = available_cpus()  # a Ray inside this pod: as many CPUs as the pod may use
    return run_sweep(spec, {name: data_uri for name in spec.datasets}, out_uri, address=address or None,
                     resume=resume, num_cpus=num_cpus, max_concurrent=max_concurrent,
                     cache_dir=str(cache_dir(cache)))


# ============================================================================================ evaluation


def evaluate(model_dir: str, data_uri: str, out_dir: str | os.PathLike[str], *, split: str = "test",
             method: str = "majority", n_bootstrap: int = 2000, seed: int = 0,
             cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Evaluate a run (folder or package) on one split (``mammoflow evaluate``); returns metrics.json's content."""
    from mammoflow.evaluation.evaluate import evaluate as run_evaluation

    return run_evaluation(model_dir, data_uri, out_dir, split=split, method=method,  # type: ignore[arg-type]
                          n_bootstrap=n_bootstrap, seed=seed, cache_dir=cache_dir(cache))


def primary_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """Flat scalar metrics of an evaluation (``<level>_<metric>`` and its 95% CI bounds), for dashboards."""
    out: dict[str, float] = {}
    levels = report.get("levels", {})
    for level in dict.fromkeys([report.get("primary_level"), "patch"]):
        metrics = (levels.get(level) or {}).get("metrics", {})
        for name in ("accuracy", "roc_auc", "sensitivity", "specificity", "balanced_accuracy"):
            cell = metrics.get(name) or {}
            for key, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
                if isinstance(cell.get(key), (int, float)):
                    out[f"{level}_{name}{suffix}"] = float(cell[key])
    return out


def records_to_explain(records_dir: str | os.PathLike[str], data_uri: str | None, limit: int) -> list[str]:
    """Record ids for the CAM gallery: held-out (test split) records first, those with known lesions first among
    them, then other abnormal ones, then normal ones; at most ``limit``."""
    from mammoflow.dataset.build import PLAN_FILE
    from mammoflow.records import RecordsTable

    table = RecordsTable.read(records_dir)
    test: set[str] = set()
    if data_uri and storage.exists(storage.join(data_uri, PLAN_FILE)):
        plan = json.loads(storage.get_bytes(storage.join(data_uri, PLAN_FILE)))
        test = {rid for rid, split in plan.get("assignments", {}).items() if split == "test"}

    def rank(rec: Any) -> tuple[int, int, int]:
        has_geometry = any(les.has_geometry for les in rec.lesions)
        abnormal = rec.label not in (None, "normal")
        return (rec.record_id not in test, not has_geometry, not abnormal)

    ordered = sorted(table.records, key=rank)  # stable: ties keep the table's order
    return [rec.record_id for rec in ordered[:limit]]


def explain(model_dir: str, records_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
            data_uri: str | None = None, limit: int = 4, cache: str | os.PathLike[str] | None = None
            ) -> dict[str, Any]:
    """CAMs of the model over whole (preprocessed) images of ``records_dir`` (``mammoflow explain``)."""
    from mammoflow.evaluation.cam import explain as run_explain

    ids = records_to_explain(records_dir, data_uri, limit)
    if not ids:
        raise InputError(records_dir, "no record to explain", "check the records folder", code="empty")
    return run_explain(model_dir, out=out_dir, images=ids, records=localise_records(records_dir, cache),
                       cache_dir=cache_dir(cache))


def report(run: str, out_dir: str | os.PathLike[str], *, evaluation: str | None = None, explain: str | None = None,
           cache: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """report.html + report.md for a run, an evaluation or a sweep folder (``mammoflow report``)."""
    from mammoflow.evaluation.report import build_report

    return build_report(run, out_dir, evaluation=evaluation, explain=explain, cache_dir=cache_dir(cache))
