"""Decode once: the display pixels an ingest decoded, handed on to the preprocess of the same run.

Ingest decodes every DICOM image (to validate it, and to digest its pixels for duplicate detection,
:mod:`mammoflow.sources.duplicates`); preprocess needs the very same display pixels. Decoding a compressed file is
most of both steps' time, so ingest leaves the pixels of the images it decoded in a local spool, and preprocess
takes them from there instead of decoding the file again:

- **where**: ``handoff/`` in the project's one local cache (:func:`mammoflow.storage.copies.cache_dir`: the
  ``cache_dir`` given to :meth:`Handoff.open` and :func:`take`, else ``$MAMMOFLOW_CACHE``, else the system temp
  folder; ingest and preprocess must be given the same one), one ``v1-<sha256 of the file's bytes>.npy`` per image,
  written atomically (:func:`mammoflow.storage.atomic_file`);
- **bounded**: filled first come, first served up to ``$MAMMOFLOW_HANDOFF_LIMIT`` bytes (default 2 GiB, none in a
  Kubernetes pod: see :func:`handoff_limit`; 0 turns the handoff off); a pool's workers each fill an equal share. What does not fit is decoded again by preprocess, as
  before. Entries that no preprocess took (it ran in another pod, or the image was quarantined after it was
  decoded) are removed by the next ingest after :data:`MAX_AGE_S`;
- **keyed by content**: the record carries the file's sha256 (``content_hash``); preprocess looks for an entry of
  that name (none: the file is decoded, not even hashed: another machine or pod, a full spool). An entry is
  deleted once taken;
- **stamped**: beside each entry, ``v1-<sha256>.stamp`` holds the :class:`~mammoflow.io.files.FileStamp` (size,
  mtime, ctime, inode, device) of the file its pixels were decoded from, taken before ingest read it. Preprocess
  takes the entry when the file at its path has that stamp now, without reading the file; a file with another stamp
  (rewritten, replaced, touched, or a copy elsewhere), an entry without a stamp, or a stamp that cannot be trusted
  (the file had changed less than :data:`~mammoflow.io.files.RACY_NS` before it was taken, or the filesystem gives
  no inode numbers) gets the content check instead: the file is hashed *as it is now*, and a file whose digest is
  no longer the entry's is decoded (and the stale entry dropped);
- **the same pixels**: an entry holds what :func:`mammoflow.io.dicom.read_dicom` returned for these bytes, and only
  for a file whose header says ``Modality`` MG (so preprocess's own check, :func:`mammoflow.io.images.read_image`
  expects MG, would have passed): preprocess output is byte-identical to the decode path;
- **only where it pays**: compressed images (RLE, JPEG, JPEG-LS, JPEG 2000; 50-800 ms to decode 3 megapixels here).
  A native (uncompressed) file's "decode" is a read and a lookup table (~17 ms), and the ROI masks are small or
  binary RLE (~12 ms): both cost about as much as a round trip through the spool (write, read, delete), so they
  are read again.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mammoflow.io.dicom import DicomImage

log = logging.getLogger(__name__)

LIMIT_ENV = "MAMMOFLOW_HANDOFF_LIMIT"
DEFAULT_LIMIT = 2 << 30
FOLDER = "handoff"
VERSION = "v1"  # part of every entry's name: a change to the display mapping bumps it
STAMP_SUFFIX = ".stamp"
MAX_AGE_S = 24 * 3600
_DICOM_SUFFIXES = (".dcm", ".dicom")


def handoff_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The spool's folder: ``handoff/`` in the project's one cache root."""
    from mammoflow.storage.copies import cache_dir as cache_root

    return cache_root(cache_dir) / FOLDER


def handoff_limit(explicit: int | None = None) -> int:
    """The spool's bound in bytes: ``explicit``, else ``$MAMMOFLOW_HANDOFF_LIMIT``, else :data:`DEFAULT_LIMIT`; but
    0 by default in a Kubernetes pod (``KUBERNETES_SERVICE_HOST`` set): a pipeline's preprocess runs in another pod
    with another disk, so nothing would take the pixels and they would only fill the pod's ephemeral storage."""
    if explicit is not None:
        return max(0, int(explicit))
    env = os.environ.get(LIMIT_ENV, "").strip()
    if env:
        return max(0, int(env))
    return 0 if os.environ.get("KUBERNETES_SERVICE_HOST") else DEFAULT_LIMIT


def entry_path(folder: Path, digest: str) -> Path:
    return folder / f"{VERSION}-{digest}.npy"


def stamp_path(entry: Path) -> Path:
    """The stamp beside an entry: the source file's :class:`~mammoflow.io.files.FileStamp`, as JSON."""
    return entry.with_suffix(STAMP_SUFFIX)


@dataclass
class Handoff:
    """The ingest side: ``put`` pixels while ``budget`` bytes remain (one per process: a pool's worker gets its
    own copy with its share)."""

    folder: Path
    budget: int

    @classmethod
    def open(cls, cache_dir: str | os.PathLike[str] | None = None, limit: int | None = None) -> Handoff:
        """The spool of this machine, its stale entries removed, with what is left of the bound as budget."""
        folder = handoff_dir(cache_dir)
        limit = handoff_limit(limit)
        used = _sweep(folder) if limit > 0 else 0
        return cls(folder, max(0, limit - used))

    @classmethod
    def off(cls) -> Handoff:
        """A handoff that keeps nothing (a metadata-only read decodes no pixels)."""
        return cls(Path(), 0)

    def share(self, processes: int) -> Handoff:
        return Handoff(self.folder, self.budget // max(1, processes))

    def put(self, digest: str | None, image: DicomImage) -> bool:
        """Keep the display pixels of ``image``, decoded from the file whose bytes hash to ``digest``; False when
        they are not handed on (no digest, not MG, not compressed: see the module docstring), do not fit, or the
        disk refuses them."""
        size = image.pixels.nbytes + 128
        if not digest or image.modality != "MG" or image.transfer_syntax in native_syntaxes() or size > self.budget:
            return False
        from mammoflow.storage import atomic_file, atomic_write_text

        entry = entry_path(self.folder, digest)
        try:
            with atomic_file(entry, suffix=".npy") as tmp:
                np.save(tmp, image.pixels, allow_pickle=False)
            stamp = getattr(image, "stamp", None)
            if stamp is not None:  # after the entry: an entry seen without its stamp gets the content check
                atomic_write_text(stamp_path(entry), json.dumps(stamp.to_dict()))
        except OSError as exc:  # a full or read-only disk: preprocess decodes, as without a spool
            log.debug("decode handoff: not kept (%s)", type(exc).__name__)
            return False
        self.budget -= size
        return True


@functools.cache
def native_syntaxes() -> frozenset[str]:
    """Names of the transfer syntaxes whose pixel data is not compressed (their decode is a read)."""
    from pydicom.uid import UID, UncompressedTransferSyntaxes

    return frozenset(UID(uid).name for uid in UncompressedTransferSyntaxes)


def _sweep(folder: Path) -> int:
    """Remove entries and stamps older than :data:`MAX_AGE_S` (and leftovers of interrupted writes); the bytes of
    the entries left (the stamps' few bytes are not counted)."""
    used, now = 0, time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            st = entry.stat()
            if now - st.st_mtime > MAX_AGE_S:
                os.unlink(entry.path)
                if entry.name.endswith(".npy"):
                    stamp_path(Path(entry.path)).unlink(missing_ok=True)
            elif not entry.name.endswith(STAMP_SUFFIX):
                used += st.st_size
        except OSError:
            continue  # taken meanwhile by a preprocess
    return used


def take(path: str | os.PathLike[str], digest: str | None,
         cache_dir: str | os.PathLike[str] | None = None) -> np.ndarray | None:
    """The display pixels an ingest handed on for the DICOM file ``path`` as it is now, the entry deleted; None when
    there is none (then decode it). ``digest``: the sha256 the file's record carries (``content_hash``);
    ``cache_dir``: the cache root the ingest's :meth:`Handoff.open` was given (None: the default root)."""
    if not digest or not Path(path).name.lower().endswith(_DICOM_SUFFIXES):
        return None
    entry = entry_path(handoff_dir(cache_dir), digest)
    if not entry.is_file():
        return None
    unchanged = _unchanged(path, digest, entry)
    if unchanged is None:  # a file that cannot be read: decoding it says why
        return None
    if not unchanged:  # changed since ingest: decode it; the entry is no one's now
        _drop(entry)
        return None
    try:
        pixels = np.load(entry, allow_pickle=False)
    except (OSError, ValueError):  # taken meanwhile, or damaged
        return None
    _drop(entry)
    return pixels


def _unchanged(path: str | os.PathLike[str], digest: str, entry: Path) -> bool | None:
    """Whether the file at ``path`` still holds the bytes that hash to ``digest``: by the entry's stamp when it
    matches and can be trusted, else by hashing the file (None when it cannot be read)."""
    from mammoflow.errors import InputError
    from mammoflow.io.files import FileStamp, file_sha256

    try:
        stamp = FileStamp.from_dict(json.loads(stamp_path(entry).read_text()))
    except (OSError, ValueError):
        stamp = None
    if stamp is not None and stamp.trusted and stamp.matches(path):
        return True
    try:
        return file_sha256(path) == digest
    except InputError:
        return None


def _drop(entry: Path) -> None:
    entry.unlink(missing_ok=True)
    stamp_path(entry).unlink(missing_ok=True)
