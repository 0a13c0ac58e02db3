"""The training examples kept in memory (:mod:`mammoflow.dataset.memory`) as tf.data datasets.

:func:`decoded` reads every example of a set of shards once (parsed, and prepared: whole images resized) into
arrays, and keeps them in the process-wide cache when they fit. From there:

- :func:`roi_stream` gives the ROIs one by one, in exactly the order of the shards' interleave, for the patch
  pipeline (which cuts many patches per ROI, so per-ROI work is small beside it);
- :func:`whole_image_batches` gives a whole-image epoch's batches directly: the shuffle and every random draw
  run on example indices (a few numbers each), and each batch is one gather from the arrays, its flips or warp
  and the input convention. The batches are exactly those of the streaming path (same order, same pixels: the
  draws are the same per-example ops on the same keys), and iterating them costs little more than the copy. Its
  functions capture the arrays, so the dataset runs without tf.data's static graph rewrites
  (:func:`~mammoflow.dataset.tfops.memory_options`), which would serialise them each time an epoch starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mammoflow.dataset import memory
from mammoflow.dataset.tfops import (
    AUTOTUNE,
    affine,
    finish,
    memory_options,
    parallel,
    seeded_shuffle,
    tf_module,
    traced,
    warp_batch,
)

log = logging.getLogger(__name__)


def decoded(paths: Sequence[str], cfg: Any, parse: Callable[[Any], dict[str, Any]], prepare: Any, prepare_key: Any,
            cache: memory.MemoryCache) -> dict[str, Any] | None:
    """Every ROI of the files (all folds), parsed by ``parse`` and after ``prepare``, as arrays in memory: from
    ``cache``, or read now and kept when it fits (``None`` when it does not: variable image sizes, or over the
    budget)."""
    budget = memory.budget_bytes(cfg.memory_cache_mb)
    if budget <= 0:
        return None
    key = (memory.files_key(paths), float(cfg.value_range), prepare_key)
    hit = cache.get(key)
    if hit is not None:
        return hit
    tf = tf_module()
    order = sorted({str(p) for p in paths})

    def read(index: Any, path: Any) -> Any:  # one file after the other, each ROI tagged with its file
        return tf.data.TFRecordDataset(path, buffer_size=1 << 20).map(traced(lambda s: {**parse(s), "file": index}))

    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(order), dtype=tf.int64), order)).flat_map(traced(read))
    if prepare is not None:
        ds = ds.map(traced(lambda roi: {**prepare(roi), "file": roi["file"]}), num_parallel_calls=parallel(cfg),
                    deterministic=True)
    rows, total, counts = [], 0, np.zeros(len(order), np.int64)
    for roi in ds.prefetch(AUTOTUNE).as_numpy_iterator():
        total += roi["image"].nbytes
        if total > budget:
            log.info("training examples exceed the memory cache (%d MiB): read from the shards every epoch",
                     budget >> 20)
            return None
        counts[roi.pop("file")] += 1
        rows.append(roi)
    starts = dict(zip(order, (int(v) for v in np.cumsum(counts) - counts), strict=True))
    counts = dict(zip(order, (int(v) for v in counts), strict=True))
    if not rows or len({r["image"].shape for r in rows}) != 1:
        return None  # images of several sizes cannot share one array: stream them
    arrays = {k: tf.constant(np.stack([r[k] for r in rows])) for k in rows[0]}
    entry = {"arrays": arrays, "starts": starts, "counts": counts}
    cache.put(key, entry, total, budget)
    log.info("kept %d decoded training examples in memory (%.1f MiB)", len(rows), total / 2**20)
    return entry


def _indices(entry: dict[str, Any], paths: Sequence[str], cfg: Any) -> Any:
    """The examples' indices into ``entry``'s arrays in the order of the shards' interleave (``_records`` in
    :mod:`mammoflow.dataset.pipeline`), only those of ``cfg.folds`` when given."""
    tf = tf_module()
    paths = [str(p) for p in paths]
    ranges = tf.data.Dataset.from_tensor_slices(
        (tf.constant([entry["starts"][p] for p in paths], tf.int64),
         tf.constant([entry["counts"][p] for p in paths], tf.int64)))
    # The same interleave over index ranges as over the files: the same order, element for element.
    # (Sequential: counting needs no threads, and a parallel interleave gives this same order by its contract.)
    index = ranges.interleave(lambda start, n: tf.data.Dataset.range(start, start + n),
                              cycle_length=min(cfg.cycle_length, len(paths)), block_length=1)
    if cfg.folds is None:
        return index
    folds = entry["arrays"]["fold"]
    wanted = tf.constant(sorted(int(k) for k in cfg.folds), tf.int64)
    return index.filter(traced(lambda i: tf.reduce_any(tf.equal(wanted, tf.gather(folds, i)))))


def roi_stream(entry: dict[str, Any], paths: Sequence[str], cfg: Any) -> Any:
    """The ROIs of ``paths`` one by one from ``entry``, in the order and with the values of the shards' ROIs."""
    tf = tf_module()
    arrays = entry["arrays"]
    return _indices(entry, paths, cfg).map(traced(lambda i: {k: tf.gather(v, i) for k, v in arrays.items()}))


def whole_image_batches(entry: dict[str, Any], paths: Sequence[str], cfg: Any, size: tuple[int, int],
                        shuffle_seeds: tuple[int, int], augment_stream: int) -> Any:
    """A training epoch of whole images from ``entry`` (images already ``size``): ``(x [B, h, w, C], y [B],
    example_id [B])``, the batches of the streaming path of
    :func:`~mammoflow.dataset.pipeline.whole_image_dataset` with the same ``shuffle_seeds`` and
    ``augment_stream``.

    The epoch's plan (the shuffled order, each example's draws and warp) is a few numbers per example, computed
    here at once; iterating then only moves pixels: one gather per batch whose row order already makes the
    vertical flips, the horizontal flips or the warp, and the input convention."""
    tf = tf_module()
    h, w = size
    arrays = entry["arrays"]
    keys, resample = arrays["key"], not (cfg.rotation_deg == 0 and cfg.zoom == 0)

    def draws(i: Any) -> tuple[Any, Any, Any]:  # the streaming path's per-example draws, on the example's key
        u = tf.random.stateless_uniform([1, 5], tf.stack([tf.constant(augment_stream, tf.int64),
                                                          tf.gather(keys, i)]))
        t = affine(cfg, tf.constant([(h - 1) / 2]), tf.constant([(w - 1) / 2]), u, out_size=(h, w)) if resample \
            else tf.zeros([1, 8])
        return i, u[0], t[0]

    plan = seeded_shuffle(_indices(entry, paths, cfg), cfg.roi_shuffle_buffer, *shuffle_seeds).map(traced(draws))
    plan = plan.batch(1 << 30).with_options(memory_options())
    order, uniforms, transforms = next(iter(plan), (tf.zeros([0], tf.int64), tf.zeros([0, 5]), tf.zeros([0, 8])))
    rows = tf.reshape(arrays["image"], [-1, w])  # every image's rows, one after the other (no copy)
    vflip = cfg.vflip and not resample
    hflip = cfg.hflip and not resample
    line = tf.range(h, dtype=tf.int64)

    def batch(i: Any, u: Any, t: Any) -> tuple[Any, Any, Any]:
        up = u[:, 4:5] < 0.5 if vflip else tf.zeros_like(u[:, 4:5], tf.bool)  # vertical flip: rows bottom-up
        x = tf.gather(rows, tf.reshape(i[:, None] * h + tf.where(up, h - 1 - line, line), [-1]))
        x = tf.reshape(x, [-1, h, w])
        if hflip:
            x = tf.where((u[:, 3] < 0.5)[:, None, None], tf.reverse(x, [2]), x)
        x = x[:, :, :, None]
        if resample:
            x = warp_batch(x, t, (h, w), cfg.fill_mode)
        return finish(cfg, x), tf.gather(arrays["label"], i), tf.gather(arrays["example_id"], i)

    ds = tf.data.Dataset.from_tensor_slices((order, uniforms, transforms))
    ds = ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)
    ds = ds.map(traced(batch), num_parallel_calls=parallel(cfg), deterministic=True)
    return ds.prefetch(AUTOTUNE if cfg.prefetch is None else cfg.prefetch).with_options(memory_options())
