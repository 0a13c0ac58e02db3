"""What is under a DICOM folder: DICOM files to read, inputs skipped on purpose, and files refused before reading.

Every entry under the root ends in exactly one of the three lists, so that read = used + quarantined + skipped
holds for the whole folder:

- **read**: ``.dcm``/``.dicom`` files, and any other file carrying the ``DICM`` marker (a file named by its SOP
  Instance UID, ``1.2.840.113619.2.55.3.604688119``, has a "suffix" but is DICOM);
- **skipped** (listed with the reason): hidden files and folders (names starting with ``.``; a hidden folder is one
  entry, not walked), sidecars (``*.csv`` such as the labels CSV, ``*.txt``/``*.json``/``*.md`` readmes,
  ``DICOMDIR``, OS clutter), symbolic links to folders (not followed, one entry);
- **refused** (quarantined): a name that is not valid UTF-8 (``bad_file_name``; a folder so named is one entry),
  a broken link (``missing_file``), a device or pipe, a file without the DICM marker (``not_dicom``), an entry
  that cannot be read (``unreadable``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from mammoflow.errors import InputError
from mammoflow.records import is_printable_name
from mammoflow.sources._common import bad_name_error

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
#: Files beside the images that are not images: skipped (listed with the reason), never quarantined.
SIDECAR_SUFFIXES = (".csv", ".txt", ".json", ".md")
SIDECAR_NAMES = ("dicomdir", "readme", "license", "thumbs.db", "desktop.ini")  # compared in lower case


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str  # hidden / sidecar / linked_folder
    note: str


@dataclass
class FolderScan:
    """What is under a DICOM folder: DICOM files, skipped entries, and files rejected before reading."""

    dicoms: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    rejected: list[InputError] = field(default_factory=list)  # not DICOM, unreadable, broken links, bad names

    @property
    def sidecars(self) -> list[Path]:
        return [s.path for s in self.skipped if s.reason == "sidecar"]


def _sidecar_note(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(".csv"):
        return "a CSV beside the images (a labels CSV is read for its labels, never as an image)"
    if lower.endswith(SIDECAR_SUFFIXES) or lower in ("readme", "license"):
        return "a text/JSON/Markdown file beside the images"
    if lower == "dicomdir":
        return "the DICOMDIR index of a DICOM media export (the images it lists are read as files)"
    if lower in SIDECAR_NAMES:
        return "operating-system clutter"
    return None


def _classify(path: Path, scan: FolderScan) -> None:
    """Add one file of the folder to ``scan`` (see the module docstring for the rules)."""
    from mammoflow.io.files import unreadable_error

    note = _sidecar_note(path.name)
    if path.name.startswith("."):
        scan.skipped.append(Skipped(path, "hidden", "a hidden file (name starting with '.')"))
    elif not is_printable_name(path.name):
        scan.rejected.append(bad_name_error(path))
    elif note is not None:
        scan.skipped.append(Skipped(path, "sidecar", note))
    elif not path.exists():
        scan.rejected.append(InputError(path, "broken symbolic link", "fix or remove the link", code="missing_file"))
    elif not path.is_file():
        scan.rejected.append(InputError(path, "not a regular file (a device, socket or pipe)",
                                        "move it out of --root", code="not_dicom"))
    elif path.suffix.lower() in DICOM_SUFFIXES:
        scan.dicoms.append(path)  # read even without the DICM marker: files without the preamble are met
    else:
        from mammoflow.storage.copies import materialise

        try:
            with open(materialise(path), "rb") as fh:  # a streamed data root's file is fetched to be looked at
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


def _folders(here: Path, names: list[str], scan: FolderScan) -> list[str]:
    """The sub-folders of ``here`` to walk; the others are skipped or refused (module docstring)."""
    keep = []
    for name in sorted(names):
        path = here / name
        if name.startswith("."):
            scan.skipped.append(Skipped(path, "hidden", "a hidden folder (name starting with '.'): not read"))
        elif path.is_symlink():
            scan.skipped.append(Skipped(path, "linked_folder", "a symbolic link to a folder: not followed (copy "
                                        "the images in, or pass the linked folder as --root)"))
        elif not is_printable_name(name):
            scan.rejected.append(bad_name_error(path))
        else:
            keep.append(name)
    return keep


def scan_folder(root: Path) -> FolderScan:
    """Every entry under ``root`` (recursively, in sorted order), sorted into DICOM files, skipped entries and
    rejects (module docstring). A folder that cannot be listed is a reject (code ``unreadable``)."""
    from mammoflow.io.files import unreadable_error

    root = Path(root)
    scan = FolderScan()

    def failed(exc: OSError) -> None:
        scan.rejected.append(unreadable_error(exc.filename or root, exc))

    for dirpath, dirnames, filenames in os.walk(root, onerror=failed):
        here = Path(dirpath)
        dirnames[:] = _folders(here, dirnames, scan)
        for name in sorted(filenames):
            _classify(here / name, scan)
    linked = sum(1 for s in scan.skipped if s.reason == "linked_folder")
    if linked:
        log.warning("%d symbolic link(s) to folders under --root not followed (listed in skipped.jsonl): copy the "
                    "images in, or pass the linked folder as --root", linked)
    scan.dicoms.sort()
    return scan


def find_dicoms(root: Path) -> list[Path]:
    """DICOM files under ``root``: ``.dcm``/``.dicom`` files, and other files carrying the DICM marker."""
    return scan_folder(root).dicoms
