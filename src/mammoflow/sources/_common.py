"""Helpers shared by every source reader: options, the pseudonymisation salt, quarantine and skip bookkeeping,
strict CSV parsing."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mammoflow.errors import ConfigError, InputError
from mammoflow.records import QuarantineEntry, RecordsTable, SkippedEntry, is_printable_name, shown_path

log = logging.getLogger(__name__)

SALT_ENV = "MAMMOFLOW_SALT"
SALT_SECRET = "mammoflow-salt"  # the Kubernetes Secret the KFP ingest steps read MAMMOFLOW_SALT from
# Public on purpose, and only for ids that are public already (CBIS-DDSM's P_00005): anyone holding the original
# ids can recompute pseudonyms made with it. Ids derived from a site's identifiers need a secret salt.
DEFAULT_SALT = "mammoflow-public-default-salt-v1"
# Public too, and only for the built-in phantoms (`mammoflow demo-data`: fake identifiers, every file marked in
# its header, see mammoflow.synth.phantoms.PHANTOM_MANUFACTURER), so a demo needs no secret.
DEMO_SALT = "mammoflow-demo-phantoms-salt-v1"
SALT_FIX = (f"set the site's secret salt with --salt S or the environment variable {SALT_ENV} (pipelines on "
            f"Kubeflow: the Secret {SALT_SECRET} with the key {SALT_ENV}, see k8s/README.md), and keep it: another "
            "salt gives other patient ids")


@dataclass
class SourceOptions:
    """What ``mammoflow ingest`` passes to every reader (one signature for every source)."""

    root: Path | None = None  # images: a folder, or a zip for mias-rois
    info: Path | None = None  # MIAS Info.txt (default: <root>/Info.txt)
    csvs: tuple[Path, ...] = ()  # CBIS-DDSM description CSVs (default: found under root)
    labels: Path | None = None  # dicom-dir labels CSV
    metadata_only: bool = False  # annotations without images (split planning, tests on the real metadata)
    salt: str | None = None  # pseudonymisation salt (default: $MAMMOFLOW_SALT; required for dicom-dir)
    any_modality: bool = False  # dicom-dir: accept DICOM files that are not mammograms (Modality MG)
    # dicom-dir: record ids from a salted pseudonym of the file's path, not the path (folder names may be names)
    pseudonymise_paths: bool = False
    # cbis-ddsm, dicom-dir: processes reading the images (None: every CPU; 1 under a streamed data root), the
    # records the same for any number (mammoflow.sources.parallel)
    workers: int | None = None
    # cbis-ddsm, dicom-dir: the cache root whose decode handoff (mammoflow.io.handoff) gets the decoded pixels
    cache_dir: str | os.PathLike[str] | None = None
    # False: no decode handoff (a streamed data root: its window bounds the local disk, decoded pixels would not be)
    handoff: bool = True


def site_salt(salt: str | None = None) -> str | None:
    """The site's salt: the argument, else ``$MAMMOFLOW_SALT``; None when neither is set."""
    return salt or os.environ.get(SALT_ENV, "") or None


def resolve_salt(salt: str | None = None, what: str = "patient ids derived from DICOM headers") -> str:
    """The salt to pseudonymise real identifiers with: the argument, else ``$MAMMOFLOW_SALT``; neither is a
    :class:`ConfigError` naming how to set one (never a silent fall-back to a public salt, with which anyone
    holding the original ids could recompute the pseudonyms)."""
    found = site_salt(salt)
    if found is None:
        raise ConfigError(f"no pseudonymisation salt: {what} need a secret salt. Fix: {SALT_FIX}")
    return found


def salt_note(salt: str | None) -> str:
    """What ``records_meta.json`` says about the salt used (never the salt)."""
    if salt == DEMO_SALT:
        return f"demo salt (public, built-in phantoms only): {DEMO_SALT}"
    if salt == DEFAULT_SALT:
        return "public salt (the source's ids are public already)"
    return "site salt" if salt else "none (ids are the dataset's public ids)"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def add_quarantine(table: RecordsTable, entry: QuarantineEntry) -> None:
    """Add one quarantine entry and log it: code, problem and fix, named by the source-derived record id or
    the file name (never a patient identifier)."""
    table.quarantine.append(entry)
    log.warning("quarantined %s [%s]: %s. Fix: %s", entry.record_id or Path(entry.path).name, entry.code,
                entry.problem, entry.fix)


def quarantine_error(table: RecordsTable, err: InputError, source: str) -> None:
    """Quarantine the item that raised ``err`` (see :func:`add_quarantine`)."""
    add_quarantine(table, QuarantineEntry.from_error(err, source=source))


def add_skipped(table: RecordsTable, path: object, reason: str, note: str, source: str) -> None:
    """List one input left out on purpose (``skipped.jsonl``, quarantine.md). Not logged one by one (the reader
    logs a count): a skipped folder's name may be a patient's, and with --pseudonymise-paths no path reaches a log."""
    table.skipped.append(SkippedEntry(path=shown_path(path), reason=reason, note=note, source=source))


def bad_name_error(path: Path, root: Path | None = None, record_id: str | None = None) -> InputError:
    """The ``bad_file_name`` InputError of a file or folder whose name is not valid UTF-8 (shown escaped)."""
    rel = path
    if root is not None:
        try:
            rel = path.relative_to(root)
        except ValueError:
            pass
    kind = "folder" if path.is_dir() and not path.is_symlink() else "file"
    return InputError(shown_path(path), f"the {kind} name {shown_path(rel)!r} is not valid UTF-8 text (raw bytes "
                      "from another system's encoding)", f"rename the {kind} (letters, digits, '-', '_' and '.')",
                      code="bad_file_name", record_id=record_id)


def check_name(path: Path, root: Path | None = None, record_id: str | None = None) -> None:
    """Raise :func:`bad_name_error` when ``path`` is not valid UTF-8."""
    if not is_printable_name(path):
        raise bad_name_error(path, root, record_id)


def require_file(path: Path, what: str, fix: str) -> Path:
    if not path.is_file():
        raise InputError(path, f"{what} not found", fix, code="missing_file")
    return path


_CSV_FIX = ("save the CSV as UTF-8 (Excel: File > Save As > 'CSV UTF-8'; or `iconv -f latin1 -t utf-8 in.csv > "
            "out.csv`)")


def read_csv_text(path: Path, what: str = "the CSV") -> str:
    """The text of a CSV file that must be UTF-8 (a UTF-8 byte-order mark is accepted and dropped).

    Another encoding (Latin-1 or Windows-1252 from an Excel export, UTF-16) or a NUL byte raises
    ``InputError(code="bad_csv")`` naming the line; a file that cannot be opened raises code ``unreadable``.
    Parse the result with ``csv.reader(io.StringIO(text, newline=""))``.
    """
    from mammoflow.io.files import unreadable_error

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(path, f"{what} not found", "check the path", code="missing_file") from None
    except OSError as exc:
        raise unreadable_error(path, exc) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(path, f"{what} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}; Latin-1 "
                         "or Windows-1252 from an Excel export, or UTF-16)", _CSV_FIX, code="bad_csv") from None
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        raise InputError(path, f"{what} holds a NUL byte on line {line} (a binary or damaged file, not CSV text)",
                         f"{_CSV_FIX}, or re-export it", code="bad_csv")
    return text


def csv_error(path: Path, line: int, exc: Exception, what: str = "the CSV") -> InputError:
    """The ``bad_csv`` InputError of a :class:`csv.Error` (an unclosed quote, a field over the size limit);
    ``line``: where the row being read started."""
    text = str(exc)
    if "unexpected end of data" in text:
        problem = (f"{what} cannot be parsed: the quote opened in the row starting on line {line} is never closed "
                   "(every row after it would be read as part of one field)")
    else:
        problem = f"{what} cannot be parsed in the row starting on line {line} ({text}: a quote out of place)"
    return InputError(path, problem, "close the quote, or remove the stray quote character, on that line (a field "
                      "with a comma or a quote is written \"like, \"\"this\"\"\"); then ingest again", code="bad_csv")


def csv_rows(path: Path, text: str, what: str = "the CSV") -> Iterator[tuple[int, list[str]]]:
    """``(line the row starts on, cells)`` of CSV ``text``, parsed strictly: a malformed CSV (an unclosed quote,
    stray characters after a closing quote) is a ``bad_csv`` :class:`InputError` for the whole file naming the
    line, never a silently shorter table. The header is the first row yielded."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    try:
        for cells in reader:
            yield start, cells
            start = reader.line_num + 1
    except csv.Error as exc:
        raise csv_error(path, start, exc, what) from None


def check_columns(path: Path, names: list[str], what: str = "the CSV", line: int = 1) -> None:
    """A header naming one column twice (after normalising, e.g. ``Path`` and ``path ``) is a ``bad_csv``
    :class:`InputError`: which of the two holds the value would be a guess."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names, 1):
        if name in seen and name:
            raise InputError(path, f"{what} has the column {name!r} twice (columns {seen[name]} and {i} of the "
                             f"header on line {line})", "keep one column of that name (delete or rename the other)",
                             code="bad_csv")
        seen.setdefault(name, i)


def source_files(opts: SourceOptions, *, hidden: bool = False) -> dict[str, Path]:
    """Every input file of a source: the files under its root (recursively, hidden ones skipped) and the
    annotation files given outside it. Keyed by posix path relative to root, or the absolute path; a key may
    hold surrogate escapes (a name that is not UTF-8: encode with ``os.fsencode``). ``hidden``: hidden files and
    folders are listed too, as entries of their own (a hidden folder is not walked)."""
    files: dict[str, Path] = {}
    root = Path(opts.root).resolve() if opts.root is not None else None
    if root is not None and root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            names = sorted(filenames) + (sorted(d for d in dirnames if d.startswith(".")) if hidden else [])
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in names:
                if hidden or not name.startswith("."):
                    path = here / name
                    files[path.relative_to(root).as_posix()] = path
    elif root is not None and root.is_file():
        files[root.name] = root
    for extra in (opts.info, opts.labels, *opts.csvs):
        if extra is None:
            continue
        path = Path(extra).resolve()
        key = source_file_key(path, root)
        if path.is_file() and key not in files:
            files[key] = path
    return files


def source_file_key(path: Path, root: Path | None) -> str:
    """A source file's key: its posix path relative to a root folder, else its absolute path."""
    if root is not None and root.is_dir():
        try:
            return path.resolve().relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path.resolve())
