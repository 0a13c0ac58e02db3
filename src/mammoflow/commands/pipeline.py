"""``mammoflow pipeline``: compile, run locally, submit and schedule the Kubeflow pipelines."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import click
import yaml

from mammoflow.pipelines import PIPELINES

#: Metrics a local run prints (when the pipeline logs them), in this order.
HEADLINE = ("roi_accuracy", "roi_roc_auc", "image_accuracy", "image_roc_auc", "patch_accuracy", "trials",
            "failed", "best_val_loss", "new_records", "blessed", "nothing_new")

_EPILOG = """\b
Examples:
  mammoflow pipeline run --local --root runs/demo
  mammoflow pipeline run --local --root runs/yu --param source=mias-rois \\
      --param data_root=../shared/data/mias_rois/MIAS_ROIs.zip
  mammoflow pipeline compile --out training.yaml --image REGISTRY/mammoflow:0.1.0 \\
      --gpu-image REGISTRY/mammoflow-gpu:0.1.0
  mammoflow pipeline submit --host http://localhost:8080 --param storage_root=gs://BUCKET/mammoflow \\
      --param source=cbis-ddsm --param data_root=gs://BUCKET/raw/CBIS-DDSM --param preset=jaamour2023
  mammoflow pipeline schedule --host http://localhost:8080 --cron '0 0 2 * * *' \\
      --param storage_root=gs://BUCKET/mammoflow

\b
A site's own DICOM folder with a labels CSV (columns path,label; labels is relative to data_root, a full
path or a gs:// URI; without it, data_root/labels.csv is read when it exists). A site folder has no official
test split, which the jaamour2023 dataset preset keeps: the site dataset preset plans one (60/20/20 by
patient, stratified by label):
  mammoflow pipeline run --local --root runs/site --param source=dicom-dir --param data_root=/site/dicoms \\
      --param labels=labels.csv --param preset=jaamour2023 --param dataset_config=site \\
      --param train_config=jaamour2023

\b
Scheduled retraining; the retrain config names the watched source, labels CSV included, e.g.
source: {name: dicom-dir, root: gs://BUCKET/site/dicoms, labels: gs://BUCKET/site/labels.csv}
  mammoflow pipeline run --local --pipeline retrain --root runs/retrain --param config=retrain.yaml
  mammoflow pipeline schedule --host http://localhost:8080 --pipeline retrain --cron '0 0 2 * * *' \\
      --param config=gs://BUCKET/retrain.yaml --param storage_root=gs://BUCKET/mammoflow \\
      --param push_gateway=http://prometheus-pushgateway.monitoring:9091"""


def _params(items: tuple[str, ...]) -> dict[str, object]:
    """``KEY=VALUE`` pairs; values are read as YAML (numbers, booleans, ``{a: 1}`` mappings)."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--param")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"{item!r}: the value is not valid YAML ({exc})", param_hint="--param") from None
        if out[key] is None:
            out[key] = ""
    return out


def _selectors(items: tuple[str, ...]) -> dict[str, str] | None:
    if not items:
        return None
    if items == ("none",):
        return {}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE (or 'none')", param_hint="--gpu-node-selector")
        out[key] = value
    return out


_NAME = click.option("--pipeline", "name", default="training", show_default=True, type=click.Choice(list(PIPELINES)),
                     help="Which pipeline.")
_PARAM = click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
                      help="Pipeline parameter, value read as YAML (repeatable).")
_COMPILE = [
    click.option("--image", default=None, help="CPU image of the steps [default: $MAMMOFLOW_IMAGE or "
                 "mammoflow/mammoflow:<version>]."),
    click.option("--gpu-image", default=None, help="Image of train, sweep and explain [default: "
                 "$MAMMOFLOW_GPU_IMAGE or mammoflow/mammoflow-gpu:<version>]."),
    click.option("--no-gpu", "no_gpu", is_flag=True, help="Ask for no GPU anywhere (CPU-only clusters, e.g. kind)."),
    click.option("--gpu-node-selector", "gpu_node_selector", multiple=True, metavar="KEY=VALUE",
                 help="Node label of the GPU pool (repeatable; 'none' for no selector) "
                      "[default: cloud.google.com/gke-accelerator=nvidia-l4]."),
    click.option("--spot", is_flag=True, help="Run train and sweep on spot nodes (they resume when preempted)."),
    click.option("--gcs-secret", default=None, help="Secret with a service-account key.json to mount in every step "
                 "(only without Workload Identity)."),
    click.option("--storage-root", default=None, help="Default of the storage_root parameter, e.g. "
                 "gs://BUCKET/mammoflow [default: $MAMMOFLOW_STORAGE_ROOT]."),
    click.option("--no-cache", "no_cache", is_flag=True, help="Compile with KFP caching off for every step."),
    click.option("--sweep-on-ray", "sweep_on_ray", is_flag=True, help="The sweep's trials run on a Ray cluster "
                 "(pass --param ray_address=...): the sweep step is a small CPU driver and holds no GPU."),
]
_AUTH = [
    click.option("--host", required=True, help="KFP API endpoint, e.g. https://HOST/pipeline or "
                 "http://localhost:8080 (port-forward)."),
    click.option("--token", envvar="KFP_TOKEN", default=None, help="Bearer token (or env KFP_TOKEN)."),
    click.option("--in-cluster", is_flag=True, help="Authenticate with this pod's service-account token."),
    click.option("--namespace", default=None, help="Profile namespace of a multi-user Kubeflow (e.g. mammoflow)."),
    click.option("--experiment", default="mammoflow", show_default=True, help="KFP experiment name."),
    click.option("--service-account", default="mammoflow-pipeline-runner", show_default=True,
                 help="Kubernetes service account of the run's pods (Workload Identity gives it GCS access); "
                      "'' for the deployment's default."),
]


def _apply(options: list) -> Any:
    def decorate(f: Any) -> Any:
        for opt in reversed(options):
            f = opt(f)
        return f
    return decorate


def _options(image: str | None, gpu_image: str | None, no_gpu: bool, gpu_node_selector: tuple[str, ...],
             spot: bool, gcs_secret: str | None, storage_root: str | None, no_cache: bool,
             sweep_on_ray: bool = False) -> Any:
    from mammoflow.pipelines.options import PipelineOptions

    return PipelineOptions.from_env(image=image, gpu_image=gpu_image, gpu=False if no_gpu else None,
                                    gpu_node_selector=_selectors(gpu_node_selector), spot=spot or None,
                                    gcs_secret=gcs_secret, storage_root=storage_root,
                                    caching=False if no_cache else None, sweep_on_ray=sweep_on_ray or None)


def _compile(name: str, out: Path, options: Any, *, for_cluster: bool = False) -> tuple[Path, Any]:
    from kfp import compiler

    from mammoflow.pipelines import build_pipeline

    if for_cluster:
        unpinned = sorted({image for image in options.images() if "@sha256:" not in image})
        if unpinned:  # a tag can move between the submit and the pods' start, or between retries
            logging.getLogger(__name__).warning(
                "image(s) %s are not pinned by digest: each pod runs whatever the tag points to when it starts. "
                "Fix: `make images` records the digests in images/digests.env; load it (set -a; . "
                "images/digests.env; set +a) before submitting", ", ".join(unpinned))
    pipeline = build_pipeline(name, options)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(out))
    return out, pipeline


def _run_params(pipeline: Any, items: tuple[str, ...]) -> dict[str, Any]:
    """--param values checked against the pipeline; a run without a storage root is refused before submission."""
    from mammoflow.pipelines import check_params

    params = check_params(pipeline, _params(items))
    defaults = {name: spec.default for name, spec in (pipeline.component_spec.inputs or {}).items()}
    if "config" in defaults and not params.get("config", defaults["config"]):
        # Every run of such a pipeline (the retrain pipeline) would fail on its first step, exit handler included,
        # so nothing would even be pushed for the alerts to see.
        raise click.UsageError(f"the {pipeline.name} pipeline needs its config: pass --param "
                               "config=gs://BUCKET/retrain.yaml (a retrain config; see `mammoflow retrain --help`)")
    root = params.get("storage_root", defaults.get("storage_root"))
    if not root:
        raise click.UsageError("no storage root: pass --param storage_root=gs://BUCKET/mammoflow (or compile "
                               "with --storage-root / $MAMMOFLOW_STORAGE_ROOT)")
    if not str(root).startswith("gs://"):  # each step is its own pod: a local folder is not shared between them
        raise click.UsageError(f"storage_root {root!r} is not a gs:// prefix: on a cluster every step runs in its "
                               "own pod, so shards written by one step would be invisible to the next. Fix: pass "
                               "--param storage_root=gs://BUCKET/mammoflow (local folders: `pipeline run --local`)")
    return params


@click.group("pipeline", epilog=_EPILOG)
def command() -> None:
    """Kubeflow pipelines: compile to IR YAML, run locally with kfp.local, submit or schedule on a cluster.

    training: data (built-in phantoms or a real dataset, with its labels CSV for dicom-dir) -> ingest ->
    preprocess -> build-dataset -> train -> evaluate -> explain -> report. sweep: the same data steps -> Ray Tune
    sweep -> report. retrain: scan the watched source of a retrain config -> ingest what is new -> preprocess ->
    build-dataset -> train a challenger -> evaluate it and the champion -> bless -> register -> promote.
    """


@command.command("compile")
@_NAME
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output .yaml file.")
@_apply(_COMPILE)
def compile_cmd(name: str, out: Path, **compile_opts: Any) -> None:
    """Compile a pipeline to KFP IR YAML (upload it in the KFP UI or with `submit`/`schedule`)."""
    path, _ = _compile(name, out, _options(**compile_opts))
    click.echo(str(path))


@command.command("run")
@_NAME
@click.option("--local", "local", is_flag=True, required=True, help="Run on this machine with kfp.local.")
@click.option("--root", default="runs/local", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the object store, KFP's artifacts, caches and the report.")
@click.option("--verbose", "-v", is_flag=True, help="Stream every step's output (default: ROOT/pipeline.log).")
@_PARAM
def run_cmd(name: str, local: bool, root: Path, verbose: bool, params: tuple[str, ...]) -> None:
    """Run a whole pipeline on this machine: kfp.local (subprocesses of this Python, no containers), a local
    object store under --root, a local Ray for sweeps. Prints where the report is."""
    from mammoflow.pipelines.local import run_local

    summary = run_local(name, root, _params(params), verbose=verbose)
    metrics = summary["metrics"]
    click.echo(f"pipeline {name} succeeded in {summary['seconds']:.0f} s")
    for key in HEADLINE:
        if key in metrics:
            low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
            ci = f" (95% CI {low:.3f}-{high:.3f})" if low is not None and high is not None else ""
            if ci and metrics.get(f"{key}_ci_degenerate"):
                ci = f" (95% CI {low:.3f}-{high:.3f}, flagged: not a reliable 95% CI; the report says why)"
            click.echo(f"{key}: {metrics[key]:.4g}{ci}")
    click.echo(f"report: {summary['report']}")


@command.command("submit")
@_NAME
@_apply(_AUTH)
@click.option("--run-name", default=None, help="Run name shown in the KFP UI.")
@_PARAM
@_apply(_COMPILE)
def submit_cmd(name: str, host: str, token: str | None, in_cluster: bool, namespace: str | None, experiment: str,
               service_account: str, run_name: str | None, params: tuple[str, ...], **compile_opts: Any) -> None:
    """Compile a pipeline and start one run on a KFP API server."""
    from mammoflow.kfp_client import submit

    with tempfile.TemporaryDirectory() as tmp:
        package, pipeline = _compile(name, Path(tmp) / f"{name}.yaml", _options(**compile_opts), for_cluster=True)
        run_id = submit(package, host, experiment=experiment, params=_run_params(pipeline, params),
                        run_name=run_name, token=token, in_cluster=in_cluster, namespace=namespace,
                        service_account=service_account)
    click.echo(f"run {run_id}")


@command.command("schedule")
@_NAME
@_apply(_AUTH)
@click.option("--cron", required=True, help="KFP cron, 6 fields with seconds first, e.g. '0 0 2 * * *' (02:00 "
              "daily).")
@click.option("--job-name", default=None, help="Recurring run name [default: mammoflow-<pipeline>].")
@click.option("--replace", is_flag=True, help="Disable and delete the experiment's recurring run(s) with the same "
              "name before creating this one (without it, an existing one is an error).")
@_PARAM
@_apply(_COMPILE)
def schedule_cmd(name: str, host: str, token: str | None, in_cluster: bool, namespace: str | None,
                 experiment: str, service_account: str, cron: str, job_name: str | None, replace: bool,
                 params: tuple[str, ...], **compile_opts: Any) -> None:
    """Upload a pipeline version and create a recurring run of it (no catch-up of missed runs, at most one run
    at a time). A recurring run of the same name in the experiment is refused; --replace swaps it for the new one."""
    from mammoflow.kfp_client import schedule, validate_cron

    validate_cron(cron)  # before compiling or connecting: a typo fails here, not at 2 a.m.
    with tempfile.TemporaryDirectory() as tmp:
        package, pipeline = _compile(name, Path(tmp) / f"{name}.yaml", _options(**compile_opts), for_cluster=True)
        rr = schedule(package, host, cron, job_name=job_name or f"mammoflow-{name}",
                      pipeline_name=f"mammoflow-{name}", experiment=experiment,
                      params=_run_params(pipeline, params), token=token, in_cluster=in_cluster, namespace=namespace,
                      service_account=service_account, replace=replace)
    click.echo(f"recurring run {rr}")
