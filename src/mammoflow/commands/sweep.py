"""``mammoflow sweep``: an ablation sweep on Ray Tune (local, a Ray cluster, or KubeRay)."""

from __future__ import annotations

import click

_EPILOG = """\b
Examples:
  mammoflow sweep --spec demo --dry-run
  mammoflow sweep --spec demo --data runs/datasets/demo --out runs/sweeps/demo --num-cpus 2
  mammoflow sweep --spec demo --data runs/datasets/demo --out runs/sweeps/demo --resume
  mammoflow sweep --spec jaamour2023_divide_conquer --address http://localhost:8265 \\
      --data gs://b/ds/default --data gaussian_histeq=gs://b/ds/gh --data mass=gs://b/ds/mass \\
      --data calc=gs://b/ds/calc --out gs://b/sweeps/jaamour

\b
Writes OUT/results.csv and .md (one row per trial, best first), OUT/summary.json (trials finished,
stopped early, failed; trial-epochs saved by early stopping), OUT/best_config.yaml and one training
run folder per trial in OUT/trials/ (TensorBoard: tensorboard --logdir OUT/trials).

\b
With --address http://HEAD:8265 the sweep runs as a Ray job on that cluster (token from
RAY_AUTH_TOKEN); this command streams its log and waits. Ctrl-C or SIGTERM stops the job
(exit 130 / 143); running the command again follows a job still running for the same --out,
or (with --resume) submits a new one that continues the sweep."""


EXIT_STOPPED = 143  # as `train` preempted (README "Exit codes"): stopped on SIGTERM, re-run to resume


def _parse_data(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, uri = item.partition("=")
        if not sep or "/" in name or ":" in name:  # a bare URI (which may itself contain '=')
            name, uri = "default", item
        if not uri:
            raise click.BadParameter(f"{item!r}: give URI or NAME=URI", param_hint="--data")
        if name in out:
            raise click.BadParameter(f"dataset {name!r} given twice", param_hint="--data")
        out[name] = uri
    return out


@click.command("sweep", epilog=_EPILOG)
@click.option("--spec", "spec_ref", required=True,
              help="Shipped spec name (yu2020_branches, jaamour2023_divide_conquer, xi2018_cv, demo) or YAML path.")
@click.option("--data", "data", multiple=True, metavar="[NAME=]URI",
              help="Dataset(s): URI of the default dataset, or NAME=URI for a spec's `dataset` axis (repeat).")
@click.option("--out", "out_uri", default=None, help="Sweep folder (local or gs://) [default: runs/sweeps/<name>].")
@click.option("--address", default=None,
              help="Ray to use: http://HEAD:8265 (submit a Ray job to that cluster's dashboard: recommended), "
                   "auto (inside a Ray cluster, e.g. a Ray job's own driver), ray://HOST:10001 (Ray Client, the "
                   "fallback); default starts a local Ray.")
@click.option("--resume", is_flag=True, help="Continue an interrupted sweep: ended trials are not run again, "
                                              "running ones continue after their last finished epoch.")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None, help="At most this many trials at once.")
@click.option("--num-cpus", type=click.IntRange(min=1), default=None, help="CPUs of the local Ray [default: all].")
@click.option("--dashboard", is_flag=True, help="Start the local Ray with its dashboard on 127.0.0.1:8265 "
                                                "(needs ray[default]).")
@click.option("--metrics-export-port", type=click.IntRange(min=1, max=65535), default=None,
              help="Port of the local Ray's Prometheus metrics endpoint (needs ray[default]).")
@click.option("--cache-dir", default=None, help="Local cache for shards and remote trial folders.")
@click.option("--dry-run", is_flag=True, help="Print the trials it would run, one per line, then their count.")
def command(spec_ref: str, data: tuple[str, ...], out_uri: str | None, address: str | None, resume: bool,
            max_concurrent: int | None, num_cpus: int | None, dashboard: bool, metrics_export_port: int | None,
            cache_dir: str | None, dry_run: bool) -> None:
    """Run a sweep spec: a base training config + axes, early stopping (ASHA), one `train` per trial."""
    from mammoflow import steps
    from mammoflow.sweep.jobs import SweepCancelled, SweepJobFailed

    if dry_run:
        for line in steps.sweep_plan(spec_ref, cache_dir=cache_dir):
            click.echo(line)
        return
    data_uris = _parse_data(data)
    if not data_uris:
        raise click.UsageError("--data is required (except with --dry-run)")
    default = data_uris.pop("default", None)
    try:
        steps.sweep_inputs(spec_ref, default, data_uris, cache_dir=cache_dir)
    except steps.SweepDataError as exc:  # a --data problem: a usage error, before Ray starts
        raise click.UsageError(str(exc)) from None
    try:
        summary = steps.sweep(spec_ref, default, out_uri, address=address, num_cpus=num_cpus,
                              max_concurrent=max_concurrent, cache_dir=cache_dir, datasets=data_uris, resume=resume,
                              dashboard=dashboard, metrics_export_port=metrics_export_port)
    except SweepCancelled as exc:  # the Ray job was stopped because this command was (SIGTERM)
        click.echo(str(exc), err=True)
        raise click.exceptions.Exit(EXIT_STOPPED) from None
    except SweepJobFailed as exc:  # the job's driver is this CLI: its exit code is ours
        if exc.exit_code == 1:
            raise
        click.echo(str(exc), err=True)
        raise click.exceptions.Exit(exc.exit_code) from None
    out = out_uri or steps.local_sweep_uri(summary["sweep"])
    click.echo(f"sweep {summary['sweep']}: {summary['trials']} trials, {summary['finished']} finished, "
               f"{summary['stopped_early']} stopped early, {summary['failed']} failed; "
               f"{summary['trial_epochs_saved']} of {summary['full_grid_trial_epochs']} trial-epochs saved; "
               f"best {summary['best_trial']} -> {out}")
