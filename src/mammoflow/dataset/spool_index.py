"""What a spool file of shard writing holds: its framed examples (where each is, its shard key) and the split's
counts. One build spools a split into one file (:func:`mammoflow.dataset.shards.spool_examples`); a build in
partitions spools each partition's share of a split into its own file, and :meth:`SpoolIndex.merge` joins them."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from mammoflow.errors import InputError


@dataclass(slots=True)
class Spooled:
    """One framed example in a spool file: where it is, and what the shard cutting and the manifest need."""

    example_id: str
    key: int
    offset: int
    length: int
    label_name: str


@dataclass
class SpoolIndex:
    """What a spool file holds (:func:`spool_examples`): its examples in spool order, and the split's counts.
    A partition of a build writes one per split; :meth:`merge` joins those of every partition (their files laid end
    to end in the given order) into the index of one spool, which :func:`write_spooled` cuts into shards."""

    items: list[Spooled] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    names: dict[int, str] = field(default_factory=dict)
    patients: set[str] = field(default_factory=set)
    folds: Counter[int] = field(default_factory=Counter)

    @property
    def bytes(self) -> int:
        return sum(i.length for i in self.items)

    def to_json(self) -> str:
        return json.dumps({"items": [dataclasses.astuple(i) for i in self.items], "counts": dict(self.counts),
                           "names": {str(k): v for k, v in self.names.items()}, "patients": sorted(self.patients),
                           "folds": {str(k): v for k, v in self.folds.items()}}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SpoolIndex:
        doc = json.loads(text)
        return cls([Spooled(*i) for i in doc["items"]], Counter(doc["counts"]),
                   {int(k): v for k, v in doc["names"].items()}, set(doc["patients"]),
                   Counter({int(k): v for k, v in doc["folds"].items()}))

    @classmethod
    def merge(cls, parts: Sequence[SpoolIndex], split: str) -> SpoolIndex:
        """The index of the spool files of ``parts`` laid end to end; an example id or a label name seen twice
        is refused as :func:`spool_examples` refuses it."""
        out, seen, shift = cls(), set(), 0
        for part in parts:
            for item in part.items:
                if item.example_id in seen:
                    raise InputError(item.example_id, f"example id appears in two partitions of split {split!r}",
                                     "make example ids unique (e.g. record_id + ROI index)", code="duplicate_id")
                seen.add(item.example_id)
                out.items.append(dataclasses.replace(item, offset=item.offset + shift))
            for label, name in part.names.items():
                if out.names.setdefault(label, name) != name:
                    raise InputError(split, f"label {label} is named both {out.names[label]!r} and {name!r}",
                                     "use one name per label index", code="unknown_label")
            out.counts.update(part.counts)
            out.patients |= part.patients
            out.folds.update(part.folds)
            shift += part.bytes
        return out
