"""Spool folders of shard writing: local scratch space that a killed build does not leave behind for ever.

``write_split`` spools a split's examples to a local file before cutting shards. A build killed by SIGKILL, the OOM
killer or a node shutdown cannot remove its folder, so each folder is owned through a lock, not a name:

- :func:`spool_folder` creates ``mammoflow-spool-<pid>-<label>-XXXX`` and holds an exclusive ``flock`` on its
  ``owner.lock`` until it is done (the lock file is locked *before* it gets its name, so no other process can
  see it unlocked while its owner lives). The kernel drops the lock when the owner dies, however it dies.
- :func:`remove_dead_spools`, run before each new spool folder, removes every spool folder in the same parent
  whose lock can be taken (its owner is gone). Folders of live builds, of other users, or folders that have not
  got their lock yet (younger than :data:`GRACE_SECONDS`) are left alone. Pids are only in the name for people:
  they are reused, and containers sharing ``/tmp`` each have their own.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mammoflow.dataset.tfrecord import nbytes

log = logging.getLogger(__name__)

SPOOL_PREFIX = "mammoflow-spool-"
LOCK_NAME = "owner.lock"
GRACE_SECONDS = 600.0  # a folder without its lock file is being created, or its owner died in that instant


@contextlib.contextmanager
def spool_folder(label: str, parent: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A fresh, locked scratch folder under ``parent`` (default: the system temp folder), removed at the end;
    spool folders of dead builds in ``parent`` are removed first."""
    base = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    remove_dead_spools(base)
    folder = Path(tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-{label}-", dir=base))
    fd = -1
    try:
        fd, tmp = tempfile.mkstemp(prefix=".owner-", dir=folder)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(tmp, folder / LOCK_NAME)  # visible only once locked
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if fd >= 0:
            os.close(fd)


def remove_dead_spools(parent: str | os.PathLike[str], now: float | None = None) -> list[Path]:
    """Remove the spool folders in ``parent`` whose owner is gone; returns them."""
    removed = []
    now = time.time() if now is None else now
    for folder in sorted(Path(parent).glob(f"{SPOOL_PREFIX}*")):
        if folder.is_symlink() or not folder.is_dir():
            continue
        if _owner_is_gone(folder, now):
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
                log.info("removed %s, the spool folder of a build that was killed", folder)
    return removed


def _owner_is_gone(folder: Path, now: float) -> bool:
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        try:
            return now - folder.stat().st_mtime > GRACE_SECONDS
        except OSError:
            return False
    except OSError:  # another user's folder: not ours to judge
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: the build that owns it is running
        return False
    finally:
        os.close(fd)  # also releases the lock if it was taken
    return True


# A split's framed examples stay in memory up to this size (most datasets of ROIs); past it they go to the file.
MEMORY_SPOOL_BYTES = 256 << 20


class Spool:
    """The framed examples of one split, in memory until they pass ``memory_limit`` bytes, then in ``path``: the
    shards are cut from memory (no file written and read back) whenever the split fits.

    In memory, a frame is kept as the pieces :func:`~mammoflow.dataset.tfrecord.frame_pieces` made of it: the
    example's own pixel arrays are held, not copied, and go from there straight to the shard file. So that a
    producer cannot change pixels whose CRC is already taken, each held array is made read-only until
    :meth:`release` (called when the spool is done with, or spills to its file) gives its write flag back. NumPy
    cannot take the flag from views made before that: a producer must not write the pixels through one."""

    def __init__(self, path: str | os.PathLike[str], memory_limit: int = MEMORY_SPOOL_BYTES):
        self.path = Path(path)
        self.memory_limit = int(memory_limit)
        self._frames: dict[int, Sequence[Any]] = {}  # offset -> pieces of the frame there
        self._frozen: list[np.ndarray] = []
        self._file = None
        self.size = 0

    @property
    def in_memory(self) -> bool:
        return self._file is None and not self.path.exists()

    def write(self, frame: Any) -> None:
        self.write_pieces([frame], nbytes(frame))

    def write_pieces(self, pieces: Sequence[Any], size: int) -> None:
        """Add the frame whose bytes are ``pieces`` laid end to end (``size`` bytes in all)."""
        if self._file is None and self.size + size > self.memory_limit:
            self._spill()
        if self._file is not None:
            for piece in pieces:
                self._file.write(piece)
        else:
            for piece in pieces:
                if type(piece) is np.ndarray and piece.flags.writeable:
                    piece.flags.writeable = False
                    self._frozen.append(piece)
            self._frames[self.size] = pieces
        self.size += size

    def _spill(self) -> None:
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        for pieces in self._frames.values():
            for piece in pieces:
                self._file.write(piece)
        self.release()

    def release(self) -> None:
        """Let go of the frames held in memory; the arrays made read-only are writable again."""
        self._frames = {}
        for array in self._frozen:
            array.flags.writeable = True
        self._frozen = []

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        elif self.memory_limit <= 0:
            self.path.touch()  # a file spool of a split without examples is an empty file

    @contextlib.contextmanager
    def reader(self) -> Iterator[Callable[[int, int], Sequence[Any]]]:
        """``read(offset, length)`` of a frame, as pieces: those held in memory, or one ``pread`` of the file."""
        if self.in_memory:
            yield lambda offset, length: self._frames[offset]
            return
        with open(self.path, "rb") as fh:
            yield lambda offset, length: (os.pread(fh.fileno(), length, offset),)
