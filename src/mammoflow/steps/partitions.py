"""The data steps in N record partitions, over URIs: what the pipelines' ``ParallelFor`` runs.

::

    ingest (one step) -> records folder (small: records.jsonl; the images stay where they are)
    partition_list(N) -> [0, ..., N-1]
    ParallelFor p:  preprocess_partition(records, p, N)    -> images under storage_root/preprocessed/<sha16>/
    plan_dataset(records, N)     the partitions' records merged into one records folder; the split plan made ONCE
    ParallelFor p:  build_partition(preprocessed, p, N)    -> example spools under datasets/<config>-<sha16>/parts/
    merge_dataset(preprocessed, N)  the spools cut into shards, then ONE manifest.json

Steps pass URIs and small records folders; every partition writes under the storage root and fetches only its
own records' files, into a folder of the local cache that it removes when done. The records, images, shards and
manifest do not depend on N (see :mod:`mammoflow.dataset.partitions`), and a partition finished with the same
inputs is not run again, so a failed partition is retried alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from mammoflow import storage
from mammoflow.config import resolve_ref
from mammoflow.partitions import check_partition, part_name
from mammoflow.steps.data import NothingUsable, dataset_uri, localise_records, require_root
from mammoflow.storage import copies

log = logging.getLogger(__name__)


def partition_list(partitions: int) -> list[int]:
    """The partition indices a ``ParallelFor`` iterates over: ``[0, ..., partitions - 1]`` (checked)."""
    check_partition(0, partitions)
    return list(range(partitions))


def preprocessed_uri(storage_root: str, records_dir: str | os.PathLike[str], config_hash: str) -> str:
    """Where the partitions preprocess a records folder with a chain: ``preprocessed/<sha16>`` under the storage
    root, content-addressed by the records table and the chain's config hash (not by the number of partitions)."""
    digest = hashlib.sha256((Path(records_dir) / "records.jsonl").read_bytes() + config_hash.encode()).hexdigest()
    return storage.join(require_root(storage_root), "preprocessed", digest[:16])


def _work_dir(cache_dir: str | os.PathLike[str] | None, uri: str, index: int, count: int) -> Path:
    """The partition's local scratch folder in the cache (removed when the partition is done)."""
    return copies.cache_dir(cache_dir) / "partitions" / copies.uri_key(uri) / part_name(index, count)


def preprocess_partition(records_dir: str | os.PathLike[str], config: str, storage_root: str, index: int,
                         count: int, *, chunk: int = 0, cache_dir: str | os.PathLike[str] | None = None
                         ) -> dict[str, Any]:
    """Preprocess partition ``index`` of ``count`` of an ingest's records folder under the storage root; returns
    its summary with ``uri`` (the shared preprocessed folder), ``reused`` and ``peak_local_bytes``.

    ``config``: a preprocess preset, YAML path or ``gs://`` URI. ``chunk``: records fetched and preprocessed at a
    time (0: :data:`~mammoflow.preprocess.partitions.CHUNK_RECORDS`), which bounds the partition's local disk."""
    from mammoflow.preprocess.chain import Chain
    from mammoflow.preprocess.partitions import CHUNK_RECORDS, preprocess_part
    from mammoflow.records import RecordsTable, require_complete

    check_partition(index, count)
    config = resolve_ref(config, "preprocess", cache_dir)
    records_dir = require_complete(records_dir)
    uri = preprocessed_uri(storage_root, records_dir, Chain.from_config(config).config_hash())
    work = _work_dir(cache_dir, uri, index, count)

    def localise(records: list[Any], folder: Path) -> Path:
        return localise_records(records_dir, cache_dir, only=records, dest=folder)

    try:
        done = preprocess_part(RecordsTable.read(records_dir), config, uri, index, count, localise=localise,
                               work_dir=work, chunk=chunk or CHUNK_RECORDS)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"uri": uri, "partition": index, "partitions": count, "records_in": done["records_in"],
            "usable": len(done["records"]), "quarantined": len(done["quarantine"]), "reused": done["reused"],
            "peak_local_bytes": done["peak_local_bytes"]}


def plan_dataset(records_dir: str | os.PathLike[str], config: str, dataset_config: str, storage_root: str,
                 count: int, out: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None
                 ) -> dict[str, Any]:
    """Once every preprocess partition is done: their records merged into the records folder ``out`` (records
    in the ingest's order, ``image_root`` the shared preprocessed folder), then the dataset's split plan made ONCE
    over all of them. Returns the preprocess counts with ``dataset_uri`` (the content-addressed dataset folder,
    the one a build in one piece would use) and ``preprocessed_uri``."""
    from dataclasses import asdict

    from mammoflow.dataset.partitions import plan_build
    from mammoflow.preprocess.chain import Chain
    from mammoflow.preprocess.partitions import merge_preprocessed
    from mammoflow.records import RecordsTable

    config = resolve_ref(config, "preprocess", cache_dir)
    dataset_config = resolve_ref(dataset_config, "dataset", cache_dir)
    uri = preprocessed_uri(storage_root, records_dir, Chain.from_config(config).config_hash())
    summary = merge_preprocessed(RecordsTable.read(records_dir), config, uri, count, Path(out))
    counts = {**asdict(summary), "usable": summary.usable, "preprocessed_uri": uri}
    if summary.usable == 0:
        raise NothingUsable(Path(out) / "quarantine.md", "no usable record left after preprocessing",
                            "see the quarantine report for each record's problem and fix", counts)
    data_uri = dataset_uri(storage_root, out, dataset_config)
    plan_build(RecordsTable.read(out), dataset_config, data_uri, where=out)
    return {**counts, "dataset_uri": data_uri}


def build_partition(records_dir: str | os.PathLike[str], dataset_config: str, data_uri: str, index: int, count: int,
                    *, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Cut the examples of partition ``index`` of ``count`` of a preprocessed records folder (from
    :func:`plan_dataset`) into spools under the dataset folder ``data_uri``; returns the partition's summary."""
    from mammoflow.dataset.partitions import build_part
    from mammoflow.records import RecordsTable

    check_partition(index, count)
    dataset_config = resolve_ref(dataset_config, "dataset", cache_dir)
    work = _work_dir(cache_dir, data_uri, index, count)

    def localise(records: list[Any], folder: Path) -> Path:
        return localise_records(records_dir, cache_dir, only=records, dest=folder)

    try:
        done = build_part(RecordsTable.read(records_dir), dataset_config, data_uri, index, count, localise=localise,
                          work_dir=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"uri": data_uri, "partition": index, "partitions": count, "records": done["records"],
            "splits": done["splits"], "reused": done["reused"]}


def merge_dataset(records_dir: str | os.PathLike[str], dataset_config: str, data_uri: str, count: int, *,
                  cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """Once every build partition is done: the shards and ONE manifest of the dataset (byte for byte those of a
    build in one piece); returns the :class:`~mammoflow.dataset.build.BuildResult`."""
    from mammoflow.dataset.partitions import merge_parts
    from mammoflow.records import RecordsTable

    dataset_config = resolve_ref(dataset_config, "dataset", cache_dir)
    work = copies.cache_dir(cache_dir) / "partitions" / copies.uri_key(data_uri) / "merge"
    try:
        return merge_parts(RecordsTable.read(records_dir), dataset_config, data_uri, count, work_dir=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
