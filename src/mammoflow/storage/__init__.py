"""Object storage: the only module that talks to it. Local paths and ``gs://bucket/key`` URIs, one API.

A URI is either a local path (``/data/ds``, ``runs/x``, ``file:///data/ds``) or ``gs://bucket/key``. Every other
module reads and writes through the functions below, so one process can switch between a laptop folder and a
cluster bucket by changing a string. ``gs://`` goes through google-cloud-storage, which honours
``STORAGE_EMULATOR_HOST`` (tests and offline demos run a real gcp-storage-emulator on loopback; the client then
uses anonymous credentials). TensorFlow's own ``gs://`` filesystem cannot be pointed at an emulator, which is why
tf.data reads shards from a verified local cache (:mod:`mammoflow.dataset.cache`), never from ``gs://``.

The package: :mod:`.objects` (URIs, :class:`ObjectInfo`), :mod:`.local` (the project's one atomic local write,
:func:`atomic_write_bytes` / :func:`atomic_write_text`, and the local backend), :mod:`.gcs` (the GCS backend),
:mod:`.copies` (the one local cache, ``$MAMMOFLOW_CACHE``: local copies of remote inputs). Import the package, not
its modules: ``from mammoflow import storage; storage.put_file(...)``.

Writes are atomic: a reader sees the old object, the new object, or nothing, never half an object.

- local: the bytes go to a hidden temporary file in the destination folder (``.name.XXXX.partial``), which is
  then renamed over the final name with ``os.replace`` (atomic on POSIX within one filesystem). A killed writer
  leaves at most a ``.partial`` file, which :func:`list` never reports (:func:`mammoflow.storage.local.atomic_file`).
- GCS: one upload request (multipart up to 8 MiB, a resumable session above) creates the object only when the
  upload completes, so a failed or killed upload leaves no object and no temporary name is needed (a temp
  object + rewrite would double the bytes moved). Multi-object datasets publish their manifest *last*
  (:func:`mammoflow.dataset.shards.write_manifest`), so readers never see a half-written dataset.

Every upload records the content's sha256 in the object's metadata (``sha256``), so :func:`sha256_of` and
:func:`stat` answer without downloading; content is re-hashed wherever it is trusted for training
(:class:`mammoflow.dataset.cache.LocalCache`).

Transient GCS errors (429, 408, 5xx, dropped connections) are retried with exponential back-off and full jitter,
bounded by :data:`RETRY` (a :class:`RetryPolicy`); anything else fails at once. After the last attempt a
:class:`StorageError` names the URI and the fix. A missing object raises
:class:`mammoflow.errors.InputError` with ``code="missing_file"``.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from mammoflow.errors import InputError
from mammoflow.storage.gcs import (
    EMULATOR_ENV,
    EMULATOR_PROJECT,
    emulator_endpoint,
    is_transient,
    pyarrow_filesystem,
)
from mammoflow.storage.gcs import GcsBackend as _GcsBackend
from mammoflow.storage.local import (
    PARTIAL_SUFFIX,
    atomic_file,
    atomic_write_bytes,
    atomic_write_text,
    file_sha256,
)
from mammoflow.storage.local import LocalBackend as _LocalBackend
from mammoflow.storage.objects import (
    GS,
    SHA256_KEY,
    ObjectInfo,
    StorageError,
    is_remote,
    join,
    local_path,
    split_gs,
)

__all__ = [
    "EMULATOR_ENV", "EMULATOR_PROJECT", "GS", "PARTIAL_SUFFIX", "RETRY", "SHA256_KEY", "ObjectInfo", "RetryPolicy",
    "StorageError", "atomic_file", "atomic_write_bytes", "atomic_write_text", "create_bucket", "delete",
    "emulator_endpoint", "exists", "file_sha256", "get_bytes", "get_file", "is_remote", "is_transient", "join",
    "list", "list_info", "listing_digest", "local_lock", "local_path", "open_write", "put_bytes",
    "put_bytes_if_absent", "put_bytes_if_version", "put_file", "put_file_if_changed", "pyarrow_filesystem", "sha256_of", "split_gs",
    "stat",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential back-off with full jitter: attempt ``k`` waits U(0, min(max_delay, base * 2**k))."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 20.0


RETRY = RetryPolicy()
_jitter = random.Random()  # jitter only spreads retries in time; it never changes a result


def _with_retry(op: str, uri: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` with :data:`RETRY`; translate the final error into InputError / StorageError."""
    from google.api_core import exceptions as api

    policy = RETRY
    for attempt in range(policy.attempts):
        try:
            return fn()
        except api.NotFound as exc:
            raise InputError(uri, "object not found", "check the URI, or run the step that writes it first",
                             code="missing_file") from exc
        except (api.Forbidden, api.Unauthorized) as exc:
            raise StorageError(f"{uri}: {op} refused ({exc.code}). Fix: check the credentials "
                               "(GOOGLE_APPLICATION_CREDENTIALS or workload identity) and the bucket's IAM") from exc
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == policy.attempts - 1:
                raise StorageError(f"{uri}: {op} failed after {policy.attempts} attempts ({exc!r}). "
                                   "Fix: check the network and the bucket, then rerun: completed work is kept") \
                    from exc
            delay = _jitter.uniform(0.0, min(policy.max_delay, policy.base_delay * 2 ** attempt))
            log.warning("%s %s: transient error %r, retry %d/%d in %.2fs", op, uri, exc, attempt + 1,
                        policy.attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


# ------------------------------------------------------------------------------------------ public API


def put_file(local: str | os.PathLike[str], uri: str | os.PathLike[str], *, move: bool = False) -> None:
    """Copy a local file to ``uri`` atomically (see the module docstring); records its sha256 on GCS.

    ``move=True`` says the source is a temporary the caller no longer needs: a local destination on the same
    filesystem then takes it by rename instead of a copy (the source is gone afterwards, or may be).
    """
    src = Path(local)
    uri = str(uri)
    if not src.is_file():
        raise InputError(src, "file not found", "check the path of the file to upload", code="missing_file")
    if is_remote(uri):
        sha = file_sha256(src)
        _with_retry("upload", uri, lambda: _GcsBackend.upload(src, uri, sha))
    else:
        dest = local_path(uri)
        if dest.resolve() == src.resolve():
            return
        _LocalBackend.put_file(src, dest, move)
    log.debug("wrote %s", uri)


def put_file_if_changed(local: str | os.PathLike[str], uri: str | os.PathLike[str], *, sha256: str | None = None,
                        move: bool = False) -> bool:
    """:func:`put_file` unless ``uri`` already holds the same bytes (size and sha256; ``sha256`` of ``local`` when
    the caller knows it): a re-run uploads nothing. Returns whether it wrote."""
    src = Path(local)
    existing = stat(uri)
    if existing is not None and existing.size == src.stat().st_size and \
            sha256_of(uri) == (sha256 or file_sha256(src)):
        return False
    put_file(src, uri, move=move)
    return True


def put_bytes(uri: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically."""
    with open_write(uri) as fh:
        fh.write(data)


def _gcs_put_if_generation(uri: str, data: bytes, generation: int, op: str) -> bool:
    """One GCS upload with ``if_generation_match`` (0: the object must not exist): the check and the write are one
    request. True if written, False on HTTP 412 (the object is not the generation expected)."""
    from google.api_core import exceptions as api

    sha = hashlib.sha256(data).hexdigest()
    try:
        _with_retry(op, uri, lambda: _GcsBackend.upload_if_generation(uri, data, sha, generation))
    except api.PreconditionFailed:
        return False
    return True


def put_bytes_if_absent(uri: str | os.PathLike[str], data: bytes) -> bool:
    """Create ``uri`` holding ``data`` only if nothing exists there; True if this call created it.

    Local: a finished temporary file is hard-linked to the final name (``link`` fails if the name exists, so the
    object appears atomically and complete, or not at all). GCS: one upload with ``if_generation_match=0``; HTTP
    412 means the object exists. A transient error is retried; a retry that finds the object (412) reports False
    even if the first attempt wrote it, so callers read the object back to learn whose it is.
    """
    uri = str(uri)
    if is_remote(uri):
        return _gcs_put_if_generation(uri, data, 0, "create")
    return _LocalBackend.put_if_absent(local_path(uri), data)


def put_bytes_if_version(uri: str | os.PathLike[str], data: bytes, expected: ObjectInfo | None) -> bool:
    """Replace ``uri`` with ``data`` only if it is still the object ``expected`` (as :func:`stat` gave it; None:
    still absent). True if written; False if the object changed or appeared since it was read (nothing written).

    GCS: ``if_generation_match`` = the generation read (0 when absent), so the check and the write are one atomic
    request (HTTP 412 when they differ). Local: the object's mtime is compared, then the write is atomic (temp file
    + rename); the check and the write are two operations, so local callers that can race hold a lock as well.
    """
    uri = str(uri)
    if is_remote(uri):
        return _gcs_put_if_generation(uri, data, int(expected.version) if expected is not None else 0, "update")
    current = stat(uri)
    if (current is None) != (expected is None) or (current is not None and expected is not None
                                                   and current.version != expected.version):
        return False
    put_bytes(uri, data)
    return True


@contextlib.contextmanager
def local_lock(uri: str | os.PathLike[str], name: str = ".lock") -> Iterator[None]:
    """An exclusive file lock ``name`` in the folder of local ``uri``, around a read-decide-write of that object; a
    no-op for gs:// URIs, where :func:`put_bytes_if_version`'s generation precondition makes the check and the write
    one request. Locally they are two operations (and mtimes can tie), so concurrent writers must hold this lock."""
    if is_remote(uri):
        yield
        return
    import fcntl

    path = local_path(uri).parent / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def open_write(uri: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary file to write; the object appears at ``uri`` only if the block ends without an exception.

    Local: writes a ``.partial`` file beside the destination, renamed into place at the end.
    GCS: writes a local temporary file, uploaded in one request at the end.
    """
    uri = str(uri)
    if is_remote(uri):
        fd, tmp_name = tempfile.mkstemp(prefix="mammoflow-upload-", suffix=PARTIAL_SUFFIX)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
            put_file(tmp, uri)
        finally:
            tmp.unlink(missing_ok=True)
        return
    with atomic_file(local_path(uri)) as tmp, open(tmp, "wb") as fh:
        yield fh


def get_file(uri: str | os.PathLike[str], local: str | os.PathLike[str]) -> Path:
    """Copy ``uri`` to the local path ``local`` atomically (temp file + rename); returns ``local``."""
    uri = str(uri)
    dest = Path(local)
    if not is_remote(uri):
        src = local_path(uri)
        if src.resolve() != dest.resolve():
            _LocalBackend.get_file(src, dest)
        return dest
    with atomic_file(dest) as tmp:
        _with_retry("download", uri, lambda: _GcsBackend.download(uri, tmp))
    return dest


def get_bytes(uri: str | os.PathLike[str]) -> bytes:
    """The whole content of ``uri``."""
    uri = str(uri)
    if not is_remote(uri):
        path = local_path(uri)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise InputError(path, "file not found", "check the path, or run the step that writes it first",
                             code="missing_file") from None
    return _with_retry("download", uri, lambda: _GcsBackend.blob(uri).download_as_bytes(retry=None))


def stat(uri: str | os.PathLike[str]) -> ObjectInfo | None:
    """Size (and the recorded sha256 on GCS) of one object, or None when it does not exist."""
    uri = str(uri)
    if is_remote(uri):
        return _with_retry("stat", uri, lambda: _GcsBackend.stat(uri))
    return _LocalBackend.stat(local_path(uri))


def exists(uri: str | os.PathLike[str]) -> bool:
    """Whether an object (or local file) exists at ``uri``."""
    return stat(uri) is not None


def sha256_of(uri: str | os.PathLike[str]) -> str:
    """sha256 (hex) of an object: the hash recorded at upload when there is one, else computed from the bytes."""
    uri = str(uri)
    if not is_remote(uri):
        path = local_path(uri)
        if not path.is_file():
            raise InputError(path, "file not found", "check the path", code="missing_file")
        return file_sha256(path)
    info = stat(uri)
    if info is None:
        raise InputError(uri, "object not found", "check the URI", code="missing_file")
    if info.sha256:
        return info.sha256
    with tempfile.TemporaryDirectory(prefix="mammoflow-hash-") as tmp:
        return file_sha256(get_file(uri, Path(tmp) / "object"))


def list(prefix_uri: str | os.PathLike[str]) -> builtins.list[str]:  # noqa: A001 - the storage verb
    """Every object (file) under the folder ``prefix_uri``, recursively, as full URIs, sorted.

    ``gs://b/data`` lists ``gs://b/data/...`` (and ``gs://b/data`` itself if it is an object), not
    ``gs://b/data-old/...``. In-flight local ``.partial`` files are never listed.
    """
    text = str(prefix_uri)
    if is_remote(text):
        return _with_retry("list", text, lambda: _GcsBackend.list(text))
    root = local_path(text)
    if root.is_file():
        return [text]
    return [join(text, p.relative_to(root).as_posix()) for p in _LocalBackend.list(root)]


def list_info(prefix_uri: str | os.PathLike[str]) -> builtins.list[ObjectInfo]:
    """:func:`list` with each object's size and version (GCS generation, local mtime), sorted by URI."""
    text = str(prefix_uri)
    if is_remote(text):
        return _with_retry("list", text, lambda: _GcsBackend.list_info(text))
    root = local_path(text)
    paths = [root] if root.is_file() else _LocalBackend.list(root)
    infos = [_LocalBackend.stat(p) for p in paths]
    return [ObjectInfo(text if root.is_file() else join(text, p.relative_to(root).as_posix()), i.size, None, i.version)
            for p, i in zip(paths, infos, strict=True) if i is not None]


def listing_digest(prefix_uri: str | os.PathLike[str]) -> str:
    """sha256 of what is under ``prefix_uri``: every object's relative name, size and version. It changes when a file
    is added, removed or rewritten, without reading any content (a KFP cache key for data at a fixed path)."""
    text = str(prefix_uri).rstrip("/")
    digest = hashlib.sha256()
    for info in list_info(text):
        name = info.uri[len(text):].lstrip("/")
        digest.update(f"{name}\t{info.size}\t{info.version}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def delete(uri: str | os.PathLike[str]) -> bool:
    """Delete one object; True if it existed. Deleting a missing object is not an error (idempotent)."""
    uri = str(uri)
    if is_remote(uri):
        return _with_retry("delete", uri, lambda: _GcsBackend.delete(uri))
    return _LocalBackend.delete(local_path(uri))


def create_bucket(uri: str) -> None:
    """Create the bucket of ``gs://bucket/...`` if missing (emulator and demo set-ups; real buckets come from
    infrastructure code). No-op for local URIs, whose folders are created on write."""
    if is_remote(uri):
        bucket, _ = split_gs(uri)
        _with_retry("create bucket", uri, lambda: _GcsBackend.create_bucket(bucket))
