"""Watching a training run while it trains: per-epoch publishing to gs:// (a real GCS emulator), best-effort pushes
that survive an object-store outage, and ``epoch_callback``'s ``is_last`` (early stopping included)."""

from __future__ import annotations

import csv
import io
import json
import logging
import socket

import pytest

from mammoflow import storage
from mammoflow.training.config import load_train_config
from mammoflow.training.loop import train
from mammoflow.training.run_folder import RunFolder

pytest_plugins = ["tests.gcs_emulator"]  # the gcs_emulator and gcs_bucket fixtures

TINY = {
    "data.patch_size": 32,
    "data.patches_per_roi": {"normal": 4, "tumour": 8},
    "data.batch_size": 16,
    "schedule.phases": [{"epochs": 2, "learning_rate": 0.003, "trainable_backbone": True}],
    "class_weights": "none",
}


def _events(run_uri: str) -> dict[str, str]:
    """TensorBoard event objects under a run URI -> their version (the GCS generation)."""
    return {uri: storage.stat(uri).version for uri in storage.list(storage.join(run_uri, "tensorboard"))
            if "events.out.tfevents" in uri}


def test_a_gcs_run_publishes_its_history_and_tensorboard_after_every_epoch(phantom_dataset, gcs_bucket, tmp_path):
    run_uri = f"{gcs_bucket}/runs/watched"
    seen: list[dict] = []

    def watch(row: dict[str, float], is_last: bool) -> None:
        # What someone watching the bucket sees once this epoch has ended (the run is still inside train()).
        history = json.loads(storage.get_bytes(storage.join(run_uri, "history.json")))
        table = list(csv.DictReader(io.StringIO(storage.get_bytes(storage.join(run_uri, "history.csv")).decode())))
        seen.append({"epoch": row["epoch"], "is_last": is_last, "history": history, "csv_rows": len(table),
                     "events": _events(run_uri), "config": storage.stat(storage.join(run_uri, "config.yaml")).version,
                     "model": storage.exists(storage.join(run_uri, "model.keras"))})

    cfg = load_train_config("demo", TINY)
    result = train(cfg, str(phantom_dataset), run_uri, cache_dir=tmp_path / "cache", epoch_callback=watch)

    first, second = seen
    assert (first["epoch"], first["is_last"], second["epoch"], second["is_last"]) == (1, False, 2, True)
    assert [r["epoch"] for r in first["history"]] == [1] and first["csv_rows"] == 1
    assert first["history"][0]["val_loss"] == pytest.approx(result.history[0]["val_loss"])
    assert first["events"], "no TensorBoard event file in the bucket after epoch 1"
    assert not first["model"]  # the model is written when the run ends
    assert [r["epoch"] for r in second["history"]] == [1, 2] and second["csv_rows"] == 2
    # Only what changed is uploaded: epoch 1's event files and config.yaml are not written again.
    assert all(second["events"][uri] == version for uri, version in first["events"].items())
    assert len(second["events"]) > len(first["events"])
    assert second["config"] == first["config"]
    final = _events(run_uri)
    assert all(final[uri] == version for uri, version in second["events"].items())
    assert storage.exists(storage.join(run_uri, "model.keras"))
    assert json.loads(storage.get_bytes(storage.join(run_uri, "run.json")))["status"] == "finished"


def _dead_endpoint() -> str:
    """An http endpoint on loopback where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_a_failed_push_is_retried_by_the_next_one_and_only_the_final_push_raises(gcs_bucket, gcs_emulator, tmp_path,
                                                                                  monkeypatch, caplog):
    monkeypatch.setattr(storage, "RETRY", storage.RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02))
    run = RunFolder(f"{gcs_bucket}/runs/outage", tmp_path / "cache")
    run.write_text("history.json", "[1]\n")
    run.write_text("tensorboard/train/events.out.tfevents.1", "e1")
    assert run.push("history.json", "tensorboard") == ["history.json", "tensorboard/train/events.out.tfevents.1"]

    run.write_text("history.json", "[1, 2]\n")
    run.write_text("tensorboard/train/events.out.tfevents.2", "e2")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", _dead_endpoint())  # the object store is unreachable
    with caplog.at_level(logging.WARNING, logger="mammoflow.training.run_folder"):
        assert run.push("history.json", "tensorboard", best_effort=True) == []
    assert "retried at the next push" in caplog.text
    with pytest.raises(storage.StorageError):
        run.push("history.json", "tensorboard")

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)  # back again: the pending files go with this push
    assert run.push("history.json", "tensorboard", best_effort=True) == [
        "history.json", "tensorboard/train/events.out.tfevents.2"]
    assert storage.get_bytes(f"{gcs_bucket}/runs/outage/history.json") == b"[1, 2]\n"
    assert storage.get_bytes(f"{gcs_bucket}/runs/outage/tensorboard/train/events.out.tfevents.2") == b"e2"
    assert run.push("history.json", "tensorboard") == []  # nothing changed since


def test_a_pulled_file_is_not_pushed_back_unchanged(gcs_bucket, tmp_path):
    storage.put_bytes(f"{gcs_bucket}/runs/r/config.yaml", b"seed: 1\n")
    run = RunFolder(f"{gcs_bucket}/runs/r", tmp_path / "cache")
    assert run.pull("config.yaml")
    assert run.push("config.yaml") == []
    run.write_text("config.yaml", "seed: 2\n")
    assert run.push("config.yaml") == ["config.yaml"]


def test_early_stopping_skips_the_rest_of_the_phase_and_tells_the_callback_which_epoch_is_last(phantom_dataset,
                                                                                                tmp_path):
    """Patience 0 stops a phase after its first epoch: phase 1 (3 epochs) ends after epoch 1, training goes on with
    phase 2's first epoch (4), the last of the run."""
    calls: list[tuple[int, bool]] = []
    two_phases = load_train_config("demo", {**TINY, "schedule.early_stopping_patience": 0, "schedule.phases": [
        {"epochs": 3, "learning_rate": 0.003, "trainable_backbone": True},
        {"epochs": 1, "learning_rate": 0.001, "trainable_backbone": True}]})
    result = train(two_phases, str(phantom_dataset), str(tmp_path / "two"),
                   epoch_callback=lambda row, last: calls.append((int(row["epoch"]), last)))
    assert calls == [(1, False), (4, True)]
    assert [r["epoch"] for r in result.history] == [1, 4]
    assert [round(r["learning_rate"], 8) for r in result.history] == [0.003, 0.001]
    assert (tmp_path / "two" / "model.keras").exists()

    calls.clear()  # early stopping in the last phase ends the run: that epoch is the last one
    one_phase = load_train_config("demo", {**TINY, "schedule.early_stopping_patience": 0, "schedule.phases": [
        {"epochs": 3, "learning_rate": 0.003, "trainable_backbone": True}]})
    train(one_phase, str(phantom_dataset), str(tmp_path / "one"),
          epoch_callback=lambda row, last: calls.append((int(row["epoch"]), last)))
    assert calls == [(1, True)]
    assert json.loads((tmp_path / "one" / "run.json").read_text())["status"] == "finished"
