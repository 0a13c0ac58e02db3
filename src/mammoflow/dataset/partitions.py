"""Record partitions, and a dataset built in partitions that is byte for byte the dataset built in one piece.

Records are assigned to partitions by patient (:mod:`mammoflow.partitions`). **A build in partitions** (what the pipelines' ``ParallelFor`` runs), under the dataset folder ``out_uri``::

    plan_build(...)      once, over ALL records: split_plan.json, split_summary.md, dataset_config.yaml
    build_part(p, N)     per partition: parts/<p>-of-<N>/<split>.spool (+ .index.json), part.json written last
    merge_parts(N)       once: the partitions' spools cut into shards, then manifest.json

The split plan is made once over every record (splits are balanced over the whole dataset, and a patient's records
all land in one split whichever partition they are in). A partition reads and cuts its records' images (the costly
part) and spools the framed examples; the merge cuts the shards from the spools with the very function a one-piece
build uses (:func:`mammoflow.dataset.shards.write_spooled`), and shard membership depends only on the example ids:
shard names, shard bytes and the manifest do not depend on ``N``. A partition whose ``part.json`` holds the
fingerprint of its inputs is not built again (a failed partition is retried alone).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mammoflow import storage
from mammoflow.config import dump_yaml, to_dict
from mammoflow.dataset.build import (
    BuildResult,
    DatasetConfig,
    Tally,
    check_out_uri,
    finish_build,
    plan_examples,
    records_by_split,
    split_examples,
    usable_records,
    write_plan,
)
from mammoflow.dataset.splits import SPLITS, SplitPlan
from mammoflow.errors import InputError
from mammoflow.partitions import PART_FILE, fingerprint, finished_part, in_partition, part_uri, read_part
from mammoflow.records import QuarantineEntry, Record, RecordsTable

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------- the build


def plan_build(table: RecordsTable, config: DatasetConfig | str | Path | dict, out_uri: str, where: object = ""
               ) -> SplitPlan:
    """Once, over every record: the split plan (with the config and summary) written to ``out_uri``."""
    cfg = config if isinstance(config, DatasetConfig) else DatasetConfig.load(config)
    usable, _ = usable_records(table, cfg, where or out_uri)
    return write_plan(check_out_uri(out_uri), usable, cfg)


def _read_plan(out_uri: str) -> tuple[str, SplitPlan]:
    uri = storage.join(out_uri, "split_plan.json")
    if not storage.exists(uri):
        raise InputError(uri, "no split plan in the dataset folder", "run the plan step (plan_build) first",
                         code="missing_file")
    text = storage.get_bytes(uri).decode()
    return text, SplitPlan.from_dict(json.loads(text))


def build_part(table: RecordsTable, config: DatasetConfig | str | Path | dict, out_uri: str, index: int, count: int,
               *, localise: Callable[[list[Record], Path], Path], work_dir: Path) -> dict[str, Any]:
    """Partition ``index`` of ``count``: cut the examples of its usable records and publish one spool per split
    under ``parts/<p>-of-<N>/``, ``part.json`` last. ``localise(records, folder)`` returns a local records folder of
    ``records`` with their images fetched into ``folder``. A partition already built from the same plan, config
    and records is left as it is (``reused``), and nothing of it is fetched."""
    from mammoflow.dataset.shards import spool_examples

    cfg = config if isinstance(config, DatasetConfig) else DatasetConfig.load(config)
    plan_json, plan = _read_plan(out_uri)
    mine = [r for r in in_partition(table.records, index, count) if plan_examples(r, cfg)[0]]
    uri = part_uri(out_uri, index, count)
    expected = fingerprint(plan.sha256(), dump_yaml(to_dict(cfg)), [r.to_dict() for r in mine], index, count)
    done = finished_part(uri, expected)
    if done is not None:
        log.info("partition %s of %s: already built from these records; reused", index, count)
        return {**done, "reused": True}
    tally = Tally()
    splits: dict[str, int] = {}
    work_dir.mkdir(parents=True, exist_ok=True)
    records_dir = localise(mine, work_dir / "inputs") if mine else work_dir
    local = RecordsTable.read(records_dir) if mine else table
    for split, records in records_by_split(local.records, plan).items():
        spool = work_dir / f"{split}.spool"
        spooled = spool_examples(split_examples(records, split, plan, local, records_dir, cfg, tally), split, spool)
        storage.put_file(spool, storage.join(uri, f"{split}.spool"), move=True)
        storage.put_bytes(storage.join(uri, f"{split}.index.json"), spooled.to_json().encode())
        splits[split] = len(spooled.items)
    done = {"fingerprint": expected, "partition": index, "partitions": count, "records": len(mine),
            "splits": splits, "quarantine": [asdict(q) for q in tally.quarantine],
            "counts": {s: dict(c) for s, c in tally.counts.items() if c}, "used_records": sorted(tally.used_records)}
    storage.put_bytes(storage.join(uri, PART_FILE), json.dumps(done, sort_keys=True).encode())
    log.info("partition %d of %d: %d records, examples per split %s", index, count, len(mine), splits)
    return {**done, "reused": False}


def merge_parts(table: RecordsTable, config: DatasetConfig | str | Path | dict, out_uri: str, count: int, *,
                work_dir: Path) -> BuildResult:
    """Once every partition is built: their spools cut into the dataset's shards (the same bytes as a build in one
    piece), then the quarantine and ``manifest.json``."""
    from mammoflow.dataset.shards import SpoolIndex, write_spooled

    cfg = config if isinstance(config, DatasetConfig) else DatasetConfig.load(config)
    _, plan = _read_plan(out_uri)
    usable, skipped = usable_records(table, cfg, out_uri)
    parts = [(part_uri(out_uri, p, count), read_part(part_uri(out_uri, p, count), p, count)) for p in range(count)]
    tally = Tally()
    for _, done in parts:
        tally.quarantine += [QuarantineEntry(**q) for q in done["quarantine"]]
        tally.used_records |= set(done["used_records"])
        for split, counts in done["counts"].items():
            tally.counts[split].update(counts)
    by_split = records_by_split(usable, plan)
    results = []
    for split in (s for s in SPLITS if by_split.get(s)):
        folder = work_dir / split
        folder.mkdir(parents=True, exist_ok=True)
        spool = folder / "spool.bin"
        indexes = []
        with open(spool, "wb") as out:
            for uri, done in parts:
                if split not in done["splits"]:
                    continue
                piece = storage.get_file(storage.join(uri, f"{split}.spool"), folder / "piece")
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out)
                piece.unlink()
                indexes.append(SpoolIndex.from_json(storage.get_bytes(storage.join(uri, f"{split}.index.json"))
                                                    .decode()))
        results.append(write_spooled(SpoolIndex.merge(indexes, split), spool, out_uri, split,
                                     target_shard_bytes=cfg.shard_target_bytes, work_dir=folder))
        shutil.rmtree(folder, ignore_errors=True)
    manifest = finish_build(out_uri, table, cfg, plan, usable, Counter(skipped), results, tally)
    return BuildResult(out_uri=out_uri, manifest=manifest, plan=plan, quarantine=tally.quarantine)
