"""Ray Tune sweeps for real, on phantom data and a local Ray with 2 CPUs.

- ASHA stops the bad trials early; the results table is sorted by the metric; the best config trains;
  trials write TensorBoard logs; the ray.util.metrics counters and gauges reach Ray's Prometheus endpoint.
- The sweep folder on gs:// (a real GCS emulator, in its own process: see ``gcs_bucket_elsewhere``): Ray's experiment state through pyarrow's GcsFileSystem,
  the trials' run folders through mammoflow.storage; resuming reads the state back from the bucket.
- The sweep driver killed (SIGKILL) mid-sweep and resumed: every trial ends exactly once, finished trials are not
  touched again, the interrupted one continues after its last checkpointed epoch.

Trials are told apart by class weights: ``balanced`` and ``none`` learn; 300x or 1000x weight on the tumour class
makes a model call everything a tumour, so its validation loss after one epoch is about twice theirs (1.1-1.5 vs
0.6). The good cells come first and at most two trials run at once, so both good trials have reached ASHA's first
rung before a bad one does: the bad ones are stopped there, whatever the exact losses.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mammoflow import storage
from mammoflow.errors import ConfigError
from mammoflow.sweep.runner import TRIAL_STATUS_FILE, ray_default_installed, run_sweep
from mammoflow.sweep.spec import cell_name, load_spec

pytestmark = pytest.mark.slow

EPOCHS = 3
BASE = {
    "model": {"name": "compact_fusion", "weights": "none"},
    "data": {"patch_size": 32, "channels": 1, "patches_per_roi": {"normal": 4, "tumour": 8}, "eval_grid": [2, 2],
             "batch_size": 16, "augment": {"rotation_deg": 90, "hflip": True}},
    "optimizer": {"name": "adam"},
    "schedule": {"phases": [{"epochs": EPOCHS, "learning_rate": 1.0e-3, "trainable_backbone": True}]},
    "seed": 7,
}
KILL_EPOCHS = 2
GOOD = ["balanced", "none"]
BAD = [{"normal": 1.0, "tumour": 300.0}, {"normal": 1.0, "tumour": 1000.0}]


def _spec(name: str, weights: list, epochs: int = EPOCHS, **more) -> dict:
    base = {**BASE, "schedule": {"phases": [{**BASE["schedule"]["phases"][0], "epochs": epochs}]}}
    return {"name": name, "base": base, "axes": {"class_weights": {"grid": weights}}, "metric": "val_loss",
            "mode": "min", "resources": {"cpu": 1}, "max_failures": 0, **more}


def _name(weights) -> str:
    return cell_name({"class_weights": weights})


def _json(uri: str) -> dict:
    return json.loads(storage.get_bytes(uri))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory) -> str:
    """A tiny yu2020 ROI dataset from 20 phantoms (train 8 normal + 6 tumour ROIs, val 3 + 1): about 4 s."""
    from mammoflow.dataset.build import build_dataset
    from mammoflow.preprocess.run import preprocess_records
    from mammoflow.sources import SourceOptions, read_source
    from mammoflow.synth.phantoms import write_mias_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_mias_dataset(root / "images", n_images=20, seed=3)
    table = read_source("mias", SourceOptions(root=root / "images"))
    table.write(root / "records")
    preprocess_records(root / "records", "yu2020", root / "pre")
    build_dataset(root / "pre", "yu2020", str(root / "ds"))
    return str(root / "ds")


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray (2 CPUs) for the module; with ray[default], its metrics endpoint on a known port, exported
    every second (Ray's default is 10 s)."""
    import ray

    port = _free_port() if ray_default_installed() else None
    kwargs = {"_metrics_export_port": port, "_system_config": {"metrics_report_interval_ms": 1000}} if port else {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, **kwargs)
    yield port
    ray.shutdown()


class _MetricsPoller:
    """Scrapes Ray's Prometheus endpoint every second in a thread and keeps every sample of ray_mammoflow_*.

    Gauges of a trial live only as long as its worker process (Ray drops a series about two export intervals after
    its emitter stops), so they are watched while the sweep runs, as Prometheus would.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                m = re.match(r"^(ray_mammoflow_\w+)\{(.*)\} (\S+)$", line)
                if m:
                    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
                    self.samples.setdefault(m.group(1), []).append((labels, float(m.group(3))))

    def values(self, name: str, **labels: str) -> list[float]:
        return [v for lab, v in list(self.samples.get(name, [])) if all(lab.get(k) == x for k, x in labels.items())]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def gcs_bucket_elsewhere(monkeypatch, tmp_path) -> str:
    """A fresh bucket in a GCS emulator running in *its own process* (gcp-storage-emulator on loopback).

    Not the in-process server of tests/gcs_emulator.py: pyarrow's GCS file object starts its download lazily, from
    its ``closed`` property, which pyarrow's ``NativeFile.size()/read()`` call while holding the GIL
    (``_assert_open``). ``Tuner.restore`` reads ``tuner.pkl`` that way, so a server thread in the same Python
    process can never answer and the test deadlocks (py-spy: the driver in ``GcsRandomAccessFile::InitializeStream``
    under ``NativeFile.closed``, the server thread waiting for the GIL). A real bucket, or an emulator in another
    process, is not affected.
    """
    port = _free_port()
    log = (tmp_path / "emulator.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                             "--port", str(port), "--in-memory"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the GCS emulator did not start: {(tmp_path / 'emulator.log').read_text()}") from None
                time.sleep(0.2)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "mammoflow-test")
        storage.create_bucket("gs://sweep-test")
        yield "gs://sweep-test"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def asha_sweep(ray_local, phantom_data, tmp_path_factory):
    spec = load_spec(_spec("asha_test", GOOD + BAD, scheduler={"name": "asha", "grace_period": 1,
                                                                "reduction_factor": 2}, max_concurrent=2))
    out = tmp_path_factory.mktemp("asha") / "sweep"
    poller = _MetricsPoller(ray_local) if ray_local else None
    summary = run_sweep(spec, {"default": phantom_data}, str(out), cache_dir=str(out.parent / "cache"))
    yield spec, out, summary, poller
    if poller:
        poller.stop()


def test_asha_stops_the_bad_trials_early(asha_sweep):
    _, out, summary, _ = asha_sweep
    assert summary == _json(str(out / "summary.json"))
    assert summary["trials"] == 4 and summary["failed"] == 0
    assert summary["stopped_early"] >= 2 and summary["finished"] >= 1
    assert summary["finished"] + summary["stopped_early"] == 4
    for weights in BAD:  # stopped at the first rung, after one epoch
        folder = out / "trials" / _name(weights)
        assert json.loads((folder / TRIAL_STATUS_FILE).read_text())["status"] == "stopped_early"
        assert [r["epoch"] for r in json.loads((folder / "history.json").read_text())] == [1]
        assert not (folder / "model.keras").exists()
    epochs = {}
    for weights in GOOD + BAD:
        folder = out / "trials" / _name(weights)
        history = json.loads((folder / "history.json").read_text())
        epochs[_name(weights)] = len(history)
        status = json.loads((folder / TRIAL_STATUS_FILE).read_text())["status"]
        assert [r["epoch"] for r in history] == list(range(1, len(history) + 1))
        if status == "finished":  # the last epoch was reported after train() wrote the model
            assert len(history) == EPOCHS and (folder / "model.keras").exists()
            assert json.loads((folder / "run.json").read_text())["status"] == "finished"
        else:
            assert len(history) < EPOCHS
    assert summary["trial_epochs"] == sum(epochs.values())
    assert summary["full_grid_trial_epochs"] == 4 * EPOCHS
    assert summary["trial_epochs_saved"] == 4 * EPOCHS - sum(epochs.values()) >= 4


def test_results_are_sorted_by_the_metric_and_match_the_run_folders(asha_sweep):
    import csv

    _, out, summary, _ = asha_sweep
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    losses = [float(r["best_val_loss"]) for r in rows]
    assert losses == sorted(losses)
    for row in rows:
        history = json.loads((out / "trials" / row["trial"] / "history.json").read_text())
        assert float(row["best_val_loss"]) == pytest.approx(min(h["val_loss"] for h in history))
        assert int(row["epochs"]) == len(history)
    assert {r["trial"] for r in rows[-2:]} == {_name(w) for w in BAD}
    md = (out / "results.md").read_text().splitlines()
    table = [line for line in md if line.startswith("| ") and not line.startswith(("| trial", "| ---"))]
    assert [line.split(" | ")[0].lstrip("| ") for line in table] == [r["trial"] for r in rows]
    finished = [r for r in rows if r["status"] == "finished"]
    assert summary["best_trial"] == finished[0]["trial"]


def test_the_best_config_is_the_best_trials_and_trains(asha_sweep, phantom_data, tmp_path):
    from mammoflow.config import dump_yaml
    from mammoflow.training.config import load_train_config
    from mammoflow.training.loop import train

    _, out, summary, _ = asha_sweep
    path = out / "best_config.yaml"
    config = load_train_config(str(path))
    trial_config = (out / "trials" / summary["best_trial"] / "config.yaml").read_text()
    assert dump_yaml(config.to_dict()) == trial_config
    assert summary["best_run"] == str(out / "trials" / summary["best_trial"])
    result = train(config, phantom_data, str(tmp_path / "retrain"), cache_dir=str(tmp_path / "cache"),
                   stop_after_epochs=1)
    assert result.epochs_run == 1 and result.history[0]["val_loss"] > 0


def test_trials_write_tensorboard_logs(asha_sweep):
    _, out, _, _ = asha_sweep
    for weights in GOOD + BAD:
        events = list((out / "trials" / _name(weights) / "tensorboard").rglob("events.out.tfevents.*"))
        assert {p.parent.name for p in events} == {"train", "validation"}
    # Ray Tune's own per-trial logs (every reported metric, one point per epoch) beside its experiment state
    ray_events = list((out / "ray" / "asha_test").glob("*/events.out.tfevents.*"))
    assert len(ray_events) == 4


def test_sweep_metrics_reach_rays_prometheus_endpoint(asha_sweep, ray_local):
    if ray_local is None:
        pytest.skip("Ray is the minimal install (ray[tune]): no metrics agent exports ray.util.metrics; "
                    "install ray[default] to run this")
    _, out, summary, poller = asha_sweep
    stopped = "ray_mammoflow_sweep_trials_stopped_early_total"
    finished = "ray_mammoflow_sweep_trials_finished_total"
    deadline = time.monotonic() + 30  # the driver's last counts reach the endpoint within an export interval
    while time.monotonic() < deadline:
        if poller.values(stopped, sweep="asha_test")[-1:] == [summary["stopped_early"]] and \
                poller.values(finished, sweep="asha_test")[-1:] == [summary["finished"]]:
            break
        time.sleep(1)
    assert poller.values(stopped, sweep="asha_test")[-1] == summary["stopped_early"]
    assert poller.values(finished, sweep="asha_test")[-1] == summary["finished"]
    losses = [r["val_loss"] for w in GOOD + BAD for r in json.loads((out / "trials" / _name(w) / "history.json")
                                                                     .read_text())]
    best = poller.values("ray_mammoflow_sweep_best_metric", sweep="asha_test")
    assert best and best == sorted(best, reverse=True)  # it only ever improves
    assert all(any(b == pytest.approx(v) for v in losses) for b in best)
    # per-trial gauges, from the trial processes while they ran
    assert 1.0 in poller.values("ray_mammoflow_trial_running")
    seen = {lab["trial"] for lab, _ in poller.samples.get("ray_mammoflow_trial_epoch", [])}
    assert seen and seen <= {_name(w) for w in GOOD + BAD}
    for trial in seen:
        epochs = len(json.loads((out / "trials" / trial / "history.json").read_text()))
        assert set(poller.values("ray_mammoflow_trial_epoch", trial=trial)) <= set(map(float, range(1, epochs + 1)))
        assert poller.values("ray_mammoflow_trial_val_loss", trial=trial)


def test_sweep_folder_on_gcs_and_resume_from_it(ray_local, phantom_data, gcs_bucket_elsewhere, tmp_path):
    from mammoflow.steps import publish_tree

    gcs_bucket = gcs_bucket_elsewhere
    data_uri = f"{gcs_bucket}/datasets/phantoms"
    publish_tree(phantom_data, data_uri)
    out = f"{gcs_bucket}/sweeps/gcs_test"
    # One trial at a time, the good one first: the bad one is always compared with it at ASHA's first rung.
    spec = load_spec(_spec("gcs_test", ["none", BAD[1]], epochs=2, max_concurrent=1,
                           scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2}))
    summary = run_sweep(spec, {"default": data_uri}, out, cache_dir=str(tmp_path / "cache"))
    assert (summary["trials"], summary["finished"], summary["stopped_early"]) == (2, 1, 1)
    assert summary == _json(f"{out}/summary.json")

    objects = storage.list(out)
    ray_objects = [o for o in objects if o.startswith(f"{out}/ray/gcs_test/")]
    names = {o.rsplit("/", 1)[-1] for o in ray_objects}
    assert "tuner.pkl" in names and any(n.startswith("experiment_state-") for n in names)
    assert sum(n == "result.json" for n in names) == 1 and sum(o.endswith("/result.json") for o in ray_objects) == 2
    good, bad = f"{out}/trials/{_name('none')}", f"{out}/trials/{_name(BAD[1])}"
    for rel in ("model.keras", "metrics.json", "run.json", "history.json", "checkpoints/state.json"):
        assert storage.exists(f"{good}/{rel}"), rel
    assert len(_json(f"{good}/history.json")) == 2
    assert any("/tensorboard/" in o for o in objects if o.startswith(good))
    assert _json(f"{bad}/{TRIAL_STATUS_FILE}")["status"] == "stopped_early"
    assert len(_json(f"{bad}/checkpoints/state.json")["history"]) == 1
    assert not storage.exists(f"{bad}/model.keras")
    assert storage.exists(f"{out}/best_config.yaml") and storage.exists(f"{out}/results.md")

    # Resume: Tune reads its state back from the bucket; the ended trials are not trained again.
    version = storage.stat(f"{good}/checkpoints/state.json").version
    again = run_sweep(spec, {"default": data_uri}, out, resume=True, cache_dir=str(tmp_path / "cache"))
    assert {k: again[k] for k in ("trials", "finished", "stopped_early", "trial_epochs", "best_trial")} == \
        {k: summary[k] for k in ("trials", "finished", "stopped_early", "trial_epochs", "best_trial")}
    assert storage.stat(f"{good}/checkpoints/state.json").version == version
    with pytest.raises(ConfigError, match="--resume"):
        run_sweep(spec, {"default": data_uri}, out, cache_dir=str(tmp_path / "cache"))
    changed = load_spec(_spec("gcs_test", ["none", "balanced"]))
    with pytest.raises(ConfigError, match="different spec"):
        run_sweep(changed, {"default": data_uri}, out, resume=True)


def _session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (the killed driver started it: its Ray and trial workers)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields after the name: state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids


def _kill_session(sid: int) -> None:
    deadline = time.monotonic() + 30
    while (pids := _session_pids(sid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    assert not _session_pids(sid), "processes of the killed sweep driver survived"


def _epochs_done(folder: Path) -> int:
    state = folder / "checkpoints" / "state.json"
    return json.loads(state.read_text())["epochs_done"] if state.exists() else 0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the driver's processes through /proc")
def test_driver_killed_mid_sweep_then_resumed_runs_every_trial_exactly_once(ray_local, phantom_data, tmp_path):
    from mammoflow.cli import cli

    weights = ["none", "balanced", BAD[0]]
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(_spec("kill_test", weights, epochs=KILL_EPOCHS, scheduler={"name": "fifo"})))
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    folders = {w if isinstance(w, str) else "bad": out / "trials" / _name(w) for w in weights}
    args = ["sweep", "--spec", str(spec_path), "--data", phantom_data, "--out", str(out), "--cache-dir", str(cache),
            "--max-concurrent", "1"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "mammoflow.cli", *args, "--num-cpus", "2"], stdout=log,
                              stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        # Kill once the first trial has ended and the second has checkpointed an epoch (one trial at a time, so
        # no other trial is half-way through writing a checkpoint at that moment).
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and driver.poll() is None:
            if (folders["none"] / TRIAL_STATUS_FILE).exists() and _epochs_done(folders["balanced"]) >= 1:
                break
            time.sleep(0.1)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the sweep did not get far enough in time"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        _kill_session(driver.pid)

    assert not (out / "summary.json").exists()
    first = folders["none"]
    before = {rel: (first / rel).read_bytes() for rel in ("history.json", "run.json", "model.keras",
                                                         "checkpoints/state.json", TRIAL_STATUS_FILE)}
    first_mtimes = sorted((p.name, p.stat().st_mtime_ns) for p in first.rglob("*") if p.is_file())
    k = _epochs_done(folders["balanced"])
    interrupted = json.loads((folders["balanced"] / "checkpoints" / "state.json").read_text())["history"][:k]
    assert 1 <= k < KILL_EPOCHS

    result = CliRunner().invoke(cli, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["trials"], summary["finished"], summary["failed"]) == (3, 3, 0)
    assert summary["trial_epochs"] == 3 * KILL_EPOCHS  # counted from the run folders: nothing twice, nothing missing
    for folder in folders.values():
        history = json.loads((folder / "history.json").read_text())
        assert [r["epoch"] for r in history] == list(range(1, KILL_EPOCHS + 1))
        assert json.loads((folder / "run.json").read_text())["status"] == "finished"
        assert json.loads((folder / TRIAL_STATUS_FILE).read_text())["status"] == "finished"
    # the trial that had ended before the kill was not touched
    assert {rel: (first / rel).read_bytes() for rel in before} == before
    assert sorted((p.name, p.stat().st_mtime_ns) for p in first.rglob("*") if p.is_file()) == first_mtimes
    # the interrupted trial continued after its last checkpointed epoch: its first k epochs are the ones trained
    # before the kill, and the restarted trial process trained epochs k+1.. only. Ray counts a trial process's
    # reports in training_iteration (from 1 again after a restart), so epoch - training_iteration is k there.
    history = json.loads((folders["balanced"] / "history.json").read_text())
    assert history[:k] == interrupted
    reported = _reported(out / "ray" / "kill_test")
    rows = reported[_name("balanced")]
    epochs = [e for e, _ in rows]
    assert epochs == sorted(set(epochs)) and set(range(k + 1, KILL_EPOCHS + 1)) <= set(epochs)  # none twice
    assert {e - i for e, i in rows if e > k} == {k}
    assert reported[_name(BAD[0])] == [(e, e) for e in range(1, KILL_EPOCHS + 1)]  # had not started: all of it


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_an_ended_trials_record_is_written_once_and_never_rewritten(where, request, tmp_path):
    """The cause of the old flaky kill-and-resume test: a resumed driver saw the trial that had ended before the
    kill end again (the trainable re-reports its recorded result) and rewrote its sweep_trial.json (same bytes, new
    mtime). The record is create-only: the second end leaves the first record, bytes and version, as it was."""
    from types import SimpleNamespace

    from mammoflow.sweep.runner import sweep_callback

    root = request.getfixturevalue("gcs_bucket_elsewhere") if where == "gcs" else str(tmp_path)
    trials = f"{root}/sweep/trials"
    monitor = sweep_callback(load_spec(_spec("record_once", ["none"])), trials)
    result = {"trial_name": _name("none"), "epoch": 2, "val_loss": 0.5, "run_finished": 1}
    uri = f"{trials}/{_name('none')}/{TRIAL_STATUS_FILE}"

    monitor.on_trial_complete(0, [], SimpleNamespace(trial_id="first", last_result=result))
    first = (storage.get_bytes(uri), storage.stat(uri).version)
    assert json.loads(first[0])["status"] == "finished" and json.loads(first[0])["trial_id"] == "first"
    time.sleep(0.05)  # a rewrite would get another mtime (local) or generation (GCS)
    monitor.on_trial_complete(0, [], SimpleNamespace(trial_id="restored", last_result=result))
    assert (storage.get_bytes(uri), storage.stat(uri).version) == first
    if where == "local":
        assert not [p for p in Path(uri).parent.iterdir() if p.name != TRIAL_STATUS_FILE]  # no temporary left


def _reported(ray_dir: Path) -> dict[str, list[tuple[int, int]]]:
    """(epoch, training_iteration) of every result Ray Tune received, per trial, from its trial folders."""
    out: dict[str, list[tuple[int, int]]] = {}
    for path in ray_dir.glob("*/result.json"):
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                out.setdefault(row["trial_name"], []).append((int(row["epoch"]), int(row["training_iteration"])))
    return {name: sorted(rows) for name, rows in out.items()}
