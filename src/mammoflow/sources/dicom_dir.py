"""A folder of DICOM mammograms (a site's own images), with an optional labels CSV.

Every DICOM file under ``root`` (recursively) becomes one record: ``.dcm``/``.dicom`` files, and any other file
that carries the ``DICM`` marker. Hidden files and folders, known sidecars (``*.csv`` such as the labels CSV,
readmes, ``DICOMDIR``) and links to folders are skipped and listed with the reason (``skipped.jsonl``); any other
file is quarantined (``not_dicom``, ``unreadable``, ``bad_file_name`` for a name that is not UTF-8), so
read = used + quarantined + skipped holds for the whole folder (:mod:`mammoflow.sources.dicom_scan`). The labels
CSV (:mod:`mammoflow.sources.labels_csv`; UTF-8, a BOM is fine) has the columns ``path,label`` and optionally
``patient_id,laterality,view``; ``path`` is relative to ``root``. Unlabelled images are valid (label ``None``:
prediction and CAMs). Laterality and view come from the CSV, else from the DICOM header; a CSV value that
contradicts the header is quarantined (``annotation_mismatch``). The patient id is the salted pseudonym of the
header's PatientID, or of the CSV's ``patient_id`` when the header has none (the same function, so both give the
same id for the same patient); a CSV ``patient_id`` that contradicts the header's is quarantined
(``patient_conflict``, both shown as pseudonyms only). The same image twice (same SOP Instance UID or decoded
pixels) is quarantined as ``duplicate`` (:mod:`mammoflow.sources.duplicates`). No DICOM identifier leaves
:mod:`mammoflow.io.dicom` and this module.

**Salt.** Patient ids come from real identifiers here, so a secret salt is required (``--salt``,
``$MAMMOFLOW_SALT``; on Kubeflow the Secret ``mammoflow-salt``): without one the ingest stops with an error saying
how to set it. The one exception is the built-in phantoms (``mammoflow demo-data --format dicom``, every file
marked in its header): without a salt they are read with the public demo salt, said in the log and in
``records_meta.json`` (``salt``); a file that is not a phantom in such a folder stops the ingest.

Which labels CSV: the one given (``mammoflow ingest --labels``, the pipelines' ``labels`` parameter, a retrain
config's ``source.labels``). When none is given and ``root/labels.csv`` exists, that file is used, so a site
folder that carries its labels (a hospital's export copied to a bucket as it is) needs no extra argument. The
choice is logged and written in the records' meta (``labels_file``, ``labels_found_in_root``); to ingest such a
folder unlabelled, rename the file (or call :func:`read_dicom_dir` with ``find_labels=False``).

**Identifiers in paths.** Record ids are ``dicom-dir:<path under root>`` and name every output downstream
(preprocessed images, predictions, CAMs). Exports are often foldered by patient (``DOE^JANE/...``): a folder or
file name containing ``^`` (the DICOM person-name separator) is warned about (without printing it). With
``pseudonymise_paths`` (``mammoflow ingest --pseudonymise-paths``) the record id is instead
``dicom-dir:img-<16 hex>``, the salted pseudonym of the path (:func:`mammoflow.io.dicom.pseudonym`, the same
salt as patient ids, so ids are stable between runs), and logs name records by that id. The real path stays
inside the records folder only: ``image_path`` in ``records.jsonl`` (to read the file), ``image_root`` in
``records_meta.json`` and the quarantine's ``path`` (to find the file to fix); keep that folder at the site.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from mammoflow.errors import ConfigError, InputError
from mammoflow.io.dicom import pseudonym
from mammoflow.io.handoff import Handoff
from mammoflow.records import QuarantineEntry, Record, RecordsTable
from mammoflow.resources import worker_count
from mammoflow.sources import parallel
from mammoflow.sources._common import (
    DEMO_SALT,
    SALT_FIX,
    SourceOptions,
    add_quarantine,
    add_skipped,
    check_name,
    quarantine_error,
    salt_note,
    site_salt,
)
from mammoflow.sources.dicom_scan import DICOM_SUFFIXES, FolderScan, find_dicoms, scan_folder
from mammoflow.sources.duplicates import DuplicateFinder, pixel_digest, read_identity
from mammoflow.sources.labels_csv import LabelRow, ParsedLabels, parse_labels

if TYPE_CHECKING:
    from mammoflow.io.dicom import DicomImage

log = logging.getLogger(__name__)

SOURCE = "dicom-dir"
PERSON_NAME_MARK = "^"  # separates the components of a DICOM person name (PN): DOE^JANE
#: The labels CSV of a folder given none: ``root/labels.csv`` (see the module docstring).
DEFAULT_LABELS = "labels.csv"

__all__ = ["DEFAULT_LABELS", "DICOM_SUFFIXES", "SOURCE", "FolderScan", "LabelRow", "ParsedLabels", "find_dicoms",
           "labels_in_root", "parse_labels", "read_dicom_dir", "read_source", "record_id_function", "scan_folder"]


def _person_name_warning(rels: Iterable[str], root: Path, pseudonymised: bool) -> None:
    """Warn (without printing them) when folder or file names may be patient names (contain ``^``)."""
    n = sum(1 for rel in rels if any(PERSON_NAME_MARK in part for part in PurePosixPath(rel).parts))
    if n and pseudonymised:
        log.warning("%d file path(s) under --root contain '%s', the DICOM person-name separator: folder or file "
                    "names may be patient names. Record ids and logs use path pseudonyms (--pseudonymise-paths); "
                    "records.jsonl (image_path) and quarantine.jsonl keep the real paths to find the files: keep "
                    "the records folder at the site", n, PERSON_NAME_MARK)
    elif n:
        log.warning("%d file path(s) under --root contain '%s', the DICOM person-name separator: folder or file "
                    "names may be patient names, and record ids (so every output) are made from these paths. "
                    "Rename the folders, or ingest with --pseudonymise-paths", n, PERSON_NAME_MARK)
    if any(PERSON_NAME_MARK in part for part in Path(root).resolve().parts):
        log.warning("the --root path contains '%s' (the DICOM person-name separator; it may be a patient name): it "
                    "is written as image_root in records_meta.json. Rename the folder", PERSON_NAME_MARK)


def record_id_function(salt: str, pseudonymise_paths: bool) -> Callable[[str], str]:
    """``rel -> record id``: ``dicom-dir:<rel>``, or ``dicom-dir:img-<hash>`` with ``pseudonymise_paths``."""
    if pseudonymise_paths:
        return lambda rel: f"{SOURCE}:{pseudonym(rel, salt, prefix='img-')}"
    return lambda rel: f"{SOURCE}:{rel}"


def labels_in_root(root: Path) -> Path | None:
    """``root/labels.csv`` when it exists: the labels CSV of a DICOM folder given none."""
    path = Path(root) / DEFAULT_LABELS
    return path if path.is_file() else None


def _parse_labels(path: Path, root: Path, found: bool, record_id: Callable[[str], str]) -> ParsedLabels:
    """:func:`parse_labels`; an unreadable CSV that nobody named says why it was read."""
    try:
        return parse_labels(path, root, record_id)
    except InputError as err:
        if not found:
            raise
        raise InputError(err.path, err.problem, f"{err.fix}. It was read because no labels CSV was given and it is "
                         f"{DEFAULT_LABELS} in the DICOM folder: rename it to ingest the folder unlabelled",
                         code=err.code, record_id=err.record_id) from None


def _patient(row: LabelRow | None, header_patient: str | None, rel: str, path: Path, rid: str,
             salt: str) -> tuple[str, str]:
    """(pseudonymous patient id, where it came from); a CSV id contradicting the header's is quarantined."""
    csv_patient = pseudonym(row.patient_id, salt) if row is not None and row.patient_id else None
    if csv_patient and header_patient and csv_patient != header_patient:
        raise InputError(path, f"the labels CSV's patient_id (pseudonym {csv_patient}) differs from the DICOM "
                         f"header's PatientID (pseudonym {header_patient})", "correct the patient_id in the labels "
                         "CSV (or the header's PatientID): one image belongs to one patient", code="patient_conflict",
                         record_id=rid)
    if csv_patient:
        return csv_patient, "labels CSV (salted hash)"
    if header_patient:
        return header_patient, "DICOM PatientID (salted hash)"
    # Nothing links this image to others: one pseudo patient per image, said so in the record.
    log.warning("%s: no PatientID in the header or the labels CSV; treated as its own patient", rid)
    return pseudonym(rel, salt, prefix="p-file-"), "none in the header or the CSV: one pseudo patient per image"


def _record(path: Path, root: Path, rid: str, row: LabelRow | None, salt: str, metadata_only: bool,
            modality: str | None, sop_instance: str | None) -> tuple[Record, DicomImage | None]:
    """The record of one DICOM file, and its decoded image (None with ``metadata_only``)."""
    from mammoflow.io.dicom import read_dicom, read_dicom_header
    from mammoflow.io.files import file_sha256

    rel = path.relative_to(root).as_posix()
    header = read_dicom_header(path, salt=salt, expect_modality=modality, log_as=rid) if metadata_only else \
        read_dicom(path, salt=salt, expect_modality=modality, log_as=rid)
    side, view = header.laterality, header.view
    for what, given, found in (("laterality", row and row.laterality, side), ("view", row and row.view, view)):
        if given and found and given != found:
            raise InputError(path, f"labels CSV {what} {given} differs from the DICOM header's {found}",
                             "correct the labels CSV (or the header)", code="annotation_mismatch", record_id=rid)
    patient, patient_source = _patient(row, header.pseudo_patient_id, rel, path, rid, salt)
    extra: dict[str, object] = {"patient_id_source": patient_source}
    if getattr(header, "for_processing", False):  # raw detector data: used, flagged (the model saw presentations)
        extra["for_processing"] = True
    if sop_instance:
        extra["sop_instance"] = sop_instance  # a salted pseudonym of the UID, never the UID
    if not metadata_only:
        extra["pixel_sha256"] = pixel_digest(header.pixels)  # type: ignore[attr-defined]
    if row is not None:
        side, view = row.laterality or side, row.view or view
    rec = Record(record_id=rid, source=SOURCE, patient_id=patient, image_path=rel,
                 label=row.label if row is not None else None, laterality=side, view=view,
                 height=header.rows, width=header.cols,
                 content_hash=None if metadata_only else file_sha256(path), extra=extra)
    return rec, None if metadata_only else header  # type: ignore[return-value]


@dataclass(frozen=True)
class FileContext:
    """What every file's work needs (see :func:`read_file`)."""

    root: Path
    salt: str
    metadata_only: bool
    modality: str | None
    handoff: Handoff


@dataclass(frozen=True)
class FileJob:
    path: Path
    rid: str
    row: LabelRow | None


def read_file(ctx: FileContext, job: FileJob) -> tuple[Record, bool]:
    """One DICOM file's record, and whether it is one of mammoflow's phantoms: the work an ingest runs in its
    worker pool (:mod:`mammoflow.sources.parallel`). Raises InputError for a file that cannot be used; the decoded
    pixels are handed on to preprocess (:mod:`mammoflow.io.handoff`)."""
    from mammoflow.storage.copies import materialise

    path = materialise(job.path)  # fetched now when the data root is streamed from object storage
    identity = read_identity(path, ctx.salt)
    rec, image = _record(path, ctx.root, job.rid, job.row, ctx.salt, ctx.metadata_only, ctx.modality,
                         identity.sop_instance)
    if image is not None:
        ctx.handoff.put(rec.content_hash, image)
    return rec, identity.phantom


def _missing_salt(path: Path, rid: str) -> ConfigError:
    return ConfigError(f"no pseudonymisation salt, and {rid} is not one of mammoflow's demo phantoms (only those "
                       f"are read with the public demo salt): patient ids from DICOM headers need a secret salt. "
                       f"Fix: {SALT_FIX}")


def _list_scan(table: RecordsTable, scan: FolderScan, root: Path, rid_of: Callable[[str], str]) -> None:
    """Quarantine the scan's rejects and list its skipped entries (by their real paths, as quarantine.jsonl does:
    to find them; quarantine.md hides them when paths are pseudonymised)."""
    for err in scan.rejected:
        where = Path(err.path)
        # (a bad_file_name error names its path escaped: printable, so it can make a record id)
        err.record_id = rid_of(where.relative_to(root).as_posix()) if where.is_relative_to(root) else None
        quarantine_error(table, err, SOURCE)
    for item in scan.skipped:
        add_skipped(table, item.path, item.reason, item.note, SOURCE)
    if scan.skipped:
        log.info("DICOM folder: %d entr%s skipped (%s), listed in skipped.jsonl", len(scan.skipped),
                 "y" if len(scan.skipped) == 1 else "ies",
                 ", ".join(sorted({s.reason for s in scan.skipped})))


def read_dicom_dir(root: Path, labels: Path | None = None, salt: str | None = None,
                   metadata_only: bool = False, expect_modality: str | None = "MG", *,
                   find_labels: bool = True, pseudonymise_paths: bool = False, workers: int | None = None,
                   cache_dir: str | Path | None = None, handoff: bool = True) -> RecordsTable:
    """One record per DICOM file under ``root``; bad files, other files, labels and rows go to the quarantine,
    skipped entries to ``table.skipped``.

    ``labels`` None reads ``root/labels.csv`` when it exists (``find_labels=False``: no labels at all).
    ``metadata_only`` reads headers only (no pixel decoding, no content hash). ``expect_modality=None``
    accepts any modality. ``pseudonymise_paths`` makes record ids salted pseudonyms of the paths (module doc).
    ``salt`` None: ``$MAMMOFLOW_SALT``; neither is a :class:`ConfigError` unless every image read is a phantom.
    ``workers``: processes reading the files (None: every CPU; :mod:`mammoflow.sources.parallel`); the records are
    the same for any number. The decoded pixels of compressed files are handed on to preprocess under ``cache_dir``
    (:mod:`mammoflow.io.handoff`; None: the default cache root), unless ``handoff`` is False.
    """
    from mammoflow.storage.copies import materialise

    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "DICOM folder not found", "pass --root with an existing folder", code="missing_file")
    check_name(root.resolve())  # the records name their images relative to it: it must be writable as text
    given = site_salt(salt)
    salt = given or DEMO_SALT
    rid_of = record_id_function(salt, pseudonymise_paths)
    table = RecordsTable(records=[], image_root=str(root.resolve()), source=SOURCE)
    found = labels_in_root(root) if labels is None and find_labels else None
    if found is not None:
        labels = found
        log.info("no labels CSV given: using %s, found in the DICOM folder", found.name)
    if labels is not None:
        labels = materialise(labels)  # a labels.csv inside a streamed data root is fetched before it is parsed
    parsed = _parse_labels(Path(labels), root, found is not None, rid_of) if labels is not None else ParsedLabels()
    for err in parsed.problems:
        quarantine_error(table, err, SOURCE)
    bad = {e.record_id for e in parsed.problems}
    scan = scan_folder(root)
    rel_of = {path: path.relative_to(root).as_posix() for path in scan.dicoms}
    rejected_rels = [Path(e.path).relative_to(root).as_posix() for e in scan.rejected
                     if Path(e.path).is_relative_to(root)]
    _person_name_warning([*rel_of.values(), *rejected_rels], root, pseudonymise_paths)
    _list_scan(table, scan, root, rid_of)
    on_disk = set(rel_of.values())
    duplicates = DuplicateFinder()
    jobs = [FileJob(path, rid_of(rel_of[path]), parsed.rows.get(rel_of[path])) for path in scan.dicoms
            if rid_of(rel_of[path]) not in bad]  # an image whose labels row is quarantined already is not used
    n = worker_count(workers, len(jobs))
    ctx = FileContext(root, salt, metadata_only, expect_modality,
                      Handoff.off() if metadata_only or not handoff else Handoff.open(cache_dir).share(n))
    # closing: an error here (no salt) stops the worker pool at once
    with contextlib.closing(parallel.map_files(read_file, ctx, jobs, n, desc="DICOM files", unit="file")) as outcomes:
        for job, outcome in zip(jobs, outcomes, strict=True):
            err = outcome if isinstance(outcome, InputError) else None
            if err is None:
                rec, phantom = outcome
                if given is None and not phantom:
                    raise _missing_salt(job.path, job.rid)
                err = duplicates.check(rec, job.path)
                if err is None:
                    table.records.append(rec)
                    continue
            err.record_id = err.record_id or job.rid
            quarantine_error(table, err, SOURCE)
    for rel, row in sorted(parsed.rows.items()):
        if rel not in on_disk and row.line > 0:
            add_quarantine(table, QuarantineEntry(
                path=str(labels), code="missing_file", source=SOURCE, record_id=rid_of(rel),
                problem=f"line {row.line}: no DICOM file at this path under --root",
                fix="correct the path in the labels CSV, or add the image"))
    table.check_unique_ids()
    if given is None and table.records:
        log.warning("no salt given: every image read is one of mammoflow's demo phantoms, so patient ids use the "
                    "public demo salt (records_meta.json says so); real images need a secret salt")
    table.meta.update({"metadata_only": metadata_only, "dicom_files": len(scan.dicoms),
                       "other_files_quarantined": len(scan.rejected), "sidecar_files": len(scan.sidecars),
                       "labelled": sum(1 for r in table.records if r.label is not None),
                       "labels_file": Path(labels).name if labels is not None else None,
                       "labels_found_in_root": found is not None, "paths_pseudonymised": pseudonymise_paths,
                       "salt": salt_note(salt)})
    log.info("DICOM folder: %d DICOM file(s) and %d other file(s) -> %d used (%d labelled), %d quarantined, "
             "%d skipped", len(scan.dicoms), len(scan.rejected), len(table.records), table.meta["labelled"],
             len(table.quarantine), len(table.skipped))
    return table


def read_source(opts: SourceOptions) -> RecordsTable:
    """The ``dicom-dir`` entry of :data:`mammoflow.sources.SOURCES`."""
    if opts.root is None:
        raise InputError("", "no DICOM folder given", "pass --root DIR", code="missing_file")
    return read_dicom_dir(opts.root, labels=opts.labels, salt=opts.salt, metadata_only=opts.metadata_only,
                          expect_modality=None if opts.any_modality else "MG",
                          pseudonymise_paths=opts.pseudonymise_paths, workers=opts.workers,
                          cache_dir=opts.cache_dir, handoff=opts.handoff)
