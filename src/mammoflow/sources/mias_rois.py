"""The 120x120 ROIs released by Yu et al. (2020) with their code, read straight from ``MIAS_ROIs.zip``.

Layout: ``MIAS_ROIs/{train,val,test,trainval}/{Normal,Tumor} (n).png``. The released split is kept in
``Record.split``; ``trainval`` is train + val renamed, so it is checked by content hash and never ingested twice.
Benign and malignant were merged by the authors, so abnormal ROIs are labelled ``tumour``. The authors dropped
the MIAS image ids: every ROI gets its own pseudo patient id, and patient-level leakage cannot be checked.

Every member is accounted for: a zip-slip name (absolute, or with a ``..`` component) is quarantined as
``unsafe_path`` and never read; hidden and OS metadata files (``__MACOSX/``, ``.DS_Store``, ``Thumbs.db``) and
files that are not images are skipped with a reason (:mod:`mammoflow.sources.members`); an ROI that is not
``expected_size`` square (120x120, Yu et al.'s "Data preprocessing") is quarantined as ``wrong_size``.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections import Counter
from pathlib import Path

from mammoflow.errors import InputError
from mammoflow.logs import progress
from mammoflow.records import QuarantineEntry, Record, RecordsTable
from mammoflow.sources._common import SourceOptions, add_quarantine, quarantine_error, sha256_bytes
from mammoflow.sources.members import account_member

log = logging.getLogger(__name__)

SOURCE = "mias-rois"
ZIP_NAME = "MIAS_ROIs.zip"
SPLITS = ("train", "val", "test")
CLASS_LABELS = {"normal": "normal", "tumor": "tumour"}
LEAKAGE_NOTE = ("the authors dropped the MIAS image ids, so ROIs of one patient (or one image) may sit in "
                "different splits; patient-level leakage cannot be checked on this set")
ROI_SIZE = 120  # the released ROIs are 120x120 (Yu et al. 2020, "Data preprocessing")
_MEMBER = re.compile(r"(?:^|/)(train|val|test|trainval)/(normal|tumor) \((\d+)\)\.png$", re.IGNORECASE)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".tif", ".tiff")


class _RoiFiles:
    """The released files, from the zip or from an extracted folder, by posix member name."""

    def __init__(self, root: Path):
        root = Path(root)
        if root.is_dir() and (root / ZIP_NAME).is_file() and not any(root.glob("**/*.png")):
            root = root / ZIP_NAME
        if not root.exists():
            raise InputError(root, "MIAS ROI set not found",
                             f"pass --root {ZIP_NAME} (or its extracted folder); `mammoflow fetch mias-rois` "
                             "downloads it", code="missing_file")
        self.root = root.resolve()
        self.zip: zipfile.ZipFile | None = None
        if self.root.is_file():
            try:
                self.zip = zipfile.ZipFile(self.root)
            except (zipfile.BadZipFile, OSError) as exc:
                raise InputError(self.root, f"not a readable zip archive ({exc})",
                                 f"re-download {ZIP_NAME} (`mammoflow fetch mias-rois`)", code="corrupt") from None

    def names(self) -> list[str]:
        if self.zip is not None:
            return sorted(i.filename for i in self.zip.infolist() if not i.is_dir())
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def read(self, name: str) -> bytes:
        try:
            if self.zip is not None:
                return self.zip.read(name)
            return (self.root / name).read_bytes()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:  # a damaged member: CRC error, short read
            raise InputError(self.path(name), f"cannot read the file ({exc})",
                             f"re-download {ZIP_NAME} (`mammoflow fetch mias-rois`)", code="corrupt") from None

    def path(self, name: str) -> Path:
        """``<zip>/<member>`` or ``<folder>/<file>``: what :func:`mammoflow.io.images.read_image` takes."""
        return self.root / name

    def label(self, name: str) -> str:
        """``<zip>/<member>`` as text, never resolved (an absolute or ``../`` member must not name another file)."""
        return f"{self.root}/{name}"

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _record(split: str, cls: str, index: int, member: str, digest: str) -> Record:
    class_name = "Normal" if cls.lower() == "normal" else "Tumor"
    return Record(
        record_id=f"{SOURCE}:{split}/{class_name} ({index})", source=SOURCE,
        # One pseudo patient per ROI: nothing links ROIs of the same woman (ids dropped upstream).
        patient_id=f"{SOURCE}-{split}-{class_name.lower()}-{index:03d}",
        image_path=member, label=CLASS_LABELS[cls.lower()], split=split, content_hash=digest,
        extra={"released_split": split, "released_class": class_name, "roi_index": index,
               "patient_leakage_check": LEAKAGE_NOTE,
               "severity": "unknown (benign and malignant merged into Tumor by the authors)"})


def read_mias_rois(root: Path, metadata_only: bool = False, expected_size: int | None = ROI_SIZE) -> RecordsTable:
    """Records for the train/val/test ROIs; trainval verified to be train + val by content, not duplicated.

    ``expected_size``: the side every ROI must have (``wrong_size`` otherwise; checked when the images are read,
    not with ``metadata_only``); ``None`` accepts any size (a set cut at another size, built with a dataset config
    whose ``roi_size`` matches it).
    """
    files = _RoiFiles(root)
    table = RecordsTable(records=[], image_root=str(files.root), source=SOURCE)
    try:
        trainval: dict[str, str] = {}
        seen: dict[str, str] = {}  # content hash -> record id, across train/val/test
        train_val: Counter[str] = Counter()  # every train/val ROI read, used or quarantined
        members = []
        for name in files.names():
            if not account_member(table, name, files.label(name), SOURCE, IMAGE_SUFFIXES):
                continue  # unsafe, hidden or not an image: quarantined or skipped, with its reason
            m = _MEMBER.search(name)
            if m is not None:
                members.append((m.group(1).lower(), m.group(2), int(m.group(3)), name))
            else:
                add_quarantine(table, QuarantineEntry(
                    path=files.label(name), code="unexpected_file", source=SOURCE,
                    problem="image outside the released {train,val,test}/{Normal,Tumor} (n).png layout",
                    fix="remove it, or put it in a split folder with a released class name"))
        # Released order (train, val, test; by class and number): of two copies of one ROI, the later split's
        # copy is the one quarantined.
        order = (*SPLITS, "trainval")
        ordered = sorted(members, key=lambda m: (order.index(m[0]), m[1].lower(), m[2]))
        for split, cls, index, name in progress(ordered, desc="MIAS ROIs", unit="ROI"):
            try:
                digest = sha256_bytes(files.read(name))
            except InputError as err:
                quarantine_error(table, err, SOURCE)
                continue
            if split == "trainval":
                trainval[name] = digest
                continue
            rec = _record(split, cls, index, name, digest)
            if split in ("train", "val"):
                train_val[digest] += 1
            if digest in seen:
                add_quarantine(table, QuarantineEntry(
                    path=str(files.path(name)), code="duplicate_content", source=SOURCE, record_id=rec.record_id,
                    problem=f"same pixels file as {seen[digest]} (an ROI in two places leaks between splits)",
                    fix="keep one copy of the ROI"))
                continue
            if not metadata_only:
                try:
                    _check_image(rec, files.path(name), expected_size)
                except InputError as err:
                    err.record_id = err.record_id or rec.record_id
                    quarantine_error(table, err, SOURCE)
                    continue
            seen[digest] = rec.record_id
            table.records.append(rec)
        table.meta["trainval_check"] = _check_trainval(table, files, trainval, train_val)
    finally:
        files.close()
    table.check_unique_ids()
    per_split = Counter(f"{r.split}/{r.label}" for r in table.records)
    table.meta.update({"metadata_only": metadata_only, "per_split": dict(sorted(per_split.items())),
                       "patient_leakage_check": LEAKAGE_NOTE})
    log.info("MIAS ROIs: %s", ", ".join(f"{k} {v}" for k, v in sorted(per_split.items())))
    return table


def _check_image(rec: Record, path: Path, expected_size: int | None = ROI_SIZE) -> None:
    from mammoflow.io.images import read_image
    from mammoflow.sources.mias import note_bit_depth

    pixels = read_image(path)
    rec.height, rec.width = int(pixels.shape[0]), int(pixels.shape[1])
    if expected_size is not None and (rec.height, rec.width) != (expected_size, expected_size):
        raise InputError(path, f"ROI is {rec.width}x{rec.height}, expected {expected_size}x{expected_size} (the "
                         "size of the released ROIs)",
                         f"use the released {expected_size}x{expected_size} ROIs (`mammoflow fetch mias-rois`); "
                         f"for a set cut at another size, read it with expected_size=None and build it with a "
                         f"dataset config whose roi_size is that size", code="wrong_size", record_id=rec.record_id)
    note_bit_depth(rec, pixels)


def _check_trainval(table: RecordsTable, files: _RoiFiles, trainval: dict[str, str],
                    expected: Counter[str]) -> dict[str, object]:
    """``trainval`` must be train + val (by content); mismatching ROIs are quarantined, never used twice."""
    got = Counter(trainval.values())
    for name, digest in sorted(trainval.items()):
        if expected[digest] == 0:
            add_quarantine(table, QuarantineEntry(
                path=str(files.path(name)), code="trainval_mismatch", source=SOURCE,
                problem="this trainval ROI is not in train or val (trainval should be exactly train + val)",
                fix=f"re-download {ZIP_NAME} (`mammoflow fetch mias-rois`); the released set passes this check"))
    missing = sum((expected - got).values())
    result = {"trainval_files": len(trainval), "train_plus_val": sum(expected.values()),
              "equal_by_content": bool(trainval) and got == expected, "not_in_trainval": missing}
    if result["equal_by_content"]:
        log.info("trainval = train + val by content hash (%d ROIs): not ingested twice", len(trainval))
    elif trainval:
        log.warning("trainval differs from train + val by content: %s", result)
    return result


def read_source(opts: SourceOptions) -> RecordsTable:
    """The ``mias-rois`` entry of :data:`mammoflow.sources.SOURCES`."""
    if opts.root is None:
        raise InputError("", "no ROI set given", f"pass --root {ZIP_NAME} (or its extracted folder)",
                         code="missing_file")
    return read_mias_rois(opts.root, metadata_only=opts.metadata_only)
