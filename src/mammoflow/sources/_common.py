"""Helpers shared by every source reader: options, the pseudonymisation salt, quarantine bookkeeping."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from mammoflow.errors import InputError
from mammoflow.records import QuarantineEntry, RecordsTable

log = logging.getLogger(__name__)

SALT_ENV = "MAMMOFLOW_SALT"
# Public on purpose: it only keeps ids stable between runs of one checkout. Anyone holding the original ids can
# recompute pseudonyms made with it, so a site must set its own secret salt (--salt or MAMMOFLOW_SALT).
DEFAULT_SALT = "mammoflow-public-default-salt-v1"


@dataclass
class SourceOptions:
    """What ``mammoflow ingest`` passes to every reader (one signature for every source)."""

    root: Path | None = None  # images: a folder, or a zip for mias-rois
    info: Path | None = None  # MIAS Info.txt (default: <root>/Info.txt)
    csvs: tuple[Path, ...] = ()  # CBIS-DDSM description CSVs (default: found under root)
    labels: Path | None = None  # dicom-dir labels CSV
    metadata_only: bool = False  # annotations without images (split planning, tests on the real metadata)
    salt: str | None = None  # pseudonymisation salt (default: $MAMMOFLOW_SALT, then the public default)
    any_modality: bool = False  # dicom-dir: accept DICOM files that are not mammograms (Modality MG)
    # dicom-dir: record ids from a salted pseudonym of the file's path, not the path (folder names may be names)
    pseudonymise_paths: bool = False


def resolve_salt(salt: str | None = None) -> str:
    """The salt to pseudonymise with: the argument, else ``$MAMMOFLOW_SALT``, else the public default (warned)."""
    if salt:
        return salt
    env = os.environ.get(SALT_ENV, "")
    if env:
        return env
    log.warning("no --salt and no %s set: using the project's public default salt. Pseudonymous patient ids "
                "are then reproducible by anyone holding the original ids; a site should set its own secret "
                "salt (and keep it: changing it changes every patient id)", SALT_ENV)
    return DEFAULT_SALT


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
    from mammoflow.io.images import unreadable_error

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
    """The ``bad_csv`` InputError of a :class:`csv.Error` (an unclosed quote, a field over the size limit)."""
    return InputError(path, f"{what} cannot be parsed near line {line} ({exc})",
                      f"{_CSV_FIX}; check the quotes around that line", code="bad_csv")


def source_files(opts: SourceOptions) -> dict[str, Path]:
    """Every input file of a source: the files under its root (recursively, hidden ones skipped) and the
    annotation files given outside it. Keyed by posix path relative to root, or the absolute path."""
    files: dict[str, Path] = {}
    root = Path(opts.root).resolve() if opts.root is not None else None
    if root is not None and root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith("."):
                    path = Path(dirpath) / name
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
