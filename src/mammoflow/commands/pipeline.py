"""``mammoflow pipeline``: compile, run locally, submit and schedule the Kubeflow pipelines."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import yaml


def _params(items: tuple[str, ...]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--param")
        out[key] = yaml.safe_load(value)
    return out


_NAME = click.option("--pipeline", "name", default="training", show_default=True,
                     type=click.Choice(["training", "sweep", "retrain"]), help="Which pipeline.")
_PARAM = click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Pipeline parameter (repeatable).")
_AUTH = [
    click.option("--host", required=True, help="KFP API endpoint, e.g. https://HOST/pipeline."),
    click.option("--token", envvar="KFP_TOKEN", default=None, help="Bearer token (or env KFP_TOKEN)."),
    click.option("--in-cluster", is_flag=True, help="Authenticate with this pod's service-account token."),
    click.option("--experiment", default="mammoflow", show_default=True, help="KFP experiment name."),
    click.option("--service-account", default=None, help="Kubernetes service account the run's pods use."),
]


def _auth(f):
    for opt in reversed(_AUTH):
        f = opt(f)
    return f


def _compile(name: str, out: Path) -> Path:
    from kfp import compiler

    from mammoflow.pipelines import get_pipeline

    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(get_pipeline(name), str(out))
    return out


@click.group("pipeline")
def command() -> None:
    """Kubeflow pipelines: compile to IR YAML, run locally with kfp.local, submit or schedule on a cluster."""


@command.command("compile")
@_NAME
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output .yaml file.")
def compile_cmd(name: str, out: Path) -> None:
    """Compile a pipeline to KFP IR YAML."""
    click.echo(str(_compile(name, out)))


@command.command("run")
@_NAME
@click.option("--local", "local", is_flag=True, required=True, help="Run on this machine with kfp.local.")
@click.option("--root", default="runs/local", show_default=True,
              help="Local folder for the object store, pipeline artifacts and the report.")
@_PARAM
def run_cmd(name: str, local: bool, root: str, params: tuple[str, ...]) -> None:
    """Run a whole pipeline locally (kfp.local SubprocessRunner, no venv; local object store; local Ray)."""
    from mammoflow.pipelines.local import run_local

    summary = run_local(name, Path(root), _params(params))
    for key, value in summary.items():
        click.echo(f"{key}: {value}")


@command.command("submit")
@_NAME
@_auth
@_PARAM
def submit_cmd(name: str, host: str, token: str | None, in_cluster: bool, experiment: str,
               service_account: str | None, params: tuple[str, ...]) -> None:
    """Compile and submit one run to a KFP API server."""
    from mammoflow.kfp_client import submit

    with tempfile.TemporaryDirectory() as tmp:
        package = _compile(name, Path(tmp) / f"{name}.yaml")
        run_id = submit(package, host, experiment=experiment, params=_params(params), token=token,
                        in_cluster=in_cluster, service_account=service_account)
    click.echo(f"run {run_id}")


@command.command("schedule")
@_NAME
@_auth
@click.option("--cron", required=True, help="KFP cron, 6 fields with seconds first, e.g. '0 0 2 * * *'.")
@click.option("--job-name", default=None, help="Recurring run name (default: mammoflow-<pipeline>).")
@_PARAM
def schedule_cmd(name: str, host: str, token: str | None, in_cluster: bool, experiment: str,
                 service_account: str | None, cron: str, job_name: str | None, params: tuple[str, ...]) -> None:
    """Create a recurring run (no catch-up, at most one at a time)."""
    from mammoflow.kfp_client import schedule, validate_cron

    validate_cron(cron)
    with tempfile.TemporaryDirectory() as tmp:
        package = _compile(name, Path(tmp) / f"{name}.yaml")
        rr = schedule(package, host, cron, job_name=job_name or f"mammoflow-{name}", experiment=experiment,
                      params=_params(params), token=token, in_cluster=in_cluster, service_account=service_account)
    click.echo(f"recurring run {rr}")
