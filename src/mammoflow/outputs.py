"""Where a verb will write: checked before any work, so a bad ``--out`` is one clear line, not a traceback at the end.

An output is a folder (or, for ``predict --out``, a file) that may not exist yet. It cannot be written when it, or a
folder above it, is a file, or when the nearest existing folder refuses a new entry (permissions, a read-only disk).
Writability is probed by creating and removing a hidden folder there, the only test that also holds for root, for
read-only mounts and for ACLs. ``gs://`` outputs are not probed (the first upload reports its own error).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mammoflow import storage
from mammoflow.errors import ConfigError

PROBE_PREFIX = ".mammoflow-write-probe-"


def output_problem(uri: str | os.PathLike[str], *, is_file: bool = False) -> str | None:
    """What prevents writing the output ``uri`` (a message naming the path and the fix), or None when it can be."""
    if storage.is_remote(uri):
        return None
    path = storage.local_path(uri)
    target = path.absolute()
    if target.is_dir() and is_file:
        return f"{path} is a folder, not a file. Fix: give a file path, e.g. {path / 'predictions.jsonl'}"
    if target.exists() and not target.is_dir() and not is_file:
        return (f"{path} is a file, not a folder. Fix: give a folder path (new or existing), or remove or rename "
                "the file")
    folder = target if target.is_dir() else next((p for p in target.parents if p.exists() or p.is_symlink()), None)
    if folder is None:  # pragma: no cover - the filesystem root always exists
        return None
    if not folder.is_dir():
        return (f"{folder} is a file, not a folder, so {path} cannot be created under it. Fix: give a path that is "
                "not inside a file")
    return _probe(folder, path)


def _probe(folder: Path, path: Path) -> str | None:
    try:
        probe = tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=folder)
    except OSError as exc:
        return (f"cannot write {path}: {folder} refuses new files ({exc.strerror or type(exc).__name__}). Fix: give "
                f"a folder this user can write to, or make {folder} writable")
    os.rmdir(probe)
    return None


def check_output(uri: str | os.PathLike[str], *, is_file: bool = False) -> None:
    """Raise :class:`ConfigError` with :func:`output_problem`'s message when ``uri`` cannot be written."""
    problem = output_problem(uri, is_file=is_file)
    if problem is not None:
        raise ConfigError(problem)
