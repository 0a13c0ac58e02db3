"""``mammoflow preprocess``: run a preprocessing chain over a records folder, writing a new records folder.

Output folder layout::

    OUT/records.jsonl, records_meta.json, quarantine.jsonl, quarantine.md, ingest_summary.json
    OUT/images/<record>.png          preprocessed image (16-bit PNG when the chain outputs uint16, else 8-bit)
    OUT/masks/<record>__lesion<k>.png  mask of the record's k-th lesion, moved with the image (0 / 255)
    OUT/preprocess_config.yaml       the resolved chain (every default filled in)
    OUT/preprocess_summary.json      counts for this run
    OUT/.resume/<record>.json        per-record state, so an interrupted or repeated run does not redo work

Record paths in the new table are relative to OUT (``image_root: .``); lesion centres and radii are in the
preprocessed image's coordinates and ``extra["preprocess"]`` holds the chain's config hash.

Re-running with the same config resumes. OUT is never replaced silently: a folder made with another config, or
holding records that no preprocess run wrote (an ingest folder), is refused unless ``overwrite`` is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammoflow.config import dump_yaml, preset_names
from mammoflow.errors import ConfigError, InputError
from mammoflow.logs import progress
from mammoflow.preprocess import ops
from mammoflow.preprocess.chain import Chain, ChainResult
from mammoflow.records import RECORDS_FILE, Lesion, QuarantineEntry, Record, RecordsTable
from mammoflow.resources import MIN_JOBS_PER_WORKER, pool_map, worker_count
from mammoflow.storage import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

# The output folder's layout (drawn in the module docstring): its folders, then its own files.
IMAGES_DIR, MASKS_DIR, RESUME_DIR = "images", "masks", ".resume"
CONFIG_FILE, SUMMARY_FILE = "preprocess_config.yaml", "preprocess_summary.json"


def safe_name(text: str) -> str:
    """A file name for an id: unsafe characters replaced, plus a short hash so distinct ids never collide."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:80] or "item"
    return f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


@dataclass
class PreprocessSummary:
    config_hash: str
    records_in: int
    processed: int = 0
    reused: int = 0
    quarantined_new: int = 0
    quarantined_total: int = 0
    quarantined_by_code: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def usable(self) -> int:
        return self.processed + self.reused


def _image_root(table: RecordsTable, folder: Path) -> Path:
    root = Path(table.image_root)
    return root if root.is_absolute() else folder / root


def _input_fingerprint(rec: Record, image_path: Path) -> str:
    """Changes when the input record or its image file changes (so a resumed run redoes it)."""
    try:
        st = image_path.stat()
        stamp = [st.st_size, st.st_mtime_ns]
    except OSError:  # a zip member: the record's content hash (when the source set one) stands for it
        stamp = []
    text = json.dumps([rec.to_dict(), str(image_path), stamp], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------- one record


@dataclass(frozen=True)
class _Job:
    record: Record
    image_path: Path
    mask_paths: tuple[Path | None, ...]
    fingerprint: str
    cache_dir: str | None = None  # the cache root whose decode handoff the ingest filled (None: the default)


def _transform_lesions(rec: Record, res: ChainResult, name: str, image_path: Path) -> list[Lesion]:
    h, w = res.image.shape
    lesions = []
    for k, les in enumerate(rec.lesions):
        new = dataclasses.replace(les, extra=dict(les.extra))
        if les.center_row is not None and les.center_col is not None:
            row, col, radius = res.map_lesion(les.center_row, les.center_col, les.radius)
            if not (-0.5 <= row < h - 0.5 and -0.5 <= col < w - 0.5):
                raise InputError(image_path, f"lesion {les.lesion_id!r} centre falls outside the preprocessed "
                                             f"image ({row:.1f}, {col:.1f} in {h}x{w})",
                                 "check the lesion coordinates, or use a config that does not crop to the breast",
                                 code="outside_image", record_id=rec.record_id)
            new.center_row, new.center_col, new.radius = row, col, radius
        if les.mask_path is not None:  # the caller writes the moved mask there
            new.mask_path = f"{MASKS_DIR}/{name}__lesion{k}.png"
        lesions.append(new)
    return lesions


def _process(job: _Job, chain: Chain, config_hash: str, out_dir: Path, export_dir: Path | None) -> Record:
    """Read, preprocess and write one record; raises InputError for anything wrong with its files."""
    from mammoflow.io.images import read_image, write_png

    rec = job.record
    image = _read_image(job.image_path, rec.content_hash, job.cache_dir)
    masks = [read_image(p) for p in job.mask_paths if p is not None]
    res = chain(image, masks, path=job.image_path, record_id=rec.record_id)
    name = safe_name(rec.record_id)
    lesions = _transform_lesions(rec, res, name, job.image_path)
    mask_arrays = iter(res.masks)
    for les in lesions:
        if les.mask_path is not None:
            write_png(out_dir / les.mask_path, ops.to_uint8(next(mask_arrays)))
    image_rel = f"{IMAGES_DIR}/{name}.png"
    write_png(out_dir / image_rel, res.image)
    out = dataclasses.replace(
        rec, image_path=image_rel, height=int(res.image.shape[0]), width=int(res.image.shape[1]), lesions=lesions,
        extra={**rec.extra, "preprocess": config_hash, "preprocess_transform": res.transform.to_list()})
    if export_dir is not None:
        export_view(export_dir / f"{name}.png", res.image, out, res.masks)
    state = {"config_hash": config_hash, "input": job.fingerprint, "record": out.to_dict()}
    atomic_write_text(out_dir / RESUME_DIR / f"{name}.json", json.dumps(state, sort_keys=True) + "\n")
    return out


def _read_image(path: Path, digest: str | None, cache_dir: str | None = None) -> np.ndarray:
    """The image at ``path``: the display pixels its ingest decoded and handed on (:mod:`mammoflow.io.handoff`;
    ``digest``: the sha256 its record carries), else decoded now. Both give the same array."""
    from mammoflow.io.handoff import take
    from mammoflow.io.images import read_image

    pixels = take(path, digest, cache_dir=cache_dir)
    return read_image(path) if pixels is None else pixels


def _reusable(job: _Job, config_hash: str, out_dir: Path) -> Record | None:
    """The output record of an earlier run with the same config and input, if its files are all there."""
    state_path = out_dir / RESUME_DIR / f"{safe_name(job.record.record_id)}.json"
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return None
    if state.get("config_hash") != config_hash or state.get("input") != job.fingerprint:
        return None
    rec = Record.from_dict(state["record"])
    files = [rec.image_path] + [les.mask_path for les in rec.lesions if les.mask_path]
    return rec if all((out_dir / f).is_file() for f in files) else None


# Worker processes build their chain once (a Chain holds only its validated config).
_WORKER: dict[str, Any] = {}


def _worker_init(config: dict[str, Any], config_hash: str, out_dir: Path, export_dir: Path | None) -> None:
    _WORKER.update(chain=Chain.from_config(config), hash=config_hash, out=out_dir, export=export_dir)


def _worker_run(job: _Job) -> Record | QuarantineEntry:
    return _run_one(job, _WORKER["chain"], _WORKER["hash"], _WORKER["out"], _WORKER["export"])


def _run_one(job: _Job, chain: Chain, config_hash: str, out_dir: Path, export_dir: Path | None,
             ) -> Record | QuarantineEntry:
    try:
        return _process(job, chain, config_hash, out_dir, export_dir)
    except InputError as err:
        if err.record_id is None:
            err.record_id = job.record.record_id
        return QuarantineEntry.from_error(err, source=job.record.source)


# --------------------------------------------------------------------------------------------------- viewing


def export_view(path: Path, image: np.ndarray, rec: Record, masks: list[np.ndarray]) -> None:
    """An 8-bit colour PNG for people: contrast-stretched image, lesion masks (green) and circles (red)."""
    import cv2

    grey = ops.normalize_intensity(image, 0.5, 99.5, "uint8") if image.dtype != np.uint8 else image
    view = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    thickness = max(1, round(max(image.shape) / 400))
    for mask in masks:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(view, contours, -1, (0, 200, 0), thickness)
    for les in rec.lesions:
        if les.center_row is None or les.center_col is None:
            continue
        centre = (round(les.center_col), round(les.center_row))
        if les.radius:
            cv2.circle(view, centre, max(1, round(les.radius)), (0, 0, 255), thickness)
        cv2.drawMarker(view, centre, (0, 0, 255), cv2.MARKER_CROSS, 4 * thickness + 4, thickness)
    ok, buf = cv2.imencode(".png", view)
    if not ok:  # pragma: no cover - an 8-bit BGR image always encodes
        raise RuntimeError(f"could not encode {path}")
    atomic_write_bytes(path, buf.tobytes())


# --------------------------------------------------------------------------------------------------- the run


def check_output_folder(out_dir: Path, config_hash: str, overwrite: bool = False) -> None:
    """Refuse to write into a folder holding other work: another config's preprocessed images (a different
    resolved config hash in ``OUT/preprocess_config.yaml``) or records that no preprocess run wrote (an ingest
    folder). The same config resumes; ``overwrite`` replaces."""
    config_file = out_dir / CONFIG_FILE
    if config_file.is_file():
        try:
            previous: str | None = Chain.from_config(config_file).config_hash()
        except ConfigError:  # unreadable or from an incompatible version: not this config either
            previous = None
        if previous == config_hash:
            return
        if not overwrite:
            raise ConfigError(
                f"{out_dir}: already holds images preprocessed with another config ({CONFIG_FILE} hash "
                f"{(previous or 'unreadable')[:12]}, this run {config_hash[:12]}); writing here would replace them. "
                "Fix: give another --out, or add --overwrite to replace them")
        log.warning("%s: replacing the images of another preprocess config (--overwrite)", out_dir)
    elif (out_dir / RECORDS_FILE).exists():
        if not overwrite:
            raise ConfigError(
                f"{out_dir}: holds a records folder ({RECORDS_FILE}) that no preprocess run wrote (no {CONFIG_FILE}; "
                "an ingest output?); writing here would overwrite its records. Fix: give another --out, or add "
                "--overwrite to replace them")
        log.warning("%s: replacing a records folder that no preprocess run wrote (--overwrite)", out_dir)


def require_finished_records(records_dir: Path | str) -> Path:
    """``records_dir`` if the ingest (or preprocess) that wrote it finished, else an InputError naming the folder
    and the fix: a folder that a killed or failed ingest left half-written (new records beside the old meta) is
    never preprocessed. The completion marker is :func:`mammoflow.records.require_complete`'s, written last by
    every :meth:`RecordsTable.write`."""
    from mammoflow.records import require_complete

    return require_complete(records_dir)


def _by_record_id(entry: QuarantineEntry) -> QuarantineEntry:
    """``entry`` naming its input by record id instead of its (real) path."""
    return dataclasses.replace(entry, path=entry.record_id or "(path pseudonymised at ingest)")


def preprocess_records(records_dir: Path | str, config: str | Path | dict[str, Any], out_dir: Path | str,
                       export_dir: Path | str | None = None, workers: int | None = None, overwrite: bool = False,
                       cache_dir: str | Path | None = None) -> PreprocessSummary:
    """Preprocess every record of ``records_dir`` into ``out_dir`` (see the module docstring); resumable.

    ``records_dir`` must be complete (:func:`require_finished_records`). Bad images are quarantined (input
    quarantine carried over) and the run goes on. Re-running with the same config
    resumes; a folder holding another config's output or a records folder not written by preprocess is refused
    (:func:`check_output_folder`) unless ``overwrite``. ``workers``: processes (default: every CPU this process may
    use, see :func:`worker_count`).
    """
    started = time.monotonic()
    records_dir, out_dir = Path(records_dir), Path(out_dir)
    export = Path(export_dir) if export_dir is not None else None
    if out_dir.resolve() == records_dir.resolve():
        raise ConfigError(f"{out_dir}: the output folder is the input records folder. Fix: give another --out")
    chain = Chain.from_config(config)
    if chain.config.output_dtype == "float32":
        raise ConfigError("preprocess: output_dtype float32 cannot be written as PNG. "
                          "Fix: use uint8 or uint16 (scale to [0, 1] at the model input)")
    config_hash = chain.config_hash()
    check_output_folder(out_dir, config_hash, overwrite)
    table = RecordsTable.read(require_finished_records(records_dir))
    root = _image_root(table, records_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / CONFIG_FILE, dump_yaml(chain.resolved()))
    summary = PreprocessSummary(config_hash=config_hash, records_in=len(table.records))
    log.info("preprocess %d records with %r (config %s) into %s", len(table.records), chain, config_hash[:12],
             out_dir)

    results: dict[int, Record | QuarantineEntry] = {}
    todo: list[tuple[int, _Job]] = []
    for i, rec in enumerate(table.records):
        image_path = table.image_path(rec, records_dir)
        job = _Job(rec, image_path, tuple(root / les.mask_path if les.mask_path else None for les in rec.lesions),
                   _input_fingerprint(rec, image_path), None if cache_dir is None else str(cache_dir))
        done = _reusable(job, config_hash, out_dir)
        if done is not None:
            results[i] = done
            if export is not None and not (export / Path(done.image_path).name).exists():
                _export_existing(out_dir, export, done)
        else:
            todo.append((i, job))
    summary.reused = len(results)
    if summary.reused:
        log.info("%d records already preprocessed with this config: reused", summary.reused)

    # Paths pseudonymised at ingest (folders named after patients): real paths stay in the ingest's records folder;
    # this output and its log name each input by record id only.
    hide_paths = bool(table.meta.get("paths_pseudonymised"))
    for i, outcome in zip((i for i, _ in todo), _run_all([j for _, j in todo], chain, config, config_hash,
                                                         out_dir, export, workers), strict=True):
        if isinstance(outcome, QuarantineEntry) and hide_paths:
            outcome = _by_record_id(outcome)
        results[i] = outcome
        if isinstance(outcome, QuarantineEntry):
            where = "" if hide_paths else f" ({outcome.path})"
            log.warning("quarantined %s%s [%s]: %s. Fix: %s", outcome.record_id, where, outcome.code,
                        outcome.problem, outcome.fix)

    records = [r for _, r in sorted(results.items()) if isinstance(r, Record)]
    new_quarantine = [q for _, q in sorted(results.items()) if isinstance(q, QuarantineEntry)]
    carried = [_by_record_id(q) for q in table.quarantine] if hide_paths else list(table.quarantine)
    out_table = RecordsTable(
        records=records, quarantine=carried + new_quarantine, image_root=".", source=table.source,
        meta={**table.meta, "preprocess": {"config_hash": config_hash, "config": _config_label(config)}})
    written = out_table.write(out_dir)
    summary.processed = len(records) - summary.reused
    summary.quarantined_new = len(new_quarantine)
    summary.quarantined_total = written["quarantined"]
    summary.quarantined_by_code = written["quarantined_by_code"]
    summary.seconds = round(time.monotonic() - started, 3)
    atomic_write_text(out_dir / SUMMARY_FILE, json.dumps(dataclasses.asdict(summary), indent=2, sort_keys=True)
                      + "\n")
    return summary


def _config_label(config: str | Path | dict[str, Any]) -> str:
    return str(config) if isinstance(config, str) and config in preset_names("preprocess") else (
        Path(config).name if isinstance(config, (str, Path)) else "dict")


# Each worker gets at least this many images (the pool's own rule, :data:`mammoflow.resources.MIN_JOBS_PER_WORKER`).
MIN_IMAGES_PER_WORKER = MIN_JOBS_PER_WORKER


def _run_all(jobs: list[_Job], chain: Chain, config: Any, config_hash: str, out_dir: Path,
             export_dir: Path | None, workers: int | None) -> Iterator[Record | QuarantineEntry]:
    n = worker_count(workers, len(jobs))
    if n <= 1:
        for job in progress(jobs, desc="preprocess", unit="image"):
            yield _run_one(job, chain, config_hash, out_dir, export_dir)
        return
    log.info("preprocess in %d worker processes", n)
    yield from pool_map(_worker_run, jobs, n, setup=_worker_init,
                        setup_args=(chain.resolved(), config_hash, out_dir, export_dir), desc="preprocess",
                        unit="image", chunksize=2)


def _export_existing(out_dir: Path, export_dir: Path, rec: Record) -> None:
    from mammoflow.io.images import read_image

    image = read_image(out_dir / rec.image_path)
    masks = [read_image(out_dir / les.mask_path) > 0 for les in rec.lesions if les.mask_path]
    export_view(export_dir / Path(rec.image_path).name, image, rec, masks)
