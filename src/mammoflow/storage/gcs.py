"""The Google Cloud Storage backend of :mod:`mammoflow.storage`: one client per process, and which errors are
worth retrying (the retries themselves are the package's :func:`~mammoflow.storage.RETRY` policy).

``gs://`` goes through google-cloud-storage, which honours ``STORAGE_EMULATOR_HOST``: tests and offline demos run a
real gcp-storage-emulator on loopback, and the client then uses anonymous credentials.
"""

from __future__ import annotations

import builtins
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mammoflow.storage.objects import GS, SHA256_KEY, ObjectInfo, is_remote, local_path, split_gs

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
EMULATOR_PROJECT = "mammoflow-local"
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth retrying: throttling, server errors, timeouts, dropped connections."""
    import requests
    from google.api_core import exceptions as api

    if isinstance(exc, (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout,
                        requests.exceptions.ChunkedEncodingError)):
        return True
    if isinstance(exc, api.GoogleAPICallError):
        return exc.code in _TRANSIENT_STATUS
    response = getattr(exc, "response", None)  # google.cloud.storage.exceptions.InvalidResponse
    status = getattr(response, "status_code", None)
    if status in _TRANSIENT_STATUS:
        return True
    try:
        from google.auth.exceptions import TransportError
        from google.cloud.storage.exceptions import DataCorruption
    except ImportError:  # pragma: no cover - older client layouts
        return False
    if isinstance(exc, DataCorruption):  # checksum mismatch in flight: fetch again
        return True
    if isinstance(exc, TransportError) and exc.args and isinstance(exc.args[0], BaseException):
        return is_transient(exc.args[0])
    return False


class GcsBackend:
    """google-cloud-storage. Library-level retries are off (``retry=None``): the package's retry policy owns
    them, so attempts are bounded once, not multiplied."""

    _lock = threading.Lock()
    _clients: dict[tuple[Any, ...], Any] = {}

    @classmethod
    def client(cls) -> Any:
        from google.cloud import storage as gcs

        emulator = os.environ.get(EMULATOR_ENV)
        key = (os.getpid(), emulator, os.environ.get("GOOGLE_CLOUD_PROJECT"))
        with cls._lock:
            if key not in cls._clients:
                if emulator:
                    from google.auth.credentials import AnonymousCredentials

                    project = os.environ.get("GOOGLE_CLOUD_PROJECT", EMULATOR_PROJECT)
                    cls._clients[key] = gcs.Client(project=project, credentials=AnonymousCredentials())
                else:
                    cls._clients[key] = gcs.Client()
            return cls._clients[key]

    @classmethod
    def blob(cls, uri: str) -> Any:
        bucket, key = split_gs(uri)
        if not key:
            raise ValueError(f"{uri}: no object name after the bucket")
        return cls.client().bucket(bucket).blob(key)

    @classmethod
    def upload(cls, src: Path, uri: str, sha256: str) -> None:
        blob = cls.blob(uri)
        blob.metadata = {SHA256_KEY: sha256}
        blob.upload_from_filename(str(src), retry=None)

    @classmethod
    def upload_if_generation(cls, uri: str, data: bytes, sha256: str, generation: int) -> None:
        """One upload with ``if_generation_match`` (0: the object must not exist); raises PreconditionFailed (412)
        when the object is not that generation."""
        blob = cls.blob(uri)
        blob.metadata = {SHA256_KEY: sha256}
        blob.upload_from_string(data, if_generation_match=generation, retry=None)

    @classmethod
    def download(cls, uri: str, dest: Path) -> None:
        cls.blob(uri).download_to_filename(str(dest), retry=None)

    @classmethod
    def stat(cls, uri: str) -> ObjectInfo | None:
        bucket, key = split_gs(uri)
        blob = cls.client().bucket(bucket).get_blob(key, retry=None)
        if blob is None:
            return None
        return ObjectInfo(uri, int(blob.size or 0), (blob.metadata or {}).get(SHA256_KEY), str(blob.generation))

    @classmethod
    def _blobs(cls, uri: str) -> builtins.list[Any]:
        """The objects under the folder ``uri``, and ``uri`` itself when it is an object."""
        bucket, key = split_gs(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        # Folder placeholders (GCS console, pyarrow create_dir) end in "/" and are not files.
        blobs = [b for b in cls.client().list_blobs(bucket, prefix=prefix, retry=None) if not b.name.endswith("/")]
        if key and not key.endswith("/"):
            exact = cls.client().bucket(bucket).get_blob(key, retry=None)
            if exact is not None:
                blobs.append(exact)
        return blobs

    @classmethod
    def list(cls, uri: str) -> builtins.list[str]:
        bucket, _ = split_gs(uri)
        return sorted({f"{GS}{bucket}/{b.name}" for b in cls._blobs(uri)})

    @classmethod
    def list_info(cls, uri: str) -> builtins.list[ObjectInfo]:
        """Like :meth:`list`, with each object's size and generation from the same listing (no extra request)."""
        bucket, _ = split_gs(uri)
        infos = {b.name: ObjectInfo(f"{GS}{bucket}/{b.name}", int(b.size or 0), (b.metadata or {}).get(SHA256_KEY),
                                    str(b.generation)) for b in cls._blobs(uri)}
        return [infos[name] for name in sorted(infos)]

    @classmethod
    def delete(cls, uri: str) -> bool:
        from google.api_core import exceptions as api

        try:
            cls.blob(uri).delete(retry=None)
            return True
        except api.NotFound:
            return False

    @classmethod
    def create_bucket(cls, bucket: str) -> None:
        from google.api_core import exceptions as api

        client = cls.client()
        try:
            client.create_bucket(bucket, retry=None)
        except api.Conflict:
            pass


def emulator_endpoint() -> tuple[str, str] | None:
    """(scheme, host:port) of ``STORAGE_EMULATOR_HOST`` when set, else None."""
    value = os.environ.get(EMULATOR_ENV)
    if not value:
        return None
    parsed = urlparse(value if "://" in value else f"http://{value}")
    return parsed.scheme or "http", parsed.netloc


def pyarrow_filesystem(uri: str | os.PathLike[str]) -> tuple[Any, str]:
    """(pyarrow.fs.FileSystem, path) for ``uri``, e.g. for Ray Tune's ``RunConfig(storage_filesystem=...)``.

    Honours ``STORAGE_EMULATOR_HOST`` (anonymous access, plain HTTP), as the rest of this package does.
    """
    import pyarrow.fs as pafs

    text = str(uri)
    if not is_remote(text):
        return pafs.LocalFileSystem(), str(local_path(text).absolute())
    bucket, key = split_gs(text)
    path = f"{bucket}/{key}".rstrip("/")
    endpoint = emulator_endpoint()
    if endpoint is not None:
        scheme, host = endpoint
        return pafs.GcsFileSystem(anonymous=True, endpoint_override=host, scheme=scheme), path
    return pafs.GcsFileSystem(), path
