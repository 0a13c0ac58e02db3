"""Reading local files, also as members of a zip archive: the file helpers every reader of :mod:`mammoflow.io` shares.

A path may go *through* a zip archive: ``data/MIAS_ROIs.zip/MIAS_ROIs/test/Normal (1).png`` is the member
``MIAS_ROIs/test/Normal (1).png`` of ``data/MIAS_ROIs.zip``. A missing file or member is ``missing_file``; a file
the operating system refuses to open or read is ``unreadable``; a zip member that cannot be extracted is ``corrupt``
(:class:`~mammoflow.errors.InputError` codes, see :mod:`mammoflow.io.images`).
"""

from __future__ import annotations

import hashlib
import os
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mammoflow.errors import InputError

_CHUNK = 1 << 20


def split_zip_path(path: str | Path) -> tuple[Path, str] | None:
    """``(archive, member)`` when ``path`` goes through a ``.zip`` file, else ``None``.

    The first path component ending in ``.zip`` that is an existing regular file is the archive; the rest
    (with ``/`` separators, as zip members are named) is the member.
    """
    parts = Path(path).parts
    for i, part in enumerate(parts[:-1]):
        if part.lower().endswith(".zip"):
            archive = Path(*parts[: i + 1])
            if archive.is_file():
                return archive, "/".join(parts[i + 1:])
    return None


def _missing(path: str | Path, what: str = "file") -> InputError:
    return InputError(path, f"{what} not found", "check the path and the records folder's image_root",
                      code="missing_file")


def unreadable_error(path: object, exc: OSError) -> InputError:
    """The ``unreadable`` InputError of a file the operating system refuses to open or read."""
    return InputError(path, f"the file cannot be opened or read ({exc.strerror or type(exc).__name__})",
                      "check that it is readable by the user running mammoflow (permissions) and that its "
                      "storage is reachable", code="unreadable")


@contextmanager
def open_binary(path: str | Path) -> Iterator[BinaryIO]:
    """Open a file, or a member of a zip archive, for binary reading (``InputError`` when missing)."""
    inside = split_zip_path(path)
    if inside is None:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise _missing(path) from None
        except OSError as exc:  # permissions, a symlink loop, a name too long, a storage error
            raise unreadable_error(path, exc) from None
        with fh:
            yield fh
        return
    archive, member = inside
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise InputError(archive, f"not a readable zip archive ({exc})", "re-download or re-create the archive",
                         code="corrupt") from None
    except OSError as exc:
        raise unreadable_error(archive, exc) from None
    with zf:
        try:
            fh = zf.open(member)
        except KeyError:
            raise _missing(path, f"member {member!r} of {archive.name}") from None
        with fh:
            yield fh  # type: ignore[misc]


def read_bytes(path: str | Path) -> bytes:
    """All bytes of a file or zip member (``InputError`` when missing or when the zip member is damaged)."""
    with open_binary(path) as fh:
        try:
            return fh.read()
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise _damaged_member(path, exc) from None
        except OSError as exc:
            raise unreadable_error(path, exc) from None


def _damaged_member(path: str | Path, exc: Exception) -> InputError:
    return InputError(path, f"the zip member cannot be extracted ({exc})", "re-download or re-create the archive",
                      code="corrupt")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's (or zip member's) content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open_binary(path) as fh:
        try:
            for block in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(block)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise _damaged_member(path, exc) from None
        except OSError as exc:
            raise unreadable_error(path, exc) from None
    return digest.hexdigest()


#: A file changed less than this before its stamp was taken may change again within the same clock tick of its
#: filesystem (1 s or 2 s on some) or may have changed while it was read: its stamp is not trusted.
RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class FileStamp:
    """What a file's metadata says of its content at one moment (``taken_ns``, Unix time): its size, modification
    and status-change times and its inode. A later stat that gives the same five values is the same content, unless
    the stamp is *racy* (:attr:`trusted`). The status-change time (``ctime``) cannot be set back: a rewrite, a
    ``cp -p`` or ``touch -d`` over the file, a rename onto it all move it (and a replacement file has another inode).
    """

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    taken_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileStamp | None:
        """The stamp of a local file now; None when it cannot be stat'ed (or goes through a zip archive)."""
        if split_zip_path(path) is not None:
            return None
        taken = time.time_ns()
        try:
            return cls.from_stat(os.stat(path), taken)
        except (OSError, ValueError):
            return None

    @classmethod
    def from_stat(cls, st: os.stat_result, taken_ns: int) -> FileStamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, taken_ns)

    @property
    def trusted(self) -> bool:
        """Whether a matching stat proves the content unchanged: the filesystem gives inode numbers, and the file
        last changed at least :data:`RACY_NS` before the stamp was taken."""
        return self.ino != 0 and max(self.mtime_ns, self.ctime_ns) <= self.taken_ns - RACY_NS

    def matches(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` now has this stamp's size, times, inode and device (False when it cannot be stat'ed)."""
        now = FileStamp.of(path)
        return now is not None and (now.size, now.mtime_ns, now.ctime_ns, now.ino, now.dev) == \
            (self.size, self.mtime_ns, self.ctime_ns, self.ino, self.dev)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> FileStamp | None:
        """The stamp :meth:`to_dict` wrote; None for anything else."""
        try:
            return cls(**{k: int(data[k]) for k in ("size", "mtime_ns", "ctime_ns", "ino", "dev", "taken_ns")})
        except (KeyError, TypeError, ValueError):
            return None
