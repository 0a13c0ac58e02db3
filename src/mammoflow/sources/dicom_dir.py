"""A folder of DICOM mammograms (a site's own images), with an optional labels CSV.

Every DICOM file under ``root`` (recursively; ``.dcm``/``.dicom``, or no suffix with the ``DICM`` marker) becomes
one record. The labels CSV has the columns ``path,label`` and optionally ``patient_id,laterality,view``;
``path`` is relative to ``root``. Unlabelled images are valid (label ``None``: prediction and CAMs). Laterality
and view come from the CSV, else from the DICOM header. The patient id is the salted pseudonym of the CSV's
``patient_id`` or, failing that, of the header's PatientID (the same function, so both give the same id for
the same patient); no DICOM identifier leaves :mod:`mammoflow.io.dicom`.

Which labels CSV: the one given (``mammoflow ingest --labels``, the pipelines' ``labels`` parameter, a retrain
config's ``source.labels``). When none is given and ``root/labels.csv`` exists, that file is used, so a site
folder that carries its labels (a hospital's export copied to a bucket as it is) needs no extra argument. The
choice is logged and written in the records' meta (``labels_file``, ``labels_found_in_root``); to ingest such a
folder unlabelled, rename the file (or call :func:`read_dicom_dir` with ``find_labels=False``).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mammoflow.errors import InputError
from mammoflow.io.dicom import pseudonym
from mammoflow.logs import progress
from mammoflow.records import QuarantineEntry, Record, RecordsTable, check_label
from mammoflow.sources._common import SourceOptions, add_quarantine, quarantine_error, resolve_salt

log = logging.getLogger(__name__)

SOURCE = "dicom-dir"
DICOM_SUFFIXES = (".dcm", ".dicom")
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


def find_dicoms(root: Path) -> list[Path]:
    """DICOM files under ``root``: ``.dcm``/``.dicom`` files, and suffix-less files carrying the DICM marker."""
    found = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.suffix.lower() in DICOM_SUFFIXES:
            found.append(path)
        elif not path.suffix:
            with open(path, "rb") as fh:
                if fh.read(132)[128:] == b"DICM":
                    found.append(path)
    return found


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


def parse_labels(path: Path, root: Path) -> ParsedLabels:
    """The labels CSV by relative path; bad rows (unknown label, bad side/view, conflicting repeats) as problems."""
    if not Path(path).is_file():
        raise InputError(path, "labels CSV not found", "pass an existing file with --labels, or leave it out",
                         code="missing_file")
    out = ParsedLabels()
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
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
            rid = f"{SOURCE}:{rel or get['path']}"
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
    return out


def _parse_labels(path: Path, root: Path, found: bool) -> ParsedLabels:
    """:func:`parse_labels`; an unreadable CSV that nobody named says why it was read."""
    try:
        return parse_labels(path, root)
    except InputError as err:
        if not found:
            raise
        raise InputError(err.path, err.problem, f"{err.fix}. It was read because no labels CSV was given and it is "
                         f"{DEFAULT_LABELS} in the DICOM folder: rename it to ingest the folder unlabelled",
                         code=err.code, record_id=err.record_id) from None


def _record(path: Path, root: Path, row: LabelRow | None, salt: str, metadata_only: bool,
            modality: str | None) -> Record:
    from mammoflow.io.dicom import read_dicom, read_dicom_header
    from mammoflow.io.images import file_sha256

    rel = path.relative_to(root).as_posix()
    rid = f"{SOURCE}:{rel}"
    header = read_dicom_header(path, salt=salt, expect_modality=modality) if metadata_only else \
        read_dicom(path, salt=salt, expect_modality=modality)
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
                   find_labels: bool = True) -> RecordsTable:
    """One record per DICOM file under ``root``; bad files, labels and rows go to the quarantine.

    ``labels`` None reads ``root/labels.csv`` when it exists (``find_labels=False``: no labels at all).
    ``metadata_only`` reads headers only (no pixel decoding, no content hash). ``expect_modality=None``
    accepts any modality.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "DICOM folder not found", "pass --root with an existing folder", code="missing_file")
    salt = resolve_salt(salt)
    table = RecordsTable(records=[], image_root=str(root.resolve()), source=SOURCE)
    found = labels_in_root(root) if labels is None and find_labels else None
    if found is not None:
        labels = found
        log.info("no labels CSV given: using %s, found in the DICOM folder", found)
    parsed = _parse_labels(Path(labels), root, found is not None) if labels is not None else ParsedLabels()
    for err in parsed.problems:
        quarantine_error(table, err, SOURCE)
    bad = {e.record_id for e in parsed.problems}
    files = find_dicoms(root)
    on_disk = set()
    for path in progress(files, desc="DICOM files", unit="file"):
        rel = path.relative_to(root).as_posix()
        on_disk.add(rel)
        if f"{SOURCE}:{rel}" in bad:
            continue  # its labels row is already quarantined: an image with a wrong label is not used
        try:
            table.records.append(_record(path, root, parsed.rows.get(rel), salt, metadata_only, expect_modality))
        except InputError as err:
            err.record_id = err.record_id or f"{SOURCE}:{rel}"
            quarantine_error(table, err, SOURCE)
    for rel, row in sorted(parsed.rows.items()):
        if rel not in on_disk and row.line > 0:
            add_quarantine(table, QuarantineEntry(
                path=str(labels), code="missing_file", source=SOURCE, record_id=f"{SOURCE}:{rel}",
                problem=f"line {row.line}: no DICOM file at this path under --root",
                fix="correct the path in the labels CSV, or add the image"))
    table.check_unique_ids()
    table.meta.update({"metadata_only": metadata_only, "dicom_files": len(files),
                       "labelled": sum(1 for r in table.records if r.label is not None),
                       "labels_file": Path(labels).name if labels is not None else None,
                       "labels_found_in_root": found is not None})
    log.info("DICOM folder: %d file(s) -> %d used (%d labelled), %d quarantined", len(files), len(table.records),
             table.meta["labelled"], len(table.quarantine))
    return table


def read_source(opts: SourceOptions) -> RecordsTable:
    """The ``dicom-dir`` entry of :data:`mammoflow.sources.SOURCES`."""
    if opts.root is None:
        raise InputError("", "no DICOM folder given", "pass --root DIR", code="missing_file")
    return read_dicom_dir(opts.root, labels=opts.labels, salt=opts.salt, metadata_only=opts.metadata_only,
                          expect_modality=None if opts.any_modality else "MG")
