"""Talking to a Kubeflow Pipelines API server: submit a run, create a recurring run. Validation happens here,
before any request, so a typo in a cron expression fails on the laptop, not at 2 a.m. on the cluster."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from mammoflow.errors import ConfigError

log = logging.getLogger(__name__)

_FIELDS = (("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 6))
_NAMES = {4: {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())},
          5: {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}}


def validate_cron(expr: str) -> str:
    """Check a KFP cron expression: 6 fields, seconds first (``0 0 2 * * *`` = every day at 02:00).

    Standard 5-field crontab lines are refused with the fix spelled out, since KFP would read their first field as
    seconds and run at the wrong times.
    """
    fields = expr.split()
    if len(fields) == 5:
        raise ConfigError(f"cron {expr!r} has 5 fields; KFP cron has 6, seconds first. "
                          f"Fix: use '0 {expr}' (runs at second 0)")
    if len(fields) != 6:
        raise ConfigError(f"cron {expr!r} has {len(fields)} fields; KFP needs 6: second minute hour day-of-month "
                          "month day-of-week, e.g. '0 0 2 * * *'")
    for i, (field, (name, lo, hi)) in enumerate(zip(fields, _FIELDS, strict=True)):
        for part in field.split(","):
            if not _part_ok(part, lo, hi, _NAMES.get(i, {})):
                raise ConfigError(f"cron {expr!r}: {name} field {field!r} is not valid (range {lo}-{hi}; "
                                  "use *, N, N-M, */K, N-M/K or lists with commas)")
    return expr


def _part_ok(part: str, lo: int, hi: int, names: dict[str, int]) -> bool:
    if part == "?":
        return True
    m = re.fullmatch(r"(\*|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:/(\d+))?", part)
    if not m:
        return False
    base, step = m.group(1), m.group(2)
    if step is not None and int(step) < 1:
        return False
    if base == "*":
        return True
    bounds = base.split("-")
    values = []
    for b in bounds:
        v = names.get(b.upper()) if not b.isdigit() else int(b)
        if v is None or not lo <= v <= hi:
            return False
        values.append(v)
    return len(values) == 1 or values[0] <= values[1]


def make_client(host: str, token: str | None = None, in_cluster: bool = False, namespace: str = "kubeflow"):
    """A kfp.Client: ``token`` for a bearer token (e.g. from `gcloud auth print-access-token` or a service account),
    ``in_cluster`` to use the pod's service-account token (KFP's ServiceAccountTokenVolumeCredentials)."""
    import kfp

    credentials = None
    if in_cluster:
        from kfp.client import ServiceAccountTokenVolumeCredentials

        credentials = ServiceAccountTokenVolumeCredentials(path=None)
    return kfp.Client(host=host, existing_token=token, credentials=credentials, namespace=namespace)


def submit(package: Path, host: str, *, experiment: str = "mammoflow", params: dict[str, Any] | None = None,
           run_name: str | None = None, token: str | None = None, in_cluster: bool = False,
           service_account: str | None = None) -> str:
    """Upload a compiled pipeline and start one run; returns the run id."""
    client = make_client(host, token, in_cluster)
    result = client.create_run_from_pipeline_package(str(package), arguments=params or {}, run_name=run_name,
                                                     experiment_name=experiment, service_account=service_account)
    log.info("submitted run %s to %s (experiment %s)", result.run_id, host, experiment)
    return result.run_id


def schedule(package: Path, host: str, cron: str, *, job_name: str, experiment: str = "mammoflow",
             params: dict[str, Any] | None = None, token: str | None = None, in_cluster: bool = False,
             service_account: str | None = None) -> str:
    """Create a recurring run: no catch-up of missed runs, at most one run at a time. Returns its id."""
    validate_cron(cron)
    client = make_client(host, token, in_cluster)
    exp = client.create_experiment(name=experiment)
    rr = client.create_recurring_run(experiment_id=exp.experiment_id, job_name=job_name, cron_expression=cron,
                                     max_concurrency=1, no_catchup=True, params=params or {},
                                     pipeline_package_path=str(package), service_account=service_account)
    log.info("recurring run %s created on %s with cron %r", rr.recurring_run_id, host, cron)
    return rr.recurring_run_id
