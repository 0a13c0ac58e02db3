"""The uniform records table every source is read into, and the quarantine beside it.

A records folder holds:

- ``records.jsonl``      one JSON object per usable image (a :class:`Record`)
- ``records_meta.json``  ``image_root`` (what record paths are relative to), source, code version
- ``quarantine.jsonl``   one JSON object per input that could not be used (a :class:`QuarantineEntry`)
- ``quarantine.md``      the same, for a person: what, why, and what to do (and what was skipped)
- ``skipped.jsonl``      one JSON object per input left out on purpose (a :class:`SkippedEntry`: hidden files and
                         folders, sidecars, linked folders, folders without an annotation), with the reason
- ``ingest_summary.json`` counts: read = used + quarantined + skipped, per reason code
- ``records_complete.json`` written last by :meth:`RecordsTable.write` (removed first): a folder without it, or
                         whose ``records.jsonl`` differs from the digest it holds, is incomplete
                         (:func:`require_complete`)

File names that are not valid UTF-8 never reach a record (the sources quarantine them as ``bad_file_name``); where
such a name is shown (quarantine, skipped), its bytes are escaped (:func:`shown_path`).

Coordinates are image pixel coordinates with row 0 at the top (see docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mammoflow.errors import InputError
from mammoflow.storage import atomic_write_text

LABELS = ("normal", "benign", "malignant", "tumour")
BINARY = {"normal": "normal", "benign": "tumour", "malignant": "tumour", "tumour": "tumour"}

RECORDS_FILE = "records.jsonl"
META_FILE = "records_meta.json"
QUARANTINE_FILE = "quarantine.jsonl"
QUARANTINE_REPORT = "quarantine.md"
SUMMARY_FILE = "ingest_summary.json"
SKIPPED_FILE = "skipped.jsonl"
COMPLETE_FILE = "records_complete.json"


def shown_path(path: object) -> str:
    """A path as text that can always be printed and written as UTF-8: bytes of a file name that are not valid
    UTF-8 (held by Python as surrogate escapes) are shown as ``\\xNN``."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def is_printable_name(path: object) -> bool:
    """True when ``path`` (as Python holds it) is valid UTF-8, i.e. holds no surrogate escape of a raw byte."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def binary_label(label: str | None) -> str | None:
    """Normal vs tumour grouping (Yu et al.'s task): benign, malignant and tumour are all tumour."""
    return None if label is None else BINARY[label]


def check_label(label: str | None, path: object = "", record_id: str | None = None) -> str | None:
    if label is None or label in LABELS:
        return label
    raise InputError(
        path,
        f"unknown label {label!r}",
        f"use one of {', '.join(LABELS)} (or leave it empty for an unlabelled image)",
        code="unknown_label",
        record_id=record_id,
    )


@dataclass
class Lesion:
    """One annotated abnormality, in the record image's pixel coordinates (row 0 at the top)."""

    lesion_id: str
    label: str | None = None  # benign / malignant / tumour
    kind: str | None = None  # mass, calcification, CIRC, SPIC, ... as the source names it
    center_row: float | None = None
    center_col: float | None = None
    radius: float | None = None
    mask_path: str | None = None  # relative to image_root, like Record.image_path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_geometry(self) -> bool:
        return (self.center_row is not None and self.center_col is not None) or self.mask_path is not None


@dataclass
class Record:
    """One usable image (or released ROI) with its labels and lesions."""

    record_id: str
    source: str
    patient_id: str
    image_path: str  # relative to the folder's image_root
    label: str | None = None
    laterality: str | None = None  # "L" / "R"
    view: str | None = None  # "CC" / "MLO"
    height: int | None = None
    width: int | None = None
    split: str | None = None  # a split that came with the source (Yu's released split, CBIS official)
    lesions: list[Lesion] = field(default_factory=list)
    content_hash: str | None = None  # sha256 of the source file, for incremental ingest
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def binary_label(self) -> str | None:
        return binary_label(self.label)

    @property
    def breast_id(self) -> str:
        """Pseudonymous id of one breast (patient + side), for breast-level evaluation."""
        return f"{self.patient_id}:{self.laterality or '?'}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["binary_label"] = self.binary_label
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["lesions"] = [Lesion(**les) for les in d.get("lesions", [])]
        return cls(**kw)


@dataclass
class QuarantineEntry:
    """An input that could not be used: where, why (a stable code and a sentence) and the fix."""

    path: str
    code: str
    problem: str
    fix: str
    source: str = ""
    record_id: str | None = None

    @classmethod
    def from_error(cls, err: InputError, source: str = "") -> QuarantineEntry:
        return cls(path=err.path, code=err.code, problem=err.problem, fix=err.fix, source=source,
                   record_id=err.record_id)


@dataclass
class SkippedEntry:
    """An input left out on purpose (not an image, or not one this source reads): where, why, and a note.

    ``reason`` is a short stable tag: ``hidden`` (a name starting with ``.``; a hidden folder is one entry, not
    walked), ``sidecar`` (labels/description CSVs, readmes, ``DICOMDIR``), ``linked_folder`` (a symbolic link to a
    folder, not followed), ``no_csv_row`` (a CBIS-DDSM folder no CSV row describes), ...
    """

    path: str
    reason: str
    note: str = ""
    source: str = ""


def _printable(value: Any) -> Any:
    """``value`` with every string made printable (:func:`shown_path`): a name that is not UTF-8 never stops a
    write. Sources quarantine such names before they reach a record; this is the net under that rule."""
    if isinstance(value, str):
        return value if is_printable_name(value) else shown_path(value)
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value


def _jsonl(items: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(_printable(i), sort_keys=True, ensure_ascii=False) + "\n" for i in items)


@dataclass
class RecordsTable:
    """Records plus the quarantine, as read from or written to a records folder."""

    records: list[Record]
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    image_root: str = "."
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    skipped: list[SkippedEntry] = field(default_factory=list)

    def check_unique_ids(self) -> None:
        """Move every record whose id was already seen to the quarantine (first one wins)."""
        seen: set[str] = set()
        kept: list[Record] = []
        for rec in self.records:
            if rec.record_id in seen:
                self.quarantine.append(QuarantineEntry(
                    path=rec.image_path, code="duplicate_id", source=rec.source, record_id=rec.record_id,
                    problem=f"record id {rec.record_id!r} appears more than once",
                    fix="remove or rename the duplicate entry in the annotations"))
                continue
            seen.add(rec.record_id)
            kept.append(rec)
        self.records = kept

    def summary(self) -> dict[str, Any]:
        used, quarantined, skipped = len(self.records), len(self.quarantine), len(self.skipped)
        return {
            "source": self.source,
            "read": used + quarantined + skipped,
            "used": used,
            "quarantined": quarantined,
            "skipped": skipped,
            "quarantined_by_code": dict(sorted(Counter(q.code for q in self.quarantine).items())),
            "skipped_by_reason": dict(sorted(Counter(s.reason for s in self.skipped).items())),
            "labels": dict(sorted(Counter(str(r.label) for r in self.records).items())),
            "lesions": sum(len(r.lesions) for r in self.records),
            "patients": len({r.patient_id for r in self.records}),
        }

    def image_path(self, rec: Record, folder: Path | str) -> Path:
        """Absolute path of a record's image, given the folder the table was read from."""
        root = Path(self.image_root)
        if not root.is_absolute():
            root = Path(folder) / root
        return root / rec.image_path

    def write(self, folder: Path | str) -> dict[str, Any]:
        from mammoflow import __version__

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / COMPLETE_FILE).unlink(missing_ok=True)  # written again last: absent while the files change
        summary = self.summary()
        records = _jsonl(r.to_dict() for r in self.records)
        atomic_write_text(folder / RECORDS_FILE, records)
        atomic_write_text(folder / QUARANTINE_FILE, _jsonl(asdict(q) for q in self.quarantine))
        atomic_write_text(folder / SKIPPED_FILE, _jsonl(asdict(s) for s in self.skipped))
        meta = {**self.meta, "image_root": self.image_root, "source": self.source, "code_version": __version__}
        atomic_write_text(folder / META_FILE, json.dumps(_printable(meta), indent=2, sort_keys=True) + "\n")
        atomic_write_text(folder / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        atomic_write_text(folder / QUARANTINE_REPORT, quarantine_markdown(
            self.quarantine, summary, self.skipped, hide_paths=bool(self.meta.get("paths_pseudonymised"))))
        complete = {"records_sha256": hashlib.sha256(records.encode("utf-8")).hexdigest(),
                    "records": len(self.records), "code_version": __version__}
        atomic_write_text(folder / COMPLETE_FILE, json.dumps(complete, indent=2, sort_keys=True) + "\n")
        return summary

    @classmethod
    def read(cls, folder: Path | str) -> RecordsTable:
        folder = Path(folder)
        path = folder / RECORDS_FILE
        if not path.exists():
            raise InputError(path, "no records table here", "run `mammoflow ingest --out` on this folder first",
                             code="missing_file")
        meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).exists() else {}
        records = [Record.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
        qpath = folder / QUARANTINE_FILE
        quarantine = [QuarantineEntry(**json.loads(line)) for line in qpath.read_text().splitlines()
                      if line.strip()] if qpath.exists() else []
        spath = folder / SKIPPED_FILE
        skipped = [SkippedEntry(**json.loads(line)) for line in spath.read_text().splitlines()
                   if line.strip()] if spath.exists() else []
        image_root = meta.pop("image_root", ".")
        source = meta.pop("source", "")
        return cls(records=records, quarantine=quarantine, image_root=image_root, source=source, meta=meta,
                   skipped=skipped)


def require_complete(folder: Path | str) -> Path:
    """``folder`` if it holds a complete records folder, else an :class:`InputError` naming it and the fix.

    Complete: :meth:`RecordsTable.write` finished (its last file, ``records_complete.json``, is there) and
    ``records.jsonl`` is the one it wrote (same sha256). A folder an interrupted or failed ingest left behind, or
    one whose records were replaced by another writer, is refused: its records and meta may not belong together.
    """
    folder = Path(folder)
    records, marker = folder / RECORDS_FILE, folder / COMPLETE_FILE
    fix = f"run `mammoflow ingest --out {shown_path(folder)}` again (it replaces the folder only when it finishes)"
    if not records.is_file():
        raise InputError(folder, f"no records table here ({RECORDS_FILE} missing)", fix, code="missing_file")
    if not marker.is_file():
        raise InputError(folder, f"an incomplete records folder ({COMPLETE_FILE}, written last, is missing: the "
                         "ingest that wrote it was interrupted, failed, or is older than this check)", fix,
                         code="incomplete")
    try:
        expected = json.loads(marker.read_text())["records_sha256"]
        actual = hashlib.sha256(records.read_bytes()).hexdigest()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(marker, f"the completion marker cannot be read ({type(exc).__name__})", fix,
                         code="incomplete") from None
    if actual != expected:
        raise InputError(folder, f"{RECORDS_FILE} is not the one this folder's ingest wrote (its sha256 differs "
                         f"from {COMPLETE_FILE}): the folder was changed after the ingest", fix, code="incomplete")
    return folder


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(_printable(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def quarantine_markdown(entries: list[QuarantineEntry], summary: dict[str, Any],
                        skipped: list[SkippedEntry] | None = None, *, hide_paths: bool = False) -> str:
    """The quarantine for a person. ``hide_paths`` (paths pseudonymised at ingest: folder names may be patient
    names): files are named by record id only; the real paths stay in quarantine.jsonl and skipped.jsonl, at the
    site."""
    skipped = skipped or []
    hidden = "(see quarantine.jsonl)"
    lines = [
        "# Quarantine report",
        "",
        f"Read {summary['read']}: used {summary['used']}, quarantined {summary['quarantined']}, skipped "
        f"{summary.get('skipped', len(skipped))}.",
        "",
    ]
    if not entries:
        lines += ["Nothing was quarantined.", ""]
    else:
        lines += ["| file | record | reason | problem | what to do |", "| --- | --- | --- | --- | --- |"]
        lines += [_row([hidden if hide_paths else q.path, q.record_id or "", q.code, q.problem, q.fix])
                  for q in entries]
        lines.append("")
    if skipped:
        lines += ["## Skipped", "", "Left out on purpose (not images this source reads); nothing to fix unless one "
                  "of them should have been read.", "", "| file | reason | note |", "| --- | --- | --- |"]
        lines += [_row(["(see skipped.jsonl)" if hide_paths else s.path, s.reason, s.note]) for s in skipped]
        lines.append("")
    return "\n".join(lines)
