"""Watching a run: a Prometheus metrics endpoint and a terminal progress line, fed by one Keras callback."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import keras

log = logging.getLogger(__name__)


class RunMetrics:
    """Prometheus gauges of one training run, on their own registry (so several runs in one process never clash).

    ``port`` None: the gauges exist but nothing is served (the default). Exposed names, one prefix:
    ``mammoflow_train_epoch``, ``mammoflow_train_loss``, ``mammoflow_train_accuracy``, ``mammoflow_train_val_loss``,
    ``mammoflow_train_val_accuracy``, ``mammoflow_train_patches_per_second``, ``mammoflow_train_eta_seconds``,
    all labelled with ``run`` (the run folder's name).
    """

    def __init__(self, run: str, port: int | None = None, addr: str = "0.0.0.0"):
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self.run = run
        names = {
            "epoch": "Current epoch (1-based) of the training run",
            "loss": "Training loss of the last finished epoch",
            "accuracy": "Training accuracy of the last finished epoch",
            "val_loss": "Validation loss of the last finished epoch",
            "val_accuracy": "Validation accuracy of the last finished epoch",
            "patches_per_second": "Training throughput of the last epoch, patches (examples) per second",
            "eta_seconds": "Estimated seconds until the run ends",
        }
        self.gauges = {key: Gauge(f"mammoflow_train_{key}", doc, ["run"], registry=self.registry)
                       for key, doc in names.items()}
        self.server = None
        if port is not None:
            self.server, _thread = start_http_server(port, addr=addr, registry=self.registry)
            log.info("metrics served on http://%s:%d/metrics", addr, self.server.server_port)

    @property
    def port(self) -> int | None:
        return None if self.server is None else self.server.server_port

    def set(self, **values: float) -> None:
        for key, value in values.items():
            if key in self.gauges and value is not None and math.isfinite(float(value)):
                self.gauges[key].labels(run=self.run).set(float(value))

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class MonitorCallback(keras.callbacks.Callback):
    """Feeds RunMetrics and logs one line per epoch with throughput and ETA."""

    def __init__(self, metrics: RunMetrics, examples_per_epoch: int, first_epoch: int, total_epochs: int):
        super().__init__()
        self.metrics = metrics
        self.examples_per_epoch = examples_per_epoch
        self.first_epoch = first_epoch
        self.total_epochs = total_epochs
        self._t0 = 0.0
        self._durations: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._t0 = time.perf_counter()
        self.metrics.set(epoch=epoch + 1)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        took = time.perf_counter() - self._t0
        self._durations.append(took)
        rate = self.examples_per_epoch / took if took > 0 else float("nan")
        eta = (self.total_epochs - epoch - 1) * (sum(self._durations) / len(self._durations))
        self.metrics.set(loss=logs.get("loss"), accuracy=logs.get("accuracy"), val_loss=logs.get("val_loss"),
                         val_accuracy=logs.get("val_accuracy"), patches_per_second=rate, eta_seconds=eta)
        log.info("epoch %d/%d: loss %.4f acc %.4f val_loss %.4f val_acc %.4f, %.0f patches/s, ETA %.0f s",
                 epoch + 1, self.total_epochs, logs.get("loss", float("nan")), logs.get("accuracy", float("nan")),
                 logs.get("val_loss", float("nan")), logs.get("val_accuracy", float("nan")), rate, eta)
