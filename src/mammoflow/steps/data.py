"""The data steps over URIs: built-in phantoms or a located dataset -> ingest -> preprocess -> build-dataset.

Records folders (with the preprocessed images) are self-contained folders; raw images stay where they are: when a
source is in object storage, ingest writes its URI as the records' ``image_root`` and the next step fetches the
images into the local cache (:func:`localise_records`), since every reader of the library takes local files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammoflow import storage
from mammoflow.config import resolve_ref
from mammoflow.errors import ConfigError, InputError
from mammoflow.sources import LABELLED_SOURCES, check_labels, check_pseudonymise_paths  # noqa: F401 - the step layer's face
from mammoflow.storage import copies

log = logging.getLogger(__name__)

PHANTOM_SOURCE = "phantoms"  # the pipelines' name for the built-in demo data (read as MIAS)
PHANTOM_SIZE = 1024  # MIAS images are 1024x1024; the mias reader refuses other sizes
#: Sources whose images were already preprocessed by their authors (Yu et al. released processed 120x120 ROIs).
PREPROCESSED_SOURCES = {"mias-rois": "none"}
#: What demo-data writes per format: the reader to ingest it with.
DEMO_FORMATS = {"mias": "mias", "dicom": "cbis-ddsm"}


class NothingUsable(InputError):
    """A data step left no usable record. Its output folder is written (the quarantine report says what went wrong
    with each input) and ``summary`` holds the step's counts, for the caller to show."""

    def __init__(self, path: object, problem: str, fix: str, summary: Mapping[str, Any]):
        super().__init__(path, problem, fix, code="empty")
        self.summary = dict(summary)


def phantoms_uri(storage_root: str, n_images: int, seed: int) -> str:
    """Where the built-in phantom dataset of ``n_images`` images and ``seed`` is written under a storage root."""
    return storage.join(require_root(storage_root), "raw", f"phantoms-n{n_images}-s{seed}")


def require_root(storage_root: str) -> str:
    if not storage_root:
        raise ConfigError("storage_root is empty. Fix: pass storage_root=gs://BUCKET/mammoflow (or a local "
                          "folder); `mammoflow pipeline run --local` sets it under --root")
    return storage_root


def demo_data(out: str, n_images: int, seed: int, *, fmt: str = "mias", size: int | tuple[int, int] | None = None,
              cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write the phantom dataset to ``out`` (once: an existing identical dataset is kept): MIAS-like PGMs
    (``fmt`` mias, ``size`` one side, 1024 by default) or a CBIS-DDSM-like DICOM download (``fmt`` dicom, ``size``
    (height, width), 640x480 by default). A remote ``out`` is written in the cache and uploaded, its
    ``ground_truth.json`` last.

    Returns the ground truth summary, with ``source`` (the reader to ingest it with) and ``data_root`` (``out``).
    """
    from mammoflow.synth.phantoms import write_dicom_dataset, write_mias_dataset

    if fmt not in DEMO_FORMATS:
        raise ConfigError(f"demo data format {fmt!r} is not one of {', '.join(DEMO_FORMATS)}")

    def write(folder: Path) -> dict[str, Any]:
        if fmt == "mias":
            return write_mias_dataset(folder, n_images=n_images, seed=seed, size=size or PHANTOM_SIZE)
        return write_dicom_dataset(folder, n_images=n_images, seed=seed, size=size or (640, 480))

    if storage.is_remote(out):
        local = copies.cache_dir(cache_dir) / "phantoms" / copies.uri_key(out)
        truth = write(local)
        # ground_truth.json goes last: its presence tells a reader the dataset is complete.
        files = sorted(p for p in local.rglob("*") if p.is_file() and p != local / "ground_truth.json")
        for path in [*files, local / "ground_truth.json"]:
            storage.put_file(path, storage.join(out, path.relative_to(local).as_posix()))
    else:
        truth = write(storage.local_path(out))
    images = truth["images"]
    return {"source": DEMO_FORMATS[fmt], "data_root": out, "images": len(images),
            "images_with_lesions": sum(1 for im in images if im["lesions"]),
            "lesions": sum(len(im["lesions"]) for im in images), "seed": seed}


def local_abspath(path: str | os.PathLike[str]) -> str:
    """A local path (or ``file://`` URI) made absolute and normal (``..`` folded, links kept), so that the same
    folder is named the same whichever folder a step runs from."""
    return os.path.abspath(storage.local_path(path))


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
    path = Path(local_abspath(data_root))
    if not path.exists():
        raise InputError(path, "not found", "check data_root (relative paths are taken from the current folder)",
                         code="missing_file")
    return str(path)


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


def _local_labels(uri: str, data_root: str, local_root: Path | None, cache_dir: str | os.PathLike[str] | None
                  ) -> Path | None:
    """A local copy of the labels CSV at ``uri``: the file itself when local, the already fetched copy when it lies
    in a remote ``data_root``, else fetched into the cache."""
    if not uri:
        return None
    prefix = data_root.rstrip("/") + "/"
    if storage.is_remote(uri) and uri.startswith(prefix) and local_root is not None and local_root.is_dir():
        local = local_root / uri[len(prefix):]
        if local.is_file():
            return local
    return copies.fetch_tree(uri, cache_dir)


def _local_file(ref: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None) -> Path | None:
    """An annotation file given apart from the data (MIAS Info.txt, CBIS-DDSM CSVs): fetched when remote, else the
    path as given (absolute), which the reader checks with its own message."""
    if not ref:
        return None
    return copies.fetch_tree(str(ref), cache_dir) if storage.is_remote(ref) else Path(local_abspath(ref))


@dataclass(frozen=True)
class IngestInputs:
    """What an ingest reads, as given (URIs or paths) and as local files (fetched copies of remote ones)."""

    source: str
    data_root: str  # a gs:// URI, or a local path made absolute; "" for metadata-only reads without images
    labels_uri: str  # where the labels CSV is ("" none given; see labels_uri)
    options: Any  # the readers' SourceOptions, over local files
    local_root: Path | None
    local_labels: Path | None
    stream: Any = None  # the StreamedTree of a remote data root read through a bounded window (None: a full copy)

    @property
    def local_files(self) -> list[Path | None]:
        """Every local input, which ``--out`` may neither hold nor lie in."""
        return [self.local_root, self.options.info, self.local_labels, *self.options.csvs]


def ingest_inputs(source: str, data_root: str | os.PathLike[str] | None, *, labels: str | os.PathLike[str] = "",
                  info: str | os.PathLike[str] | None = None, csvs: Sequence[str | os.PathLike[str]] = (),
                  metadata_only: bool = False, salt: str | None = None, any_modality: bool = False,
                  pseudonymise_paths: bool = False, stream_limit: int = 0,
                  cache_dir: str | os.PathLike[str] | None = None, workers: int | None = None) -> IngestInputs:
    """Check an ingest's options (labels CSV and path pseudonyms only for the sources that take them) and make
    its inputs local: a remote ``data_root``, labels CSV, Info.txt or description CSV is fetched into the cache.

    ``stream_limit`` > 0: a remote ``data_root`` of a reader that fetches each image as it reads it
    (:data:`~mammoflow.sources.STREAMED_SOURCES`) is not copied but mirrored by a
    :class:`~mammoflow.storage.copies.StreamedTree` holding at most that many bytes of images at once (read under
    :func:`~mammoflow.storage.copies.streaming` of ``stream``). ``workers``: processes reading the images (None:
    every CPU; 1 when streamed, the window lives in this process)."""
    from mammoflow.sources import STREAMED_SOURCES, SourceOptions

    check_labels(source, labels)
    check_pseudonymise_paths(source, pseudonymise_paths)
    root = os.fspath(data_root) if data_root else ""
    if root and not storage.is_remote(root):
        root = local_abspath(root)  # the records name their data wherever the next step runs
    stream = None
    if stream_limit > 0 and storage.is_remote(root) and source in STREAMED_SOURCES and not root.endswith(".zip"):
        stream = copies.StreamedTree(root, copies.cached_copy_path(root, cache_dir), stream_limit)
    local_root = stream.root if stream is not None else copies.fetch_tree(root, cache_dir) if root else None
    uri = labels_uri(root, os.fspath(labels)) if labels else ""
    local_labels = _local_labels(uri, root, local_root, cache_dir)
    opts = SourceOptions(root=local_root, info=_local_file(info, cache_dir),
                         csvs=tuple(p for p in (_local_file(c, cache_dir) for c in csvs) if p is not None),
                         labels=local_labels, metadata_only=metadata_only, salt=salt, any_modality=any_modality,
                         pseudonymise_paths=pseudonymise_paths, workers=1 if stream is not None else workers,
                         cache_dir=cache_dir, handoff=stream is None)
    return IngestInputs(source, root, uri, opts, local_root, local_labels, stream)


def stream_limit(explicit: int | None = None) -> int:
    """The bound of a streamed ingest's local window in bytes: ``explicit``, else ``$MAMMOFLOW_STREAM_LIMIT`` (bytes;
    0 copies the data root whole), else :data:`~mammoflow.storage.copies.DEFAULT_STREAM_LIMIT`."""
    if explicit is not None:
        return int(explicit)
    env = os.environ.get(copies.STREAM_LIMIT_ENV, "")
    return int(env) if env.strip() else copies.DEFAULT_STREAM_LIMIT


def _given_paths(*refs: Any) -> list[Path]:
    """The local paths among an ingest's inputs as given (``--out`` is checked against them before any fetch)."""
    flat = [r for ref in refs for r in (ref if isinstance(ref, (list, tuple)) else [ref])]
    return [Path(r) for r in flat if r and not storage.is_remote(r)]


def ingest(source: str, data_root: str | os.PathLike[str] | None, out: str | os.PathLike[str], *,
           labels: str | os.PathLike[str] = "", salt: str | None = None, pseudonymise_paths: bool = False,
           info: str | os.PathLike[str] | None = None, csvs: Sequence[str | os.PathLike[str]] = (),
           metadata_only: bool = False, any_modality: bool = False, stream: int | None = None,
           cache_dir: str | os.PathLike[str] | None = None, workers: int | None = None) -> dict[str, Any]:
    """Read a dataset into a records folder (``mammoflow ingest``, the ingest component); returns the ingest
    summary, with ``labels_csv``: where the labels CSV read was (None: none).

    ``labels``: the labels CSV of a ``dicom-dir`` source, relative to ``data_root`` or an absolute path / ``gs://``
    URI (see :func:`labels_uri`); empty: ``data_root/labels.csv`` when it exists, else none. A remote
    ``data_root`` (and labels CSV) is fetched into the cache and the records' ``image_root`` is written as the
    remote URI, so that the records folder stays valid in the next step's pod; quarantine entries name the remote
    files too. ``pseudonymise_paths`` (dicom-dir): record ids are salted pseudonyms of the file paths, for site
    folders named after patients. ``info``, ``csvs``, ``metadata_only``, ``any_modality``: see ``mammoflow ingest
    --help``. ``stream``: the bound in bytes of the local window a remote ``data_root`` is streamed through
    (:func:`stream_limit`; 0: copied whole). ``workers``: processes reading the images (None: every CPU; the
    records are the same for any number). The folder is written all or nothing, and a folder already holding the ingest of the same inputs is
    kept as it is (:mod:`mammoflow.sources.resume`). Nothing usable: :class:`NothingUsable` (the folder, with its
    quarantine report, is written).
    """
    from mammoflow.records import META_FILE, RecordsTable
    from mammoflow.sources import read_source, resume
    from mammoflow.sources._common import salt_note, site_salt

    out_dir = Path(out)
    resume.check_out_dir(out_dir, _given_paths(data_root, info, csvs))  # before anything is fetched or read
    inp = ingest_inputs(source, data_root, labels=labels, info=info, csvs=csvs, metadata_only=metadata_only,
                        salt=salt, any_modality=any_modality, pseudonymise_paths=pseudonymise_paths,
                        stream_limit=stream_limit(stream), cache_dir=cache_dir, workers=workers)
    data_root, opts = inp.data_root, inp.options
    uri = inp.labels_uri
    fingerprint = resume.input_fingerprint(source, opts, {"data_root": data_root, "labels": uri})

    def read() -> RecordsTable:
        nonlocal uri
        table = read_source(source, opts)
        if not uri and table.meta.get("labels_found_in_root"):  # dicom-dir read data_root/labels.csv by itself
            uri = storage.join(data_root, str(table.meta["labels_file"]))
        if storage.is_remote(data_root):
            assert inp.local_root is not None
            table.image_root = portable_root(table.image_root, inp.local_root, data_root)
            remote_of = {str(inp.local_root): data_root.rstrip("/")}
            if inp.local_labels is not None:
                remote_of[str(inp.local_labels)] = uri
            table.quarantine = [_portable_entry(q, remote_of) for q in table.quarantine]
            table.skipped = [_portable_entry(s, remote_of) for s in table.skipped]
        table.meta["ingest"] = {"source": source, "data_root": data_root, "labels_csv": uri or None,
                                "metadata_only": metadata_only, "pseudonymise_paths": pseudonymise_paths,
                                "salt": table.meta.get("salt", salt_note(site_salt(salt)))}
        return table

    # A retried step whose inputs are already ingested there reads nothing again (unless nothing was usable).
    with copies.streaming(inp.stream) if inp.stream is not None else contextlib.nullcontext():
        result = resume.ingest_into(out_dir, fingerprint, read, inputs=inp.local_files,
                                    reuse_if=lambda done: bool(done.get("used")))
    if inp.stream is not None:
        log.info("streamed %s through a local window of %d bytes: at most %d bytes of images held at once",
                 data_root, inp.stream.limit, inp.stream.high_water)
    summary = result.summary
    if result.reused:
        log.info("%s: already holds the ingest of these inputs (used %d, quarantined %d); nothing read again",
                 out_dir, summary["used"], summary["quarantined"])
        meta = json.loads((out_dir / META_FILE).read_text())
        return {**summary, "labels_csv": meta.get("ingest", {}).get("labels_csv")}
    summary = {**summary, "labels_csv": uri or None}
    if summary["used"] == 0:
        raise NothingUsable(out_dir / "quarantine.md", f"nothing usable was read from {data_root or source}",
                            "see the quarantine report for each file's problem and fix", summary)
    return summary


def ingest_incremental(source: str, data_root: str | os.PathLike[str] | None, previous: str | os.PathLike[str],
                       out: str | os.PathLike[str], *, freeze_test: bool = False, labels: str | os.PathLike[str] = "",
                       salt: str | None = None, pseudonymise_paths: bool = False,
                       info: str | os.PathLike[str] | None = None, csvs: Sequence[str | os.PathLike[str]] = (),
                       any_modality: bool = False, cache_dir: str | os.PathLike[str] | None = None,
                       workers: int | None = None) -> Any:
    """Read only what changed since the records folder ``previous`` into the new folder ``out`` (``mammoflow
    ingest --incremental``): unchanged files are not opened, new records join its split plan (``freeze_test``: new
    patients go to train/val only). Returns the :class:`~mammoflow.retrain.ingest.IngestDelta`."""
    from mammoflow.retrain.ingest import incremental_ingest
    from mammoflow.sources import resume

    resume.check_out_dir(Path(out), _given_paths(data_root, info, csvs))
    inp = ingest_inputs(source, data_root, labels=labels, info=info, csvs=csvs, salt=salt,
                        any_modality=any_modality, pseudonymise_paths=pseudonymise_paths, cache_dir=cache_dir,
                        workers=workers)
    return incremental_ingest(source, inp.options, previous, out, freeze_test=freeze_test)


def _portable_entry(entry: Any, remote_of: Mapping[str, str]) -> Any:
    """A quarantine entry naming the remote file instead of its local copy in the cache (``remote_of``: local
    path -> URI)."""
    import dataclasses

    for local, remote in remote_of.items():
        if entry.path == local or entry.path.startswith(local + "/"):
            return dataclasses.replace(entry, path=remote + entry.path[len(local):])
    return entry


def portable_root(image_root: str, local_root: Path, remote_root: str) -> str:
    """The remote URI standing for a local image root inside the fetched copy of ``remote_root``."""
    rel = Path(image_root).resolve().relative_to(local_root.resolve()).as_posix()
    return remote_root.rstrip("/") if rel == "." else storage.join(remote_root, rel)


def localise_records(records_dir: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None, *,
                     only: Sequence[Any] | None = None, dest: str | os.PathLike[str] | None = None) -> Path:
    """A records folder whose images are on local disk.

    When the records' ``image_root`` is a remote URI (see :func:`ingest`), the records' own files (image and
    lesion masks; a whole zip) are fetched into the cache, nothing else of that folder, and a copy of the records
    folder pointing at them is returned; otherwise ``records_dir`` itself. ``only``: just these records (a
    partition), always as a copy; ``dest``: fetch the files there instead of the shared cache (a folder the caller
    removes, so that its local disk stays bounded).
    """
    from mammoflow.records import META_FILE, RecordsTable

    records_dir = Path(records_dir)
    meta = json.loads((records_dir / META_FILE).read_text()) if (records_dir / META_FILE).exists() else {}
    image_root = str(meta.get("image_root", "."))
    if not storage.is_remote(image_root) and only is None:
        return records_dir
    table = RecordsTable.read(records_dir)
    if only is not None:
        table.records = list(only)
    if not storage.is_remote(image_root):
        root = Path(image_root)
        table.image_root = str(root if root.is_absolute() else (records_dir / root).absolute())
    elif image_root.endswith(".zip"):
        table.image_root = str(copies.fetch_tree(image_root, cache_dir))
    else:
        names = [n for rec in table.records for n in (rec.image_path, *(les.mask_path for les in rec.lesions))
                 if n]
        table.image_root = str(copies.fetch_files(image_root, names, cache_dir, dest=dest)[0])
    text = "".join(json.dumps(r.to_dict(), sort_keys=True) for r in table.records)
    digest = hashlib.sha256((records_dir / "records.jsonl").read_bytes() + text.encode()).hexdigest()[:16]
    local = (Path(dest) / ".records" if dest is not None else
             copies.cache_dir(cache_dir) / "records" / f"{copies.uri_key(image_root)}-{digest}")
    table.write(local)
    return local


def preprocess_config_for(source: str, preset: str, preprocess_config: str = "auto") -> str:
    """The preprocessing chain a pipeline applies: ``preprocess_config`` unless ``auto``, which is ``none`` for
    sources released already processed (Yu et al.'s ROIs) and the paper ``preset`` otherwise."""
    if preprocess_config and preprocess_config != "auto":
        return preprocess_config
    return PREPROCESSED_SOURCES.get(source, preset)


def dataset_config_for(preset: str, dataset_config: str = "auto") -> str:
    """The dataset config a pipeline builds with: ``dataset_config`` unless ``auto`` (or empty): the paper
    ``preset``."""
    return preset if dataset_config in ("", "auto") else dataset_config


def preprocess(records_dir: str | os.PathLike[str], config: str, out: str | os.PathLike[str], *,
               workers: int | None = None, export_dir: str | os.PathLike[str] | None = None, overwrite: bool = False,
               cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Preprocess a records folder into ``out`` (``mammoflow preprocess``, the preprocess component); returns
    the run's counts (:class:`~mammoflow.preprocess.run.PreprocessSummary` as a dict, with ``usable``).

    ``config``: a preprocess preset, YAML path or ``gs://`` URI (:func:`~mammoflow.config.resolve_ref`). Records
    whose images are in object storage are fetched first (:func:`localise_records`); an unfinished records folder is
    refused before that. ``export_dir``: also viewable PNGs there; ``overwrite``: replace the output of another
    config. Nothing usable: :class:`NothingUsable` (the output folder, with its quarantine report, is written).
    """
    from dataclasses import asdict

    from mammoflow.preprocess.run import preprocess_records
    from mammoflow.records import require_complete

    config = resolve_ref(config, "preprocess", cache_dir)
    if not storage.is_remote(records_dir):  # checked before the local copy, which would be marked complete
        require_complete(records_dir)
    summary = preprocess_records(localise_records(records_dir, cache_dir), config, out, export_dir, workers,
                                 overwrite=overwrite, cache_dir=cache_dir)
    counts = {**asdict(summary), "usable": summary.usable}
    if summary.usable == 0:
        raise NothingUsable(Path(out) / "quarantine.md", "no usable record left after preprocessing",
                            "see the quarantine report for each record's problem and fix", counts)
    return counts


def safe_name(ref: str) -> str:
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
    return storage.join(require_root(storage_root), "datasets", f"{safe_name(config)}-{digest[:16]}")


def build_dataset(records_dir: str | os.PathLike[str], config: str, out: str | None = None, *, storage_root: str = "",
                  export_png: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None
                  ) -> Any:
    """Shards + manifest for a records folder (``mammoflow build-dataset``, the build-dataset component); returns
    the :class:`~mammoflow.dataset.build.BuildResult`.

    ``config``: a dataset preset, YAML path or ``gs://`` URI (:func:`~mammoflow.config.resolve_ref`). ``out``: the
    dataset folder (local or ``gs://``); default :func:`dataset_uri` under ``storage_root``. ``export_png``: also
    every example as a PNG there, to look at.
    """
    from mammoflow.dataset.build import build_dataset as build

    config = resolve_ref(config, "dataset", cache_dir)
    return build(records_dir, config, out or dataset_uri(storage_root, records_dir, config), export_png=export_png)


def publish_dataset(result: Any, config: str, out: str | os.PathLike[str]) -> dict[str, Any]:
    """The dataset's manifest, split summary and config copied into the local folder ``out`` (a pipeline's dataset
    artifact); returns what the artifact's metadata shows (``uri``: the shards' folder)."""
    copies.copy_files(result.out_uri, out, ("manifest.json", "split_summary.md", "dataset_config.yaml"))
    manifest = result.manifest
    return {"uri": result.out_uri, "config": config, "examples": manifest["examples"],
            "classes": manifest["classes"], "counts": manifest["counts"],
            "manifest_sha256": storage.sha256_of(storage.join(result.out_uri, "manifest.json")),
            "quarantined": manifest["inputs"]["records_quarantined"]}


def fetch_dataset(dataset: str, out: str | os.PathLike[str], *, from_file: str | os.PathLike[str] | None = None,
                  url: str | None = None, timeout: float = 60.0) -> Path:
    """Download a public dataset (``mias``, ``mias-rois``) into ``out`` and verify it, or install an archive
    downloaded elsewhere (``from_file``); returns where it is, to ingest (``mammoflow fetch``)."""
    from mammoflow.sources.fetch import fetch

    return fetch(dataset, Path(out), from_file=Path(from_file) if from_file else None, url=url, timeout=timeout)
