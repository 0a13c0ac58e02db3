"""The labels CSV of a DICOM folder: ``path,label[,patient_id,laterality,view]``, one row per image.

A bad row (unknown label, bad side/view, a path outside the folder, conflicting repeats) is a problem of that row
(its image is quarantined). A CSV that cannot be parsed reliably is an error for the whole job (``bad_csv``,
naming the line and the fix), never a silently partial table: not UTF-8 text, an unclosed quote (which would
swallow every row after it), a column named twice (a label would be applied to the wrong image), a field holding
a line break. Paths are relative to the folder; ``./a/../b.dcm`` is ``b.dcm``, and a path that leaves the folder
(``../x.dcm``, an absolute path elsewhere) is refused.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mammoflow.errors import InputError
from mammoflow.records import check_label
from mammoflow.sources._common import check_columns, csv_rows, read_csv_text

LABEL_ALIASES = {"tumor": "tumour", "": None}  # the American spelling, as in Yu's and CBIS's folder names
SIDES = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}
VIEWS = ("CC", "MLO")
COLUMNS = "path,label[,patient_id,laterality,view]"
_FIX_LABELS = f"correct this row of the labels CSV (columns {COLUMNS})"


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


def relative_path(value: str, root: Path) -> str | None:
    """A labels-CSV path as a normalised posix path relative to ``root`` (None when empty or outside root)."""
    text = value.strip().replace("\\", "/")
    if not text:
        return None
    if Path(text).is_absolute():
        try:
            text = Path(posixpath.normpath(text)).relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            try:  # root given through a link: compare resolved paths
                text = Path(text).resolve().relative_to(Path(root).resolve()).as_posix()
            except ValueError:
                return None
    norm = posixpath.normpath(text)
    if norm in (".", "") or norm == ".." or norm.startswith("../"):
        return None
    return PurePosixPath(norm).as_posix()


def parse_labels(path: Path, root: Path, record_id: Callable[[str], str] | None = None) -> ParsedLabels:
    """The labels CSV by relative path; bad rows as problems (module docstring). ``record_id`` makes the ids the
    problems carry (default ``dicom-dir:<path>``). A CSV that cannot be parsed raises ``InputError(code=bad_csv)``.
    """
    record_id = record_id or (lambda rel: f"dicom-dir:{rel}")
    if not Path(path).is_file():
        raise InputError(path, "labels CSV not found", "pass an existing file with --labels, or leave it out",
                         code="missing_file")
    what = "the labels CSV"
    rows = csv_rows(path, read_csv_text(path, what), what)
    first = next(rows, None)
    header = [c.strip().lower() for c in (first[1] if first else [])]
    check_columns(path, header, what)
    if "path" not in header or "label" not in header:
        raise InputError(path, f"the labels CSV needs the columns path and label (found: "
                         f"{', '.join(h for h in header if h) or 'none'})", f"add a header line {COLUMNS}",
                         code="bad_csv")
    out = ParsedLabels()
    for line, cells in rows:
        if any("\n" in c or "\r" in c for c in cells):
            raise InputError(path, f"the labels CSV cannot be parsed reliably: the row starting on line {line} "
                             "holds a line break inside a quoted field (an unclosed quote?)",
                             "close the quote on that line (labels, paths and ids never hold line breaks)",
                             code="bad_csv")
        get = {k: (cells[i] if i < len(cells) else "").strip() for i, k in enumerate(header) if k}
        if not any(get.values()):
            continue
        rel = relative_path(get["path"], root)
        rid = record_id(rel or get["path"])
        try:
            if len(cells) > len(header) and any(c.strip() for c in cells[len(header):]):
                raise InputError(path, f"{len(cells)} fields, the header has {len(header)}", _FIX_LABELS,
                                 code="bad_annotation", record_id=rid)
            if not rel:
                raise InputError(path, "the path is empty or outside --root (not shown: folder names may be "
                                 "patient names)",
                                 "give paths relative to --root", code="bad_annotation", record_id=rid)
            raw_label = get["label"].lower()
            label = check_label(LABEL_ALIASES.get(raw_label, raw_label), path, rid)
            side, view = get.get("laterality", "").upper(), get.get("view", "").upper()
            if side and side not in SIDES or view and view not in VIEWS:
                raise InputError(path, "the laterality / view columns are not L/R and CC/MLO", _FIX_LABELS,
                                 code="bad_annotation", record_id=rid)
            row = LabelRow(line, rel, label, get.get("patient_id") or None, SIDES.get(side), view or None)
        except InputError as err:
            err.problem = f"line {line}: {err.problem}"
            out.problems.append(err)
            continue
        prior = out.rows.get(rel)
        if prior is not None and prior.key() != row.key():
            out.problems.append(InputError(path, f"line {line}: this image is labelled differently at line {prior.line}",
                                           "keep one row per image", code="duplicate_id", record_id=rid))
            out.rows[rel] = LabelRow(-1, rel, None)  # poisoned: the image is quarantined
            continue
        out.rows.setdefault(rel, row)
    return out
