"""Writing an ingest's records folder: all or nothing, and not twice for the same inputs.

**All or nothing.** :func:`ingest_into` builds the new folder beside the old one (``OUT.tmp-<pid>``) and swaps it
in last (rename), so a failure (a full disk, a kill, an error) leaves the old folder as it was, complete and
usable. The completion markers are inside the folder that is swapped in: ``records_complete.json``
(:func:`mammoflow.records.require_complete`, which ``preprocess`` checks) and this module's ``ingest_inputs.json``.
Writers hold a lock (``.OUT.lock`` beside the folder); once it holds the lock, a run removes the temporary folders
killed runs left (``OUT.tmp-*``) and puts back a previous folder a kill caught in the middle of the swap
(``OUT.old-*``). ``--out`` equal to or inside ``--root`` (or holding an input) is refused, and so is an ``--out``
that holds anything but a records folder (the swap replaces the whole folder); an unwritable ``--out``, or one
under a file, is an error naming the path.

**Not twice.** An ingest decodes every image (to check it and hash it), which takes minutes on a real dataset; a
retried pipeline step or a repeated command must not do that twice. :func:`input_fingerprint` digests what an
ingest reads without reading any image: the files under the root (hidden ones included, as they are listed as
skipped) and the annotation files given outside it (Info.txt, labels and description CSVs), as
:func:`~mammoflow.sources._common.source_files` lists them for the retrain scan, with their sizes and modification
times, and the options, the salt included (as part of the digest, never in clear). A file name that is not UTF-8
is digested as its bytes. A folder whose ``ingest_inputs.json`` matches holds a complete ingest of exactly these
inputs. Anything else (another option, another salt, a file added, removed, touched or rewritten) reads
everything again.

For reading only what changed into a *new* folder (scheduled retraining), see ``mammoflow ingest --incremental``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammoflow.errors import ConfigError, MammoflowError
from mammoflow.outputs import output_problem
from mammoflow.records import (
    COMPLETE_FILE,
    META_FILE,
    QUARANTINE_FILE,
    QUARANTINE_REPORT,
    RECORDS_FILE,
    SKIPPED_FILE,
    SUMMARY_FILE,
    RecordsTable,
    atomic_write_text,
    shown_path,
)
from mammoflow.sources._common import SourceOptions, site_salt, source_files

log = logging.getLogger(__name__)

INPUTS_FILE = "ingest_inputs.json"
SCHEMA = 2  # 2: hidden entries listed, names digested as bytes
#: What a records folder may hold (besides hidden files): an ``--out`` holding anything else is refused.
RECORDS_FOLDER_FILES = frozenset({RECORDS_FILE, META_FILE, QUARANTINE_FILE, QUARANTINE_REPORT, SUMMARY_FILE,
                                  SKIPPED_FILE, COMPLETE_FILE, INPUTS_FILE, "split_plan.json", "file_index.json",
                                  "ingest_delta.json"})


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
    salt = site_salt(opts.salt) or ""
    settings = {"schema": SCHEMA, "source": source, "metadata_only": opts.metadata_only,
                "any_modality": opts.any_modality, "pseudonymise_paths": opts.pseudonymise_paths,
                "salt_sha256": hashlib.sha256(salt.encode()).hexdigest(), "extra": extra or {}}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    root = Path(opts.root).resolve() if opts.root is not None else None
    digest.update(b"\n[root] " + (os.fsencode(root) if root is not None else b"None") + b"\n")
    for key, path in source_files(opts, hidden=True).items():  # as the retrain scan lists them, hidden ones too
        digest.update(os.fsencode(key) + f"\t{_state(path)}\n".encode())
    return digest.hexdigest()


def finished_summary(out_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The summary of the ingest already in ``out_dir`` if it read exactly these inputs and is complete, else
    None."""
    marker, summary = Path(out_dir) / INPUTS_FILE, Path(out_dir) / SUMMARY_FILE
    if not (marker.is_file() and summary.is_file() and (Path(out_dir) / COMPLETE_FILE).is_file()):
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


# --------------------------------------------------------------------------------------------- the output folder


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out_dir(out_dir: Path, inputs: Iterable[Path | None] = ()) -> Path:
    """``out_dir`` made absolute, after refusing what the swap cannot do safely (see the module docstring)."""
    out = Path(os.path.abspath(out_dir))
    shown = shown_path(out_dir)
    for given in inputs:
        if given is None:
            continue
        inp = Path(given).resolve()
        if _inside(out.resolve(), inp) and inp.is_dir():
            raise ConfigError(f"--out {shown} is {'--root' if out.resolve() == inp else 'inside --root'} "
                              f"{shown_path(given)}: the records would be written among the images (and read as "
                              "inputs next time). Fix: give an --out folder outside --root")
        if _inside(inp, out.resolve()):
            raise ConfigError(f"--out {shown} holds the input {shown_path(given)}, and an ingest replaces its whole "
                              "--out folder. Fix: give an --out folder that holds none of the inputs")
    problem = output_problem(out)  # a file, a path under a file, a folder refusing new entries (probed)
    if problem is None and out.is_dir():
        problem = output_problem(out.parent)  # the new folder is built beside, then renamed
    if problem is not None:
        raise ConfigError(f"--out: {problem}")
    if out.is_dir():
        strays = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name not in
                        RECORDS_FOLDER_FILES)
        if strays:
            raise ConfigError(f"--out {shown} already holds files that are not a records folder (e.g. "
                              f"{shown_path(strays[0])}); an ingest replaces the whole folder. Fix: give a new or "
                              "empty folder")
    return out


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    import fcntl

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fh = open(out.parent / f".{out.name}.lock", "a+")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ConfigError(f"--out {shown_path(out)}: cannot write in {shown_path(out.parent)} "
                          f"({os.strerror(exc.errno) if exc.errno else type(exc).__name__}). Fix: give a folder "
                          "you can write to") from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _spare(out: Path, kind: str) -> list[Path]:
    return sorted(p for p in out.parent.glob(f"{out.name}.{kind}-*") if p.is_dir() and not p.is_symlink())


def clean_leftovers(out: Path) -> None:
    """With the lock held: put back a previous folder a kill left mid-swap, and remove killed runs' temp folders."""
    old = _spare(out, "old")
    if old and not out.exists():
        log.warning("%s: restoring the previous records folder left by an interrupted ingest", shown_path(out))
        os.rename(old[-1], out)
        old = old[:-1]
    for path in [*_spare(out, "tmp"), *old]:
        log.info("removing %s, left by an ingest that did not finish", shown_path(path.name))
        shutil.rmtree(path, ignore_errors=True)


def _swap_in(tmp: Path, out: Path) -> None:
    """Make ``tmp`` the folder ``out`` (rename), the previous ``out`` removed after."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f"{out.name}.old-{os.getpid()}"
    try:
        os.rename(out, old)
    except OSError:  # a mount point (a pipeline's output volume): replace the files, the completion marker last
        (out / COMPLETE_FILE).unlink(missing_ok=True)
        for child in out.iterdir():
            if child.name in RECORDS_FOLDER_FILES:
                child.unlink()
        for child in sorted(tmp.iterdir(), key=lambda p: p.name == COMPLETE_FILE):
            os.replace(child, out / child.name)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class IngestResult:
    summary: dict[str, Any]
    reused: bool  # the folder already held the ingest of these inputs: nothing read


def ingest_into(out_dir: Path | str, fingerprint: str, read: Callable[[], RecordsTable], *,
                inputs: Iterable[Path | None] = (),
                reuse_if: Callable[[dict[str, Any]], bool] = lambda summary: True) -> IngestResult:
    """Write the records ``read()`` returns into ``out_dir``, all or nothing (module docstring); when ``out_dir``
    already holds the ingest of ``fingerprint`` (and ``reuse_if(summary)``), nothing is read. ``inputs``: the
    root and annotation files, which ``out_dir`` may neither hold nor lie in."""
    out = check_out_dir(Path(out_dir), inputs)
    with _locked(out):
        clean_leftovers(out)
        done = finished_summary(out, fingerprint)
        if done is not None and reuse_if(done):
            return IngestResult(done, reused=True)
        table = read()
        tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            summary = table.write(tmp)
            mark_finished(tmp, fingerprint)
            _swap_in(tmp, out)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
            raise MammoflowError(f"--out {shown_path(out)}: the records could not be written ({reason}); the "
                                 "previous folder, if any, is unchanged. Fix: free space or fix the permissions, "
                                 "then run the ingest again") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return IngestResult(summary, reused=False)
