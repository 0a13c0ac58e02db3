"""A verified local cache of dataset shards: what tf.data reads.

TensorFlow's own ``gs://`` filesystem cannot reach a storage emulator, and re-reading a bucket every epoch is slow,
so training reads local files. :class:`LocalCache` downloads each shard of a manifest once (through
:mod:`mammoflow.storage`), checks its sha256 against the manifest before handing it out, and keeps it::

    paths = shard_cache().fetch("gs://bucket/datasets/mias")
    ds = train_dataset(paths["train"], InputConfig(), seed=0)

The shards live in the folder ``shards/`` of the project's one local cache (:func:`mammoflow.storage.copies.cache_dir`:
an explicit cache folder, else ``$MAMMOFLOW_CACHE``, else ``mammoflow-cache`` in the system temp folder).

Files are content-addressed (``objects/<sha[:2]>/<sha256>.tfrecord``), so datasets that share shards share the
files, a rebuilt shard gets a new file, and two processes fetching the same shard at once (Ray trials on one node)
both end with the same verified file (downloads land in a temporary file, :func:`mammoflow.storage.atomic_file`,
and are renamed into place once verified).

Hashing a large file on every fetch would be wasteful, so after a successful check a small stamp
``<sha256>.tfrecord.verified`` records the file's size and mtime; a file whose size or mtime differs from its
stamp is hashed again, and a file that no longer matches its hash is logged as a warning and fetched again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from mammoflow import storage
from mammoflow.dataset.shards import dataset_root, manifest_uri, read_manifest
from mammoflow.errors import InputError
from mammoflow.logs import progress
from mammoflow.storage.copies import cache_dir

log = logging.getLogger(__name__)

STAMP_SUFFIX = ".verified"
SHARDS_FOLDER = "shards"  # the shard cache's folder in the local cache


def default_cache_dir(cache_root: str | os.PathLike[str] | None = None) -> Path:
    """The shard cache's folder: ``shards/`` in the local cache (``cache_root``, else ``$MAMMOFLOW_CACHE``, else
    ``mammoflow-cache`` in the system temp folder; :func:`mammoflow.storage.copies.cache_dir`)."""
    return cache_dir(cache_root).expanduser() / SHARDS_FOLDER


def shard_cache(cache_root: str | os.PathLike[str] | None = None) -> LocalCache:
    """The shard cache inside the local cache ``cache_root`` (None: ``$MAMMOFLOW_CACHE``, else the default)."""
    return LocalCache(default_cache_dir(cache_root))


class LocalCache:
    """Content-addressed, sha256-verified local copies of the shards of datasets in object storage."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None):
        """``cache_dir`` is the shard folder itself; None: :func:`default_cache_dir`."""
        self.root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    def path_for(self, sha256: str) -> Path:
        """Where the shard with this content hash lives in the cache."""
        return self.root / "objects" / sha256[:2] / f"{sha256}.tfrecord"

    def fetch(self, manifest_uri_or_root: str, splits: list[str] | tuple[str, ...] | None = None
              ) -> dict[str, list[str]]:
        """Local verified shard paths per split (all splits when ``splits`` is None), in manifest order."""
        manifest = read_manifest(manifest_uri_or_root)
        root = dataset_root(manifest_uri(manifest_uri_or_root))
        wanted = list(manifest["splits"]) if splits is None else list(splits)
        missing = [s for s in wanted if s not in manifest["splits"]]
        if missing:
            raise InputError(manifest_uri(manifest_uri_or_root), f"no split(s) {missing} in the manifest",
                             f"use one of {sorted(manifest['splits'])}", code="missing_file")
        shards = [(split, s) for split in wanted for s in manifest["splits"][split]["shards"]]
        out: dict[str, list[str]] = {split: [] for split in wanted}
        for split, shard in progress(shards, desc="fetch shards", unit="shard"):
            out[split].append(str(self.ensure(storage.join(root, shard["path"]), shard["sha256"], shard["bytes"])))
        return out

    def ensure(self, uri: str, sha256: str, size: int | None = None) -> Path:
        """A verified local copy of ``uri`` whose content must hash to ``sha256``."""
        local = self.path_for(sha256)
        if local.exists():
            if self._verified(local, sha256, size):
                return local
            log.warning("cached shard %s does not match its sha256 %s (corrupted or changed): fetching it again",
                        local, sha256[:12])
            local.unlink(missing_ok=True)
        with storage.atomic_file(local) as tmp:  # in place only once verified
            storage.get_file(uri, tmp)
            actual = storage.file_sha256(tmp)
            if actual != sha256:
                raise InputError(uri, f"content sha256 {actual[:12]} differs from the manifest's {sha256[:12]}",
                                 "the object was changed or damaged after the build: rebuild the dataset "
                                 "(mammoflow build-dataset) to write and verify it again", code="corrupt")
        self._stamp(local, sha256)
        return local

    # A stamp says: this file, with this size and mtime, hashed to this sha256.
    def _verified(self, local: Path, sha256: str, size: int | None) -> bool:
        st = local.stat()
        if size is not None and st.st_size != size:
            return False
        stamp = self._read_stamp(local)
        if stamp == {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}:
            return True
        if storage.file_sha256(local) != sha256:
            return False
        self._stamp(local, sha256)
        return True

    @staticmethod
    def _read_stamp(local: Path) -> dict[str, Any] | None:
        try:
            return json.loads(local.with_name(local.name + STAMP_SUFFIX).read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _stamp(local: Path, sha256: str) -> None:
        st = local.stat()
        storage.atomic_write_text(local.with_name(local.name + STAMP_SUFFIX),
                          json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
