"""CBIS-DDSM: the four official description CSVs, joined to the DICOM files of a TCIA download.

One record per full mammogram (patient, side, view), whose lesions are the abnormalities of that image from the
mass *and* the calcification CSVs. Quirks handled (all in the real files):

- path fields with embedded newlines (``"...000001.dcm\\n"``), cleaned before use;
- ``breast density`` (calc files) vs ``breast_density`` (mass files): column names are normalised;
- pathology ``MALIGNANT`` / ``BENIGN`` / ``BENIGN_WITHOUT_CALLBACK`` (the last is benign; the original is kept);
- the UID folders in the CSVs differ from the ones a TCIA download writes, so rows are joined to files on disk
  by the folder names ``Calc-Training_P_00005_RIGHT_CC`` (full image) and ``..._RIGHT_CC_1`` (abnormality 1);
- ``000000.dcm``/``000001.dcm`` are not consistently crop/mask, so the ROI mask is told from the crop by content:
  the mask is binary and has the size of the full image, the crop is smaller and grey.

Accounting: every CSV row is a lesion of a record or a quarantine entry (``meta.row_accounting``), and every entry
under ``--root`` that is not part of a record or of a quarantined image is listed in ``skipped.jsonl`` with the
reason: ``no_csv_row`` (a case folder no CSV row describes), ``same_image_other_folder`` (CBIS stores one mammogram
under a Calc- and a Mass- name; the other copy), ``extra_file`` (more than one DICOM in a full-image folder),
``not_in_case_folder`` (other files: readmes, other CSVs), ``hidden``, ``linked_folder``. A description CSV that
cannot be parsed reliably (an unclosed quote, a column named twice) is an error for the job, naming the line. A
file or folder name that is not UTF-8 quarantines its image (``bad_file_name``).

CBIS-DDSM's patient ids (``P_00005``) are public already: no secret salt is needed (the public default salt keeps
ids stable; a salt given is used). The same image under two records (same SOP Instance UID or decoded pixels) is
quarantined as ``duplicate`` (:mod:`mammoflow.sources.duplicates`).

The official calc split and mass split are each patient-disjoint, but merging them puts some patients (and 29
images) in both train and test; an image whose abnormalities are in both is given ``split="test"`` (never train on
an official test image) and patient-grouped split planning regroups the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammoflow.errors import InputError
from mammoflow.io.dicom import pseudonym  # the one pseudonymisation path (salted SHA-256)
from mammoflow.io.handoff import Handoff
from mammoflow.logs import progress
from mammoflow.masks import is_binary_mask, mask_geometry  # noqa: F401 - the mask helpers' public home was here
from mammoflow.records import Lesion, QuarantineEntry, Record, RecordsTable
from mammoflow.resources import worker_count
from mammoflow.sources import parallel
from mammoflow.sources._common import (
    DEFAULT_SALT,
    SourceOptions,
    add_quarantine,
    add_skipped,
    check_columns,
    csv_rows,
    quarantine_error,
    read_csv_text,
    salt_note,
    site_salt,
)
from mammoflow.sources.cbis_images import (  # noqa: F401 - and split_crop_and_mask's
    ImageContext,
    ImageJob,
    ImageKey,
    attach_images,
    split_crop_and_mask,
)
from mammoflow.sources.duplicates import DuplicateFinder

log = logging.getLogger(__name__)

SOURCE = "cbis-ddsm"
CSV_GLOB = "*_case_description_*_set.csv"
PATHOLOGY = {"MALIGNANT": "malignant", "BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign"}
SIDES = {"LEFT": "L", "RIGHT": "R"}
VIEWS = ("CC", "MLO")
KINDS = {"calcification": "calc", "mass": "mass"}
REQUIRED = ("patient id", "breast density", "left or right breast", "image view", "abnormality id",
            "abnormality type", "assessment", "pathology", "subtlety", "image file path",
            "cropped image file path", "roi mask file path")
DETAILS = {"calc": ("calc type", "calc distribution"), "mass": ("mass shape", "mass margins")}
_PATIENT = re.compile(r"^P_\d+$")
_FOLDER = re.compile(r"^(Calc|Mass)-(Training|Test)_(P_\d+)_(LEFT|RIGHT)_(CC|MLO)(?:_(\d+))?$", re.IGNORECASE)
_FIX_ROW = "correct this row of the CSV (compare with the official CBIS-DDSM description CSV)"


def normalise_column(name: str) -> str:
    """``breast_density`` and ``breast density`` (and stray case/blanks) name the same column."""
    return re.sub(r"[\s_]+", " ", name.strip().lower())


def clean_path(value: str) -> str:
    """A CSV path field without its embedded newlines and blanks, with forward slashes."""
    return "".join(value.split()).replace("\\", "/")


def _int_in(value: str, low: int, high: int) -> int | None:
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if low <= number <= high else None


@dataclass(frozen=True)
class CsvRow:
    """One abnormality: one row of an official CBIS-DDSM description CSV."""

    csv_file: str
    line: int  # line of the CSV where the row starts (1-based; the header is line 1)
    kind: str  # calc / mass
    split: str  # train / test (official)
    patient: str  # P_00005 (CBIS's own public pseudonym)
    side: str  # LEFT / RIGHT
    view: str  # CC / MLO
    abnormality: int  # abnormality id within the image, from 1
    pathology: str  # as written
    density: int | None
    assessment: int | None
    subtlety: int | None
    raw: dict[str, str] = field(default_factory=dict)  # the other columns as written (paths cleaned)

    @property
    def image_key(self) -> ImageKey:
        return (self.patient, self.side, self.view)

    @property
    def record_id(self) -> str:
        return f"{SOURCE}:{self.patient}_{self.side}_{self.view}"

    @property
    def lesion_id(self) -> str:
        return f"{self.record_id}:{self.kind}{self.abnormality}"

    @property
    def label(self) -> str:
        return PATHOLOGY[self.pathology]


@dataclass
class ParsedCsv:
    path: Path
    rows: list[CsvRow] = field(default_factory=list)
    problems: list[InputError] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return len(self.rows) + len(self.problems)


def _split_from_name(name: str) -> str | None:
    m = re.search(r"(?:^|_)(train|training|test)(?:_|\.|$)", name.lower())
    return None if m is None else ("test" if m.group(1) == "test" else "train")


def parse_row(cells: dict[str, str], csv_path: Path, line: int, file_split: str | None) -> CsvRow:
    """One CSV row (columns already normalised) as a :class:`CsvRow`; raises InputError for a bad row."""
    where = f"row at line {line}"  # cell values are not echoed: a cell may hold a real identifier (issue 13)

    def bad(problem: str, code: str = "bad_annotation", record_id: str | None = None) -> InputError:
        return InputError(csv_path, f"{where}: {problem}", _FIX_ROW, code=code, record_id=record_id)

    patient = cells["patient id"].strip()
    side = cells["left or right breast"].strip().upper()
    view = cells["image view"].strip().upper()
    if not _PATIENT.match(patient):
        raise bad("the patient id is not of the form P_NNNNN (its value is not shown: it may be a real identifier)")
    if side not in SIDES or view not in VIEWS:
        raise bad("the side / view columns are not LEFT/RIGHT and CC/MLO")
    record_id = f"{SOURCE}:{patient}_{side}_{view}"
    abnormality = _int_in(cells["abnormality id"], 1, 999)
    if abnormality is None:
        raise bad("the abnormality id is not a positive integer", record_id=record_id)
    kind = KINDS.get(cells["abnormality type"].strip().lower())
    if kind is None:
        raise bad("the abnormality type is not calcification or mass",
                  code="unknown_label", record_id=record_id)
    pathology = cells["pathology"].strip().upper()
    if pathology not in PATHOLOGY:
        raise bad(f"the pathology is not one of {', '.join(PATHOLOGY)}", code="unknown_label",
                  record_id=record_id)
    image_path = clean_path(cells["image file path"])
    folder = _FOLDER.match(image_path.split("/", 1)[0])
    split = file_split or (None if folder is None else _split_from_name(folder.group(2)))
    if split is None:
        raise bad("cannot tell the official split (train/test) from the file name or the image path",
                  record_id=record_id)
    if folder is not None and (folder.group(3), folder.group(4).upper(), folder.group(5).upper()) != \
            (patient, side, view):
        raise bad("the image file path's case folder names another image than the row's columns",
                  record_id=record_id)
    raw = {k: (clean_path(v) if k.endswith("file path") else v.strip()) for k, v in cells.items()
           if k not in ("patient id", "left or right breast", "image view", "abnormality id", "pathology")}
    return CsvRow(csv_file=csv_path.name, line=line, kind=kind, split=split, patient=patient, side=side,
                  view=view, abnormality=abnormality, pathology=pathology,
                  density=_int_in(cells["breast density"], 1, 4), assessment=_int_in(cells["assessment"], 0, 6),
                  subtlety=_int_in(cells["subtlety"], 1, 5), raw=raw)


def parse_csv(path: Path) -> ParsedCsv:
    """Every row of one description CSV, as rows or problems (line numbers count embedded newlines)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "CBIS-DDSM description CSV not found", "pass existing files with --csv",
                         code="missing_file")
    out = ParsedCsv(path)
    file_split = _split_from_name(path.stem)
    what = "the description CSV"
    rows = csv_rows(path, read_csv_text(path, what), what)
    first = next(rows, None)
    if first is None:
        raise InputError(path, "the CSV is empty", "use an official CBIS-DDSM description CSV", code="empty")
    columns = [normalise_column(h) for h in first[1]]
    check_columns(path, columns, what)
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise InputError(path, f"column(s) missing: {', '.join(missing)}",
                         "use an official CBIS-DDSM description CSV (calc or mass, train or test)", code="bad_csv")
    for line, cells in rows:
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(columns):
            out.problems.append(InputError(path, f"row at line {line}: {len(cells)} fields, "
                                           f"the header has {len(columns)}", _FIX_ROW, code="bad_annotation"))
            continue
        try:
            out.rows.append(parse_row(dict(zip(columns, cells, strict=True)), path, line, file_split))
        except InputError as err:
            out.problems.append(err)
    return out


def find_csvs(folder: Path) -> list[Path]:
    """The description CSVs in ``folder`` or one level below (how a TCIA download is usually laid out)."""
    return sorted({*folder.glob(CSV_GLOB), *folder.glob(f"*/{CSV_GLOB}")})


# ----------------------------------------------------------------------------------------- files on disk


@dataclass
class DiskIndex:
    """The TCIA folders under a root, by what their names say (not by the UIDs inside)."""

    root: Path
    full: dict[ImageKey, list[tuple[str, str, Path]]] = field(default_factory=dict)  # -> (kind, split, folder)
    abnormal: dict[tuple[str, str, str, str, int], list[Path]] = field(default_factory=dict)
    others: list[tuple[Path, str, str]] = field(default_factory=list)  # (path, reason, note): skipped entries

    @classmethod
    def scan(cls, root: Path, annotations: Iterable[Path] = ()) -> DiskIndex:
        """Index the case folders under ``root``; every other entry is listed in ``others`` (the description
        CSVs read, ``annotations``, excepted)."""
        index = cls(root=Path(root))
        read = {Path(a).resolve() for a in annotations}
        for dirpath, dirnames, filenames in os.walk(root):
            keep = []
            here = Path(dirpath)
            for name in sorted(dirnames):
                folder = here / name
                m = _FOLDER.match(name)
                if name.startswith("."):
                    index.others.append((folder, "hidden", "a hidden folder (name starting with '.'): not read"))
                    continue
                if m is None:
                    if folder.is_symlink():
                        index.others.append((folder, "linked_folder", "a symbolic link to a folder: not followed"))
                    else:
                        keep.append(name)
                    continue
                kind, split = m.group(1).lower(), _split_from_name(m.group(2)) or "train"
                key = (m.group(3), m.group(4).upper(), m.group(5).upper())
                if m.group(6) is None:
                    index.full.setdefault(key, []).append((kind, split, folder))
                else:
                    index.abnormal.setdefault((kind, *key, int(m.group(6))), []).append(folder)
            dirnames[:] = keep  # a matched folder holds only UID sub-folders and DICOM files
            for name in sorted(filenames):
                path = here / name
                if path.resolve() in read:
                    continue
                reason = "hidden" if name.startswith(".") else "not_in_case_folder"
                index.others.append((path, reason, "a hidden file" if reason == "hidden" else
                                     "not in a case folder (Calc-/Mass-Training/Test_P_..._SIDE_VIEW[_N]): not read"))
        return index

    def dicoms(self, folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", ".dicom")
                      and not any(part.startswith(".") for part in p.relative_to(folder).parts))

    def folders_without_rows(self, described: set[ImageKey], lesions: set[tuple[str, str, str, str, int]]
                             ) -> list[Path]:
        """Case folders no CSV row describes (``described``: the images rows name; ``lesions``: their
        abnormalities)."""
        out = [folder for key, found in self.full.items() if key not in described for _, _, folder in found]
        out += [folder for key, found in self.abnormal.items() if key not in lesions for folder in found]
        return sorted(out)


# ----------------------------------------------------------------------------------------------- records


def _record(rows: list[CsvRow], salt: str) -> Record:
    first = rows[0]
    splits = sorted({r.split for r in rows})
    densities = [r.density for r in rows if r.density is not None]
    extra: dict[str, Any] = {
        "abnormality_types": sorted({r.kind for r in rows}),
        "breast_density": Counter(densities).most_common(1)[0][0] if densities else None,
        "assessment": max((r.assessment for r in rows if r.assessment is not None), default=None),
        "subtlety": min((r.subtlety for r in rows if r.subtlety is not None), default=None),
        "pathologies": sorted({r.pathology for r in rows}),
        "official_splits": {k: sorted({r.split for r in rows if r.kind == k}) for k in sorted({r.kind for r in rows})},
        "csv_rows": [f"{r.csv_file}:{r.line}" for r in rows],
    }
    if len(set(densities)) > 1:
        extra["breast_density_values"] = sorted(set(densities))
    if len(splits) > 1:
        extra["split_note"] = ("abnormalities of this image are in the official train AND test sets (calc vs mass); "
                               "kept in test so that no official test image is trained on")
    lesions = [_lesion(r) for r in sorted(rows, key=lambda r: (r.kind, r.abnormality))]
    label = "malignant" if any(le.label == "malignant" for le in lesions) else "benign"
    return Record(
        record_id=first.record_id, source=SOURCE,
        # CBIS ids are public pseudonyms already; they still go through the one salted path, the same for calc
        # and mass rows, so patient-grouped splits see one patient.
        patient_id=pseudonym(first.patient, salt, prefix="cbis-"),
        image_path=first.raw["image file path"], label=label, laterality=SIDES[first.side], view=first.view,
        split="test" if "test" in splits else "train", lesions=lesions, extra=extra)


def _lesion(row: CsvRow) -> Lesion:
    details = {k.replace(" ", "_"): row.raw.get(k) for k in DETAILS[row.kind] if k in row.raw}
    extra: dict[str, Any] = {
        "pathology": row.pathology, "assessment": row.assessment, "subtlety": row.subtlety,
        "breast_density": row.density, "official_split": row.split, "csv": f"{row.csv_file}:{row.line}",
        "csv_paths": {"image": row.raw["image file path"], "crop_or_mask_1": row.raw["cropped image file path"],
                      "crop_or_mask_2": row.raw["roi mask file path"]},
        **details,
    }
    for name, value in (("breast_density", row.density), ("subtlety", row.subtlety), ("assessment", row.assessment)):
        if value is None:  # out-of-range values (density 0 in calc test rows, subtlety 0) are kept as written
            extra[f"{name}_as_written"] = row.raw.get(name.replace("_", " "))
    return Lesion(lesion_id=row.lesion_id, label=row.label, kind="calcification" if row.kind == "calc" else "mass",
                  extra=extra)


def read_cbis_ddsm(csvs: Iterable[Path] = (), root: Path | None = None, metadata_only: bool = False,
                   salt: str | None = None, workers: int | None = None,
                   cache_dir: str | os.PathLike[str] | None = None, handoff: bool = True) -> RecordsTable:
    """Records (one per full mammogram) from the description CSVs, joined to the DICOM files under ``root``.

    ``metadata_only`` needs the CSVs alone (split planning, tests on the real CSVs); every CSV row is then a
    lesion of a record or a quarantine entry (``table.meta["row_accounting"]``). ``workers``: processes reading
    the images (None: every CPU; :mod:`mammoflow.sources.parallel`); the records are the same for any number.
    The decoded pixels of compressed files are handed on to preprocess under ``cache_dir``
    (:mod:`mammoflow.io.handoff`; None: the default cache root), unless ``handoff`` is False.
    """
    csv_paths = [Path(p) for p in csvs]
    if not csv_paths and root is not None:
        csv_paths = find_csvs(Path(root))
    if not csv_paths:
        raise InputError(root or "", "no CBIS-DDSM description CSV given or found",
                         f"pass --csv FILE (one or more {CSV_GLOB}), or put them in --root", code="missing_file")
    if not metadata_only and root is None:
        raise InputError("", "no image folder given", "pass --root with the TCIA download, or --metadata-only",
                         code="missing_file")
    salt = site_salt(salt) or DEFAULT_SALT  # CBIS ids are public: no secret needed (module docstring)
    image_root = Path(root).resolve() if root is not None else csv_paths[0].resolve().parent
    table = RecordsTable(records=[], image_root=str(image_root), source=SOURCE)
    rows_in = Counter[str]()
    grouped: dict[ImageKey, list[CsvRow]] = {}
    seen: dict[str, CsvRow] = {}
    bad_rows = 0
    for path in csv_paths:
        parsed = parse_csv(path)
        rows_in[path.name] += parsed.n_rows
        for err in parsed.problems:
            quarantine_error(table, err, SOURCE)
            bad_rows += 1
        for row in parsed.rows:
            if row.lesion_id in seen:
                prior = seen[row.lesion_id]
                add_quarantine(table, QuarantineEntry(
                    path=str(path), code="duplicate_id", source=SOURCE, record_id=row.record_id,
                    problem=f"row at line {row.line}: abnormality {row.kind} {row.abnormality} of this image is "
                            f"already at {prior.csv_file}:{prior.line}",
                    fix="remove the duplicate row from the CSV"))
                bad_rows += 1
                continue
            seen[row.lesion_id] = row
            grouped.setdefault(row.image_key, []).append(row)

    index = DiskIndex.scan(Path(root), csv_paths) if not metadata_only and root is not None else None
    rows_quarantined_with_image = 0
    duplicates = DuplicateFinder()
    row_groups = [grouped[key] for key in sorted(grouped)]
    records = [_record(rows, salt) for rows in row_groups]
    with contextlib.closing(_joined(records, row_groups, index, salt, workers,
                                            Handoff.open(cache_dir) if handoff else Handoff.off())) as outcomes:
        for rec, rows, joined in zip(records, row_groups, outcomes, strict=True):
            err = joined if isinstance(joined, InputError) else \
                None if index is None else duplicates.check(joined, index.root / joined.image_path)
            if err is not None:
                err.record_id = err.record_id or rec.record_id
                quarantine_error(table, err, SOURCE)
                rows_quarantined_with_image += len(rows)
                continue
            table.records.append(joined)
    table.check_unique_ids()

    total = sum(rows_in.values())
    as_lesions = sum(len(r.lesions) for r in table.records)
    table.meta.update({
        "csv_files": sorted(rows_in),
        "metadata_only": metadata_only,
        "row_accounting": {"rows": total, "as_lesions": as_lesions, "bad_rows": bad_rows,
                           "in_quarantined_images": rows_quarantined_with_image, "per_file": dict(sorted(rows_in.items()))},
        "split_note": "split = official train/test; an image in both (calc vs mass) is put in test",
    })
    if as_lesions + bad_rows + rows_quarantined_with_image != total:  # a bug, not bad input
        raise AssertionError(f"CBIS-DDSM row accounting: {as_lesions}+{bad_rows}+{rows_quarantined_with_image} "
                             f"!= {total}")
    if index is not None:
        _list_skipped(table, index, grouped, seen)
        table.meta["folders_without_rows"] = sum(1 for s in table.skipped if s.reason == "no_csv_row")
        if table.meta["folders_without_rows"]:
            log.warning("%d case folder(s) under --root have no row in the CSVs given (not ingested; listed in "
                        "skipped.jsonl)", table.meta["folders_without_rows"])
    table.meta["salt"] = salt_note(salt)
    log.info("CBIS-DDSM: %d rows in %d CSV(s) -> %d images used, %d quarantined", total, len(csv_paths),
             len(table.records), len(table.quarantine))
    return table


def _joined(records: list[Record], row_groups: list[list[CsvRow]], index: DiskIndex | None, salt: str,
            workers: int | None, handoff: Handoff) -> Iterator[Record | InputError]:
    """Each record joined to its DICOM files (:func:`~mammoflow.sources.cbis_images.attach_images`, in the worker
    pool) or the InputError that quarantines it, in order; without an index (metadata only), the records as
    they are."""
    if index is None:
        yield from progress(records, desc="CBIS-DDSM images", unit="image")
        return
    n = worker_count(workers, len(records))
    ctx = ImageContext(index, salt, handoff.share(n))
    jobs = [ImageJob(rec, rows[0].image_key, {r.lesion_id: (r.kind, r.abnormality) for r in rows})
            for rec, rows in zip(records, row_groups, strict=True)]
    yield from parallel.map_files(attach_images, ctx, jobs, n, desc="CBIS-DDSM images", unit="image")


def _list_skipped(table: RecordsTable, index: DiskIndex, grouped: dict[ImageKey, list[CsvRow]],
                  seen: dict[str, CsvRow]) -> None:
    """List what under the root is part of no record and no quarantined image (module docstring)."""
    lesions = {(r.kind, *r.image_key, r.abnormality) for r in seen.values()}
    for folder in index.folders_without_rows(set(grouped), lesions):
        add_skipped(table, folder.relative_to(index.root), "no_csv_row",
                    "a case folder no row of the description CSVs given describes: not ingested (give its CSV "
                    "with --csv to ingest it)", SOURCE)
    for rec in table.records:
        for rel in rec.extra.get("same_image_also_at", []):
            add_skipped(table, rel, "same_image_other_folder", f"the same mammogram as {rec.record_id}, filed "
                        "under its other abnormality type (CBIS-DDSM stores it twice)", SOURCE)
        for rel in rec.extra.get("extra_files", []):
            add_skipped(table, rel, "extra_file", f"another DICOM file in the full-image folder of "
                        f"{rec.record_id} (the first is used)", SOURCE)
    for path, reason, note in index.others:
        add_skipped(table, path.relative_to(index.root), reason, note, SOURCE)
    if index.others:
        log.info("CBIS-DDSM: %d other entr%s under --root skipped (listed in skipped.jsonl)", len(index.others),
                 "y" if len(index.others) == 1 else "ies")


def read_source(opts: SourceOptions) -> RecordsTable:
    """The ``cbis-ddsm`` entry of :data:`mammoflow.sources.SOURCES`."""
    return read_cbis_ddsm(csvs=opts.csvs, root=opts.root, metadata_only=opts.metadata_only, salt=opts.salt,
                          workers=opts.workers, cache_dir=opts.cache_dir, handoff=opts.handoff)
