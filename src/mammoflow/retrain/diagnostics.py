"""Diagnostic knobs for retraining: a negative control that a working blessing must refuse.

``diagnostics.train_on_shuffled_labels`` trains the challenger on a copy of the dataset whose *training and
validation* labels are permuted among their examples (the evaluation split is copied untouched), so the challenger
can learn nothing that holds on the evaluation split. A retrain with it on must end "not blessed"; if it is blessed,
the blessing policy is too loose (margins too wide, or an evaluation split too small to tell models apart). It is for
tests and for checking a new deployment, never for a model anyone will use: the registered version records it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mammoflow import __version__, storage
from mammoflow.dataset import shards

log = logging.getLogger(__name__)


def shuffled_label_copy(data_uri: str, out_uri: str, *, seed: int = 0,
                        splits: Sequence[str] = ("train", "val")) -> dict[str, Any]:
    """Copy the dataset at ``data_uri`` to ``out_uri`` with the labels of ``splits`` permuted (seeded); every other
    split is copied example for example. Returns the new manifest (which names the shuffled splits)."""
    from mammoflow.dataset.cache import LocalCache

    manifest = shards.read_manifest(data_uri)
    source_sha = hashlib.sha256(storage.get_bytes(shards.manifest_uri(data_uri))).hexdigest()
    if storage.exists(shards.manifest_uri(out_uri)):
        done = shards.read_manifest(out_uri)
        if done.get("diagnostics", {}).get("source_manifest_sha256") == source_sha:
            return done  # already made from this very dataset

    with tempfile.TemporaryDirectory(prefix="mammoflow-shuffle-") as tmp:
        local = LocalCache(Path(tmp) / "cache").fetch(shards.manifest_uri(data_uri))
        results = []
        for split in manifest["splits"]:
            examples = [ex for path in local.get(split, []) for ex in shards.iter_examples(path)]
            if split in splits and examples:
                rng = np.random.default_rng([seed, sorted(manifest["splits"]).index(split)])
                order = rng.permutation(len(examples))
                labels = [(examples[i].label, examples[i].label_name) for i in order]
                examples = [dataclasses.replace(ex, label=lab, label_name=name)
                            for ex, (lab, name) in zip(examples, labels, strict=True)]
                log.warning("diagnostics: %d %s labels shuffled (negative control; this model must be refused)",
                            len(examples), split)
            results.append(shards.write_split(iter(examples), out_uri, split))
    out = shards.build_manifest(results, config=manifest.get("config"), code_version=__version__)
    for key, value in manifest.items():
        out.setdefault(key, value)
    out["diagnostics"] = {"shuffled_label_splits": list(splits), "seed": seed, "source_uri": data_uri,
                          "source_manifest_sha256": source_sha}
    shards.write_manifest(out_uri, out)
    return out
