"""The training metrics endpoint, scraped by a real Prometheus server started on loopback."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from mammoflow.training.monitor import RunMetrics

PROMETHEUS = shutil.which("prometheus")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def test_endpoint_serves_the_gauges():
    metrics = RunMetrics("unit", port=0, addr="127.0.0.1")
    try:
        metrics.set(epoch=3, loss=0.25, patches_per_second=90.0, eta_seconds=12, val_loss=float("nan"))
        text = _get(f"http://127.0.0.1:{metrics.port}/metrics")
    finally:
        metrics.close()
    assert 'mammoflow_train_epoch{run="unit"} 3.0' in text
    assert 'mammoflow_train_loss{run="unit"} 0.25' in text
    assert 'mammoflow_train_patches_per_second{run="unit"} 90.0' in text
    assert 'mammoflow_train_val_loss{run="unit"}' not in text  # NaN is not published


def test_every_gauge_has_the_train_prefix():
    metrics = RunMetrics("unit", port=0, addr="127.0.0.1")
    try:
        metrics.set(epoch=1, loss=0.5, accuracy=0.7, val_loss=0.6, val_accuracy=0.65, patches_per_second=10,
                    eta_seconds=5)
        text = _get(f"http://127.0.0.1:{metrics.port}/metrics")
    finally:
        metrics.close()
    samples = [line.split("{")[0] for line in text.splitlines() if line.startswith("mammoflow_")]
    assert len(samples) == 7 and all(name.startswith("mammoflow_train_") for name in samples), samples
    assert 'mammoflow_train_val_loss{run="unit"} 0.6' in text


def test_run_label_is_the_run_folder_name():
    from mammoflow.training.loop import run_label

    assert run_label("gs://bucket/runs/r7") == "r7"
    assert run_label("gs://bucket/runs/r7/") == "r7"
    assert run_label("runs/local-run") == "local-run"


def test_metrics_are_served_while_the_shards_are_still_being_fetched(tmp_path):
    """A pod that is still downloading its dataset must already answer the scrape (else the target-down alert
    fires during every long fetch). The manifest here is a FIFO: reading it blocks until the test writes to it."""
    import os
    import threading

    from mammoflow.training.config import load_train_config
    from mammoflow.training.loop import train

    data = tmp_path / "data"
    data.mkdir()
    os.mkfifo(data / "manifest.json")
    port = _free_port()
    config = load_train_config("demo", {"metrics_port": port})
    errors: list[BaseException] = []

    def run() -> None:
        try:
            train(config, str(data), str(tmp_path / "run"), cache_dir=tmp_path / "cache")
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    text = None
    deadline = time.monotonic() + 60
    while text is None and time.monotonic() < deadline:
        try:
            text = _get(f"http://127.0.0.1:{port}/metrics")
        except OSError:
            time.sleep(0.2)
    # Unblock every read of the manifest (train() reads it more than once): not a manifest, so train() fails.
    while worker.is_alive() and time.monotonic() < deadline + 60:
        try:
            fd = os.open(data / "manifest.json", os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while nobody reads
        except OSError:
            time.sleep(0.05)
            continue
        os.write(fd, b"not json")
        os.close(fd)
    worker.join(timeout=60)
    assert text is not None and "mammoflow_train_epoch" in text, "no metrics endpoint while the data was fetched"
    assert not worker.is_alive() and errors, "train() should have failed on the broken manifest"
    with pytest.raises(OSError):  # and the endpoint is closed with the run
        _get(f"http://127.0.0.1:{port}/metrics")


def test_off_by_default_serves_nothing():
    metrics = RunMetrics("quiet")
    assert metrics.port is None
    metrics.set(epoch=1)
    metrics.close()


@pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus server is not installed (Debian package prometheus)")
def test_prometheus_scrapes_a_training_run(tmp_path):
    metrics = RunMetrics("scraped", port=0, addr="127.0.0.1")
    metrics.set(epoch=2, loss=0.5, eta_seconds=30)
    prom_port = _free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: mammoflow-train\n    static_configs: [{{targets: ['127.0.0.1:{metrics.port}']}}]\n")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        query = urllib.parse.quote('mammoflow_train_loss{run="scraped"}')
        value = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and value is None:
            time.sleep(1)
            try:
                result = json.loads(_get(f"http://127.0.0.1:{prom_port}/api/v1/query?query={query}"))
            except OSError:
                continue
            if result["data"]["result"]:
                value = float(result["data"]["result"][0]["value"][1])
        assert value == 0.5, "Prometheus never scraped the training metrics"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        metrics.close()
