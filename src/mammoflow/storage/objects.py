"""What every storage module shares: URIs (a local path or ``gs://bucket/key``), what is known about one object
without reading it, and the error of a failed storage operation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from mammoflow.errors import MammoflowError

GS = "gs://"
SHA256_KEY = "sha256"  # object metadata key holding the content hash


class StorageError(MammoflowError):
    """An object-storage operation failed for a reason other than a missing object."""


@dataclass(frozen=True)
class ObjectInfo:
    """What storage knows about one object without reading it."""

    uri: str
    size: int
    sha256: str | None  # recorded at upload (GCS metadata); None when unknown (local files, foreign objects)
    version: str = ""  # changes whenever the object is rewritten: GCS generation, local mtime in ns


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """True for ``gs://`` URIs, False for local paths and ``file://`` URIs."""
    return str(uri).startswith(GS)


def join(uri: str | os.PathLike[str], *parts: str) -> str:
    """``uri`` with ``parts`` appended by ``/`` (leading/trailing slashes of parts are ignored)."""
    text = str(uri)
    clean = [p.strip("/") for p in parts if p and p.strip("/")]
    if not clean:
        return text
    return text.rstrip("/") + "/" + "/".join(clean)


def local_path(uri: str | os.PathLike[str]) -> Path:
    """The filesystem path of a local URI (``file://`` stripped); refuses ``gs://``."""
    text = str(uri)
    if is_remote(text):
        raise ValueError(f"{text} is not a local path")
    if text.startswith("file://"):
        return Path(urlparse(text).path)
    return Path(text)


def split_gs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> (``bucket``, ``a/b``)."""
    rest = uri[len(GS):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket name. Fix: write gs://BUCKET/path")
    return bucket, key
