"""Re-running an ingest into the same folder resumes: when nothing it reads has changed, nothing is read again.

An ingest decodes every image (to check it and hash it), which takes minutes on a real dataset; a retried pipeline
step or a repeated command must not do that twice. :func:`input_fingerprint` digests what an ingest reads without
reading any image: the list of files under the root with their sizes and modification times, the annotation files
(Info.txt, labels and description CSVs, also by size and time) and the options, the salt included (as part of the
digest, never in clear). After a finished ingest :func:`mark_finished` writes it beside the records, last, so a
folder whose marker matches holds a complete ingest of exactly these inputs. Anything else (another option,
another salt, a file added, removed, touched or rewritten) reads everything again, and the new records replace the
old ones atomically, file by file.

For reading only what changed into a *new* folder (scheduled retraining), see ``mammoflow ingest --incremental``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from mammoflow.records import SUMMARY_FILE, atomic_write_text
from mammoflow.sources._common import DEFAULT_SALT, SALT_ENV, SourceOptions

log = logging.getLogger(__name__)

INPUTS_FILE = "ingest_inputs.json"
SCHEMA = 1


def _file_line(path: Path, name: str) -> str:
    st = path.stat()
    return f"{name}\t{st.st_size}\t{st.st_mtime_ns}"


def tree_listing(path: Path) -> list[str]:
    """One ``relative-path<TAB>size<TAB>mtime_ns`` line per file under ``path`` (or for the file ``path``), sorted;
    symlinked folders are not followed (as the readers do not follow them)."""
    if path.is_file():
        return [_file_line(path, path.name)]
    if not path.is_dir():
        return [f"{path.name}\tmissing"]
    lines = []
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = Path(folder) / name
            try:
                lines.append(_file_line(full, full.relative_to(path).as_posix()))
            except OSError:  # a broken link or an unreadable entry: the reader will quarantine it; list it as such
                lines.append(f"{full.relative_to(path).as_posix()}\tunreadable")
    return lines


def input_fingerprint(source: str, opts: SourceOptions, extra: dict[str, Any] | None = None) -> str:
    """The sha256 of everything an ingest of ``source`` with ``opts`` reads, from file metadata only; ``extra``:
    other settings that shape the records (e.g. the remote URI a pipeline step writes as the image root)."""
    digest = hashlib.sha256()
    salt = opts.salt or os.environ.get(SALT_ENV) or DEFAULT_SALT
    settings = {"schema": SCHEMA, "source": source, "metadata_only": opts.metadata_only,
                "any_modality": opts.any_modality, "pseudonymise_paths": opts.pseudonymise_paths,
                "salt_sha256": hashlib.sha256(salt.encode()).hexdigest(), "extra": extra or {}}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for role, path in [("root", opts.root), ("info", opts.info), ("labels", opts.labels),
                       *(("csv", c) for c in opts.csvs)]:
        if path is not None:
            digest.update(f"\n[{role}] {Path(path).resolve()}\n".encode())
            digest.update("\n".join(tree_listing(Path(path))).encode())
    return digest.hexdigest()


def finished_summary(out_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The summary of the ingest already in ``out_dir`` if it read exactly these inputs, else None."""
    marker, summary = Path(out_dir) / INPUTS_FILE, Path(out_dir) / SUMMARY_FILE
    if not (marker.is_file() and summary.is_file()):
        return None
    try:
        if json.loads(marker.read_text()).get("fingerprint") != fingerprint:
            return None
        return json.loads(summary.read_text())
    except (OSError, ValueError):  # a damaged marker: ingest again
        return None


def mark_finished(out_dir: Path, fingerprint: str) -> None:
    """Record, after the records are written, which inputs this folder's ingest read."""
    atomic_write_text(Path(out_dir) / INPUTS_FILE, json.dumps({"fingerprint": fingerprint, "schema": SCHEMA},
                                                              indent=2, sort_keys=True) + "\n")


def forget(out_dir: Path) -> None:
    """Before writing new records into ``out_dir``: drop the marker, so a crash mid-write is never taken for a
    finished ingest of the new inputs."""
    (Path(out_dir) / INPUTS_FILE).unlink(missing_ok=True)
