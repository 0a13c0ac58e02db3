"""Re-running an ingest into the same folder resumes: when nothing it reads has changed, nothing is read again.

An ingest decodes every image (to check it and hash it), which takes minutes on a real dataset; a retried pipeline
step or a repeated command must not do that twice. :func:`input_fingerprint` digests what an ingest reads without
reading any image: the files under the root and the annotation files given outside it (Info.txt, labels and
description CSVs), as :func:`~mammoflow.sources._common.source_files` lists them for the retrain scan, with their
sizes and modification times, and the options, the salt included (as part of the
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
from mammoflow.sources._common import DEFAULT_SALT, SALT_ENV, SourceOptions, source_files

log = logging.getLogger(__name__)

INPUTS_FILE = "ingest_inputs.json"
SCHEMA = 1


def _state(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:  # a broken link or an unreadable entry: the reader quarantines it; listed as such
        return "unreadable"
    return f"{st.st_size}\t{st.st_mtime_ns}"


def input_fingerprint(source: str, opts: SourceOptions, extra: dict[str, Any] | None = None) -> str:
    """The sha256 of everything an ingest of ``source`` with ``opts`` reads, from file metadata only; ``extra``:
    other settings that shape the records (e.g. the remote URI a pipeline step writes as the image root)."""
    digest = hashlib.sha256()
    salt = opts.salt or os.environ.get(SALT_ENV) or DEFAULT_SALT
    settings = {"schema": SCHEMA, "source": source, "metadata_only": opts.metadata_only,
                "any_modality": opts.any_modality, "pseudonymise_paths": opts.pseudonymise_paths,
                "salt_sha256": hashlib.sha256(salt.encode()).hexdigest(), "extra": extra or {}}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    root = Path(opts.root).resolve() if opts.root is not None else None
    digest.update(f"\n[root] {root}\n".encode())
    for key, path in source_files(opts).items():  # the files an ingest reads, as the retrain scan lists them
        digest.update(f"{key}\t{_state(path)}\n".encode())
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
