"""Local files: the project's one atomic write, and the local backend of :mod:`mammoflow.storage`.

Every local file the project writes goes through :func:`atomic_file`: the bytes go to a hidden temporary file in
the destination folder (``.name.XXXX.partial``), which is renamed over the final name with ``os.replace`` (atomic
on POSIX within one filesystem). A reader sees the old file, the new file, or nothing, never half a file; a killed
writer leaves at most a ``.partial`` file, which :func:`mammoflow.storage.list` never reports. The final file gets
the mode a plain ``open`` would give it (``0o666`` less the umask), not the owner-only mode of a temporary file:
outputs (records, reports, figures, shards) are meant to be shared.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mammoflow.errors import InputError
from mammoflow.storage.objects import ObjectInfo

PARTIAL_SUFFIX = ".partial"  # local temporary files of in-flight writes
_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a local file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def partial_path(dest: Path, suffix: str = "") -> Path:
    """A new, empty hidden temporary file beside ``dest`` (``.name.XXXX.partial``, then ``suffix``)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=PARTIAL_SUFFIX + suffix, dir=dest.parent)
    os.close(fd)
    return Path(tmp)


def is_partial(name: str) -> bool:
    """Whether a file name is that of an in-flight (or abandoned) write: never listed as an object."""
    return name.startswith(".") and PARTIAL_SUFFIX in name


def install(tmp: Path, dest: Path) -> None:
    """Make a finished temporary file the final one; mkstemp creates 0600, give it the umask's mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, dest)


@contextmanager
def atomic_file(dest: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """A temporary path to fill; it becomes ``dest`` only if the block ends without an exception (else it is
    removed and ``dest`` is left as it was). The destination folder is created. ``suffix`` ends the temporary's
    name, for writers that choose the format by the name (``.keras`` for ``model.save``)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(dest, suffix)
    try:
        yield tmp
        install(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to the local file ``path`` atomically (see the module docstring)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to the local file ``path`` atomically (see the module docstring)."""
    atomic_write_bytes(path, text.encode("utf-8"))


class LocalBackend:
    """Local filesystem; every write through :func:`atomic_file`."""

    @staticmethod
    def put_file(src: Path, dest: Path, move: bool) -> None:
        with atomic_file(dest) as tmp:
            try:
                if not move:
                    raise OSError("copy requested")
                os.replace(src, tmp)  # same filesystem: a rename, no bytes copied
            except OSError:
                shutil.copyfile(src, tmp)

    @staticmethod
    def get_file(src: Path, dest: Path) -> None:
        if not src.is_file():
            raise InputError(src, "file not found", "check the path, or run the step that writes it first",
                             code="missing_file")
        with atomic_file(dest) as tmp:
            shutil.copyfile(src, tmp)

    @staticmethod
    def put_if_absent(dest: Path, data: bytes) -> bool:
        """Create ``dest`` holding ``data`` unless it exists: a finished temporary file is hard-linked to the final
        name (``link`` fails if the name exists). True if this call created it."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=PARTIAL_SUFFIX, dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            try:
                os.link(tmp, dest)
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(tmp)

    @staticmethod
    def stat(path: Path) -> ObjectInfo | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(str(path), st.st_size, None, str(st.st_mtime_ns)) if path.is_file() else None

    @staticmethod
    def list(folder: Path) -> builtins.list[Path]:
        if folder.is_file():
            return [folder]
        if not folder.is_dir():
            return []
        out = []
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            out.extend(Path(root) / f for f in files if not is_partial(f))
        return sorted(out)

    @staticmethod
    def delete(path: Path) -> bool:
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False
