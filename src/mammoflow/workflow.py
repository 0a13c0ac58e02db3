"""The pipeline's steps as plain functions over URIs: what each Kubeflow component calls, usable without KFP.

Every step takes its inputs as local folders or URIs (local paths or ``gs://``) and writes its outputs to a local
folder (a KFP output artifact) or under a storage root, so each step can run in its own pod with nothing but its
inputs: no step relies on a file another step left on a local disk.

Where things live, under a ``storage_root`` (local folder or ``gs://bucket/prefix``)::

    raw/phantoms-n<N>-s<seed>/             built-in phantom mammograms (demo data)
    datasets/<config>-<sha16>/             shards + manifest.json, content-addressed by records and config
    runs/<run id>/train/                   the training run folder (checkpoints, TensorBoard, model.keras)
    sweeps/<run id>/                       a sweep folder (Ray Tune state, one run folder per trial, results)
    retrain/<name>/                        a scheduled retraining: state.json and one folder per pipeline run
                                           (see the retraining section below)

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
    local = cached_copy_path(uri, cache)
    single = objects == [uri.rstrip("/")]
    for obj in objects:
        dest = local if single else local / obj[len(uri.rstrip("/")) + 1:]
        if _cached_copy_current(dest, storage.stat(obj)):
            continue
        storage.get_file(obj, dest)
    log.info("fetched %s (%d object(s)) into %s", uri, len(objects), local)
    return local


SMALL_OBJECT = 1 << 20  # bytes: below this a remote object without a recorded sha256 is simply fetched again


def _cached_copy_current(dest: Path, info: Any) -> bool:
    """Whether the cached ``dest`` still holds the remote object ``info`` describes: same size, and the same sha256
    when the upload recorded one. Without a recorded sha256 only large objects (images) are trusted on size alone;
    a small one (a config, a labels CSV) is fetched again, since an edit can keep its size."""
    if info is None or not dest.is_file() or dest.stat().st_size != info.size:
        return False
    if info.sha256:
        return storage.file_sha256(dest) == info.sha256
    return info.size >= SMALL_OBJECT


def cached_copy_path(uri: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`fetch_tree` keeps its local copy of the remote ``uri`` (the same path in every pod)."""
    return cache_dir(cache) / "inputs" / _uri_key(uri) / uri.rstrip("/").rsplit("/", 1)[-1]


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


#: Sources that read a labels CSV (``labels`` of :func:`ingest`, ``--labels`` of ``mammoflow ingest``).
LABELLED_SOURCES = ("dicom-dir",)


def check_labels(source: str, labels: str | os.PathLike[str] | None) -> None:
    """Refuse a labels CSV for a source that does not read one (it would be ignored without a word)."""
    if labels and source not in LABELLED_SOURCES:
        phantoms = f" (the built-in {PHANTOM_SOURCE} are read as mias)" if source == "mias" else ""
        raise ConfigError(f"a labels CSV ({labels}) was given for source {source!r}{phantoms}, which takes none: "
                          f"only {', '.join(LABELLED_SOURCES)} reads labels from a CSV. Fix: give no labels CSV, or "
                          f"use source {LABELLED_SOURCES[0]}")


def check_pseudonymise_paths(source: str, pseudonymise_paths: bool) -> None:
    """Refuse path pseudonyms for a source whose record ids do not come from file paths under a site's folder."""
    if pseudonymise_paths and source not in LABELLED_SOURCES:
        raise ConfigError(f"pseudonymise_paths was asked for source {source!r}, whose record ids are the dataset's "
                          f"public names, not a site's paths. Fix: use it with {', '.join(LABELLED_SOURCES)} only")


def labels_uri(data_root: str, labels: str) -> str:
    """Where the labels CSV ``labels`` is: a ``gs://`` URI or an absolute path as it is, a relative path under
    ``data_root`` (the folder the CSV describes); ``""`` for none."""
    if not labels or storage.is_remote(labels):
        return labels
    path = storage.local_path(labels).expanduser()
    return str(path) if path.is_absolute() else storage.join(data_root, labels)


def locate_labels(source: str, data_root: str, labels: str) -> str:
    """Check, before any work starts, that ``source`` takes a labels CSV and that ``labels`` (see
    :func:`labels_uri`) exists; returns where it is (``""`` for none)."""
    check_labels(source, labels)
    uri = labels_uri(data_root, labels)
    if uri and not storage.exists(uri):
        raise InputError(uri, "labels CSV not found", "pass labels as a path relative to data_root, an absolute "
                         "path or a gs:// URI of an existing file (or leave it empty)", code="missing_file")
    return uri


def data_digest(data_root: str, labels_csv: str = "") -> str:
    """A digest of the input data as it is now (names, sizes and versions of every file of ``data_root`` and of
    the labels CSV; no content is read). The data steps take it as a parameter, so KFP's cache key changes when the
    data at the same path changes: rewritten data is ingested again, not taken from the cache."""
    parts = [storage.listing_digest(data_root)]
    if labels_csv and not labels_csv.startswith(data_root.rstrip("/") + "/"):
        parts.append(storage.listing_digest(labels_csv))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _local_labels(uri: str, data_root: str, local_root: Path, cache: str | os.PathLike[str] | None) -> Path | None:
    """A local copy of the labels CSV at ``uri``: the file itself when local, the already fetched copy when it lies
    in a remote ``data_root``, else fetched into the cache."""
    if not uri:
        return None
    prefix = data_root.rstrip("/") + "/"
    if storage.is_remote(uri) and uri.startswith(prefix) and local_root.is_dir():
        local = local_root / uri[len(prefix):]
        if local.is_file():
            return local
    return fetch_tree(uri, cache)


def ingest(source: str, data_root: str, out_dir: str | os.PathLike[str], *, labels: str = "",
           salt: str | None = None, cache: str | os.PathLike[str] | None = None,
           pseudonymise_paths: bool = False) -> dict[str, Any]:
    """Read a dataset into a records folder (``mammoflow ingest``); returns the ingest summary, with
    ``labels_csv``: where the labels CSV read was (None: none).

    ``labels``: the labels CSV of a ``dicom-dir`` source, relative to ``data_root`` or an absolute path / ``gs://``
    URI (see :func:`labels_uri`); empty: ``data_root/labels.csv`` when it exists, else none. A remote
    ``data_root`` (and labels CSV) is fetched into the cache and the records' ``image_root`` is written as the
    remote URI, so that the records folder stays valid in the next step's pod; quarantine entries name the remote
    files too. ``pseudonymise_paths`` (dicom-dir): record ids are salted pseudonyms of the file paths, for site
    folders named after patients.
    """
    from mammoflow.records import META_FILE, RecordsTable
    from mammoflow.sources import SourceOptions, read_source, resume
    from mammoflow.sources._common import salt_note, site_salt

    check_labels(source, labels)
    check_pseudonymise_paths(source, pseudonymise_paths)
    local_root = fetch_tree(data_root, cache)
    uri = labels_uri(data_root, labels)
    local_labels = _local_labels(uri, data_root, local_root, cache)
    opts = SourceOptions(root=local_root, labels=local_labels, salt=salt, pseudonymise_paths=pseudonymise_paths)
    out_dir = Path(out_dir)
    fingerprint = resume.input_fingerprint(source, opts, {"data_root": data_root, "labels": uri})

    def read() -> RecordsTable:
        nonlocal uri
        table = read_source(source, opts)
        if not uri and table.meta.get("labels_found_in_root"):  # dicom-dir read data_root/labels.csv by itself
            uri = storage.join(data_root, str(table.meta["labels_file"]))
        if storage.is_remote(data_root):
            table.image_root = _portable_root(table.image_root, local_root, data_root)
            remote_of = {str(local_root): data_root.rstrip("/")}
            if local_labels is not None:
                remote_of[str(local_labels)] = uri
            table.quarantine = [_portable_entry(q, remote_of) for q in table.quarantine]
            table.skipped = [_portable_entry(s, remote_of) for s in table.skipped]
        table.meta["ingest"] = {"source": source, "data_root": data_root, "labels_csv": uri or None,
                                "metadata_only": False, "pseudonymise_paths": pseudonymise_paths,
                                "salt": table.meta.get("salt", salt_note(site_salt(salt)))}
        return table

    # A retried step whose inputs are already ingested there reads nothing again (unless nothing was usable).
    result = resume.ingest_into(out_dir, fingerprint, read, inputs=[local_root, local_labels],
                                reuse_if=lambda done: bool(done.get("used")))
    summary = result.summary
    if result.reused:
        log.info("%s: already holds the ingest of these inputs (used %d, quarantined %d); nothing read again",
                 out_dir, summary["used"], summary["quarantined"])
        meta = json.loads((out_dir / META_FILE).read_text())
        return {**summary, "labels_csv": meta.get("ingest", {}).get("labels_csv")}
    if summary["used"] == 0:
        raise InputError(out_dir / "quarantine.md", f"nothing usable was read from {data_root}",
                         "see the quarantine report for each file's problem and fix", code="empty")
    return {**summary, "labels_csv": uri or None}


def _portable_entry(entry: Any, remote_of: Mapping[str, str]) -> Any:
    """A quarantine entry naming the remote file instead of its local copy in the cache (``remote_of``: local
    path -> URI)."""
    import dataclasses

    for local, remote in remote_of.items():
        if entry.path == local or entry.path.startswith(local + "/"):
            return dataclasses.replace(entry, path=remote + entry.path[len(local):])
    return entry


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
    from mammoflow.records import require_complete

    if not storage.is_remote(records_dir):  # checked before the local copy, which would be marked complete
        require_complete(records_dir)
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

    config = _local_config(config, None)  # a dataset YAML may be a gs:// URI, like a train config
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


def sweep_datasets(spec_datasets: Sequence[str], data_uri: str, given: Mapping[str, str] | None = None
                   ) -> dict[str, str]:
    """Which dataset URI each dataset name of a sweep spec trains on. The pipeline builds one dataset: it serves
    the spec's ``default`` (or its only dataset); a spec that ablates datasets (preprocessing, mass/calc) needs the
    others given by name, built beforehand. A missing one is an error, never the pipeline's dataset under another
    name (that would report an ablation that did not happen)."""
    from mammoflow.sweep.spec import DEFAULT_DATASET

    given = {str(k): str(v) for k, v in (given or {}).items() if v}
    unknown = sorted(set(given) - set(spec_datasets))
    if unknown:
        raise ConfigError(f"datasets {unknown} are not in the sweep spec (it has {list(spec_datasets)}). Fix: name "
                          "only the spec's datasets")
    own = DEFAULT_DATASET if DEFAULT_DATASET in spec_datasets else spec_datasets[0]
    mapping = {own: data_uri, **given}
    missing = [name for name in spec_datasets if name not in mapping]
    if missing:
        raise ConfigError(
            f"the sweep spec ablates datasets {list(spec_datasets)}, and this pipeline builds one (used as {own!r}); "
            f"{missing} have no dataset. Fix: build them (`mammoflow build-dataset --config ... --out "
            "gs://.../datasets/NAME`) and pass datasets={NAME: URI, ...}, or use a spec with one dataset")
    return mapping


def sweep(spec_ref: str, data_uri: str, out_uri: str, *, address: str | None = None, num_cpus: int | None = None,
          max_concurrent: int | None = None, cache: str | os.PathLike[str] | None = None,
          datasets: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run a sweep spec on Ray Tune (``mammoflow sweep``) on the pipeline's dataset (plus, for a spec that
    ablates datasets, the other ones by name: :func:`sweep_datasets`); resumes a sweep left by an earlier attempt
    at ``out_uri`` (a retried step after preemption)."""
    from mammoflow.sweep.runner import run_sweep
    from mammoflow.sweep.spec import load_spec

    spec = load_spec(_local_config(spec_ref, cache))
    data = sweep_datasets(spec.datasets, data_uri, datasets)
    resume = storage.exists(storage.join(out_uri, "spec.yaml"))
    if not address and num_cpus is None:
        num_cpus = available_cpus()  # a Ray inside this pod: as many CPUs as the pod may use
    return run_sweep(spec, data, out_uri, address=address or None,
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


def log_kfp_evaluation(report: Mapping[str, Any], evaluation_dir: str | os.PathLike[str], metrics: Any,
                       classification: Any) -> None:
    """Show an evaluation in the KFP UI: the scalar metrics (:func:`primary_metrics`) on a ``Metrics`` artifact, the
    ROC curve and confusion matrix of ``classification_metrics.json`` on a ``ClassificationMetrics`` artifact."""
    for name, value in primary_metrics(report).items():
        metrics.log_metric(name, value)
    with open(os.path.join(evaluation_dir, "classification_metrics.json")) as fh:
        kfp_view = json.load(fh)
    if kfp_view.get("roc"):
        roc = kfp_view["roc"]
        classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["threshold"])
    if kfp_view.get("confusion_matrix"):
        cm = kfp_view["confusion_matrix"]
        classification.log_confusion_matrix(cm["categories"], cm["matrix"])


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


# ============================================================================================ retraining
# The KFP retraining pipeline (pipelines/retrain.py) runs the step functions of mammoflow.retrain.loop one per pod.
# What a work folder holds for `mammoflow retrain` lives in object storage here, under
# <storage_root>/retrain/<name>/, so that the pods of one run and successive scheduled runs share it:
#
#     state.json                       RetrainState: next retrain id, the records baseline, metric running totals
#     preprocessed/                    one preprocessing output shared by every run (only new images are done)
#     <run id>/records/                this run's incremental ingest: the next run's baseline once the run ends
#     <run id>/data/, <run id>/train/  the shards and the challenger's training run
#     <run id>/steps/<step>.json       what each step did (ids, counts, URIs); the exit handler reads them all
#     <run id>/result.json             the run's RetrainResult (the pipeline's history, one object per run)

RETRAIN_STEPS = ("scan", "ingest", "preprocess", "build", "train", "bless", "register", "promote")
#: state.metrics key naming the last pipeline run whose outcome was counted (a retried exit step counts it once).
_COUNTED_RUN = "last_pipeline_run_id"


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) \
            else value
    return out


def load_retrain(config_ref: str, overrides: Mapping[str, Any] | None = None, storage_root: str = "", *,
                 cache: str | os.PathLike[str] | None = None) -> Any:
    """The :class:`~mammoflow.retrain.config.RetrainConfig` of a pipeline step.

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
    cfg = load_retrain_config(_local_config(config_ref, cache))
    data = cfg.to_dict()
    if overrides:
        data = _deep_merge(data, plain_numbers(dict(overrides)))
    if storage_root:
        data["storage_root"] = storage_root
    cfg = from_dict(RetrainConfig, data, "retrain config")
    require_root(cfg.storage_root or "")
    return cfg


def retrain_uri(cfg: Any, *parts: str) -> str:
    """``<storage_root>/retrain/<name>/<parts>``: where a retraining keeps its state and its runs."""
    return storage.join(require_root(cfg.storage_root or ""), "retrain", cfg.name, *parts)


def retrain_run_uri(cfg: Any, run_id: str, *parts: str) -> str:
    """The folder of one pipeline run of a retraining (stable across retries of its steps)."""
    if not run_id:
        raise ConfigError("run_id is empty. Fix: the pipeline passes its run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER)")
    return retrain_uri(cfg, _config_name(run_id), *parts)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def load_retrain_state(cfg: Any) -> tuple[Any, storage.ObjectInfo | None]:
    """The retraining's :class:`~mammoflow.retrain.loop.RetrainState` from ``state.json`` in object storage, and
    the version read (None: no state yet, a new one with a fresh token)."""
    import dataclasses
    import secrets

    from mammoflow.retrain.loop import STATE_FILE, RetrainState

    uri = retrain_uri(cfg, STATE_FILE)
    info = storage.stat(uri)
    if info is None:
        return RetrainState(token=secrets.token_hex(8)), None
    data = json.loads(storage.get_bytes(uri))
    names = {f.name for f in dataclasses.fields(RetrainState)}
    return RetrainState(**{k: v for k, v in data.items() if k in names}), info


def update_retrain_state(cfg: Any, change: Any, attempts: int = 5) -> Any:
    """Read ``state.json``, apply ``change(state)`` (which mutates it) and write it back only if nobody wrote it in
    between (:func:`mammoflow.storage.put_bytes_if_version`); on a conflict, read again and re-apply. Returns what
    ``change`` returned."""
    import dataclasses

    from mammoflow.retrain.loop import STATE_FILE

    uri = retrain_uri(cfg, STATE_FILE)
    for attempt in range(attempts):
        with storage.local_lock(uri, ".state.lock"):
            state, info = load_retrain_state(cfg)
            out = change(state)
            if storage.put_bytes_if_version(uri, _json_bytes(dataclasses.asdict(state)), info):
                return out
        log.warning("%s changed while being updated (attempt %d/%d); reading it again", uri, attempt + 1, attempts)
    raise ConfigError(f"{uri}: another run keeps updating the retrain state. Fix: run one retrain of {cfg.name!r} "
                      "at a time (the schedule allows one concurrent run), then re-run this one")


def write_step(cfg: Any, run_id: str, step: str, record: Mapping[str, Any]) -> None:
    """What step ``step`` of run ``run_id`` did, as ``<run>/steps/<step>.json`` (replaced when a step is retried)."""
    storage.put_bytes(retrain_run_uri(cfg, run_id, "steps", f"{step}.json"), _json_bytes(dict(record)))


def read_steps(cfg: Any, run_id: str) -> dict[str, dict[str, Any]]:
    """Step name -> its record, for the steps of run ``run_id`` that finished."""
    out = {}
    for step in RETRAIN_STEPS:
        uri = retrain_run_uri(cfg, run_id, "steps", f"{step}.json")
        if storage.exists(uri):
            out[step] = json.loads(storage.get_bytes(uri))
    return out


def _require_step(steps: Mapping[str, Any], step: str, run_id: str) -> dict[str, Any]:
    if step not in steps:
        raise ConfigError(f"run {run_id}: the {step} step has no record. Fix: run the retrain pipeline's steps in "
                          "order (each reads what the earlier ones recorded)")
    return dict(steps[step])


def _local_source(cfg: Any, cache: str | os.PathLike[str] | None) -> Any:
    """``cfg`` with a watched source in object storage (root, Info.txt, labels, CSVs) fetched to local files: the
    readers take local files. The local copy has the same path in every pod, so incremental ingest compares like
    with like."""
    import dataclasses

    src = cfg.source
    local = {key: str(fetch_tree(getattr(src, key), cache)) for key in ("root", "info", "labels")
             if getattr(src, key) and storage.is_remote(getattr(src, key))}
    csvs = [str(fetch_tree(c, cache)) if storage.is_remote(c) else c for c in src.csvs]
    if not local and csvs == list(src.csvs):
        return cfg
    return dataclasses.replace(cfg, source=dataclasses.replace(src, **local, csvs=csvs))


def _set_image_root(records_dir: Path, image_root: str) -> None:
    """Point a records folder's images somewhere else (``records_meta.json``), e.g. at their URI before publishing
    it, or at a local copy after fetching it."""
    from mammoflow.records import META_FILE, atomic_write_text

    meta_path = records_dir / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta["image_root"] = image_root
    atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _download_tree(uri: str, dest: Path) -> Path:
    """A private local copy of every object under ``uri`` (local or remote) in ``dest``."""
    base = uri.rstrip("/")
    for obj in storage.list(base):
        storage.get_file(obj, dest / obj[len(base) + 1:])
    return dest


def _previous_records(cfg: Any, local_cfg: Any, uri: str | None, dest: Path) -> Path | None:
    """The baseline records folder (the last completed ingest) copied to ``dest``, its images pointed at the local
    copy of the watched source when they are named by URI (see :func:`retrain_ingest`)."""
    if not uri:
        return None
    if not storage.exists(storage.join(uri, "records.jsonl")):
        raise InputError(uri, "the records baseline named by state.json is missing",
                         "restore it, or remove last_records from the retrain's state.json to ingest everything again",
                         code="missing_file")
    local = _download_tree(uri, dest)
    remote_root, local_root = cfg.source.root, local_cfg.source.root
    if remote_root and storage.is_remote(remote_root):
        from mammoflow.records import RecordsTable

        image_root = RecordsTable.read(local).image_root
        if storage.is_remote(image_root):
            rel = image_root[len(remote_root.rstrip("/")):].lstrip("/")
            _set_image_root(local, str(Path(local_root) / rel) if rel else str(local_root))
    return local


def retrain_scan(cfg: Any, run_id: str, *, cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Step 1: compare the watched source with the last completed ingest (no image is decoded).

    A change allocates this run's retrain id (``r0007``, from ``state.next_id``; once per pipeline run, so a
    retried scan keeps it). Returns and records ``changed``, ``retrain_id``, ``previous_records``, ``files`` (the
    scan's counts), ``total_records`` and ``started``.
    """
    import tempfile

    from mammoflow.registry import iso, utc_now
    from mammoflow.retrain.ingest import scan_changes
    from mammoflow.retrain.loop import count_records

    started = iso(utc_now())
    state, _ = load_retrain_state(cfg)
    local_cfg = _local_source(cfg, cache)
    with tempfile.TemporaryDirectory(prefix="mammoflow-retrain-") as tmp:
        previous = _previous_records(cfg, local_cfg, state.last_records, Path(tmp) / "previous")
        scan = scan_changes(local_cfg.source.options(), previous)
        total = count_records(previous)
    out: dict[str, Any] = {"started": started, "pipeline_run_id": run_id, "changed": not scan.nothing_changed,
                           "files": scan.summary(), "previous_records": state.last_records,
                           "total_records": total, "retrain_id": None}
    if scan.nothing_changed:
        log.info("nothing new: %d files unchanged since %s", len(scan.unchanged), state.last_records)
    else:
        def allocate(st: Any) -> str:
            current = st.in_progress or {}
            if current.get("pipeline_run_id") == run_id:
                return str(current["id"])
            if current:
                log.warning("retrain %s (pipeline run %s) did not finish: abandoned; this run starts from the last "
                            "completed ingest", current.get("id"), current.get("pipeline_run_id"))
            rid = f"r{st.next_id:04d}"
            st.next_id += 1
            st.in_progress = {"id": rid, "pipeline_run_id": run_id, "config_sha256": cfg.sha256(),
                              "stage": "started", "started": started}
            return rid

        out["retrain_id"] = update_retrain_state(cfg, allocate)
        log.info("retrain %s: %s", out["retrain_id"], scan.summary())
    write_step(cfg, run_id, "scan", out)
    return out


def retrain_ingest(cfg: Any, run_id: str, out_dir: str | os.PathLike[str], *,
                   cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Step 2: incremental ingest into ``out_dir`` (a KFP artifact), published to ``<run>/records`` (the next
    run's baseline once this run ends). Images of a source in object storage are named by their URI in the
    published records, so that they stay valid in other pods. Returns the IngestDelta as a dict (+ ``records_uri``).
    """
    import tempfile

    from mammoflow.retrain.loop import ingest_step

    scan = _require_step(read_steps(cfg, run_id), "scan", run_id)
    local_cfg = _local_source(cfg, cache)
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="mammoflow-retrain-") as tmp:
        previous = _previous_records(cfg, local_cfg, scan.get("previous_records"), Path(tmp) / "previous")
        delta = ingest_step(local_cfg, previous, out)
    if cfg.source.root and storage.is_remote(cfg.source.root):
        from mammoflow.records import RecordsTable

        image_root = RecordsTable.read(out).image_root
        _set_image_root(out, _portable_root(image_root, Path(local_cfg.source.root), cfg.source.root))
    records_uri = retrain_run_uri(cfg, run_id, "records")
    publish_tree(out, records_uri)
    record = {**delta.to_dict(), "out_dir": records_uri, "previous": scan.get("previous_records"),
              "records_uri": records_uri}
    write_step(cfg, run_id, "ingest", record)
    return record


def retrain_preprocess(cfg: Any, run_id: str, records_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                       *, cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Step 3: preprocess into the folder every run shares, ``retrain/<name>/preprocessed`` (records an earlier run
    did with the same chain and input are reused; only new ones run). ``out_dir`` (a KFP artifact) gets this run's
    records table, whose images are named by the shared folder's URI. Returns the preprocessing counts."""
    import dataclasses
    import shutil
    import time

    from mammoflow.retrain.loop import preprocess_step

    shared = retrain_uri(cfg, "preprocessed")
    records = localise_records(records_dir, cache)
    if storage.is_remote(shared):
        local = fetch_tree(shared, cache) if storage.list(shared) else cached_copy_path(shared, cache)
        started_ns = time.time_ns()
        summary = preprocess_step(cfg, records, local)
        # Publish what this run wrote (new images, resume states, the table), not the whole folder again.
        known = set(storage.list(shared))
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            dest = storage.join(shared, path.relative_to(local).as_posix())
            if dest not in known or path.stat().st_mtime_ns >= started_ns:
                storage.put_file(path, dest)
        image_root = shared
    else:
        local = storage.local_path(shared).absolute()
        summary = preprocess_step(cfg, records, local)
        image_root = str(local)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in local.iterdir():
        if path.is_file() and not path.name.startswith("."):
            shutil.copyfile(path, out / path.name)
    _set_image_root(out, image_root)
    record = {**dataclasses.asdict(summary), "usable": summary.usable, "shared_uri": shared}
    if summary.usable == 0:
        raise InputError(out / "quarantine.md", "no usable record left after preprocessing",
                         "see the quarantine report for each record's problem and fix", code="empty")
    write_step(cfg, run_id, "preprocess", record)
    return record


def retrain_build(cfg: Any, run_id: str, preprocessed_dir: str | os.PathLike[str], *,
                  cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Step 4: shards under ``<run>/data`` with every record in the split the ingest's plan gave it, and the
    evaluation split's fingerprint (both models are judged on exactly these examples). With the diagnostics
    negative control on, the training data is a label-shuffled copy (``train_uri``)."""
    from mammoflow.dataset import shards
    from mammoflow.retrain.loop import build_step, split_fingerprint

    data_uri = retrain_run_uri(cfg, run_id, "data")
    manifest = build_step(cfg, localise_records(preprocessed_dir, cache), data_uri)
    train_uri = data_uri
    if cfg.diagnostics.train_on_shuffled_labels:
        from mammoflow.retrain.diagnostics import shuffled_label_copy

        train_uri = retrain_run_uri(cfg, run_id, "data-shuffled-labels")
        shuffled_label_copy(data_uri, train_uri, seed=cfg.evaluation.seed)
    record = {"data_uri": data_uri, "train_uri": train_uri, "split": cfg.evaluation.split,
              "split_sha256": split_fingerprint(manifest, cfg.evaluation.split),
              "manifest_sha256": storage.sha256_of(shards.manifest_uri(data_uri)),
              "examples": manifest.get("examples"), "counts": manifest.get("counts"),
              "classes": manifest.get("classes")}
    write_step(cfg, run_id, "build", record)
    return record


def retrain_train(cfg: Any, run_id: str, *, metrics_port: int | None = None,
                  cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Step 5: train the challenger under ``<run>/train`` (a retried step resumes it), warm started from the
    champion's weights when the config says so and the models match. Returns the run URI, the champion it was
    compared with and the training metrics."""
    import dataclasses

    from mammoflow.registry import ModelRegistry
    from mammoflow.retrain.loop import train_step, warm_start_weights
    from mammoflow.training.config import load_train_config

    build = _require_step(read_steps(cfg, run_id), "build", run_id)
    champion = ModelRegistry(cfg.registry_uri).champion()
    init = warm_start_weights(cfg, champion, load_train_config(cfg.train, dict(cfg.train_overrides)))
    if metrics_port:
        cfg = dataclasses.replace(cfg, train_overrides={**cfg.train_overrides, "metrics_port": int(metrics_port)})
    run_uri = retrain_run_uri(cfg, run_id, "train")
    result = train_step(cfg, build["train_uri"], run_uri, init_weights=init, cache_dir=cache_dir(cache))
    record = {"run_uri": run_uri, "champion": champion.version if champion else None,
              "champion_uri": champion.uri if champion else None, "warm_start_weights": init,
              "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
              "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}}
    write_step(cfg, run_id, "train", record)
    return record


def retrain_bless(cfg: Any, run_id: str, challenger_eval: str | os.PathLike[str],
                  champion_eval: str | os.PathLike[str] | None, *, force_reason: str | None = None,
                  by: str | None = None) -> Any:
    """Step 7: the blessing verdict from both evaluations (paired bootstrap CIs on the same rows); an empty
    ``force_reason`` means no override."""
    from mammoflow.retrain.loop import bless_step

    steps = read_steps(cfg, run_id)
    build, train = _require_step(steps, "build", run_id), _require_step(steps, "train", run_id)
    ident = {"split": build["split"], "split_sha256": build["split_sha256"], "data_uri": build["data_uri"]}

    def report(folder: str | os.PathLike[str]) -> dict[str, Any]:
        return {**json.loads((Path(folder) / "metrics.json").read_text()), "evaluation_split": ident}

    verdict = bless_step(cfg, challenger_eval, champion_eval, report(challenger_eval),
                         report(champion_eval) if champion_eval is not None else None,
                         challenger=f"challenger {steps['scan']['retrain_id']}", champion=train["champion"],
                         force_reason=force_reason or None, by=by)
    write_step(cfg, run_id, "bless", verdict.to_dict())
    return verdict


def _verdict_recorded(registry: Any, version: str) -> bool:
    return any(e.version == version and e.action in ("bless", "refuse", "force_bless") for e in registry.audit_log())


def retrain_register(cfg: Any, run_id: str, eval_dir: str | os.PathLike[str], verdict: Any, *, pipeline: str,
                     by: str) -> Any:
    """Step 8: hand the challenger to the model registry (blessed or not: a refused version stays for audit, never
    as champion) with its evaluation, verdict and lineage, then record the verdict in the audit log. Idempotent: the
    registration key is the pipeline run id, and a verdict already recorded is not recorded twice."""
    import dataclasses

    from mammoflow.registry import ModelRegistry
    from mammoflow.retrain.loop import record_verdict, register_step

    steps = read_steps(cfg, run_id)
    scan, ingest = _require_step(steps, "scan", run_id), _require_step(steps, "ingest", run_id)
    build, train = _require_step(steps, "build", run_id), _require_step(steps, "train", run_id)
    evaluation = {"split": build["split"], "split_sha256": build["split_sha256"], "data_uri": build["data_uri"],
                  "manifest_sha256": build["manifest_sha256"], "plan_sha256": ingest.get("plan_sha256"),
                  "level": verdict.evaluation.get("level")}
    lineage = {"retrain": cfg.name, "retrain_id": scan["retrain_id"], "pipeline_run_id": run_id,
               "pipeline": pipeline, "parent_version": train["champion"] if train["warm_start_weights"] else None,
               "warm_start_weights": train["warm_start_weights"], "champion_at_judgement": train["champion"],
               "records_dir": ingest["records_uri"], "dataset_uri": build["data_uri"],
               "diagnostics": dataclasses.asdict(cfg.diagnostics),
               "ingest": {k: ingest.get(k) for k in ("new_records", "changed_records", "removed_records",
                                                     "total_records", "new_patients", "new_by_split")}}
    registry = ModelRegistry(cfg.registry_uri)
    version = register_step(registry, train["run_uri"], str(eval_dir), verdict, evaluation=evaluation,
                            lineage=lineage, key=f"kfp:{run_id}", by=by)
    if not _verdict_recorded(registry, version.version):
        record_verdict(registry, version.version, verdict, by=by)
    write_step(cfg, run_id, "register", {"version": version.version, "uri": version.uri,
                                         "blessed": verdict.blessed})
    return version


def retrain_promote(cfg: Any, run_id: str, version: str, verdict: Any, *, by: str) -> Any:
    """Step 9 (blessed challengers only): make ``version`` the champion, with the verdict as the reason."""
    from mammoflow.registry import ModelRegistry

    rid = _require_step(read_steps(cfg, run_id), "scan", run_id)["retrain_id"]
    reason = (f"forced blessing in retrain {rid} (pipeline run {run_id}): {verdict.force_reason}" if verdict.forced
              else f"blessed by retrain {rid} (pipeline run {run_id}): {verdict.reason}")
    change = ModelRegistry(cfg.registry_uri).promote(version, reason=reason,
                                                     by=verdict.forced_by if verdict.forced else by)
    write_step(cfg, run_id, "promote", {"version": version, "from_version": change.from_version,
                                        "changed": change.changed})
    return change


def retrain_result(cfg: Any, run_id: str, steps: Mapping[str, Mapping[str, Any]], *, failed: bool,
                   error: str | None = None) -> Any:
    """The :class:`~mammoflow.retrain.loop.RetrainResult` of a pipeline run, from its steps' records."""
    from mammoflow.registry import ModelRegistry, iso, utc_now
    from mammoflow.retrain.loop import RetrainResult

    scan, ingest = steps.get("scan") or {}, steps.get("ingest")
    registry = ModelRegistry(cfg.registry_uri)
    now = utc_now()
    result = RetrainResult(status="failed", retrain_id=scan.get("retrain_id"), started=scan.get("started", ""),
                           finished=iso(now), paths={"run": retrain_run_uri(cfg, run_id), "registry": registry.root})
    if result.started:
        from datetime import datetime

        started = datetime.strptime(result.started, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=now.tzinfo)
        result.seconds = round((now - started).total_seconds(), 2)
    if ingest is not None:
        result.ingest = dict(ingest)
        if "preprocess" in steps:
            result.ingest["preprocess_quarantined"] = steps["preprocess"].get("quarantined_new", 0)
        result.paths.update(records=ingest["records_uri"])
    elif scan:
        result.ingest = {"nothing_new": not scan.get("changed"), "new_records": 0, "changed_records": 0,
                         "removed_records": 0, "quarantined_new": 0, "files": scan.get("files"),
                         "total_records": scan.get("total_records", 0)}
    if "build" in steps:
        result.paths.update(data=steps["build"]["data_uri"])
    if "train" in steps:
        result.paths.update(train=steps["train"]["run_uri"])
        result.champion_before = steps["train"].get("champion")
    result.verdict = dict(steps["bless"]) if "bless" in steps else None
    result.version = (steps.get("register") or {}).get("version")
    result.promoted = "promote" in steps
    champion = registry.champion()
    result.champion_after = champion.version if champion else None
    if "train" not in steps:  # no challenger: the champion did not change in this run
        result.champion_before = result.champion_after
    if failed:
        done = [step for step in RETRAIN_STEPS if step in steps]
        result.error = (f"{error or 'a step failed'} (last step completed: {done[-1] if done else 'none'}; see the "
                        "failed step's log)")
    elif (scan and not scan.get("changed")) or (ingest is not None and ingest.get("nothing_new")):
        result.status = "nothing_new"
    elif result.version is not None and result.verdict is not None:
        result.status = "blessed" if result.verdict.get("blessed") else "refused"
        if result.status == "blessed" and not result.promoted:
            result.status, result.error = "failed", f"{result.version} was blessed but never promoted"
    else:
        result.error = error or "the run ended before a verdict (incomplete)"
    return result


def retrain_finalize(cfg: Any, run_id: str, *, failed: bool, error: str | None = None,
                     push_gateway: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The exit handler's step: whatever happened, record the run's outcome and push the retraining's metrics.

    The outcome (nothing new, blessed, refused, failed) updates the running totals of ``state.json`` once per
    pipeline run; a completed run (anything but failed) makes its ingest the next run's baseline. The complete
    metric set goes to the Pushgateway (``push_gateway``, else the config's; none configured: skipped).
    Returns the result and the state's metrics.
    """
    from mammoflow.registry import ModelRegistry
    from mammoflow.retrain.loop import rule_keys, update_metrics
    from mammoflow.retrain.push import push_metrics, retrain_values

    steps = read_steps(cfg, run_id)
    result = retrain_result(cfg, run_id, steps, failed=failed, error=error)
    registry = ModelRegistry(cfg.registry_uri)
    rules = rule_keys(cfg, registry)  # the loop's own bookkeeping: the pipeline and `mammoflow retrain` count alike

    def record(state: Any) -> dict[str, Any]:
        if state.metrics.get(_COUNTED_RUN) != run_id:  # a retried exit step must not count the run twice
            update_metrics(state, result, None if result.status == "failed" else registry, rules)
            state.metrics[_COUNTED_RUN] = run_id
            if result.status != "failed" and "ingest" in steps:
                state.last_records = steps["ingest"]["records_uri"]
            if (state.in_progress or {}).get("pipeline_run_id") == run_id:
                state.in_progress = None
        return dict(state.metrics)

    metrics = update_retrain_state(cfg, record)
    gateway = push_gateway or cfg.push.gateway
    if gateway:
        try:
            push_metrics(gateway, cfg.push.job, retrain_values(metrics), grouping_key={"retrain": cfg.name},
                         timeout=cfg.push.timeout)
            result.pushed = True
        except OSError as exc:  # an unreachable gateway must not fail a finished retrain; the alerts will notice
            log.error("could not push metrics to %s: %s", gateway, exc)
    else:
        log.info("no Pushgateway configured (push.gateway): metrics kept in %s only", retrain_uri(cfg, "state.json"))
    storage.put_bytes(retrain_run_uri(cfg, run_id, "result.json"), _json_bytes(result.to_dict()))
    log.info("%s", result.summary())
    return result, metrics


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


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a KFP output file (Markdown, HTML) atomically; its folder may not exist yet."""
    from mammoflow.records import atomic_write_text

    atomic_write_text(Path(path), text)
