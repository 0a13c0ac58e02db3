"""Incremental ingest: read only what is new in a watched source folder, append it, and extend the split plan.

A retraining loop sees the same folder again and again. Reading it all every time would decode every image again
(hours for CBIS-DDSM) and re-planning splits would move patients between train and test, so a model could be
evaluated on patients it was trained on. Here:

1. **Which files changed** (:func:`scan_changes`): every file under the source root is listed with its size and
   mtime. A file whose (path, size, mtime) equal the previous ingest's ``file_index.json`` keeps its recorded
   sha256 and is not opened; any other file is hashed (and compared with the previous index, or with the content
   hashes of the previous records when there is no index). ``rehash=True`` hashes everything.
2. **Which records must be read**: previous records whose files are unchanged are carried over as they are. When an
   annotation file changed too (``Info.txt``, the labels CSV), the annotations are re-read *without images*
   (``metadata_only``) and a previous record whose annotation changed is read again.
3. **Reading** (:func:`incremental_ingest`): the source reader runs on a *view* of the root, a temporary folder of
   hard links (copies across filesystems) holding every file except the carried records' images, so only new and
   changed images are decoded. Sources that are not folders (Yu's zip) are read in full and compared by content.
   The reader's complaints about the hidden images of carried records are dropped; every other quarantine entry is
   kept. A new image with the same content as an existing one under another id is quarantined
   (``duplicate_image``), and so is a new image whose SOP Instance UID or decoded pixels equal a carried record's
   (``duplicate``, :mod:`mammoflow.sources.duplicates`), and a changed record whose patient changed (``patient_changed``: moving it would
   break the split plan).
4. **Splits**: new records are added to the previous ``split_plan.json`` with
   :func:`mammoflow.dataset.splits.extend_plan` (no existing patient ever moves; new images of a known patient join
   that patient's split); with ``freeze_test`` new patients go to train/val only, so the evaluation (test) split of
   a retraining stays the set of patients it was first judged on. Each record carries its split in ``Record.split``
   (the source's own split is kept in ``extra["source_split"]``), which build-dataset keeps with
   ``splits.keep_existing: true``.
5. **Nothing new** is an explicit result: ``new_records == 0`` and ``nothing_new`` in ``ingest_delta.json``.

The output folder is a complete records folder (as ``mammoflow ingest`` writes) plus ``split_plan.json``,
``file_index.json`` and ``ingest_delta.json`` (written last).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mammoflow.dataset.splits import SplitConfig, SplitPlan, check_plan, extend_plan, plan_splits
from mammoflow.errors import ConfigError, MammoflowError
from mammoflow.records import QuarantineEntry, Record, RecordsTable, atomic_write_text
from mammoflow.sources import SourceOptions, read_source
from mammoflow.sources._common import source_file_key, source_files
from mammoflow.sources.duplicates import DuplicateFinder
from mammoflow.storage import file_sha256

log = logging.getLogger(__name__)

INDEX_FILE = "file_index.json"
DELTA_FILE = "ingest_delta.json"
PLAN_FILE = "split_plan.json"
Mode = Literal["first", "incremental", "full"]


# --------------------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int
    sha256: str


@dataclass
class ChangeScan:
    """What changed in the source files since the previous ingest (no image is decoded to find out)."""

    index: dict[str, FileState]  # key (path relative to root, or absolute outside it) -> state now
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    hashed: int = 0  # files read to hash them
    hash_reused: int = 0  # files whose hash came from the previous index (not opened)
    has_previous: bool = False

    @property
    def nothing_changed(self) -> bool:
        return self.has_previous and not (self.new or self.changed or self.removed)

    def summary(self) -> dict[str, Any]:
        return {"scanned": len(self.index), "new": len(self.new), "changed": len(self.changed),
                "removed": len(self.removed), "unchanged": len(self.unchanged), "hashed": self.hashed,
                "hash_reused": self.hash_reused}


def read_index(records_dir: Path | str | None) -> dict[str, FileState] | None:
    if records_dir is None:
        return None
    path = Path(records_dir) / INDEX_FILE
    if not path.exists():
        return None
    return {k: FileState(**v) for k, v in json.loads(path.read_text())["files"].items()}


def write_index(folder: Path, index: Mapping[str, FileState], root: Path | None) -> None:
    body = {"root": str(root) if root is not None else None,
            "files": {k: dataclasses.asdict(v) for k, v in sorted(index.items())}}
    atomic_write_text(folder / INDEX_FILE, json.dumps(body, indent=1, sort_keys=True) + "\n")


def scan_changes(opts: SourceOptions, previous_records_dir: Path | str | None = None, *,
                 rehash: bool = False) -> ChangeScan:
    """Compare the source's files with the previous ingest's (see step 1 of the module docstring)."""
    prev_dir = Path(previous_records_dir) if previous_records_dir is not None else None
    has_previous = prev_dir is not None and (prev_dir / "records.jsonl").exists()
    prev_index = read_index(prev_dir) if has_previous else None
    known_hashes: dict[str, str] = {}
    if has_previous and prev_index is None:  # written by plain `mammoflow ingest`: compare with content hashes
        assert prev_dir is not None
        table = RecordsTable.read(prev_dir)
        root = Path(opts.root).resolve() if opts.root is not None else None
        for rec in table.records:
            if rec.content_hash:
                known_hashes[source_file_key(table.image_path(rec, prev_dir), root)] = rec.content_hash
    scan = ChangeScan(index={}, has_previous=has_previous)
    for key, path in source_files(opts).items():
        st = path.stat()
        old = (prev_index or {}).get(key)
        if old is not None and not rehash and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
            state = old
            scan.hash_reused += 1
        else:
            state = FileState(st.st_size, st.st_mtime_ns, file_sha256(path))
            scan.hashed += 1
        scan.index[key] = state
        before = old.sha256 if old is not None else known_hashes.get(key)
        if before is None:
            scan.new.append(key)
        elif before != state.sha256:
            scan.changed.append(key)
        else:
            scan.unchanged.append(key)
    if prev_index is not None:
        scan.removed = sorted(set(prev_index) - set(scan.index))
    return scan


# --------------------------------------------------------------------------------------------------- result


@dataclass
class IngestDelta:
    """What one incremental ingest did (written as ``ingest_delta.json``)."""

    mode: Mode
    out_dir: str
    previous: str | None
    new_records: int = 0
    changed_records: int = 0
    removed_records: int = 0
    carried_records: int = 0
    total_records: int = 0
    quarantined_new: int = 0
    quarantined_total: int = 0
    new_patients: int = 0
    new_by_split: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    new_record_ids: list[str] = field(default_factory=list)
    changed_record_ids: list[str] = field(default_factory=list)
    removed_record_ids: list[str] = field(default_factory=list)
    quarantined_by_code: dict[str, int] = field(default_factory=dict)
    plan_sha256: str = ""
    freeze_test: bool = False

    @property
    def nothing_new(self) -> bool:
        """No record was added, changed or removed: a retrain can stop here."""
        return self.new_records == 0 and self.changed_records == 0 and self.removed_records == 0

    @property
    def quarantine_rate(self) -> float:
        """Share of this ingest's inputs that were quarantined (0 when nothing was read)."""
        read = self.new_records + self.changed_records + self.quarantined_new
        return self.quarantined_new / read if read else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "nothing_new": self.nothing_new, "quarantine_rate": self.quarantine_rate}

    @classmethod
    def read(cls, folder: Path | str) -> IngestDelta:
        data = json.loads((Path(folder) / DELTA_FILE).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# --------------------------------------------------------------------------------------------------- reading


def annotation_signature(rec: Record) -> str:
    """What an annotation says about one record (labels, lesions, patient, side, view, source split), without
    anything that depends on reading the image; equal signatures mean the annotation did not change."""
    lesions = sorted((les.lesion_id, les.label, les.kind,
                      None if les.center_row is None else round(les.center_row, 1),
                      None if les.center_col is None else round(les.center_col, 1),
                      None if les.radius is None else round(les.radius, 1)) for les in rec.lesions)
    source_split = rec.extra["source_split"] if "source_split" in rec.extra else rec.split
    return json.dumps([rec.patient_id, rec.label, rec.laterality, rec.view, source_split, lesions], default=str)


def _record_files(rec: Record, table: RecordsTable, folder: Path, root: Path) -> list[str] | None:
    """Keys of the files a record was read from, or None when one lies outside the root."""
    base = Path(table.image_root)
    base = base if base.is_absolute() else folder / base
    out = []
    for rel in [rec.image_path] + [les.mask_path for les in rec.lesions if les.mask_path]:
        try:
            out.append((base / rel).resolve().relative_to(root).as_posix())
        except ValueError:
            return None
    return out


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:  # another filesystem, or links not allowed: a copy reads the file once more
        shutil.copy2(src, dest)


class _DropCarried(logging.Filter):
    """Drops the readers' quarantine warnings about carried records (their images are left out of the view on
    purpose; those entries are dropped too)."""

    def __init__(self, carried_ids: set[str]):
        super().__init__()
        self.carried_ids = carried_ids

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and args[0] in self.carried_ids)


@contextlib.contextmanager
def _quiet_about(carried_ids: set[str]) -> Iterator[None]:
    source_log = logging.getLogger("mammoflow.sources._common")
    drop = _DropCarried(carried_ids)
    source_log.addFilter(drop)
    try:
        yield
    finally:
        source_log.removeFilter(drop)


@dataclass
class _Read:
    table: RecordsTable
    carried: list[Record]
    mode: Mode


def _read_fresh(source: str, opts: SourceOptions, prev: RecordsTable, prev_dir: Path, scan: ChangeScan,
                out_dir: Path) -> _Read:
    """Read what the scan says changed; carry the rest (steps 2-3 of the module docstring)."""
    root = Path(opts.root).resolve() if opts.root is not None else None
    prev_root = Path(prev.image_root) if Path(prev.image_root).is_absolute() else (prev_dir / prev.image_root)
    if root is None or not root.is_dir() or prev_root.resolve() != root:
        log.info("incremental ingest: the source is not the same folder as before; reading it in full")
        return _Read(read_source(source, opts), [], "full")
    files_of = {rec.record_id: _record_files(rec, prev, prev_dir, root) for rec in prev.records}
    if any(f is None for f in files_of.values()):
        return _Read(read_source(source, opts), [], "full")
    unchanged = set(scan.unchanged)
    record_keys = {k for files in files_of.values() for k in files or ()}
    candidates = [rec for rec in prev.records if all(k in unchanged for k in files_of[rec.record_id] or ())]
    touched = set(scan.new) | set(scan.changed) | set(scan.removed)
    if touched - record_keys:  # an annotation file changed: which records does it change?
        try:
            meta = read_source(source, dataclasses.replace(opts, metadata_only=True))
        except (MammoflowError, ValueError, OSError) as exc:
            log.info("incremental ingest: annotations cannot be read without images (%s); reading in full", exc)
            return _Read(read_source(source, opts), [], "full")
        now = {r.record_id: annotation_signature(r) for r in meta.records}
        candidates = [rec for rec in candidates if now.get(rec.record_id) == annotation_signature(rec)]
    carried_files = {k for rec in candidates for k in files_of[rec.record_id] or ()}
    view = (out_dir / ".view").resolve()
    shutil.rmtree(view, ignore_errors=True)
    try:
        linked = 0
        for key in scan.index:
            path = root / key
            if not Path(key).is_absolute() and key not in carried_files and path.is_file():
                _link_or_copy(path, view / key)
                linked += 1
        view.mkdir(parents=True, exist_ok=True)
        log.info("incremental ingest: %d previous records carried over, %d files to read", len(candidates), linked)
        carried_ids = {r.record_id for r in candidates}
        with _quiet_about(carried_ids):
            table = read_source(source, dataclasses.replace(opts, root=view))
    finally:
        shutil.rmtree(view, ignore_errors=True)
    table.image_root = str(root)
    table.quarantine = [dataclasses.replace(q, path=q.path.replace(str(view), str(root)))
                        for q in table.quarantine if q.record_id not in carried_ids]
    table.skipped = [dataclasses.replace(s, path=s.path.replace(str(view), str(root))) for s in table.skipped]
    table.records = [r for r in table.records if r.record_id not in carried_ids]
    table.meta = {**prev.meta, "last_read": {k: v for k, v in table.meta.items() if k != "line_accounting"}}
    return _Read(table, candidates, "incremental")


def _quarantine(rec: Record, code: str, problem: str, fix: str) -> QuarantineEntry:
    return QuarantineEntry(path=rec.image_path, code=code, problem=problem, fix=fix, source=rec.source,
                           record_id=rec.record_id)


def _q_key(q: QuarantineEntry) -> tuple[str, str, str]:
    return (Path(q.path).name, q.code, q.record_id or "")


# --------------------------------------------------------------------------------------------------- splits


def _extend(plan: SplitPlan, fresh: list[Record], freeze_test: bool) -> SplitPlan:
    """:func:`extend_plan`, with new patients kept out of test when the evaluation split is frozen."""
    if not freeze_test:
        return extend_plan(plan, fresh)
    train_r, val_r, _ = plan.params.get("ratios", (0.6, 0.2, 0.2))
    frozen = SplitPlan.from_dict(plan.to_dict())
    frozen.params = {**plan.params, "ratios": [train_r / (train_r + val_r), val_r / (train_r + val_r), 0.0]}
    out = extend_plan(frozen, fresh)
    out.params = dict(plan.params)  # the plan's own ratios; the freeze is recorded in ingest_delta.json
    return out


def first_plan(records: list[Record], cfg: SplitConfig) -> SplitPlan:
    if cfg.k_folds:
        raise ConfigError("retraining keeps one fixed evaluation split; splits.k_folds is not supported there. "
                          "Fix: remove k_folds from the dataset config used for retraining")
    return plan_splits(records, ratios=cfg.ratios, seed=cfg.seed, group_by=cfg.group_by,
                       stratify_by=cfg.stratify_by, keep_existing=cfg.keep_existing, on_leak=cfg.on_leak)


def read_plan(records_dir: Path | str) -> SplitPlan | None:
    path = Path(records_dir) / PLAN_FILE
    return SplitPlan.from_dict(json.loads(path.read_text())) if path.exists() else None


# --------------------------------------------------------------------------------------------------- ingest


def incremental_ingest(source: str, opts: SourceOptions, previous_records_dir: Path | str | None,
                       out_dir: Path | str, *, split_config: SplitConfig | None = None, freeze_test: bool = False,
                       rehash: bool = False, scan: ChangeScan | None = None) -> IngestDelta:
    """Ingest only what changed in ``source`` since ``previous_records_dir`` into ``out_dir`` (a new folder).

    ``previous_records_dir`` None (or missing) means a first ingest: everything is read and ``split_config`` plans
    the splits. ``scan``: a :func:`scan_changes` result already computed for the same inputs (saves hashing new
    files twice). Returns the :class:`IngestDelta`, also written as ``ingest_delta.json`` (last).
    """
    out = Path(out_dir)
    prev_dir = Path(previous_records_dir) if previous_records_dir is not None else None
    if prev_dir is not None and not (prev_dir / "records.jsonl").exists():
        prev_dir = None
    if prev_dir is not None and out.resolve() == prev_dir.resolve():
        raise ConfigError(f"{out}: the output is the previous records folder. Fix: write each ingest to a new folder")
    scan = scan or scan_changes(opts, prev_dir, rehash=rehash)
    out.mkdir(parents=True, exist_ok=True)
    prev = RecordsTable.read(prev_dir) if prev_dir is not None else None
    prev_plan = read_plan(prev_dir) if prev_dir is not None else None

    if prev is None:
        fresh_table, carried, mode = read_source(source, opts), [], "first"
        fresh_table.image_root = str(Path(fresh_table.image_root).resolve()) if fresh_table.image_root else "."
    elif scan.nothing_changed:
        fresh_table = RecordsTable(records=[], quarantine=list(prev.quarantine), image_root=prev.image_root,
                                   source=prev.source, meta=dict(prev.meta), skipped=list(prev.skipped))
        carried, mode = list(prev.records), "incremental"
    else:
        assert prev_dir is not None
        read = _read_fresh(source, opts, prev, prev_dir, scan, out)
        fresh_table, carried, mode = read.table, read.carried, read.mode

    prev_by_id = {r.record_id: r for r in (prev.records if prev else [])}
    carried_ids = {r.record_id for r in carried}
    quarantine = list(fresh_table.quarantine)
    fresh: list[Record] = []
    known_hashes = {r.content_hash: r.record_id for r in carried if r.content_hash}
    same_image = DuplicateFinder()  # by SOP Instance UID pseudonym and pixel digest, when the source gives them
    for rec in carried:
        same_image.check(rec, rec.image_path)
    for rec in sorted(fresh_table.records, key=lambda r: r.record_id):
        if rec.record_id in carried_ids:
            continue
        old = prev_by_id.get(rec.record_id)
        if mode == "full" and old is not None and old.content_hash == rec.content_hash \
                and annotation_signature(old) == annotation_signature(rec):
            carried.append(old)  # read again in full, but the same: keep the planned record as it was
            carried_ids.add(old.record_id)
            continue
        twin = known_hashes.get(rec.content_hash) if rec.content_hash else None
        if twin is not None and twin != rec.record_id:
            quarantine.append(_quarantine(rec, "duplicate_image", f"same image content as {twin}",
                                          "remove the copy (one image under two names would leak between splits)"))
            continue
        dup = same_image.check(rec, rec.image_path) if old is None else None
        if dup is not None:
            quarantine.append(QuarantineEntry.from_error(dup, source=rec.source))
            continue
        if old is not None and old.patient_id != rec.patient_id:
            quarantine.append(_quarantine(rec, "patient_changed",
                                          "its patient id changed since the splits were planned",
                                          "restore the previous patient id, or start a new retraining work folder"))
            continue
        rec.extra = {**rec.extra, "source_split": rec.split}
        if rec.content_hash:
            known_hashes[rec.content_hash] = rec.record_id
        fresh.append(rec)

    records = sorted(carried + fresh, key=lambda r: r.record_id)
    new_ids = [r.record_id for r in fresh if r.record_id not in prev_by_id]
    changed_ids = [r.record_id for r in fresh if r.record_id in prev_by_id]
    kept = {r.record_id for r in records}
    removed_ids = sorted(set(prev_by_id) - kept)

    # Splits: extend the previous plan (nobody moves), or plan once on the first ingest.
    if prev_plan is not None:
        plan = _extend(prev_plan, [r for r in fresh if r.record_id not in prev_plan.assignments], freeze_test)
    else:
        plan = first_plan([dataclasses.replace(r, split=r.extra.get("source_split", r.split)) for r in records],
                          split_config or SplitConfig())
    check_plan(plan, records)
    for rec in records:
        rec.split = plan.split_of(rec.record_id)
    prev_patients = {r.patient_id for r in prev_by_id.values()}
    new_patients = {r.patient_id for r in fresh if r.patient_id not in prev_patients}

    table = RecordsTable(records=records, quarantine=quarantine, image_root=fresh_table.image_root,
                         source=fresh_table.source or source, skipped=fresh_table.skipped,
                         meta={**fresh_table.meta, "incremental": {"previous": str(prev_dir) if prev_dir else None,
                                                                   "mode": mode}})
    table.check_unique_ids()
    summary = table.write(out)
    atomic_write_text(out / PLAN_FILE, plan.to_json())
    write_index(out, scan.index, Path(opts.root).resolve() if opts.root is not None else None)
    prev_q = {_q_key(q) for q in (prev.quarantine if prev else [])}
    new_q = [q for q in table.quarantine if _q_key(q) not in prev_q]
    delta = IngestDelta(
        mode=mode, out_dir=str(out), previous=str(prev_dir) if prev_dir else None,
        new_records=len(new_ids), changed_records=len(changed_ids), removed_records=len(removed_ids),
        carried_records=len(carried), total_records=len(records), quarantined_new=len(new_q),
        quarantined_total=summary["quarantined"], new_patients=len(new_patients),
        new_by_split=dict(Counter(plan.split_of(i) for i in new_ids)),
        files=scan.summary(), new_record_ids=new_ids, changed_record_ids=changed_ids, removed_record_ids=removed_ids,
        quarantined_by_code=dict(Counter(q.code for q in new_q)), plan_sha256=plan.sha256(), freeze_test=freeze_test)
    atomic_write_text(out / DELTA_FILE, json.dumps(delta.to_dict(), indent=2, sort_keys=True) + "\n")
    if delta.nothing_new:
        log.info("incremental ingest: nothing new (%d records carried over)", len(records))
    else:
        log.info("incremental ingest: %d new, %d changed, %d removed records (%d new patients: %s); %d quarantined",
                 delta.new_records, delta.changed_records, delta.removed_records, delta.new_patients,
                 delta.new_by_split, delta.quarantined_new)
    return delta


def split_of_patients(records: Iterable[Record]) -> dict[str, str]:
    """Patient id -> split, from records carrying their split (as written by :func:`incremental_ingest`)."""
    out: dict[str, str] = {}
    for rec in records:
        if rec.split is not None:
            out.setdefault(rec.patient_id, rec.split)
    return out


__all__ = ["DELTA_FILE", "INDEX_FILE", "PLAN_FILE", "ChangeScan", "FileState", "IngestDelta",
           "annotation_signature", "first_plan", "incremental_ingest", "read_index", "read_plan", "scan_changes",
           "split_of_patients"]
