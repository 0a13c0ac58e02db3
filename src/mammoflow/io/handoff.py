"""Decode once: the display pixels an ingest decoded, handed on to the preprocess of the same run.

Ingest decodes every DICOM image (to validate it, and to digest its pixels for duplicate detection,
:mod:`mammoflow.sources.duplicates`); preprocess needs the very same display pixels. Decoding a compressed file is
most of both steps' time, so ingest leaves the pixels of the images it decoded in a local spool, and preprocess
takes them from there instead of decoding the file again:

- **where**: ``handoff/`` in the project's one local cache (:func:`mammoflow.storage.copies.cache_dir`:
  ``$MAMMOFLOW_CACHE``, else the system temp folder), one ``v1-<sha256 of the file's bytes>.npy`` per image,
  written atomically (:func:`mammoflow.storage.atomic_file`);
- **bounded**: filled first come, first served up to ``$MAMMOFLOW_HANDOFF_LIMIT`` bytes (default 2 GiB, none in a
  Kubernetes pod: see :func:`handoff_limit`; 0 turns the handoff off); a pool's workers each fill an equal share. What does not fit is decoded again by preprocess, as
  before. Entries that no preprocess took (it ran in another pod, or the image was quarantined after it was
  decoded) are removed by the next ingest after :data:`MAX_AGE_S`;
- **keyed by content**: the record carries the file's sha256 (``content_hash``); preprocess looks for an entry of
  that name (none: the file is decoded, not even hashed: another machine or pod, a full spool), then hashes the
  file *as it is now*: a file changed since ingest has another digest, so it is decoded (and the stale entry
  dropped). An entry is deleted once taken;
- **the same pixels**: an entry holds what :func:`mammoflow.io.dicom.read_dicom` returned for these bytes, and only
  for a file whose header says ``Modality`` MG (so preprocess's own check, :func:`mammoflow.io.images.read_image`
  expects MG, would have passed): preprocess output is byte-identical to the decode path;
- **only where it pays**: compressed images (RLE, JPEG, JPEG-LS, JPEG 2000; 50-800 ms to decode 3 megapixels here).
  A native (uncompressed) file's "decode" is a read and a lookup table (~17 ms), and the ROI masks are small or
  binary RLE (~12 ms): both cost less than a round trip through the spool (write, hash, read, delete: ~30 ms), so
  they are read again.
"""

from __future__ import annotations

import functools
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
        from mammoflow.storage import atomic_file

        try:
            with atomic_file(entry_path(self.folder, digest), suffix=".npy") as tmp:
                np.save(tmp, image.pixels, allow_pickle=False)
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
    """Remove entries older than :data:`MAX_AGE_S` (and leftovers of interrupted writes); the bytes left."""
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
            else:
                used += st.st_size
        except OSError:
            continue  # taken meanwhile by a preprocess
    return used


def take(path: str | os.PathLike[str], digest: str | None,
         cache_dir: str | os.PathLike[str] | None = None) -> np.ndarray | None:
    """The display pixels an ingest handed on for the DICOM file ``path`` as it is now, the entry deleted; None when
    there is none (then decode it). ``digest``: the sha256 the file's record carries (``content_hash``)."""
    if not digest or not Path(path).name.lower().endswith(_DICOM_SUFFIXES):
        return None
    folder = handoff_dir(cache_dir)
    entry = entry_path(folder, digest)
    if not entry.is_file():
        return None
    from mammoflow.errors import InputError
    from mammoflow.io.files import file_sha256

    try:
        now = file_sha256(path)
    except InputError:  # a file that cannot be read: decoding it says why
        return None
    if now != digest:  # changed since ingest: decode it; the entry is no one's now
        entry.unlink(missing_ok=True)
        return None
    try:
        pixels = np.load(entry, allow_pickle=False)
    except (OSError, ValueError):  # taken meanwhile, or damaged
        return None
    entry.unlink(missing_ok=True)
    return pixels
