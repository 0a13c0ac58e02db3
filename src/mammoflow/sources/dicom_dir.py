"""A folder of DICOM mammograms (a site's own images), with an optional labels CSV.

Every DICOM file under ``root`` (recursively) becomes one record: ``.dcm``/``.dicom`` files, and any other file
that carries the ``DICM`` marker (a file named by its SOP Instance UID, ``1.2.840.113619.2.55.3.604688119``, has
a "suffix" but is DICOM). Hidden files and folders and known sidecars (``*.csv`` such as the labels CSV,
``*.txt``/``*.json``/``*.md`` readmes, ``DICOMDIR``, OS clutter) are skipped and counted in the meta; any other
file is quarantined (code ``not_dicom``; ``unreadable`` when it or its folder cannot be read), so
read = used + quarantined holds for the whole folder. The labels CSV (UTF-8; a BOM is fine) has the columns
``path,label`` and optionally ``patient_id,laterality,view``; ``path`` is relative to ``root``. Unlabelled
images are valid (label ``None``: prediction and CAMs). Laterality and view come from the CSV, else from the
DICOM header. The patient id is the salted pseudonym of the CSV's ``patient_id`` or, failing that, of the
header's PatientID (the same function, so both give the same id for the same patient); no DICOM identifier
leaves :mod:`mammoflow.io.dicom`.

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

import csv
import io
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mammoflow.errors import InputError
from mammoflow.io.dicom import pseudonym
from mammoflow.logs import progress
from mammoflow.records import QuarantineEntry, Record, RecordsTable, check_label
from mammoflow.sources._common import (
    SourceOptions,
    add_quarantine,
    csv_error,
    quarantine_error,
    read_csv_text,
    resolve_salt,
)

log = logging.getLogger(__name__)

SOURCE = "dicom-dir"
DICOM_SUFFIXES = (".dcm", ".dicom")
#: Files beside the images that are not images: skipped (counted in the meta), never quarantined.
SIDECAR_SUFFIXES = (".csv", ".txt", ".json", ".md")
SIDECAR_NAMES = ("dicomdir", "readme", "license", "thumbs.db", "desktop.ini")  # compared in lower case
PERSON_NAME_MARK = "^"  # separates the components of a DICOM person name (PN): DOE^JANE
LABEL_ALIASES = {"tumor": "tumour", "": None}  # the American spelling, as in Yu's and CBIS's folder names
SIDES = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}
VIEWS = ("CC", "MLO")
_FIX_LABELS = "correct this row of the labels CSV (columns path,label[,patient_id,laterality,view])"
#: The labels CSV of a folder given none: ``root/labels.csv`` (see the module docstring).
DEFAULT_LABELS = "labels.csv"


@dataclass(frozen=True)
class LabelRow:
    line: int
    path: str  # relative to root, posix
    label: str | None
    patient_id: str | None = None  # as written (hashed before use)
    laterality: str | None = None
    view: str | None = None

    def key(self) -> tuple[object, ...]:
        return (self.label, self.patient_id, self.laterality, self.view)


@dataclass
class ParsedLabels:
    rows: dict[str, LabelRow] = field(default_factory=dict)
    problems: list[InputError] = field(default_factory=list)


@dataclass
class FolderScan:
    """What is under a DICOM folder: DICOM files, skipped sidecars, and files rejected before reading."""

    dicoms: list[Path] = field(default_factory=list)
    sidecars: list[Path] = field(default_factory=list)
    rejected: list[InputError] = field(default_factory=list)  # not DICOM, unreadable, broken links


def _is_sidecar(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(SIDECAR_SUFFIXES) or lower in SIDECAR_NAMES


def _classify(path: Path, scan: FolderScan) -> None:
    """Add one file of the folder to ``scan`` (see the module docstring for the rules)."""
    from mammoflow.io.images import unreadable_error

    if _is_sidecar(path.name):
        scan.sidecars.append(path)
    elif not path.exists():
        scan.rejected.append(InputError(path, "broken symbolic link", "fix or remove the link", code="missing_file"))
    elif not path.is_file():
        scan.rejected.append(InputError(path, "not a regular file (a device, socket or pipe)",
                                        "move it out of --root", code="not_dicom"))
    elif path.suffix.lower() in DICOM_SUFFIXES:
        scan.dicoms.append(path)  # read even without the DICM marker: files without the preamble are met
    else:
        try:
            with open(path, "rb") as fh:
                marker = fh.read(132)[128:]
        except OSError as exc:
            scan.rejected.append(unreadable_error(path, exc))
            return
        if marker == b"DICM":
            scan.dicoms.append(path)
        else:
            scan.rejected.append(InputError(
                path, "not a DICOM file (no DICM marker) and not a known sidecar (labels CSV, .txt/.json readme)",
                "move it out of --root; a DICOM file written without the 128-byte preamble is read when it is "
                "named *.dcm", code="not_dicom"))


def scan_folder(root: Path) -> FolderScan:
    """Every file under ``root`` (recursively, in sorted order), sorted into DICOM files, sidecars and rejects.

    Hidden files and folders are left out; a folder that cannot be listed is a reject (code ``unreadable``).
    Symbolic links to folders are not followed (said in the log).
    """
    from mammoflow.io.images import unreadable_error

    root = Path(root)
    scan = FolderScan()
    linked_dirs = 0

    def failed(exc: OSError) -> None:
        scan.rejected.append(unreadable_error(exc.filename or root, exc))

    for dirpath, dirnames, filenames in os.walk(root, onerror=failed):
        here = Path(dirpath)
        visible = [d for d in dirnames if not d.startswith(".")]
        linked_dirs += sum(1 for d in visible if (here / d).is_symlink())
        dirnames[:] = sorted(d for d in visible if not (here / d).is_symlink())
        for name in sorted(filenames):
            if not name.startswith("."):
                _classify(here / name, scan)
    if linked_dirs:
        log.warning("%d symbolic link(s) to folders under --root not followed: copy the images in, or pass the "
                    "linked folder as --root", linked_dirs)
    scan.dicoms.sort()
    return scan


def find_dicoms(root: Path) -> list[Path]:
    """DICOM files under ``root``: ``.dcm``/``.dicom`` files, and other files carrying the DICM marker."""
    return scan_folder(root).dicoms


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


def _relative(value: str, root: Path) -> str | None:
    """A labels-CSV path as a posix path relative to ``root`` (None when it points outside root)."""
    text = value.strip().replace("\\", "/")
    path = Path(text)
    if path.is_absolute():
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return None
    parts = PurePosixPath(text).parts
    if ".." in parts:
        return None
    return PurePosixPath(*[p for p in parts if p != "."]).as_posix()


def parse_labels(path: Path, root: Path, record_id: Callable[[str], str] | None = None) -> ParsedLabels:
    """The labels CSV by relative path; bad rows (unknown label, bad side/view, conflicting repeats) as problems.

    ``record_id`` makes the ids the problems carry (default ``dicom-dir:<path>``; see :func:`record_id_function`).
    A CSV that is not UTF-8 text or cannot be parsed raises ``InputError(code="bad_csv")``.
    """
    record_id = record_id or record_id_function("", pseudonymise_paths=False)
    if not Path(path).is_file():
        raise InputError(path, "labels CSV not found", "pass an existing file with --labels, or leave it out",
                         code="missing_file")
    out = ParsedLabels()
    reader = csv.DictReader(io.StringIO(read_csv_text(path, "the labels CSV"), newline=""))
    try:
        columns = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        if "path" not in columns or "label" not in columns:
            raise InputError(path, f"the labels CSV needs the columns path and label (found: "
                             f"{', '.join(columns) or 'none'})", "add a header line path,label[,patient_id,"
                             "laterality,view]", code="bad_csv")
        for cells in reader:
            line = reader.line_num
            get = {k: (cells.get(orig) or "").strip() for k, orig in columns.items()}
            if not any(get.values()):
                continue
            rel = _relative(get["path"], root)
            rid = record_id(rel or get["path"])
            try:
                if not rel:
                    raise InputError(path, f"line {line}: path {get['path']!r} is empty or outside --root",
                                     "give paths relative to --root", code="bad_annotation", record_id=rid)
                raw_label = get["label"].lower()
                label = check_label(LABEL_ALIASES.get(raw_label, raw_label), path, rid)
                side, view = get.get("laterality", "").upper(), get.get("view", "").upper()
                if side and side not in SIDES or view and view not in VIEWS:
                    raise InputError(path, f"line {line}: laterality {side!r} / view {view!r} not L/R and CC/MLO",
                                     _FIX_LABELS, code="bad_annotation", record_id=rid)
                row = LabelRow(line, rel, label, get.get("patient_id") or None, SIDES.get(side), view or None)
            except InputError as err:
                if not err.problem.startswith("line "):
                    err.problem = f"line {line}: {err.problem}"
                out.problems.append(err)
                continue
            prior = out.rows.get(rel)
            if prior is not None and prior.key() != row.key():
                out.problems.append(InputError(path, f"line {line}: {rel} is labelled differently at line {prior.line}",
                                               "keep one row per image", code="duplicate_id", record_id=rid))
                out.rows[rel] = LabelRow(-1, rel, None)  # poisoned: the image is quarantined below
                continue
            out.rows.setdefault(rel, row)
    except csv.Error as exc:
        raise csv_error(path, reader.line_num, exc, "the labels CSV") from None
    return out


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


def _record(path: Path, root: Path, rid: str, row: LabelRow | None, salt: str, metadata_only: bool,
            modality: str | None) -> Record:
    from mammoflow.io.dicom import read_dicom, read_dicom_header
    from mammoflow.io.images import file_sha256

    rel = path.relative_to(root).as_posix()
    header = read_dicom_header(path, salt=salt, expect_modality=modality, log_as=rid) if metadata_only else \
        read_dicom(path, salt=salt, expect_modality=modality, log_as=rid)
    extra: dict[str, object] = {}
    if row is not None and row.patient_id:
        patient = pseudonym(row.patient_id, salt)
        extra["patient_id_source"] = "labels CSV (salted hash)"
    elif header.pseudo_patient_id:
        patient = header.pseudo_patient_id
        extra["patient_id_source"] = "DICOM PatientID (salted hash)"
    else:
        # Nothing links this image to others: one pseudo patient per image, said so in the record.
        patient = pseudonym(rel, salt, prefix="p-file-")
        extra["patient_id_source"] = "none in the header or the CSV: one pseudo patient per image"
        log.warning("%s: no PatientID in the header or the labels CSV; treated as its own patient", rid)
    side, view = header.laterality, header.view
    for what, given, found in (("laterality", row and row.laterality, side), ("view", row and row.view, view)):
        if given and found and given != found:
            raise InputError(path, f"labels CSV {what} {given} differs from the DICOM header's {found}",
                             "correct the labels CSV (or the header)", code="annotation_mismatch", record_id=rid)
    if row is not None:
        side, view = row.laterality or side, row.view or view
    return Record(record_id=rid, source=SOURCE, patient_id=patient, image_path=rel,
                  label=row.label if row is not None else None, laterality=side, view=view,
                  height=header.rows, width=header.cols,
                  content_hash=None if metadata_only else file_sha256(path), extra=extra)


def read_dicom_dir(root: Path, labels: Path | None = None, salt: str | None = None,
                   metadata_only: bool = False, expect_modality: str | None = "MG", *,
                   find_labels: bool = True, pseudonymise_paths: bool = False) -> RecordsTable:
    """One record per DICOM file under ``root``; bad files, other files, labels and rows go to the quarantine.

    ``labels`` None reads ``root/labels.csv`` when it exists (``find_labels=False``: no labels at all).
    ``metadata_only`` reads headers only (no pixel decoding, no content hash). ``expect_modality=None``
    accepts any modality. ``pseudonymise_paths`` makes record ids salted pseudonyms of the paths (module doc).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "DICOM folder not found", "pass --root with an existing folder", code="missing_file")
    salt = resolve_salt(salt)
    rid_of = record_id_function(salt, pseudonymise_paths)
    table = RecordsTable(records=[], image_root=str(root.resolve()), source=SOURCE)
    found = labels_in_root(root) if labels is None and find_labels else None
    if found is not None:
        labels = found
        log.info("no labels CSV given: using %s, found in the DICOM folder", found)
    parsed = _parse_labels(Path(labels), root, found is not None, rid_of) if labels is not None else ParsedLabels()
    for err in parsed.problems:
        quarantine_error(table, err, SOURCE)
    bad = {e.record_id for e in parsed.problems}
    scan = scan_folder(root)
    rel_of = {path: path.relative_to(root).as_posix() for path in scan.dicoms}
    rejected_rels = [Path(e.path).relative_to(root).as_posix() for e in scan.rejected
                     if Path(e.path).is_relative_to(root)]
    _person_name_warning([*rel_of.values(), *rejected_rels], root, pseudonymise_paths)
    for err in scan.rejected:
        where = Path(err.path)
        err.record_id = rid_of(where.relative_to(root).as_posix()) if where.is_relative_to(root) else None
        quarantine_error(table, err, SOURCE)
    on_disk = set()
    for path in progress(scan.dicoms, desc="DICOM files", unit="file"):
        rel = rel_of[path]
        rid = rid_of(rel)
        on_disk.add(rel)
        if rid in bad:
            continue  # its labels row is already quarantined: an image with a wrong label is not used
        try:
            table.records.append(_record(path, root, rid, parsed.rows.get(rel), salt, metadata_only,
                                         expect_modality))
        except InputError as err:
            err.record_id = err.record_id or rid
            quarantine_error(table, err, SOURCE)
    for rel, row in sorted(parsed.rows.items()):
        if rel not in on_disk and row.line > 0:
            add_quarantine(table, QuarantineEntry(
                path=str(labels), code="missing_file", source=SOURCE, record_id=rid_of(rel),
                problem=f"line {row.line}: no DICOM file at this path under --root",
                fix="correct the path in the labels CSV, or add the image"))
    table.check_unique_ids()
    table.meta.update({"metadata_only": metadata_only, "dicom_files": len(scan.dicoms),
                       "other_files_quarantined": len(scan.rejected), "sidecar_files": len(scan.sidecars),
                       "labelled": sum(1 for r in table.records if r.label is not None),
                       "labels_file": Path(labels).name if labels is not None else None,
                       "labels_found_in_root": found is not None, "paths_pseudonymised": pseudonymise_paths})
    if scan.sidecars:
        log.info("DICOM folder: %d sidecar file(s) skipped (CSV, text, JSON, DICOMDIR)", len(scan.sidecars))
    log.info("DICOM folder: %d DICOM file(s) and %d other file(s) -> %d used (%d labelled), %d quarantined",
             len(scan.dicoms), len(scan.rejected), len(table.records), table.meta["labelled"],
             len(table.quarantine))
    return table


def read_source(opts: SourceOptions) -> RecordsTable:
    """The ``dicom-dir`` entry of :data:`mammoflow.sources.SOURCES`."""
    if opts.root is None:
        raise InputError("", "no DICOM folder given", "pass --root DIR", code="missing_file")
    return read_dicom_dir(opts.root, labels=opts.labels, salt=opts.salt, metadata_only=opts.metadata_only,
                          expect_modality=None if opts.any_modality else "MG",
                          pseudonymise_paths=opts.pseudonymise_paths)
