"""Shard files written straight from a spool's buffers, and hashed from them.

A shard's frames are buffers the spool already holds (``bytes`` and the examples' own pixel arrays, see
:class:`mammoflow.dataset.spool.Spool`), or ``pread`` of a spool file. They go to the shard file with ``writev``,
up to :data:`IOV_MAX` at a time, with no copy in Python; the sha256 of the shard is taken over the same buffers
(:func:`sha256_of_buffers`, in a thread beside the write: hashlib lets go of the GIL).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mammoflow.dataset.tfrecord import nbytes

IOV_MAX = 1024  # buffers per writev (Linux's IOV_MAX)
BATCH_BYTES = 16 << 20  # frames read from a spool file are written in batches of about this size


def write_all(fd: int, buffers: Sequence[Any]) -> None:
    """Write ``buffers`` end to end to ``fd`` (``writev``, :data:`IOV_MAX` at a time; a short write is finished)."""
    for start in range(0, len(buffers), IOV_MAX):
        chunk = buffers[start:start + IOV_MAX]
        done = os.writev(fd, chunk)
        if done < sum(map(nbytes, chunk)):
            for buffer in chunk:
                view = memoryview(buffer).cast("B")
                skip = min(done, len(view))
                done -= skip
                view = view[skip:]
                while view:
                    view = view[os.write(fd, view):]


def write_buffers(path: Path, buffers: Sequence[Any]) -> None:
    """A new file ``path`` holding ``buffers`` end to end."""
    with open(path, "wb", buffering=0) as out:
        write_all(out.fileno(), buffers)


def write_frames(read: Callable[[int, int], Sequence[Any]], frames: Sequence[tuple[int, int]], path: Path) -> None:
    """A new file ``path`` holding the frames ``(offset, length)`` of a spool, in order, ``read(offset, length)``
    giving each frame's buffers; written in batches, so that a spool file is never all in memory."""
    batch: list[Any] = []
    batch_bytes = 0
    with open(path, "wb", buffering=0) as out:
        for offset, length in frames:
            batch += read(offset, length)
            batch_bytes += length
            if len(batch) >= IOV_MAX or batch_bytes >= BATCH_BYTES:
                write_all(out.fileno(), batch)
                batch, batch_bytes = [], 0
        write_all(out.fileno(), batch)


def sha256_of_buffers(buffers: Sequence[Any]) -> str:
    """sha256 (hex) of ``buffers`` laid end to end."""
    digest = hashlib.sha256()
    for buffer in buffers:
        digest.update(buffer)
    return digest.hexdigest()
