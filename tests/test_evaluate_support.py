"""Helpers shared by the evaluation, CAM and report tests: tiny shards and a tiny trained run (no tests here).

The data are 48x48 ROIs: normal ROIs are noise, tumour ROIs add a faint Gaussian blob, faint enough that a
model trained for a few seconds makes some mistakes (so missed tumours and imperfect curves exist to report).
Every patient has a left and a right ROI, so breast- and patient-level aggregation have something to do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROI_SIDE = 48
PATCH = 24
GRID = (5, 5)


def roi_image(rng: np.random.Generator, tumour: bool, contrast: float = 26.0) -> np.ndarray:
    img = rng.normal(100.0, 14.0, (ROI_SIDE, ROI_SIDE))
    if tumour:
        row, col = rng.uniform(ROI_SIDE * 0.35, ROI_SIDE * 0.65, 2)
        radius = rng.uniform(5.0, 8.0)
        yy, xx = np.mgrid[:ROI_SIDE, :ROI_SIDE]
        img += contrast * np.exp(-((yy - row) ** 2 + (xx - col) ** 2) / (2 * radius**2))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_tiny_dataset(out: Path, seed: int = 0, patients: dict[str, int] | None = None, folds: int = 0,
                       contrast: float = 26.0, faint_test_every: int = 0) -> Path:
    """Shards + manifest under ``out``: per split, ``patients[split]`` patients with an L and an R ROI.

    ``faint_test_every`` k > 0: every k-th tumour ROI of the test split gets a nearly invisible blob, so even a
    good model misses some tumours with confidence (for the report's worst false negatives).
    """
    from mammoflow.dataset import shards

    patients = patients or {"train": 20, "val": 8, "test": 10}
    rng = np.random.default_rng(seed)
    results = []
    for split, n in patients.items():
        examples = []
        n_tumours = 0
        for p in range(n):
            pid = f"{split}-p{p:02d}"
            for side in "LR":
                tumour = (p + (side == "R")) % 3 == 0
                label = int(tumour)
                fold = p % folds if folds and split == "train" else -1
                n_tumours += tumour
                faint = tumour and split == "test" and faint_test_every and n_tumours % faint_test_every == 0
                examples.append(shards.Example(
                    example_id=f"{pid}:{side}#roi", record_id=f"{pid}:{side}", patient_id=pid,
                    breast_id=f"{pid}:{side}", label=label, label_name=("normal", "tumour")[label], split=split,
                    fold=fold, image=roi_image(rng, tumour, contrast / 8 if faint else contrast)))
        results.append(shards.write_split(examples, str(out), split))
    shards.write_manifest(str(out), shards.build_manifest(results, config={"mode": "roi", "label_scheme": "binary"}))
    return out


def tiny_train_config(seed: int = 1, epochs: int = 4, fold: int | None = None):
    """compact_fusion shrunk to two blocks on 24x24 patches; enough steps for BatchNorm's moving statistics."""
    from mammoflow.training.config import load_train_config

    return load_train_config({
        "model": {"name": "compact_fusion", "weights": "none",
                  "params": {"widths": [8, 16], "fc_units": [16], "dropout": 0.0}},
        "data": {"patch_size": PATCH, "channels": 1, "patches_per_roi": {"normal": 64, "tumour": 64},
                 "eval_grid": list(GRID), "batch_size": 32, "fold": fold,
                 "augment": {"rotation_deg": 0, "zoom": 0.0, "hflip": True}},
        "optimizer": {"name": "adam"},
        "schedule": {"phases": [{"epochs": epochs, "learning_rate": 3e-3, "trainable_backbone": True}]},
        "seed": seed,
    })


def train_tiny_run(data: Path, out: Path, cache: Path) -> Path:
    """A finished training run folder (config.yaml, model.keras, metrics.json, run.json, history.csv)."""
    from mammoflow.training.loop import train

    train(tiny_train_config(), str(data), str(out), cache_dir=str(cache))
    return out
