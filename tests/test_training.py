"""Training: config validation, class weights reaching the loss, resume equality, a real learning signal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mammoflow.errors import ConfigError
from mammoflow.training.config import load_train_config
from mammoflow.training.loop import class_weight_map, train

# Small and fast: 32 px patches, few per ROI, one phase.
TINY = {
    "data.patch_size": 32,
    "data.patches_per_roi": {"normal": 8, "tumour": 24},
    "data.batch_size": 16,
    "schedule.phases": [{"epochs": 2, "learning_rate": 0.003, "trainable_backbone": True}],
    "class_weights": "none",
}


def _weights(path):
    import keras

    return [np.asarray(w) for w in keras.models.load_model(path).get_weights()]


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="unknown key"):
        load_train_config("demo", {"model.nmae": "x"})
    with pytest.raises(ConfigError, match="class_weights"):
        load_train_config("demo", {"class_weights": "inverse"})
    with pytest.raises(ConfigError, match="head_lr_multiplier needs optimizer.name: sgd"):
        load_train_config("demo", {"optimizer.head_lr_multiplier": 20.0})
    assert load_train_config("yu2020").model.name == "vgg16_fusion1"
    cfg = load_train_config("jaamour2023")
    assert [p.trainable_backbone for p in cfg.schedule.phases] == [False, True]
    assert cfg.phase_of_epoch(50)[0] == 1


def test_balanced_class_weights():
    weights = class_weight_map("balanced", {0: 300, 1: 100}, {0: "normal", 1: "tumour"})
    assert weights == pytest.approx({0: 400 / 600, 1: 400 / 200})
    assert class_weight_map("none", {0: 1, 1: 1}, {0: "normal", 1: "tumour"}) is None
    assert class_weight_map({"tumour": 3}, {0: 1, 1: 1}, {0: "normal", 1: "tumour"}) == {1: 3.0}
    with pytest.raises(ConfigError, match="unknown label"):
        class_weight_map({"cancer": 3}, {0: 1, 1: 1}, {0: "normal", 1: "tumour"})


def test_class_weights_reach_the_loss(phantom_dataset, tmp_path):
    losses = {}
    for spec in ("none", {"normal": 1.0, "tumour": 5.0}):
        cfg = load_train_config("demo", {**TINY, "class_weights": spec, "schedule.phases": [
            {"epochs": 1, "learning_rate": 0.003, "trainable_backbone": True}]})
        name = "none" if spec == "none" else "weighted"
        losses[name] = train(cfg, str(phantom_dataset), str(tmp_path / name)).history[0]["loss"]
    # Same data, same seed, same initial weights: only the weights differ, and the tumour-heavy weighting
    # makes the mean weighted loss larger.
    assert losses["weighted"] > losses["none"] * 1.5


def test_killed_run_resumes_to_the_same_result(phantom_dataset, tmp_path):
    cfg = load_train_config("demo", TINY)
    full = train(cfg, str(phantom_dataset), str(tmp_path / "full"))
    first = train(cfg, str(phantom_dataset), str(tmp_path / "resumed"), stop_after_epochs=1)
    assert first.epochs_run == 1 and not (tmp_path / "resumed" / "model.keras").exists()
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["status"] == "paused"
    second = train(cfg, str(phantom_dataset), str(tmp_path / "resumed"))
    assert second.resumed_from_epoch == 1 and second.epochs_run == 2
    assert [r["loss"] for r in second.history] == pytest.approx([r["loss"] for r in full.history], rel=1e-5)
    for a, b in zip(_weights(tmp_path / "full" / "model.keras"), _weights(tmp_path / "resumed" / "model.keras"),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_run_folder_is_self_describing(phantom_dataset, tmp_path):
    cfg = load_train_config("demo", {**TINY, "schedule.phases": [
        {"epochs": 1, "learning_rate": 0.003, "trainable_backbone": True}]})
    train(cfg, str(phantom_dataset), str(tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("config.yaml", "run.json", "metrics.json", "history.csv", "history.json", "model.keras",
                 "model_meta.json", "checkpoints/best.keras", "checkpoints/last.keras", "checkpoints/state.json"):
        assert (run / name).exists(), name
    assert any((run / "tensorboard").rglob("events.out.tfevents*"))
    info = json.loads((run / "run.json").read_text())
    assert len(info["data_manifest_sha256"]) == 64 and info["status"] == "finished"
    # The saved config re-runs the same thing.
    again = load_train_config(str(run / "config.yaml"))
    assert again == cfg
    # Re-running the finished run redoes nothing and rewrites nothing.
    first = json.loads((run / "metrics.json").read_text())
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    rerun = train(cfg, str(phantom_dataset), str(run))
    assert rerun.metrics == first and rerun.epochs_run == 1 and rerun.best_epoch == first["best_epoch"]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == stamps
    # A different config in the same folder is refused rather than mixed in.
    other = load_train_config("demo", {**TINY, "seed": 99})
    with pytest.raises(ConfigError, match="different config"):
        train(other, str(phantom_dataset), str(run))


@pytest.mark.slow
def test_learns_lesions_from_phantoms(phantom_dataset, tmp_path):
    """A real learning signal: held-out lesion patches score higher than normal ones (patch ROC-AUC)."""
    import keras
    from sklearn.metrics import roc_auc_score

    from mammoflow.dataset.cache import LocalCache
    from mammoflow.dataset.pipeline import eval_dataset
    from mammoflow.training.loop import _input_config

    cfg = load_train_config("demo", {**TINY, "data.patch_size": 48, "data.patches_per_roi": {"normal": 24, "tumour": 48},
                                     "schedule.phases": [{"epochs": 6, "learning_rate": 0.001,
                                                          "trainable_backbone": True}]})
    train(cfg, str(phantom_dataset), str(tmp_path / "run"))
    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    shards = LocalCache(tmp_path / "cache").fetch(str(phantom_dataset))
    probs, labels = [], []
    for x, y, _ids in eval_dataset(shards["val"] + shards["test"], _input_config(cfg)):
        probs.append(model.predict_on_batch(x)[:, 1])
        labels.append(y.numpy())
    y_true, y_prob = np.concatenate(labels), np.concatenate(probs)
    assert 0 < y_true.mean() < 1, "held-out splits need both classes"
    auc = roc_auc_score(y_true, y_prob)
    # Measured 0.87 here (chance 0.5); the margin absorbs floating-point differences between CPUs.
    assert auc > 0.75, f"held-out patch ROC-AUC {auc:.3f}: no real learning signal"


def test_head_cache_gives_the_same_model_as_the_slow_path(phantom_dataset, tmp_path):
    """Frozen VGG16 Fusion1: training the head on cached backbone features == training the whole model."""
    base = {**TINY, "model.name": "vgg16_fusion1", "model.weights": "none",
            "model.params": {"fc_units": [32, 32]}, "data.channels": 3, "data.resample_each_epoch": False,
            "data.patches_per_roi": {"normal": 4, "tumour": 8}, "optimizer.name": "sgd",
            "schedule.phases": [{"epochs": 2, "learning_rate": 0.01, "trainable_backbone": False}]}
    slow = train(load_train_config("demo", base), str(phantom_dataset), str(tmp_path / "slow"))
    fast = train(load_train_config("demo", {**base, "head_cache": True}), str(phantom_dataset),
                 str(tmp_path / "fast"))
    assert [r["loss"] for r in fast.history] == pytest.approx([r["loss"] for r in slow.history], rel=1e-3)
    assert [r["val_loss"] for r in fast.history] == pytest.approx([r["val_loss"] for r in slow.history], rel=1e-3)
    for a, b in zip(_weights(tmp_path / "slow" / "model.keras"), _weights(tmp_path / "fast" / "model.keras"),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_head_cache_needs_a_frozen_backbone_and_fixed_patches():
    with pytest.raises(ConfigError, match="resample_each_epoch"):
        load_train_config("demo", {"head_cache": True, "schedule.phases": [
            {"epochs": 1, "learning_rate": 0.01, "trainable_backbone": False}]})
    with pytest.raises(ConfigError, match="frozen backbone"):
        load_train_config("demo", {"head_cache": True, "data.resample_each_epoch": False})


def test_two_phases_freeze_then_unfreeze_the_backbone(phantom_dataset, tmp_path):
    """Jaamour et al.'s schedule: phase 1 trains only the head, phase 2 everything at a lower rate."""
    import keras

    over = {**TINY, "model.name": "vgg16_gap", "model.weights": "none", "model.params": {"fc_units": [16, 16]},
            "data.channels": 3, "data.patches_per_roi": {"normal": 2, "tumour": 4}, "optimizer.name": "adam",
            "schedule.phases": [{"epochs": 1, "learning_rate": 0.001, "trainable_backbone": False},
                                {"epochs": 1, "learning_rate": 1e-5, "trainable_backbone": True}]}
    cfg = load_train_config("demo", over)
    conv = "block1_conv1"
    train(cfg, str(phantom_dataset), str(tmp_path / "p"), stop_after_epochs=1)
    after1 = keras.models.load_model(tmp_path / "p" / "checkpoints" / "last.keras")
    assert not after1.get_layer(conv).trainable and after1.get_layer("fc1").trainable
    train(cfg, str(phantom_dataset), str(tmp_path / "p"))  # resumes into phase 2
    after2 = keras.models.load_model(tmp_path / "p" / "checkpoints" / "last.keras")
    assert after2.get_layer(conv).trainable
    assert not np.array_equal(after1.get_layer(conv).get_weights()[0], after2.get_layer(conv).get_weights()[0])
    history = json.loads((tmp_path / "p" / "history.json").read_text())
    assert [round(r["learning_rate"], 8) for r in history] == [0.001, 1e-5]


def test_head_learning_rate_multiplier():
    """Xi et al.: the new head learns at 20x the backbone's rate (SGD)."""
    import keras

    from mammoflow.training.optim import HeadScaledSGD

    inputs = keras.Input((4,))
    body = keras.layers.Dense(3, name="body", kernel_initializer="ones", use_bias=False)(inputs)
    out = keras.layers.Dense(1, name="predictions", kernel_initializer="ones", use_bias=False)(body)
    model = keras.Model(inputs, out)
    opt = HeadScaledSGD(learning_rate=0.01, momentum=0.0, head_multiplier=20.0, head_paths=["predictions"])
    grads = [keras.ops.ones((4, 3)), keras.ops.ones((3, 1))]
    opt.apply(grads, model.trainable_variables)
    body_w, head_w = (np.asarray(v) for v in model.trainable_variables)
    np.testing.assert_allclose(1 - body_w, 0.01, rtol=1e-4)
    np.testing.assert_allclose(1 - head_w, 0.2, rtol=1e-4)
    again = HeadScaledSGD.from_config(opt.get_config())
    assert again.head_multiplier == 20.0 and again.head_paths == ("predictions",)


def test_predict_matches_the_evaluation_pipeline(phantom_dataset, tmp_path):
    """`mammoflow predict` on a ROI file gives the probabilities the tf.data evaluation path gives (no skew)."""
    import keras

    from mammoflow.dataset.cache import LocalCache
    from mammoflow.dataset.pipeline import eval_dataset
    from mammoflow.dataset.shards import iter_examples
    from mammoflow.io.images import write_png
    from mammoflow.training.loop import _input_config
    from mammoflow.training.predict import Predictor

    cfg = load_train_config("demo", {**TINY, "schedule.phases": [
        {"epochs": 1, "learning_rate": 0.003, "trainable_backbone": True}]})
    train(cfg, str(phantom_dataset), str(tmp_path / "run"))
    shards = LocalCache(tmp_path / "cache").fetch(str(phantom_dataset))["test"]
    example = next(iter_examples(shards[0]))
    write_png(tmp_path / "roi.png", example.image)

    pred = Predictor(str(tmp_path / "run")).predict_file(tmp_path / "roi.png")
    assert pred.n_patches == 25 and sum(pred.votes.values()) == 25
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)

    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    probs = [model.predict_on_batch(x)[:, 1][ids.numpy() == example.example_id.encode()]
             for x, _y, ids in eval_dataset(shards, _input_config(cfg))]
    assert pred.probabilities["tumour"] == pytest.approx(float(np.concatenate(probs).mean()), abs=1e-5)


def test_whole_image_mode_trains_on_cbis_like_dicoms(tmp_path):
    """Jaamour et al.'s mode: whole (resized) mammograms from DICOM phantoms in the CBIS-DDSM layout."""
    from mammoflow.dataset.build import build_dataset
    from mammoflow.preprocess.run import preprocess_records
    from mammoflow.sources import SourceOptions, read_source
    from mammoflow.synth.phantoms import write_dicom_dataset

    write_dicom_dataset(tmp_path / "raw", n_images=40, seed=3, size=(160, 120))
    read_source("cbis-ddsm", SourceOptions(root=tmp_path / "raw")).write(tmp_path / "records")
    preprocess_records(tmp_path / "records", {"steps": [{"name": "resize_pad", "params": {"height": 96,
                                                                                          "width": 96}}],
                                              "output_dtype": "uint8"}, tmp_path / "pre")
    build_dataset(tmp_path / "pre", {"mode": "whole_image", "label_scheme": "benign_malignant", "image_size": 64,
                                     "splits": {"ratios": [0.5, 0.25, 0.25], "stratify_by": "label"}},
                  str(tmp_path / "data"))
    cfg = load_train_config("demo", {"data.mode": "whole_image", "data.image_size": 64, "data.batch_size": 4,
                                     "schedule.phases": [{"epochs": 1, "learning_rate": 0.001,
                                                          "trainable_backbone": True}]})
    result = train(cfg, str(tmp_path / "data"), str(tmp_path / "run"))
    assert result.epochs_run == 1 and np.isfinite(result.best_val_loss)
    labels = json.loads((tmp_path / "run" / "metrics.json").read_text())["label_names"]
    assert set(labels.values()) == {"benign", "malignant"}


@pytest.mark.slow
def test_sigterm_checkpoints_mid_epoch_and_the_rerun_finishes_the_same(phantom_dataset, tmp_path):
    """Spot preemption: SIGTERM -> checkpoint at the next step, exit 143; the same command then resumes mid-epoch
    and ends with the same weights as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    over = {**TINY, "data.patches_per_roi": {"normal": 24, "tumour": 64},
            "schedule.checkpoint_every_steps": 1000,
            "schedule.phases": [{"epochs": 1, "learning_rate": 0.003, "trainable_backbone": True}]}
    cfg = load_train_config("demo", over)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    reference = train(cfg, str(phantom_dataset), str(tmp_path / "reference"))

    cmd = [sys.executable, "-m", "mammoflow.cli", "train", "--config", str(tmp_path / "cfg.yaml"),
           "--data", str(phantom_dataset), "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "CI": "true"})
    # Wait until training has started (TensorBoard writes its event file at the first epoch), then preempt.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((tmp_path / "run").rglob("events.out.tfevents*")):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    state = json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())
    assert state["epochs_done"] == 0 and state["step_in_epoch"] > 0, state

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "CI": "true"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"
    for a, b in zip(_weights(tmp_path / "reference" / "model.keras"), _weights(tmp_path / "run" / "model.keras"),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert reference.epochs_run == 1
    # The epoch's row covers its steps before the preemption too: the same training loss and accuracy (weighted
    # by steps, so the smaller last batch may move them a little).
    [row] = json.loads((tmp_path / "run" / "history.json").read_text())
    [ref_row] = reference.history
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert row[key] == pytest.approx(ref_row[key], rel=0.02, abs=0.01), (key, row, ref_row)


def test_merge_epoch_means_weights_the_parts_by_steps():
    from mammoflow.training.loop import merge_epoch_means

    first = merge_epoch_means(None, 3, {"loss": 1.0, "accuracy": 0.5, "note": "text"})
    assert first == {"steps": 3, "means": {"loss": 1.0, "accuracy": 0.5}}
    both = merge_epoch_means(first, 1, {"loss": 3.0, "accuracy": float("nan")})
    assert both == {"steps": 4, "means": {"loss": 1.5}}  # a NaN (no step's value) is not averaged in
    assert merge_epoch_means(first, 0, {"loss": float("nan")}) == first  # nothing ran: the epoch so far


def test_a_run_stopped_after_an_epochs_last_step_resumes_with_that_epochs_numbers(phantom_dataset, tmp_path,
                                                                                  monkeypatch):
    """Checkpointed at the epoch's last step, stopped before the epoch ended (here: in validation's end): the
    rerun has no step left to train in that epoch, and its row still holds the epoch's training loss."""
    import keras

    over = {**TINY, "schedule.checkpoint_every_steps": 1,
            "schedule.phases": [{"epochs": 1, "learning_rate": 0.003, "trainable_backbone": True}]}
    cfg = load_train_config("demo", over)
    reference = train(cfg, str(phantom_dataset), str(tmp_path / "reference"))

    def crash(self, epoch, logs=None):
        raise RuntimeError("killed at the epoch's end")

    with monkeypatch.context() as patch:
        patch.setattr(keras.callbacks.TensorBoard, "on_epoch_end", crash)
        with pytest.raises(RuntimeError, match="killed"):
            train(cfg, str(phantom_dataset), str(tmp_path / "run"))
    state = json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())
    assert state["epochs_done"] == 0 and state["step_in_epoch"] > 0

    resumed = train(cfg, str(phantom_dataset), str(tmp_path / "run"))
    assert resumed.resumed_from_epoch == 0
    [row], [ref_row] = resumed.history, reference.history
    assert np.isfinite(row["loss"])
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert row[key] == pytest.approx(ref_row[key], rel=1e-4, abs=1e-5), (key, row, ref_row)
    assert json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())["epoch_so_far"] is None
