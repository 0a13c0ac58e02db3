"""Retraining metrics for Prometheus, pushed to a Pushgateway (a retrain is a batch job: nothing to scrape after it).

Every push sends the *complete* set of the retraining's metrics (``push_to_gateway`` replaces the group), built
from the state a retraining keeps, so a Pushgateway restart or a "nothing new" run never leaves a partial
picture. Counters (names ending in ``_total``) are cumulative over the life of the retraining work folder.
``k8s/base/alerts.yaml`` alerts on these names and ``k8s/grafana/mammoflow-dashboard.json`` plots them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from mammoflow.pushgateway import MetricValue

log = logging.getLogger(__name__)

JOB = "mammoflow_retrain"

#: Every metric a retraining pushes, with its help text (the alert rules and the dashboard use these names).
METRICS: dict[str, str] = {
    "mammoflow_retrain_last_run_timestamp_seconds": "When the last retrain run ended (any outcome), Unix time.",
    "mammoflow_retrain_last_success_timestamp_seconds":
        "When the last retrain ended with a verdict (a challenger trained and judged), Unix time.",
    "mammoflow_retrain_first_run_timestamp_seconds": "When this retraining ran for the first time, Unix time.",
    "mammoflow_retrain_last_duration_seconds": "Wall time of the last retrain run.",
    "mammoflow_retrain_last_run_nothing_new": "1 when the last run found no new data (and stopped early).",
    "mammoflow_retrain_last_run_failed": "1 when the last run failed with an error.",
    "mammoflow_retrain_last_verdict_blessed": "1 when the last judged challenger was blessed, 0 when refused.",
    "mammoflow_retrain_last_verdict_forced": "1 when the last blessing was a forced (audited) override.",
    "mammoflow_retrain_champion_version": "Number of the champion version in the registry (v0007 -> 7).",
    "mammoflow_retrain_champion_metric": "The champion's metric on the evaluation split (label level, metric).",
    "mammoflow_retrain_challenger_metric": "The last challenger's metric on the evaluation split.",
    "mammoflow_retrain_last_ingest_records": "Records added or changed by the last ingest.",
    "mammoflow_retrain_last_ingest_quarantined": "Inputs newly quarantined by the last ingest (and its preprocessing).",
    "mammoflow_retrain_table_records": "Records in the retraining's records table after the last ingest.",
    "mammoflow_retrain_runs_total": "Retrain runs, by outcome (label status).",
    "mammoflow_retrain_nothing_new_runs_total": "Runs that found no new data.",
    "mammoflow_retrain_records_ingested_total": "Records added or changed, over all ingests.",
    "mammoflow_retrain_records_quarantined_total": "Inputs quarantined, over all ingests.",
}


def push_metrics(gateway_url: str, job: str, values: Mapping[str, MetricValue], *,
                 grouping_key: Mapping[str, str] | None = None, timeout: float = 10.0) -> None:
    """Push the retraining's complete metric set as one group, replacing the group's previous metrics
    (:func:`mammoflow.pushgateway.push_metrics` with this module's help texts)."""
    from mammoflow import pushgateway

    pushgateway.push_metrics(gateway_url, job, values, docs=METRICS, grouping_key=grouping_key, timeout=timeout)
    log.info("pushed %d retraining metrics to %s (job %s, %s)", len(values), gateway_url, job, dict(grouping_key or {}))


def retrain_values(state_metrics: Mapping[str, Any]) -> dict[str, MetricValue]:
    """The full metric set from the retrain state's ``metrics`` (see :func:`mammoflow.retrain.state.update_metrics`)."""
    m = dict(state_metrics)
    out: dict[str, MetricValue] = {}
    for name in METRICS:
        if name in ("mammoflow_retrain_champion_metric", "mammoflow_retrain_challenger_metric",
                    "mammoflow_retrain_runs_total"):
            continue
        if m.get(name) is not None:
            out[name] = float(m[name])
    for name, key in (("mammoflow_retrain_champion_metric", "champion_metrics"),
                      ("mammoflow_retrain_challenger_metric", "challenger_metrics")):
        series = []
        for full, value in sorted((m.get(key) or {}).items()):
            if value is None:
                continue
            level, _, metric = full.rpartition(".")
            series.append(({"level": level or "", "metric": metric}, float(value)))
        if series:
            out[name] = series
    runs = m.get("runs_by_status") or {}
    if runs:
        out["mammoflow_retrain_runs_total"] = [({"status": s}, float(n)) for s, n in sorted(runs.items())]
    return out
