"""Accounting for the members of an archive (or the files of a folder) that a source does not read as images.

Nothing is dropped silently (issue 13, build items 2-3: read = used + quarantined + skipped):

- a **zip-slip** name (absolute, a drive letter, or a ``..`` component) is quarantined as ``unsafe_path`` and
  never read or joined to a folder: extracting it would write outside the target folder;
- **hidden and OS metadata** files (any component starting with ``.``, ``__MACOSX/``, ``Thumbs.db``,
  ``desktop.ini``) are skipped with the reason ``hidden``;
- files that are **not images** (by suffix: a readme, a checksum list) are skipped as ``sidecar``.

Skipped inputs are listed in the records table's ``skipped`` list (``skipped.jsonl``, ``quarantine.md``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mammoflow.records import QuarantineEntry, RecordsTable
from mammoflow.sources._common import add_quarantine, add_skipped

_OS_METADATA = {"__macosx", "thumbs.db", "desktop.ini"}
_DRIVE = re.compile(r"^[A-Za-z]:")


def _parts(name: str) -> list[str]:
    return [p for p in re.split(r"[\\/]", name) if p]


def unsafe_reason(name: str) -> str | None:
    """Why a member name would escape the folder it is extracted into (zip slip), or None when it is safe."""
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "an absolute path"
    if any(p == ".." for p in _parts(name)):
        return "a '..' component (it climbs out of the archive's folder)"
    return None


def is_hidden(name: str) -> bool:
    """A hidden file or folder (a component starting with ``.``) or OS metadata (``__MACOSX/``, ``Thumbs.db``)."""
    return any(p.startswith(".") or p.lower() in _OS_METADATA for p in _parts(name))


def skip(table: RecordsTable, path: str, reason: str, source: str, note: str) -> None:
    """List one input left out on purpose, with its reason (``skipped.jsonl``; read = used + quarantined +
    skipped)."""
    add_skipped(table, path, reason, note, source)


def account_member(table: RecordsTable, name: str, label: str, source: str,
                   image_suffixes: Sequence[str]) -> bool:
    """True when member ``name`` is a candidate image to read; otherwise it has been quarantined or skipped.

    ``label`` names the member in the quarantine (``<archive>/<member>``, as text: never resolved).
    """
    why = unsafe_reason(name)
    if why is not None:
        add_quarantine(table, QuarantineEntry(
            path=label, code="unsafe_path", source=source,
            problem=f"the member name is {why}: extracting it would write outside the target folder (zip slip)",
            fix="remove that member from the archive (re-download the original if it came from a release)"))
        return False
    if is_hidden(name):
        skip(table, label, "hidden", source, "a hidden file or OS metadata, not an input")
        return False
    if not name.lower().endswith(tuple(s.lower() for s in image_suffixes)):
        skip(table, label, "sidecar", source, f"not an image file (images end in {', '.join(image_suffixes)})")
        return False
    return True
