"""Training throughput per model family on this CPU, the head-cache speed-up, and the input pipeline's rate next to
the model's step rate (the pipeline must not be what the accelerator waits for)."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
from tests.benchmarks.figures import record

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BATCH = 32
STEPS = 12
REPEATS = 3  # each rate is the median of this many timed runs (the machine's other load moves single runs a lot)


def _rate(model, x, y, steps: int = STEPS) -> float:
    """Patches per second of model.fit steps (after one warm-up step that builds and compiles): the median of
    ``REPEATS`` timed runs."""
    import tensorflow as tf

    x = tuple(x) if isinstance(x, list) else x  # multi-input heads (Fusion2's per-branch features)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat()
    model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)
    rates = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        rates.append(steps * BATCH / (time.perf_counter() - t0))
    return float(np.median(rates))


def _compile(model):
    import keras

    model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), loss="sparse_categorical_crossentropy")
    return model


def _frozen_epochs(preset: str) -> int:
    """The epochs of a training preset's phases with a frozen backbone (those the head cache serves)."""
    from mammoflow.training.config import load_train_config

    phases = load_train_config(preset).to_dict()["schedule"]["phases"]
    return sum(int(p["epochs"]) for p in phases if not p.get("trainable_backbone", False))


def main() -> None:
    logging.getLogger("mammoflow").setLevel(logging.WARNING)
    from mammoflow.models import create_model, split_frozen_backbone

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, BATCH * 4)
    families = [
        ("compact_fusion (ours, from scratch)", "compact_fusion", (72, 72, 1), {}, True),
        ("yu2020: vgg16_fusion1 [1..5], frozen", "vgg16_fusion1", (72, 72, 3), {}, False),
        ("yu2020: vgg16_fusion2 [1..5], frozen", "vgg16_fusion2", (72, 72, 3), {}, False),
        ("jaamour2023: mobilenetv2 @224, frozen", "jaamour_mobilenetv2", (224, 224, 1), {}, False),
        # The same backbone under the global-average-pooling head (the preset's flatten -> FC 512 head alone is
        # 32M weights, trained every step whether the features are cached or not).
        ("jaamour2023: mobilenetv2 @224 GAP, frozen", "jaamour_mobilenetv2", (224, 224, 1), {"pooling": "gap"},
         False),
        ("xi2018: xi_alexnet @224, trainable", "xi_alexnet", (224, 224, 1), {}, True),
    ]
    print(f"{'model':45s} {'full step':>14s} {'head only':>14s} {'speed-up':>9s}")
    for label, name, shape, kw, trainable in families:
        x = rng.uniform(0, 255, (BATCH * 4, *shape)).astype("float32")
        model = _compile(create_model(name, input_shape=shape, weights="none", trainable_backbone=trainable, **kw))
        full = _rate(model, x, y, steps=STEPS if shape[0] <= 72 else 4)
        head_txt, ratio_txt = "-", "-"
        if not trainable:
            backbone, head = split_frozen_backbone(model)
            t0 = time.perf_counter()
            feats = backbone.predict(x, batch_size=BATCH, verbose=0)
            feature_rate = len(x) / (time.perf_counter() - t0)
            logging.getLogger("mammoflow").setLevel(logging.WARNING)
            head_rate = _rate(_compile(head), feats, y, steps=STEPS * 10)
            # Over E epochs the cache costs one backbone pass and E head passes; E = the preset's frozen epochs.
            preset = name.split("_")[0].replace("vgg16", "yu2020").replace("jaamour", "jaamour2023")
            epochs = _frozen_epochs(preset)
            cached = epochs / (1 / feature_rate + epochs / head_rate)
            head_txt, ratio_txt = f"{cached:10.0f} p/s", f"{cached / full:8.1f}x"
            tag = name + (f" ({', '.join(f'{k} {v}' for k, v in kw.items())})" if kw else "")
            head_weights = sum(int(np.prod(w.shape)) for w in head.trainable_weights)
            record(f"head cache, {tag}: an epoch after the first (head only) vs a full step", head_rate, "patches/s",
                   floor=full, goal=">= 10",
                   note=f"features extracted once (the next figure); the head trains {head_weights:,} weights "
                        "each step either way")
            record(f"head cache, {tag}: {epochs} epochs incl. the one extraction vs full steps", cached, "patches/s",
                   floor=full, note=f"extraction alone {feature_rate:.0f} patches/s")
        print(f"{label:45s} {full:10.0f} p/s {head_txt:>14s} {ratio_txt:>9s}", flush=True)
    print("head only = effective rate over the preset's frozen epochs (yu2020 5, jaamour2023 50) with the backbone "
          "features computed once (head_cache: true)")
    _pipeline_vs_model()


def _pipeline_vs_model() -> None:
    """Input pipeline patches/s from local shards next to the compact model's training step rate."""
    import tempfile
    from pathlib import Path

    from mammoflow.dataset.pipeline import InputConfig, train_dataset
    from mammoflow.dataset.shards import Example, write_split

    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        examples = [Example(example_id=f"roi{i:04d}", record_id=f"r{i}", patient_id=f"p{i}", breast_id=f"p{i}:L",
                            label=i % 2, label_name=("normal", "tumour")[i % 2], split="train",
                            image=rng.integers(0, 255, (120, 120), dtype=np.uint8)) for i in range(64)]
        result = write_split(examples, str(Path(tmp) / "data"), "train")
        paths = [str(Path(tmp) / "data" / shard.path) for shard in result.shards]
        cfg = InputConfig(patch_size=72, patches_per_roi={"normal": 64, "tumour": 64}, channels=1, batch_size=BATCH)
        n, t0 = 0, time.perf_counter()
        for x, _y in train_dataset(paths, cfg, seed=0, epoch=0):
            n += int(x.shape[0])
        pipe = n / (time.perf_counter() - t0)
    from mammoflow.models import create_model

    x = np.random.default_rng(2).uniform(0, 255, (BATCH * 4, 72, 72, 1)).astype("float32")
    model = _rate(_compile(create_model("compact_fusion", input_shape=(72, 72, 1), trainable_backbone=True)), x,
                  np.zeros(len(x), int))
    record("input pipeline / compact model's training step", pipe, "patches/s", floor=model, goal=">= 5")
    print(f"input pipeline (augmented 72x72 patches, both cores): {pipe:.0f} patches/s; compact model training "
          f"step: {model:.0f} patches/s -> pipeline/model = {pipe / model:.1f}x")


if __name__ == "__main__":
    main()
