"""Decoded training examples kept in memory across epochs (mammoflow.dataset.memory): the batches are exactly those
read from the shards, epoch after epoch (order, augmentation, folds), and the cache stays within its budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mammoflow.dataset import memory, pipeline
from mammoflow.dataset.pipeline import InputConfig, train_dataset, whole_image_dataset
from mammoflow.dataset.shards import Example, write_split


def _shards(root: Path, n: int, sizes: list[tuple[int, int]], seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    examples = [Example(example_id=f"roi{i:03d}", record_id=f"r{i}", patient_id=f"p{i}", breast_id=f"p{i}:L",
                        label=i % 2, label_name=("normal", "tumour")[i % 2], split="train", fold=i % 5,
                        image=rng.integers(0, 255, sizes[i % len(sizes)], dtype=np.uint8)) for i in range(n)]
    result = write_split(examples, str(root / "data"), "train", target_shard_bytes=4 << 10)
    paths = [str(root / "data" / s.path) for s in result.shards]
    assert len(paths) >= 3  # several shards, so the interleave order matters
    return paths


def _batches(ds) -> list[tuple[np.ndarray, ...]]:
    return [tuple(np.asarray(t) for t in b) for b in ds.as_numpy_iterator()]


def _same(a, b) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)


@pytest.fixture(autouse=True)
def empty_cache():
    pipeline._MEMORY.clear()
    yield
    pipeline._MEMORY.clear()


@pytest.mark.parametrize("folds", [None, (0, 2, 3)])
def test_patches_from_memory_equal_patches_from_the_shards(tmp_path, folds) -> None:
    paths = _shards(tmp_path, 40, [(40, 40)])
    cfg = InputConfig(patch_size=24, patches_per_roi={"normal": 3, "tumour": 5}, batch_size=8, channels=1,
                      folds=folds, shuffle_buffer=64, roi_shuffle_buffer=8)
    streamed = {e: _batches(train_dataset(paths, cfg.replace(memory_cache_mb=0), seed=3, epoch=e)) for e in (0, 1)}
    cached = {e: _batches(train_dataset(paths, cfg, seed=3, epoch=e)) for e in (0, 1)}
    assert pipeline._MEMORY.nbytes == 40 * 40 * 40 * 4  # float32 ROIs, every fold kept (the filter runs after)
    for e in (0, 1):
        _same(cached[e], streamed[e])
    assert not np.array_equal(cached[0][0][0], cached[1][0][0])  # epochs still differ


@pytest.mark.parametrize(("keep_aspect", "augment"), [
    (False, {}),  # rotation and zoom: the warp
    (True, {}),
    (True, {"rotation_deg": 0.0, "zoom": 0.0, "hflip": True, "vflip": True}),  # flips alone: pixel moves
    (False, {"rotation_deg": 0.0, "zoom": 0.0, "hflip": False, "vflip": True, "folds": (1, 3),
             "centring": "caffe", "drop_remainder": True}),
])
def test_whole_images_from_memory_equal_those_from_the_shards(tmp_path, keep_aspect, augment) -> None:
    paths = _shards(tmp_path, 24, [(48, 32), (32, 32), (40, 56)])
    cfg = InputConfig(batch_size=4, channels=3, centring="none", roi_shuffle_buffer=8).replace(**augment)
    for e in (0, 1):
        streamed = _batches(whole_image_dataset(paths, cfg.replace(memory_cache_mb=0), 32, keep_aspect=keep_aspect,
                                                training=True, seed=5, epoch=e))
        cached = _batches(whole_image_dataset(paths, cfg, 32, keep_aspect=keep_aspect, training=True, seed=5,
                                              epoch=e))
        _same(cached, streamed)
    assert pipeline._MEMORY.nbytes == 24 * 32 * 32 * 4  # resized once, before augmentation


def test_examples_over_the_budget_are_streamed_not_cached(tmp_path) -> None:
    paths = _shards(tmp_path, 40, [(40, 40)])
    cfg = InputConfig(patch_size=24, patches_per_roi={"normal": 1, "tumour": 1}, batch_size=8, channels=1,
                      memory_cache_mb=0)
    assert len(_batches(train_dataset(paths, cfg, seed=0))) == 5
    assert pipeline._MEMORY.nbytes == 0
    tiny = pipeline._decoded(paths, cfg.replace(memory_cache_mb=1), None, None)  # 1 MiB: fits (256 kB)
    assert tiny is not None and sum(tiny["counts"].values()) == 40


def test_a_rewritten_shard_is_read_again(tmp_path) -> None:
    paths = _shards(tmp_path, 20, [(40, 40)], seed=0)
    cfg = InputConfig(patch_size=24, patches_per_roi={"normal": 2, "tumour": 2}, batch_size=8, channels=1)
    first = _batches(train_dataset(paths, cfg, seed=0))
    again = _shards(tmp_path / "other", 20, [(40, 40)], seed=1)
    for src, dst in zip(again, paths, strict=False):
        Path(dst).write_bytes(Path(src).read_bytes())
    fresh = _batches(train_dataset(paths, cfg.replace(memory_cache_mb=0), seed=0))
    _same(_batches(train_dataset(paths, cfg, seed=0)), fresh)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, fresh, strict=False))


def test_cache_evicts_the_least_recently_used_entry() -> None:
    cache = memory.MemoryCache()
    assert cache.put("a", 1, 60, budget=100) and cache.put("b", 2, 30, budget=100)
    assert cache.get("a") == 1  # a is now the most recent
    assert cache.put("c", 3, 40, budget=100)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert not cache.put("huge", 4, 101, budget=100)
    assert memory.budget_bytes(0) == 0 and memory.budget_bytes(10) == 10 << 20
    assert 0 < memory.budget_bytes(None) <= memory.HARD_LIMIT


def test_flips_without_rotation_or_zoom_are_the_warp_without_resampling() -> None:
    import tensorflow as tf

    cfg = InputConfig(rotation_deg=0.0, zoom=0.0, hflip=True, vflip=True)
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (17, 12)).astype(np.float32))
    moved = []
    for u3, u4 in [(0.2, 0.2), (0.2, 0.7), (0.7, 0.2), (0.7, 0.7)]:
        u = tf.constant([[0.3, 0.5, 0.5, u3, u4]], tf.float32)
        t = pipeline._affine(cfg, tf.constant([8.0]), tf.constant([5.5]), u, out_size=(17, 12))
        warped = pipeline._warp(image, t[0], (17, 12), cfg.fill_mode)
        flipped = pipeline._flip(cfg, image[:, :, tf.newaxis], u[0])
        np.testing.assert_array_equal(flipped.numpy(), warped.numpy())
        moved.append(not np.array_equal(flipped.numpy()[:, :, 0], image.numpy()))
    assert moved == [True, True, True, False]  # a draw below 0.5 flips; (0.7, 0.7) keeps the image
