"""Shard writing and the input pipeline, next to the bare operations they are built on.

1. ``write_split`` throughput (MB/s of shard bytes, on local disk) versus a plain write of the same shard files
   (the same bytes, TFRecord framing included, one ``write`` each from memory) to the same disk, the two timed in
   turn: the ratio is the cost of validation, serialisation, spooling, hashing and the atomic publish. Also against
   that plain write plus the sha256 of each shard (the manifest needs it: work no writer can skip), and a rerun
   (nothing to upload).
2. ``train_dataset`` patches/s with Yu et al.'s augmentation (72 x 72, rotation 180, zoom 0.2, flips), on one
   thread (patches/s per core) and on every core; the evaluation grid for comparison.

Synthetic 120 x 120 uint8 ROIs (the size of Yu et al.'s released ROIs). About 20-30 s on 2 cores; best of several runs, as other processes only slow a run down.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from tests.benchmarks.figures import record

N_ROIS = 6000  # about 87 MB of shard bytes
PIPELINE_ROIS = 16
PATCHES = {"normal": 250, "tumour": 1000}
REPEATS = 3
WRITE_REPEATS = 5  # short runs: more of them, ours and the floor in turn


def _examples(n: int, seed: int = 0) -> list:
    from mammoflow.dataset.shards import Example

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (64, 120, 120), dtype=np.uint8)  # reuse pixels: generation is not what we time
    names = ("normal", "tumour")
    return [Example(example_id=f"roi{i:06d}", record_id=f"bench:{i}", patient_id=f"p{i // 4}",
                    breast_id=f"p{i // 4}:L", label=i % 2, label_name=names[i % 2], split="train",
                    image=np.roll(base[i % 64], i, axis=1)) for i in range(n)]


def _best(fn, repeats: int = REPEATS) -> float:
    """Fastest of ``repeats`` timings of ``fn()``: other processes on the machine only ever slow a run down."""
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return min(times)


def _plain_write(shards: dict[str, bytes], root: Path) -> None:
    """The floor: each shard's bytes (framing included) written to a file of its own name with one plain ``write``
    from memory; no temporary name, no hashing, nothing else."""
    for rel, data in shards.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)


def _plain_write_and_hash(shards: dict[str, bytes], root: Path) -> None:
    """The floor with the one piece of work the format adds to it: the sha256 of each shard (the manifest's)."""
    _plain_write(shards, root)
    for data in shards.values():
        hashlib.sha256(data).hexdigest()


def bench_write(root: Path) -> None:
    """``write_split``, the plain write of the very shard files it makes, and that write plus the sha256 of each
    shard, in turn (A B C A B C ...), so that all see the same machine; the fastest of each. Every timed folder is
    deleted before the next timing, so each write finds the page cache as the previous one left it."""
    import shutil

    from mammoflow.dataset.shards import write_split

    examples = _examples(N_ROIS)
    result = write_split(examples, str(root / "ds"), "train", target_shard_bytes=16 << 20)  # the reference
    shards = {s.path: (root / "ds" / s.path).read_bytes() for s in result.shards}
    times: dict[str, list[float]] = {"write": [], "plain": [], "hashed": []}
    for i in range(WRITE_REPEATS):
        for name, run in (("write", lambda out: write_split(examples, str(out), "train", target_shard_bytes=16 << 20)),
                          ("plain", lambda out: _plain_write(shards, out)),
                          ("hashed", lambda out: _plain_write_and_hash(shards, out))):
            out = root / f"{name}{i}"
            t0 = time.perf_counter()
            run(out)
            times[name].append(time.perf_counter() - t0)
            shutil.rmtree(out)
    t_write, t_plain, t_hashed = min(times["write"]), min(times["plain"]), min(times["hashed"])
    t_rerun = _best(lambda i: write_split(examples, str(root / "ds"), "train", target_shard_bytes=16 << 20))
    mb = sum(map(len, shards.values())) / 1e6
    record("shard write / bare write of the same bytes", mb / t_write, "MB/s", floor=mb / t_plain, goal=">= 0.67")
    record("shard write / bare write + sha256 of the same bytes", mb / t_write, "MB/s", floor=mb / t_hashed)
    pairs = sorted(p / w for w, p in zip(times["write"], times["plain"], strict=True))
    print(f"shards: {N_ROIS} ROIs, {mb:.0f} MB in {len(shards)} shards (best of {WRITE_REPEATS}, in turn)")
    print(f"  write_split          {mb / t_write:8.0f} MB/s  ({t_write:.2f} s)")
    print(f"  rerun (no upload)    {mb / t_rerun:8.0f} MB/s  ({t_rerun:.2f} s)")
    print(f"  plain write          {mb / t_plain:8.0f} MB/s  ({t_plain:.2f} s)  -> write_split takes "
          f"{t_write / t_plain:.1f}x a bare write of the same bytes (pair by pair: median "
          f"{pairs[len(pairs) // 2]:.2f}, range {pairs[0]:.2f}-{pairs[-1]:.2f})")
    print(f"  plain write + sha256 {mb / t_hashed:8.0f} MB/s  ({t_hashed:.2f} s)  -> the sha256 every shard needs "
          f"(the manifest's) costs {(t_hashed - t_plain) / t_plain:.1f}x the bare write itself")


def _rate(ds, single_thread: bool) -> float:
    import tensorflow as tf

    if single_thread:
        opts = tf.data.Options()
        opts.threading.private_threadpool_size = 1
        opts.threading.max_intra_op_parallelism = 1
        ds = ds.with_options(opts)
    n = 0
    t0 = time.perf_counter()
    for batch in ds:
        n += int(batch[1].shape[0])
    return n / (time.perf_counter() - t0)


def bench_pipeline(root: Path) -> None:
    from mammoflow.dataset.pipeline import InputConfig, eval_dataset, train_dataset
    from mammoflow.dataset.shards import write_split

    out = root / "pipeline"
    result = write_split(_examples(PIPELINE_ROIS, seed=1), str(out), "train", target_shard_bytes=64 << 10)
    paths = [str(out / s.path) for s in result.shards]
    cores = os.cpu_count() or 1
    one = InputConfig(patches_per_roi=PATCHES, num_parallel_calls=1, shuffle_buffer=4096)
    every = InputConfig(patches_per_roi=PATCHES, shuffle_buffer=4096)
    _rate(train_dataset(paths, one, seed=0).take(2), True)  # warm-up: graph tracing is not throughput
    no_aug = one.replace(rotation_deg=0.0, zoom=0.0, hflip=False)
    single = max(_rate(train_dataset(paths, one, seed=0, epoch=e), True) for e in range(2))
    parallel = max(_rate(train_dataset(paths, every, seed=0, epoch=e), False) for e in range(2))
    plain = max(_rate(train_dataset(paths, no_aug, seed=0, epoch=e), True) for e in range(2))
    grid = max(_rate(eval_dataset(paths, every), False) for _ in range(2))
    n = PIPELINE_ROIS // 2 * (PATCHES["normal"] + PATCHES["tumour"])
    record("input pipeline, augmented, 1 thread", single, "patches/s")
    record("input pipeline, augmented, all cores", parallel, "patches/s")
    print(f"input pipeline: {n} training patches of 72x72 from {PIPELINE_ROIS} ROIs, batch 32, {cores} cores")
    print(f"  train, augmented, 1 thread   {single:8.0f} patches/s per core")
    print(f"  train, augmented, all cores  {parallel:8.0f} patches/s")
    print(f"  train, no augmentation, 1 thread {plain:4.0f} patches/s per core")
    print(f"  eval grid 5x5, all cores     {grid:8.0f} patches/s")


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="mammoflow-bench-") as tmp:
        bench_write(Path(tmp))
        bench_pipeline(Path(tmp))


if __name__ == "__main__":
    main()
