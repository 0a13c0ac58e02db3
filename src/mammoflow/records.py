"""The uniform records table every source is read into, and the quarantine beside it.

A records folder holds:

- ``records.jsonl``      one JSON object per usable image (a :class:`Record`)
- ``records_meta.json``  ``image_root`` (what record paths are relative to), source, code version
- ``quarantine.jsonl``   one JSON object per input that could not be used (a :class:`QuarantineEntry`)
- ``quarantine.md``      the same, for a person: what, why, and what to do
- ``ingest_summary.json`` counts: read = used + quarantined, per reason code

Coordinates are image pixel coordinates with row 0 at the top (see docs/architecture.md).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mammoflow.errors import InputError

LABELS = ("normal", "benign", "malignant", "tumour")
BINARY = {"normal": "normal", "benign": "tumour", "malignant": "tumour", "tumour": "tumour"}

RECORDS_FILE = "records.jsonl"
META_FILE = "records_meta.json"
QUARANTINE_FILE = "quarantine.jsonl"
QUARANTINE_REPORT = "quarantine.md"
SUMMARY_FILE = "ingest_summary.json"


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


def atomic_write_text(path: Path, text: str) -> None:
    """Write a local file atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes files owner-only; outputs (reports, records) are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonl(items: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(i, sort_keys=True, ensure_ascii=False) + "\n" for i in items)


@dataclass
class RecordsTable:
    """Records plus the quarantine, as read from or written to a records folder."""

    records: list[Record]
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    image_root: str = "."
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

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
        used, quarantined = len(self.records), len(self.quarantine)
        return {
            "source": self.source,
            "read": used + quarantined,
            "used": used,
            "quarantined": quarantined,
            "quarantined_by_code": dict(sorted(Counter(q.code for q in self.quarantine).items())),
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
        summary = self.summary()
        atomic_write_text(folder / RECORDS_FILE, _jsonl(r.to_dict() for r in self.records))
        atomic_write_text(folder / QUARANTINE_FILE, _jsonl(asdict(q) for q in self.quarantine))
        meta = {**self.meta, "image_root": self.image_root, "source": self.source, "code_version": __version__}
        atomic_write_text(folder / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        atomic_write_text(folder / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        atomic_write_text(folder / QUARANTINE_REPORT, quarantine_markdown(self.quarantine, summary))
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
        image_root = meta.pop("image_root", ".")
        source = meta.pop("source", "")
        return cls(records=records, quarantine=quarantine, image_root=image_root, source=source, meta=meta)


def quarantine_markdown(entries: list[QuarantineEntry], summary: dict[str, Any]) -> str:
    lines = [
        "# Quarantine report",
        "",
        f"Read {summary['read']}: used {summary['used']}, quarantined {summary['quarantined']}.",
        "",
    ]
    if not entries:
        return "\n".join(lines + ["Nothing was quarantined.", ""])
    lines += ["| file | record | reason | problem | what to do |", "| --- | --- | --- | --- | --- |"]
    for q in entries:
        cells = [q.path, q.record_id or "", q.code, q.problem, q.fix]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"
