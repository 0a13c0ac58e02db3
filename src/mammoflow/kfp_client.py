"""Talking to a Kubeflow Pipelines API server: submit a run, create a recurring run. Validation happens here,
before any request, so a typo in a cron expression fails on the laptop, not at 2 a.m. on the cluster."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mammoflow import __version__
from mammoflow.errors import ConfigError

log = logging.getLogger(__name__)

#: The Kubernetes service account of the runs' pods (k8s/base/rbac.yaml; Workload Identity maps it to GCS).
SERVICE_ACCOUNT = "mammoflow-pipeline-runner"

_FIELDS = (("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 6))
_NAMES = {4: {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())},
          5: {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}}


#: The predefined schedules KFP's scheduler (robfig/cron with descriptors) accepts besides 6-field lines.
CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# A Go duration as `@every` takes it: one or more number+unit pairs (1h30m, 24h, 90s).
_GO_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def validate_cron(expr: str) -> str:
    """Check a KFP cron expression: 6 fields, seconds first (``0 0 2 * * *`` = every day at 02:00), one of KFP's
    descriptors (``@daily``, ``@hourly``, ...) or ``@every DURATION`` (``@every 24h``, at least one second).

    Standard 5-field crontab lines are refused with the fix spelled out, since KFP would read their first field as
    seconds and run at the wrong times.
    """
    if expr.strip().startswith("@"):
        return _validate_descriptor(expr)
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


def _validate_descriptor(expr: str) -> str:
    words = expr.split()
    if len(words) == 1 and words[0].lower() in CRON_DESCRIPTORS:
        return expr
    if len(words) == 2 and words[0].lower() == "@every" and _GO_DURATION.fullmatch(words[1]):
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)",
                                                                           words[1]))
        if seconds >= 1:
            return expr
        raise ConfigError(f"cron {expr!r}: the interval is shorter than one second. Fix: e.g. '@every 24h'")
    raise ConfigError(f"cron {expr!r} is not a schedule KFP accepts. Fix: a 6-field cron ('0 0 2 * * *'), one of "
                      f"{', '.join(CRON_DESCRIPTORS)}, or '@every DURATION' (e.g. '@every 24h', '@every 1h30m')")


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


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """kfp.Client prints links to stdout; send them to stderr so that stdout holds only the command's result."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def make_client(host: str, token: str | None = None, in_cluster: bool = False, namespace: str | None = None):
    """A kfp.Client after a health check.

    ``token``: a bearer token (e.g. ``gcloud auth print-access-token`` or a service account's); ``in_cluster``: the
    pod's service-account token (KFP's ServiceAccountTokenVolumeCredentials). ``namespace``: the KFP profile
    namespace of a multi-user deployment (e.g. ``mammoflow``); None for single-user KFP.
    """
    import kfp

    if not host.startswith(("http://", "https://")):
        raise ConfigError(f"--host {host!r}: give the KFP API endpoint with its scheme, e.g. https://HOST/pipeline "
                          "or http://localhost:8080 for a port-forward")
    credentials = None
    if in_cluster:
        from kfp.client import ServiceAccountTokenVolumeCredentials

        credentials = ServiceAccountTokenVolumeCredentials(path=None)
    with _quiet_stdout(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This client only works with", category=FutureWarning)
        try:
            # Without a namespace the client itself asks healthz whether the deployment is multi-user.
            client = kfp.Client(host=host, existing_token=token, credentials=credentials,
                                namespace=namespace or "kubeflow")
            health = client.get_kfp_healthz(sleep_duration=1)
        except Exception as exc:  # urllib3 and the generated API client raise many types
            raise ConfigError(f"cannot reach the KFP API at {host} ({type(exc).__name__}: {exc}). Fix: check --host "
                              "(port-forward: kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80) and "
                              "--token") from None
    if health.multi_user and not namespace:
        raise ConfigError(f"{host} is a multi-user Kubeflow deployment. Fix: pass --namespace with your profile "
                          "namespace (e.g. mammoflow)")
    return client


def submit(package: Path, host: str, *, experiment: str = "mammoflow", params: dict[str, Any] | None = None,
           run_name: str | None = None, token: str | None = None, in_cluster: bool = False,
           namespace: str | None = None, service_account: str | None = SERVICE_ACCOUNT) -> str:
    """Start one run of a compiled pipeline (the spec travels in the run); returns the run id."""
    client = make_client(host, token, in_cluster, namespace)
    with _quiet_stdout():
        result = client.create_run_from_pipeline_package(
            str(package), arguments=params or {}, run_name=run_name, experiment_name=experiment,
            namespace=namespace, service_account=service_account or None)
    log.info("submitted run %s to %s (experiment %s)", result.run_id, host, experiment)
    return result.run_id


def package_version(package: Path) -> str:
    """A pipeline version name: code version, content hash and UTC time (unique, sortable, traceable)."""
    digest = hashlib.sha256(Path(package).read_bytes()).hexdigest()[:12]
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{__version__}-{stamp}-{digest}"


def upload(client: Any, package: Path, name: str, description: str = "") -> tuple[str, str]:
    """Upload a compiled pipeline as a new version of pipeline ``name`` (created when missing), so the KFP UI
    lists what a schedule runs. Returns (pipeline id, version id)."""
    version = package_version(package)
    with _quiet_stdout():
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            pipeline = client.upload_pipeline(str(package), pipeline_name=name, description=description or None)
            versions = client.list_pipeline_versions(pipeline.pipeline_id, page_size=1, sort_by="created_at desc")
            if not versions.pipeline_versions:
                raise ConfigError(f"pipeline {name!r} was uploaded but the server lists no version of it")
            return pipeline.pipeline_id, versions.pipeline_versions[0].pipeline_version_id
        created = client.upload_pipeline_version(str(package), version, pipeline_id=pipeline_id,
                                                 description=description or None)
    return pipeline_id, created.pipeline_version_id


def existing_recurring_runs(client: Any, experiment_id: str, job_name: str) -> list[Any]:
    """The recurring runs of an experiment whose display name is ``job_name``, enabled or not, all pages."""
    name_filter = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name",
                                              "stringValue": job_name}]})
    found: list[Any] = []
    token = ""
    while True:
        with _quiet_stdout():
            page = client.list_recurring_runs(page_token=token, page_size=100, experiment_id=experiment_id,
                                              filter=name_filter)
        # Compare names here too: the filter narrows the listing, the exact match is what decides.
        found += [rr for rr in page.recurring_runs or [] if rr.display_name == job_name]
        token = page.next_page_token or ""
        if not token:
            return found


def schedule(package: Path, host: str, cron: str, *, job_name: str, pipeline_name: str | None = None,
             experiment: str = "mammoflow", params: dict[str, Any] | None = None, token: str | None = None,
             in_cluster: bool = False, namespace: str | None = None,
             service_account: str | None = SERVICE_ACCOUNT, replace: bool = False) -> str:
    """Create a recurring run of an uploaded pipeline version: no catch-up of missed runs, at most one run at a
    time. Returns its id.

    ``max_concurrency`` only bounds each recurring run, so a second one with the same name would run the same job
    twice a night. An existing recurring run named ``job_name`` in the experiment is therefore refused
    (ConfigError), or with ``replace`` disabled and deleted before the new one is created.
    """
    validate_cron(cron)
    client = make_client(host, token, in_cluster, namespace)
    with _quiet_stdout():
        exp = client.create_experiment(name=experiment, namespace=namespace)
    # Look before uploading, so that a refused schedule leaves no stray pipeline version behind.
    old = existing_recurring_runs(client, exp.experiment_id, job_name)
    if old and not replace:
        ids = ", ".join(rr.recurring_run_id for rr in old)
        raise ConfigError(f"experiment {experiment!r} on {host} already has a recurring run named {job_name!r} "
                          f"({ids}); a second one would run the same job twice. Fix: pass --replace to disable "
                          "and delete it and create the new one, or choose another --job-name")
    pipeline_id, version_id = upload(client, package, pipeline_name or job_name,
                                     description=f"uploaded by mammoflow {__version__} for schedule {job_name}")
    with _quiet_stdout():
        for rr in old:
            # Disable first: a deletion that fails half-way must not leave the old schedule firing.
            client.disable_recurring_run(rr.recurring_run_id)
            client.delete_recurring_run(rr.recurring_run_id)
            log.info("replaced recurring run %s (%r, cron %r): disabled and deleted", rr.recurring_run_id,
                     job_name, _cron_of(rr))
        rr = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=job_name, cron_expression=cron, max_concurrency=1,
            no_catchup=True, params=params or {}, pipeline_id=pipeline_id, version_id=version_id,
            service_account=service_account or None)
    log.info("recurring run %s created on %s with cron %r (pipeline %s, version %s)", rr.recurring_run_id, host,
             cron, pipeline_id, version_id)
    return rr.recurring_run_id


def _cron_of(rr: Any) -> str | None:
    """The cron expression of a listed recurring run (None for a periodic or missing trigger)."""
    trigger = getattr(rr, "trigger", None)
    cron = getattr(trigger, "cron_schedule", None)
    return getattr(cron, "cron", None)
