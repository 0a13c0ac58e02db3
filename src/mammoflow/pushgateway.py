"""Pushing metrics of batch jobs to a Prometheus Pushgateway (a finished job has nothing left to scrape), and the
status every pipeline run pushes when it ends.

A pipeline's exit handler calls :func:`push_pipeline_status` whatever happened in the run, so that
``k8s/base/alerts-runs.yaml`` sees failed runs and ``k8s/base/alerts-absent.yaml`` sees silence. The group is
job ``mammoflow_pipeline`` with the grouping key ``pipeline=<KFP pipeline name>``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

LabelledValues = Sequence[tuple[Mapping[str, str], float]]
MetricValue = float | LabelledValues

PIPELINE_JOB = "mammoflow_pipeline"
#: What every pipeline run pushes when it ends (the alert rules and the training dashboard use these names).
PIPELINE_METRICS: dict[str, str] = {
    "mammoflow_pipeline_last_run_timestamp_seconds": "When the pipeline's last run ended (any outcome), Unix time.",
    "mammoflow_pipeline_last_success_timestamp_seconds": "When the pipeline's last successful run ended, Unix time.",
    "mammoflow_pipeline_last_run_failed": "1 when the pipeline's last run failed, 0 when it succeeded.",
}


def push_metrics(gateway_url: str, job: str, values: Mapping[str, MetricValue], *,
                 docs: Mapping[str, str] | None = None, grouping_key: Mapping[str, str] | None = None,
                 replace: bool = True, timeout: float = 10.0) -> None:
    """Push ``values`` to the Pushgateway at ``gateway_url`` as one group (job + ``grouping_key``).

    ``values`` maps a metric name to a number, or to ``[(labels, number), ...]`` for labelled series. Names ending
    in ``_total`` are counters (cumulative; pass the running total), everything else a gauge; ``docs`` gives their
    help texts. ``replace``: the group's previous metrics are all replaced (HTTP PUT), so pass the complete set;
    False replaces only the metrics named here and keeps the group's others (HTTP POST).
    """
    from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway, pushadd_to_gateway

    docs = docs or {}
    registry = CollectorRegistry()
    for name, value in sorted(values.items()):
        series: LabelledValues = [({}, float(value))] if isinstance(value, (int, float)) else list(value)
        label_names = sorted({k for labels, _ in series for k in labels})
        doc = docs.get(name, name.replace("_", " "))
        if name.endswith("_total"):
            metric: Any = Counter(name.removesuffix("_total"), doc, label_names, registry=registry)
        else:
            metric = Gauge(name, doc, label_names, registry=registry)
        for labels, number in series:
            child = metric.labels(**{k: str(labels.get(k, "")) for k in label_names}) if label_names else metric
            if name.endswith("_total"):
                child.inc(max(0.0, float(number)))
            else:
                child.set(float(number))
    send = push_to_gateway if replace else pushadd_to_gateway
    send(gateway_url, job=job, registry=registry, grouping_key=dict(grouping_key or {}), timeout=timeout)


def pipeline_status_values(succeeded: bool, ended_at: float) -> dict[str, float]:
    """The metrics of one ended run. A failed run leaves out the last-success time, so the previous one stays."""
    values = {"mammoflow_pipeline_last_run_timestamp_seconds": ended_at,
              "mammoflow_pipeline_last_run_failed": 0.0 if succeeded else 1.0}
    if succeeded:
        values["mammoflow_pipeline_last_success_timestamp_seconds"] = ended_at
    return values


def push_pipeline_status(gateway_url: str, pipeline: str, succeeded: bool, *, ended_at: float | None = None,
                         timeout: float = 10.0) -> dict[str, float]:
    """Push how ``pipeline``'s run ended (group ``mammoflow_pipeline``, ``pipeline=<name>``); returns the values.

    Only this run's metrics are replaced in the group (HTTP POST): the last success of an earlier run survives a
    failed one, so "no success for N days" stays measurable.
    """
    values = pipeline_status_values(succeeded, time.time() if ended_at is None else ended_at)
    push_metrics(gateway_url, PIPELINE_JOB, values, docs=PIPELINE_METRICS, grouping_key={"pipeline": pipeline},
                 replace=False, timeout=timeout)
    log.info("pushed the status of pipeline %s (%s) to %s", pipeline, "succeeded" if succeeded else "failed",
             gateway_url)
    return values
