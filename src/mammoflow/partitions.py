"""Record partitions: which records a partition of a pipeline's ``ParallelFor`` works on, and its done marker.

Record ``r`` belongs to partition ``h(patient) mod N`` (``h``: the first 8 bytes of sha256 of the patient id, or
of the record id when a record has no patient), so all the images of one patient are in the same partition. The
assignment is pure: the same record, patient and ``N`` give the same partition on every machine and in every run.

A partition writes its outputs under ``<folder>/parts/<p>-of-<N>/`` and its ``part.json`` last, holding the
fingerprint of its inputs: a partition finished with the same inputs is not run again (a failed partition is
retried alone), and a merge step refuses to go on while a partition has not finished.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from mammoflow import storage
from mammoflow.errors import ConfigError, InputError
from mammoflow.records import Record

PARTS_DIR = "parts"
PART_FILE = "part.json"  # written last by a partition: its done marker
MAX_PARTITIONS = 1024


def check_partition(index: int, count: int) -> None:
    if not 1 <= count <= MAX_PARTITIONS:
        raise ConfigError(f"partitions={count}: must be between 1 and {MAX_PARTITIONS}. Fix: pass partitions=1 for "
                          "one piece, or about one partition per node")
    if not 0 <= index < count:
        raise ConfigError(f"partition {index} of {count}: the index must be in 0..{count - 1}")


def group_key(rec: Record) -> str:
    """What keeps records together in one partition: the patient (the record itself when it has none)."""
    return rec.patient_id or rec.record_id


def partition_of(key: str, count: int) -> int:
    """The partition (0..count-1) of the group ``key``: pure and stable across machines and runs."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % count


def in_partition(records: Sequence[Record], index: int, count: int) -> list[Record]:
    """The records of partition ``index`` of ``count``, in their order in ``records``."""
    check_partition(index, count)
    return [r for r in records if partition_of(group_key(r), count) == index]


def part_name(index: int, count: int) -> str:
    """The folder of partition ``index`` of ``count``: ``00002-of-00003``."""
    return f"{index:05d}-of-{count:05d}"


def part_uri(out_uri: str, index: int, count: int) -> str:
    return storage.join(out_uri, PARTS_DIR, part_name(index, count))


def fingerprint(*parts: Any) -> str:
    """sha256 of the JSON of ``parts``: what a partition's output was made from."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def finished_part(uri: str, expected: str) -> dict[str, Any] | None:
    """The ``part.json`` of the partition at ``uri`` when it holds the fingerprint ``expected``, else None."""
    marker = storage.join(uri, PART_FILE)
    if not storage.exists(marker):
        return None
    try:
        done = json.loads(storage.get_bytes(marker))
    except ValueError:
        return None
    return done if done.get("fingerprint") == expected else None


def read_part(uri: str, index: int, count: int) -> dict[str, Any]:
    """The ``part.json`` of a finished partition, or an InputError saying which partition is missing."""
    marker = storage.join(uri, PART_FILE)
    if not storage.exists(marker):
        raise InputError(marker, f"partition {index} of {count} has not finished (no {PART_FILE})",
                         "run that partition's step again (its finished siblings are reused)", code="incomplete")
    return json.loads(storage.get_bytes(marker))
