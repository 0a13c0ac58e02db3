"""Scheduled retraining: incremental ingest, blessing, registry, metrics, and the loop that ties them together.

The library behind ``mammoflow retrain`` (one machine) and the KFP retraining pipeline (one step per pod):

- :mod:`~mammoflow.retrain.ingest`: :func:`incremental_ingest` (only new files; splits extended, never moved)
- :mod:`~mammoflow.retrain.blessing`: :func:`bless` -> :class:`Verdict` with a readable reason;
  :func:`paired_bootstrap_delta`
- :mod:`~mammoflow.retrain.push`: :func:`push_metrics` to a Prometheus Pushgateway
- :mod:`~mammoflow.retrain.stages`: the steps of one run, written once (scan, ingest, preprocess, build, train,
  evaluate, bless, register, promote, finalize), over a :class:`~mammoflow.retrain.run.RetrainRun`
- :mod:`~mammoflow.retrain.run`: where a run keeps things (:class:`~mammoflow.retrain.run.Layout`), its steps'
  records and its frozen config; :mod:`~mammoflow.retrain.state`: ``state.json``, results, metric bookkeeping
- :mod:`~mammoflow.retrain.loop`: :func:`retrain_once` (the steps in order, in one process), :func:`retrain_forever`
- :mod:`~mammoflow.retrain.config`: :class:`RetrainConfig` (YAML)

The model registry itself is :mod:`mammoflow.registry`.
"""

from mammoflow.retrain.blessing import (
           BlessingPolicy,
           MetricRule,
           PairedRows,
           Verdict,
           bless,
           paired_bootstrap_delta,
)
from mammoflow.retrain.config import RetrainConfig, load_retrain_config
from mammoflow.retrain.ingest import IngestDelta, incremental_ingest, scan_changes
from mammoflow.retrain.loop import RetrainResult, retrain_forever, retrain_once
from mammoflow.retrain.push import push_metrics

__all__ = ["BlessingPolicy", "IngestDelta", "MetricRule", "PairedRows", "RetrainConfig", "RetrainResult", "Verdict",
           "bless", "incremental_ingest", "load_retrain_config", "paired_bootstrap_delta", "push_metrics",
           "retrain_forever", "retrain_once", "scan_changes"]
