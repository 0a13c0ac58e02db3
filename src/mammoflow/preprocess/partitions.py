"""Preprocessing in record partitions (the pipelines' ``ParallelFor``): the same images and records as one run.

Each partition preprocesses its records (:func:`mammoflow.partitions.in_partition`: by patient) a chunk at
a time: the chunk's raw images are fetched into a local folder, preprocessed with
:func:`~mammoflow.preprocess.run.preprocess_records`, published, and removed, so a partition's local disk holds one
chunk, whatever the size of the dataset. Every partition writes into ONE folder under the storage root::

    <out_uri>/images/<record>.png, masks/<record>__lesion<k>.png   names depend on the record only, never on N
    <out_uri>/preprocess_config.yaml
    <out_uri>/parts/<p>-of-<N>/part.json    the partition's records and quarantine, written last (its done marker)

:func:`merge_preprocessed` then writes the records folder of all partitions, records in the input's order: the
same ``records.jsonl`` and ``quarantine.jsonl`` as a run in one piece, with ``image_root`` the shared folder. A
partition whose ``part.json`` holds the fingerprint of its inputs is not run again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mammoflow import storage
from mammoflow.config import dump_yaml
from mammoflow.errors import InputError
from mammoflow.partitions import PART_FILE, fingerprint, finished_part, in_partition, part_uri, read_part
from mammoflow.preprocess.chain import Chain
from mammoflow.preprocess.run import (
    CONFIG_FILE,
    SUMMARY_FILE,
    PreprocessSummary,
    _by_record_id,
    _config_label,
    preprocess_records,
)
from mammoflow.records import QuarantineEntry, Record, RecordsTable
from mammoflow.storage import atomic_write_text
from mammoflow.storage.copies import folder_bytes

log = logging.getLogger(__name__)

#: Records preprocessed per chunk: a partition's local disk holds this many raw images and their outputs at most.
CHUNK_RECORDS = 16


def part_fingerprint(table: RecordsTable, records: Sequence[Record], config_hash: str, index: int, count: int
                     ) -> str:
    return fingerprint(config_hash, table.image_root, [r.to_dict() for r in records], index, count)


def _portable(entry: QuarantineEntry, local_root: str, remote_root: str) -> QuarantineEntry:
    """A quarantine entry naming the input as the records name it (``remote_root``), not its local copy."""
    if entry.path == local_root or entry.path.startswith(local_root.rstrip("/") + "/"):
        return dataclasses.replace(entry, path=remote_root.rstrip("/") + entry.path[len(local_root.rstrip("/")):])
    return entry


def preprocess_part(table: RecordsTable, config: str | Path | dict[str, Any], out_uri: str, index: int, count: int,
                    *, localise: Callable[[list[Record], Path], Path], work_dir: Path,
                    chunk: int = CHUNK_RECORDS) -> dict[str, Any]:
    """Preprocess partition ``index`` of ``count`` of ``table`` into ``out_uri`` (see the module docstring).

    ``localise(records, folder)`` returns a local records folder of ``records`` whose images it fetched into
    ``folder`` (which is removed after each chunk). Returns the partition's ``part.json`` plus ``reused`` and
    ``peak_local_bytes`` (the high-water mark of ``work_dir``, measured after each chunk's preprocessing, when it
    holds the chunk's raw images and outputs)."""
    chain = Chain.from_config(config)
    config_hash = chain.config_hash()
    mine = in_partition(table.records, index, count)
    uri = part_uri(out_uri, index, count)
    expected = part_fingerprint(table, mine, config_hash, index, count)
    done = finished_part(uri, expected)
    if done is not None:
        log.info("preprocess partition %d of %d: already done with these inputs; reused", index, count)
        return {**done, "reused": True, "peak_local_bytes": 0}
    started = time.monotonic()
    storage.put_bytes(storage.join(out_uri, CONFIG_FILE), dump_yaml(chain.resolved()).encode())
    records: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    peak = 0
    for start in range(0, len(mine), max(1, chunk)):
        part = mine[start:start + max(1, chunk)]
        fetched, out = work_dir / "inputs", work_dir / "out"
        local_in = localise(part, fetched)
        carried = len(RecordsTable.read(local_in).quarantine)
        preprocess_records(local_in, config, out)
        result = RecordsTable.read(out)
        peak = max(peak, folder_bytes(work_dir))
        for rec in result.records:
            for rel in (rec.image_path, *(les.mask_path for les in rec.lesions if les.mask_path)):
                storage.put_file_if_changed(out / rel, storage.join(out_uri, rel))
        local_root = RecordsTable.read(local_in).image_root
        records += [r.to_dict() for r in result.records]
        quarantine += [dataclasses.asdict(_portable(q, local_root, table.image_root))
                       for q in result.quarantine[carried:]]
        shutil.rmtree(fetched, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    done = {"fingerprint": expected, "partition": index, "partitions": count, "config_hash": config_hash,
            "records_in": len(mine), "records": records, "quarantine": quarantine,
            "seconds": round(time.monotonic() - started, 3)}
    storage.put_bytes(storage.join(uri, PART_FILE), json.dumps(done, sort_keys=True).encode())
    log.info("preprocess partition %d of %d: %d records in, %d usable, %d quarantined; peak local disk %d bytes",
             index, count, len(mine), len(records), len(quarantine), peak)
    return {**done, "reused": False, "peak_local_bytes": peak}


def merge_preprocessed(table: RecordsTable, config: str | Path | dict[str, Any], out_uri: str, count: int,
                       out: Path) -> PreprocessSummary:
    """The records folder of every partition's records (``out``, local; ``image_root`` = ``out_uri``), ordered
    and quarantined as a run in one piece would; the summary counts what the partitions did."""
    chain = Chain.from_config(config)
    config_hash = chain.config_hash()
    parts = [read_part(part_uri(out_uri, p, count), p, count) for p in range(count)]
    by_id = {r["record_id"]: Record.from_dict(r) for part in parts for r in part["records"]}
    new = [QuarantineEntry(**q) for part in parts for q in part["quarantine"]]
    order = {rec.record_id: i for i, rec in enumerate(table.records)}
    new.sort(key=lambda q: order.get(q.record_id or "", len(order)))
    if len(by_id) + len(new) != len(table.records) or any(p["config_hash"] != config_hash for p in parts):
        raise InputError(out_uri, f"the {count} partitions do not account for the {len(table.records)} records "
                         "with this config", "run every partition again with the same records and config",
                         code="incomplete")
    records = [by_id[rec.record_id] for rec in table.records if rec.record_id in by_id]
    hide = bool(table.meta.get("paths_pseudonymised"))
    carried = [_by_record_id(q) for q in table.quarantine] if hide else list(table.quarantine)
    merged = RecordsTable(records=records, quarantine=carried + new, image_root=out_uri, source=table.source,
                          meta={**table.meta, "preprocess": {"config_hash": config_hash,
                                                             "config": _config_label(config)}})
    written = merged.write(out)
    atomic_write_text(out / CONFIG_FILE, dump_yaml(chain.resolved()))
    summary = PreprocessSummary(config_hash=config_hash, records_in=len(table.records), processed=len(records),
                                quarantined_new=len(new), quarantined_total=written["quarantined"],
                                quarantined_by_code=written["quarantined_by_code"],
                                seconds=round(sum(p["seconds"] for p in parts), 3))
    atomic_write_text(out / SUMMARY_FILE, json.dumps(dataclasses.asdict(summary), indent=2, sort_keys=True) + "\n")
    return summary
