"""The project's one local cache, and the local copies of remote inputs kept in it; and the way back (publish).

:func:`cache_dir` is the one cache root: an explicit folder (``--cache-dir``), else ``$MAMMOFLOW_CACHE``, else
``mammoflow-cache`` in the system temp folder. Every cache of the project is a folder in it:

- ``inputs/``: files and folders a step fetched from object storage (:func:`fetch_tree`), reused by a retried step;
- ``shards/``: sha256-verified dataset shards, what tf.data reads (:func:`mammoflow.dataset.cache.shard_cache`);
- ``runs/``, ``reports/``, ``weights/``: local copies kept by training, reports and pretrained weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mammoflow import storage
from mammoflow.errors import InputError

log = logging.getLogger(__name__)

CACHE_ENV = "MAMMOFLOW_CACHE"
#: Bytes of images a streamed ingest holds on local disk at once (:class:`StreamedTree`); 0: copy the data root whole.
STREAM_LIMIT_ENV = "MAMMOFLOW_STREAM_LIMIT"
DEFAULT_STREAM_LIMIT = 4 << 30


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The project's one local cache root: ``explicit``, else ``$MAMMOFLOW_CACHE``, else ``mammoflow-cache`` in the
    system temp folder. Every cache is a folder in it (see the module docstring)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path(tempfile.gettempdir()) / "mammoflow-cache"


_cache_root = cache_dir  # for the functions below, whose ``cache_dir`` parameter (the vocabulary) hides it


def uri_key(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def fetch_tree(uri: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A local copy of the file or folder at ``uri``; a local ``uri`` is returned as it is (absolute).

    Remote objects are downloaded once into the cache ``cache_dir`` (an object already there with the same size is
    kept), so a retried step does not fetch a large dataset again.
    """
    if not storage.is_remote(uri):
        path = storage.local_path(uri).absolute()
        if not path.exists():
            raise InputError(path, "not found", "check the path (relative paths are taken from the current "
                             "folder)", code="missing_file")
        return path
    objects = storage.list(uri)
    if not objects:
        raise InputError(uri, "no object at or under this URI", "check the bucket and prefix", code="missing_file")
    local = cached_copy_path(uri, cache_dir)
    single = objects == [uri.rstrip("/")]
    for obj in objects:
        dest = local if single else local / obj[len(uri.rstrip("/")) + 1:]
        if _cached_copy_current(dest, storage.stat(obj)):
            continue
        storage.get_file(obj, dest)
    log.info("fetched %s (%d object(s)) into %s", uri, len(objects), local)
    return local


def fetch_files(root_uri: str, names: Sequence[str], cache_dir: str | os.PathLike[str] | None = None,
                *, dest: str | os.PathLike[str] | None = None) -> tuple[Path, int]:
    """Local copies of the files ``names`` (paths relative to the folder ``root_uri``) and nothing else of that
    folder: a step that reads some records of a large dataset fetches only their files. They go where
    :func:`fetch_tree` would put them (``dest`` instead, when given); a copy already there with the same size (and
    sha256 when recorded) is kept. A name with no object is skipped (the reader then says the file is missing).
    Returns the local folder and the bytes it now holds of these files."""
    local = Path(dest) if dest is not None else cached_copy_path(root_uri, cache_dir)
    total = 0
    for name in dict.fromkeys(names):
        target = local / name
        info = storage.stat(storage.join(root_uri, name))
        if info is None:
            continue
        if not _cached_copy_current(target, info):
            storage.get_file(storage.join(root_uri, name), target)
        total += target.stat().st_size
    log.info("fetched %d file(s) of %s (%d bytes) into %s", len(names), root_uri, total, local)
    return local, total


def folder_bytes(folder: str | os.PathLike[str]) -> int:
    """The bytes of every file under ``folder`` (0 when it does not exist): a step's local disk in use."""
    root = Path(folder)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


SMALL_OBJECT = 1 << 20  # bytes: below this a remote object without a recorded sha256 is simply fetched again


def _cached_copy_current(dest: Path, info: Any) -> bool:
    """Whether the cached ``dest`` still holds the remote object ``info`` describes: same size, and the same sha256
    when the upload recorded one. Without a recorded sha256 only large objects (images) are trusted on size alone;
    a small one (a config, a labels CSV) is fetched again, since an edit can keep its size."""
    if info is None or not dest.is_file() or dest.stat().st_size != info.size:
        return False
    if info.size and dest.stat().st_blocks == 0:  # a StreamedTree placeholder: the size without the data
        return False
    if info.sha256:
        return storage.file_sha256(dest) == info.sha256
    return info.size >= SMALL_OBJECT


def cached_copy_path(uri: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`fetch_tree` keeps its local copy of the remote ``uri`` (the same path in every pod)."""
    return _cache_root(cache_dir) / "inputs" / uri_key(uri) / uri.rstrip("/").rsplit("/", 1)[-1]


def publish_tree(local: str | os.PathLike[str], uri: str) -> list[str]:
    """Copy every file under the local folder ``local`` to the same relative path under ``uri``."""
    root = Path(local)
    written = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        dest = storage.join(uri, path.relative_to(root).as_posix())
        storage.put_file(path, dest)
        written.append(dest)
    return written


def copy_files(src_uri: str, dest: str | os.PathLike[str], names: Sequence[str]) -> list[str]:
    """Copy the named files of the folder ``src_uri`` (local or remote) into the local folder ``dest``; files
    that do not exist are skipped. Returns the names copied."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in names:
        uri = storage.join(src_uri, name)
        if storage.exists(uri):
            storage.get_file(uri, dest / name)
            copied.append(name)
    return copied


def local_config(ref: str, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """A preset name or local YAML path as it is; a remote YAML URI fetched to a local file."""
    return str(fetch_tree(ref, cache_dir)) if storage.is_remote(ref) else ref


# --------------------------------------------------------------------------- streaming: a bounded local window


class StreamedTree:
    """A local mirror of the remote folder ``uri`` that holds at most ``limit`` bytes of its large files at once.

    Small objects (below ``eager_below``: annotation files, CSVs, configs) are fetched at once. Every larger object is
    a *sparse* placeholder of its size and version (``stat`` and listings see the real tree, no disk block is used)
    until a reader asks for it with :func:`materialise`; the window then downloads it over its placeholder, after
    turning the least recently used materialised files back into placeholders until it fits under ``limit``. So a
    reader walks a dataset of any size with a local disk of ``limit`` bytes (plus its small files).
    ``high_water``: the most bytes of large files held at once. Use it as a context manager (:func:`streaming`) so
    that :func:`materialise` finds it; on exit every large file is a placeholder again."""

    def __init__(self, uri: str, local: Path, limit: int, eager_below: int = SMALL_OBJECT):
        self.uri, self.root, self.limit = uri.rstrip("/"), Path(local), int(limit)
        self.lazy: dict[Path, Any] = {}
        self.resident: dict[Path, int] = {}  # insertion order = least recently used first
        self.high_water = 0
        for info in storage.list_info(self.uri):
            dest = self.root / info.uri[len(self.uri) + 1:]
            if info.size < eager_below:
                if not _cached_copy_current(dest, info):
                    storage.get_file(info.uri, dest)
                continue
            if info.size > self.limit:
                raise InputError(info.uri, f"object of {info.size} bytes is larger than the local cache bound "
                                 f"({self.limit} bytes)", "raise the bound (MAMMOFLOW_STREAM_LIMIT or the "
                                 "step's option) above the largest file", code="too_large")
            self.lazy[dest] = info
            self._placeholder(dest, info)

    @property
    def resident_bytes(self) -> int:
        return sum(self.resident.values())

    @staticmethod
    def _placeholder(dest: Path, info: Any) -> None:
        """A sparse file of the object's size (no data block), dated the same on every run (the ingest's resume
        fingerprint reads sizes and dates)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as fh:
            fh.truncate(info.size)
        os.utime(dest, ns=(0, 0))

    def materialise(self, path: Path) -> Path:
        info = self.lazy.get(path)
        if info is None:
            return path
        if path in self.resident:
            self.resident[path] = self.resident.pop(path)  # now the most recently used
            return path
        while self.resident and self.resident_bytes + info.size > self.limit:
            oldest = next(iter(self.resident))
            self._placeholder(oldest, self.lazy[oldest])
            del self.resident[oldest]
        tmp = path.with_name(f".{path.name}.partial")
        storage.get_file(info.uri, tmp)
        os.replace(tmp, path)
        os.utime(path, ns=(0, 0))
        self.resident[path] = info.size
        self.high_water = max(self.high_water, self.resident_bytes)
        return path

    def close(self) -> None:
        for path in list(self.resident):
            self._placeholder(path, self.lazy[path])
        self.resident.clear()


_WINDOWS: list[StreamedTree] = []


@contextlib.contextmanager
def streaming(tree: StreamedTree) -> Iterator[StreamedTree]:
    """Make ``tree`` the window :func:`materialise` serves while the block runs; its large files are placeholders
    again afterwards."""
    _WINDOWS.append(tree)
    try:
        yield tree
    finally:
        _WINDOWS.remove(tree)
        tree.close()


def materialise(path: str | os.PathLike[str]) -> Path:
    """``path`` with its content on local disk: a reader calls it before opening a file of a data root, and a file of
    a :class:`StreamedTree` being streamed is downloaded then (any other path is returned as it is)."""
    p = Path(path)
    for tree in _WINDOWS:
        if tree.root in p.parents:
            return tree.materialise(p)
    return p
