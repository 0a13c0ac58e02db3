"""The (mini-)MIAS database: ``Info.txt`` annotations plus the 322 ``mdbNNN.pgm`` images.

``Info.txt`` is free text: a licence/README header, then one line per abnormality
``REFNUM BG CLASS SEVERITY X Y RADIUS`` (``mdb001 G CIRC B 535 425 197``), ``REFNUM BG NORM`` for normal images.
Quirks handled here (all in the real file): header text before the records, NORM lines with trailing blanks,
abnormal lines without coordinates (``mdb059 F CIRC B``, and ``*NOTE 3*`` for widely distributed
calcifications), several lines for one image (``mdb144`` has a benign *and* a malignant mass).

Conventions taken from the file's own notes:

- note 1: consecutive films are one patient, left = even file number, right = odd file number;
- note 2: every image is 1024 x 1024 pixels;
- note 3: coordinates have their origin at the bottom-left corner, so ``row = height - y``, ``col = x``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammoflow.errors import InputError
from mammoflow.logs import progress
from mammoflow.records import Lesion, QuarantineEntry, Record, RecordsTable
from mammoflow.sources._common import SourceOptions, add_quarantine, quarantine_error, require_file

log = logging.getLogger(__name__)

SOURCE = "mias"
MIAS_SIZE = 1024  # Info.txt note 2
BACKGROUND = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
CLASSES = {
    "CALC": "calcification",
    "CIRC": "well-defined/circumscribed mass",
    "SPIC": "spiculated mass",
    "MISC": "other, ill-defined mass",
    "ARCH": "architectural distortion",
    "ASYM": "asymmetry",
    "NORM": "normal",
}
SEVERITY = {"B": "benign", "M": "malignant"}
IMAGE_SUFFIXES = (".pgm", ".png")

_RECORD_LINE = re.compile(r"^\s*mdb\d", re.IGNORECASE)  # every other line is header / footer text
_REF = re.compile(r"^mdb(\d{3})$")
_NOTE = re.compile(r"^\*.*\*$")  # "*NOTE 3*": centre and radius omitted on purpose
_FIX_LINE = "correct this line of Info.txt (format: REFNUM BG CLASS SEVERITY X Y RADIUS, or REFNUM BG NORM)"


@dataclass(frozen=True)
class InfoEntry:
    """One record line of Info.txt (one abnormality, or the NORM line of a normal image)."""

    line: int  # 1-based line number in Info.txt
    ref: str  # mdb001
    background: str  # F / G / D
    klass: str  # CALC, CIRC, ..., NORM
    severity: str | None = None  # B / M; None for NORM
    x: float | None = None  # MIAS coordinates, origin bottom-left
    y: float | None = None
    radius: float | None = None
    note: str | None = None  # text found in place of the coordinates ("*NOTE 3*")

    @property
    def is_normal(self) -> bool:
        return self.klass == "NORM"

    @property
    def has_geometry(self) -> bool:
        return self.x is not None

    def key(self) -> tuple[Any, ...]:
        """Everything but the line number: equal keys are exact duplicate lines."""
        return (self.ref, self.background, self.klass, self.severity, self.x, self.y, self.radius, self.note)


@dataclass(frozen=True)
class InfoProblem:
    """A record line of Info.txt that cannot be used as it is."""

    line: int
    ref: str | None  # None when the reference number itself is unreadable
    code: str
    problem: str
    fix: str = _FIX_LINE


@dataclass
class ParsedInfo:
    entries: list[InfoEntry] = field(default_factory=list)
    problems: list[InfoProblem] = field(default_factory=list)
    record_lines: int = 0  # lines that start with "mdb"
    other_lines: int = 0  # non-blank header/footer lines, skipped


def mias_number(ref: str) -> int:
    """``mdb007`` -> 7."""
    m = _REF.match(ref)
    if not m:
        raise ValueError(f"not a MIAS reference number: {ref!r}")
    return int(m.group(1))


def patient_of(ref: str) -> str:
    """Films 2k-1 and 2k are one patient (Info.txt note 1): mdb001, mdb002 -> ``mias-p001``."""
    return f"mias-p{(mias_number(ref) + 1) // 2:03d}"


def laterality_of(ref: str) -> str:
    """Info.txt note 1: left = even file numbers, right = odd file numbers."""
    return "L" if mias_number(ref) % 2 == 0 else "R"


def mias_to_pixel(x: float, y: float, height: int = MIAS_SIZE) -> tuple[float, float]:
    """MIAS ``x, y`` (origin bottom-left, note 3) -> ``(row, col)`` with row 0 at the top."""
    return float(height - y), float(x)


def _number(token: str) -> float | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def parse_line(line_no: int, text: str) -> InfoEntry | InfoProblem:
    """Parse one record line (one starting with ``mdb``)."""
    tokens = text.split()
    ref = tokens[0].lower()
    if not _REF.match(ref):
        return InfoProblem(line_no, None, "bad_annotation",
                           f"line {line_no}: reference {tokens[0]!r} is not of the form mdbNNN")
    if len(tokens) < 3:
        return InfoProblem(line_no, ref, "bad_annotation",
                           f"line {line_no}: {len(tokens)} value(s), expected at least REFNUM BG CLASS")
    background, klass = tokens[1].upper(), tokens[2].upper()
    if background not in BACKGROUND:
        return InfoProblem(line_no, ref, "bad_annotation",
                           f"line {line_no}: unknown background tissue {tokens[1]!r} (expected F, G or D)")
    if klass not in CLASSES:
        return InfoProblem(line_no, ref, "unknown_class",
                           f"line {line_no}: unknown abnormality class {tokens[2]!r} "
                           f"(expected one of {', '.join(CLASSES)})")
    if klass == "NORM":
        if len(tokens) > 3:
            return InfoProblem(line_no, ref, "bad_annotation",
                               f"line {line_no}: a NORM line has values after the class: {' '.join(tokens[3:])!r}")
        return InfoEntry(line_no, ref, background, klass)
    if len(tokens) < 4 or tokens[3].upper() not in SEVERITY:
        found = repr(tokens[3]) if len(tokens) > 3 else "nothing"
        return InfoProblem(line_no, ref, "unknown_label",
                           f"line {line_no}: severity must be B or M for a {klass} line, found {found}")
    severity = tokens[3].upper()
    rest = tokens[4:]
    if not rest:
        return InfoEntry(line_no, ref, background, klass, severity)
    joined = " ".join(rest)
    if _NOTE.match(joined):
        return InfoEntry(line_no, ref, background, klass, severity, note=joined)
    numbers = [_number(t) for t in rest]
    if len(rest) != 3 or any(n is None for n in numbers):
        return InfoProblem(line_no, ref, "bad_annotation",
                           f"line {line_no}: expected X Y RADIUS (three numbers) after the severity, "
                           f"found {joined!r}")
    x, y, radius = numbers
    assert x is not None and y is not None and radius is not None
    if radius < 0:
        return InfoProblem(line_no, ref, "negative_radius", f"line {line_no}: negative radius {radius:g}",
                           "correct the radius in Info.txt (a radius is >= 0 pixels)")
    return InfoEntry(line_no, ref, background, klass, severity, x, y, radius)


def parse_info(text: str) -> tuple[list[InfoEntry], list[InfoProblem]]:
    """Every record line of Info.txt as an entry or a problem (with its line number); header text is skipped."""
    parsed = parse_info_full(text)
    return parsed.entries, parsed.problems


def parse_info_full(text: str) -> ParsedInfo:
    """:func:`parse_info` plus line counts, so that every record line can be accounted for."""
    out = ParsedInfo()
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not _RECORD_LINE.match(line):
            out.other_lines += bool(line.strip())
            continue
        out.record_lines += 1
        item = parse_line(line_no, line)
        (out.problems if isinstance(item, InfoProblem) else out.entries).append(item)  # type: ignore[arg-type]
    return out


def read_info(path: Path) -> ParsedInfo:
    require_file(path, "MIAS Info.txt", "pass --info PATH, or put Info.txt in the --root folder")
    # Latin-1 never fails to decode; the real file is ASCII.
    return parse_info_full(path.read_bytes().decode("latin-1"))


def _conflicts(entries: list[InfoEntry]) -> str | None:
    """Why the lines of one image contradict each other, or None."""
    backgrounds = sorted({e.background for e in entries})
    lines = ", ".join(str(e.line) for e in entries)
    if len(backgrounds) > 1:
        return f"lines {lines} give different background tissues ({'/'.join(backgrounds)})"
    if any(e.is_normal for e in entries) and not all(e.is_normal for e in entries):
        return f"lines {lines} say both NORM and abnormal"
    return None


def _drop_exact_duplicates(entries: list[InfoEntry]) -> list[InfoEntry]:
    """Keep the first of identical lines (the same lesion typed twice is not a second lesion)."""
    seen: set[tuple[Any, ...]] = set()
    kept = []
    for e in entries:
        if e.key() not in seen:
            seen.add(e.key())
            kept.append(e)
    return kept


def _find_image(root: Path, ref: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        path = root / f"{ref}{suffix}"
        if path.is_file():
            return path
    return None


def _lesions(ref: str, entries: list[InfoEntry], height: int, width: int, info_path: Path) -> list[Lesion]:
    lesions = []
    for i, e in enumerate(entries, start=1):
        lesion = Lesion(lesion_id=f"{SOURCE}:{ref}:{i}", label=SEVERITY[e.severity or "B"], kind=e.klass,
                        extra={"info_line": e.line, "class_name": CLASSES[e.klass]})
        if e.has_geometry:
            assert e.x is not None and e.y is not None
            if not (0 <= e.x <= width and 0 <= e.y <= height):
                raise InputError(info_path, f"line {e.line}: centre x={e.x:g}, y={e.y:g} lies outside the "
                                 f"{width}x{height} image", "correct the coordinates in Info.txt "
                                 "(origin at the bottom-left corner)", code="outside_image",
                                 record_id=f"{SOURCE}:{ref}")
            if e.radius is not None and 2 * e.radius > max(width, height):
                # A lesion larger than the whole film is a typo; its ROI would be mostly padding or background.
                raise InputError(info_path, f"line {e.line}: lesion {lesion.lesion_id} has radius {e.radius:g}, a "
                                 f"disc larger than the {width}x{height} image", "correct the radius in Info.txt "
                                 "(pixels; the real file's largest is 197)", code="bad_annotation",
                                 record_id=f"{SOURCE}:{ref}")
            lesion.center_row, lesion.center_col = mias_to_pixel(e.x, e.y, height)
            lesion.radius = e.radius
            lesion.extra["mias_xy"] = [e.x, e.y]
        else:
            lesion.extra["geometry"] = "missing"
            lesion.extra["geometry_note"] = (
                f"{e.note}: calcifications widely distributed, centre and radius omitted in Info.txt"
                if e.note else "no centre or radius in Info.txt")
        lesions.append(lesion)
    return lesions


def build_record(ref: str, entries: list[InfoEntry], info_path: Path, height: int = MIAS_SIZE,
                 width: int = MIAS_SIZE, image_path: str | None = None) -> Record:
    """One record for one MIAS image from its Info.txt lines (raises InputError for unusable annotations)."""
    rid = f"{SOURCE}:{ref}"
    why = _conflicts(entries)
    if why:
        raise InputError(info_path, f"{ref}: {why}", "keep one consistent set of lines for this image in Info.txt",
                         code="duplicate_id", record_id=rid)
    normal = entries[0].is_normal
    lesions = [] if normal else _lesions(ref, entries, height, width, info_path)
    label = "normal" if normal else ("malignant" if any(le.label == "malignant" for le in lesions) else "benign")
    extra: dict[str, Any] = {
        "background_tissue": entries[0].background,
        "background_tissue_name": BACKGROUND[entries[0].background],
        "class_codes": sorted({e.klass for e in entries}),
        "info_lines": [e.line for e in entries],
        "laterality_source": "Info.txt note 1 (left = even, right = odd file number)",
    }
    missing = sum(1 for le in lesions if le.extra.get("geometry") == "missing")
    if missing:
        extra["lesions_without_geometry"] = missing
    return Record(record_id=rid, source=SOURCE, patient_id=patient_of(ref), image_path=image_path or f"{ref}.pgm",
                  label=label, laterality=laterality_of(ref), view="MLO", height=height, width=width,
                  lesions=lesions, extra=extra)


def _problem_entry(info_path: Path, problems: list[InfoProblem]) -> QuarantineEntry:
    first = problems[0]
    text = "; ".join(p.problem for p in problems)
    record_id = f"{SOURCE}:{first.ref}" if first.ref else None
    return QuarantineEntry(path=str(info_path), code=first.code, problem=text, fix=first.fix, source=SOURCE,
                           record_id=record_id)


def note_bit_depth(record: Record, pixels: Any) -> None:
    """mini-MIAS and Yu's ROIs are 8-bit: a 16-bit file is not the released image. It is used (every step scales
    by the image's own range), but said in the log and kept in the record (``extra["bit_depth"]``)."""
    if pixels.dtype.itemsize > 1:
        record.extra["bit_depth"] = 8 * pixels.dtype.itemsize
        log.warning("%s: %d-bit image where the released data is 8-bit; used, but check it is the original file",
                    record.record_id, 8 * pixels.dtype.itemsize)


def _with_image(record: Record, root: Path) -> Record:
    """Check the image of ``record`` and fill size and content hash (raises InputError)."""
    from mammoflow.io.files import file_sha256
    from mammoflow.io.images import read_image
    from mammoflow.storage.copies import materialise

    ref = record.record_id.split(":", 1)[1]
    path = _find_image(root, ref)
    if path is None:
        raise InputError(root / f"{ref}.pgm", "image listed in Info.txt but not found",
                         "put the image in the --root folder (or run `mammoflow fetch mias`), or use "
                         "--metadata-only", code="missing_file", record_id=record.record_id)
    pixels = read_image(materialise(path))  # fetched now when the data root is streamed from object storage
    height, width = pixels.shape[:2]
    if (height, width) != (MIAS_SIZE, MIAS_SIZE):
        raise InputError(path, f"image is {width}x{height}, mini-MIAS images are {MIAS_SIZE}x{MIAS_SIZE}",
                         "use the original mini-MIAS PGM (Info.txt coordinates refer to 1024x1024)",
                         code="bad_size", record_id=record.record_id)
    note_bit_depth(record, pixels)
    record.image_path = path.name
    record.content_hash = file_sha256(path)
    return record


def read_mias(root: Path | None = None, info: Path | None = None, metadata_only: bool = False) -> RecordsTable:
    """Records (one per image) and quarantine from Info.txt, checked against the images in ``root``.

    ``metadata_only`` reads Info.txt alone (no image needed); every record line is still accounted for in
    ``table.meta["line_accounting"]``.
    """
    if info is None:
        if root is None:
            raise InputError("", "no MIAS annotations given", "pass --info Info.txt or --root FOLDER",
                             code="missing_file")
        info = root / "Info.txt"
    info = Path(info)
    if not metadata_only and root is None:
        raise InputError(info, "no image folder given", "pass --root FOLDER with mdbNNN.pgm, or --metadata-only",
                         code="missing_file")
    parsed = read_info(info)
    image_root = Path(root).resolve() if root is not None else info.resolve().parent
    table = RecordsTable(records=[], image_root=str(image_root), source=SOURCE)

    by_ref: dict[str, list[InfoEntry]] = {}
    problems_by_ref: dict[str | None, list[InfoProblem]] = {}
    for e in parsed.entries:
        by_ref.setdefault(e.ref, []).append(e)
    for p in parsed.problems:
        problems_by_ref.setdefault(p.ref, []).append(p)
    refs = list(dict.fromkeys([*by_ref, *(r for r in problems_by_ref if r is not None)]))
    refs.sort(key=mias_number)

    lines = Counter[str]()
    for p in problems_by_ref.get(None, []):  # lines whose reference number is unreadable
        add_quarantine(table, _problem_entry(info, [p]))
        lines["quarantined"] += 1
    for ref in progress(refs, desc="MIAS images", unit="image"):
        entries, problems = by_ref.get(ref, []), problems_by_ref.get(ref, [])
        if problems:
            add_quarantine(table, _problem_entry(info, problems))
            lines["quarantined"] += len(entries) + len(problems)
            continue
        unique = _drop_exact_duplicates(entries)
        if len(unique) < len(entries):
            log.warning("%s: %d exact duplicate line(s) in Info.txt ignored", ref, len(entries) - len(unique))
            lines["duplicates_ignored"] += len(entries) - len(unique)
        try:
            record = build_record(ref, unique, info)
            if not metadata_only:
                assert root is not None
                record = _with_image(record, Path(root))
        except InputError as err:
            err.record_id = err.record_id or f"{SOURCE}:{ref}"
            quarantine_error(table, err, SOURCE)
            lines["quarantined"] += len(unique)
            continue
        table.records.append(record)
        lines["normal" if record.label == "normal" else "lesions"] += len(unique)

    if not metadata_only and root is not None:
        _quarantine_unused_images(table, Path(root), set(refs))
    table.check_unique_ids()
    lines["total"] = parsed.record_lines
    table.meta.update({
        "info_file": info.name,
        "metadata_only": metadata_only,
        "line_accounting": dict(sorted(lines.items())),
        "header_lines_skipped": parsed.other_lines,
        "coordinates": "Info.txt x, y (origin bottom-left) converted to row = height - y, col = x",
    })
    accounted = lines["lesions"] + lines["normal"] + lines["quarantined"] + lines["duplicates_ignored"]
    if accounted != parsed.record_lines:  # a bug, not bad input: every line must land somewhere
        raise AssertionError(f"MIAS line accounting: {accounted} of {parsed.record_lines} lines")
    log.info("MIAS: %d record lines -> %d images used, %d quarantined (%d lesion lines, %d normal lines)",
             parsed.record_lines, len(table.records), len(table.quarantine), lines["lesions"], lines["normal"])
    return table


def _quarantine_unused_images(table: RecordsTable, root: Path, refs: set[str]) -> None:
    """Every image file in ``root`` that no record uses is quarantined, never silently dropped: images that
    Info.txt does not list (they cannot be labelled), and a second copy of a listed image (``mdb003.png`` beside
    the ``mdb003.pgm`` that is used; the .pgm is preferred, as :data:`IMAGE_SUFFIXES` orders them)."""
    for path in sorted(root.iterdir()):
        stem = path.stem.lower()
        if path.suffix.lower() not in IMAGE_SUFFIXES or not _REF.match(stem):
            continue
        if stem not in refs:
            add_quarantine(table, QuarantineEntry(
                path=str(path), code="no_annotation", source=SOURCE, record_id=f"{SOURCE}:{stem}",
                problem="image not listed in Info.txt", fix="add its line(s) to Info.txt or move it out of --root"))
            continue
        used = _find_image(root, stem)
        if used is not None and used.name == path.name:
            continue
        # No record id: the listed image's id belongs to its record (used or quarantined on its own).
        add_quarantine(table, QuarantineEntry(
            path=str(path), code="duplicate_file", source=SOURCE,
            problem=f"a second image file for {stem}: {used.name} is the one read" if used is not None else
                    f"the file name does not match {stem}.pgm / {stem}.png exactly (case), so it is not read",
            fix="keep one image file per MIAS reference number, named mdbNNN.pgm (or .png)"))


def read_source(opts: SourceOptions) -> RecordsTable:
    """The ``mias`` entry of :data:`mammoflow.sources.SOURCES`."""
    return read_mias(root=opts.root, info=opts.info, metadata_only=opts.metadata_only)
