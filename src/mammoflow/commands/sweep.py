"""``mammoflow sweep``: an ablation sweep on Ray Tune (local, a Ray cluster, or KubeRay)."""

from __future__ import annotations

import click


def _parse_data(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, uri = item.partition("=")
        if not sep:
            name, uri = "default", item
        out[name] = uri
    return out


@click.command("sweep")
@click.option("--spec", "spec_ref", required=True,
              help="Shipped spec name (yu2020_branches, jaamour2023_divide_conquer, xi2018_cv, demo) or YAML path.")
@click.option("--data", "data", multiple=True, metavar="[NAME=]URI",
              help="Dataset(s): URI of the default dataset, or NAME=URI for a spec's `dataset` axis.")
@click.option("--out", "out_uri", default=None, help="Sweep folder (local or gs://); default runs/sweeps/<name>.")
@click.option("--address", default=None, help="Ray address: auto, ray://HOST:PORT; default starts a local Ray.")
@click.option("--resume", is_flag=True, help="Resume an interrupted sweep (finished trials are not re-run).")
@click.option("--max-concurrent", type=int, default=None, help="At most this many trials at once.")
@click.option("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all).")
@click.option("--dry-run", is_flag=True, help="Print the trials it would run, one per line, and their count.")
def command(spec_ref: str, data: tuple[str, ...], out_uri: str | None, address: str | None, resume: bool,
            max_concurrent: int | None, num_cpus: int | None, dry_run: bool) -> None:
    """Run a sweep spec: a base training config + axes, early stopping (ASHA), one `train` per trial."""
    from mammoflow.sweep.runner import dry_run_lines, run_sweep
    from mammoflow.sweep.spec import load_spec

    spec = load_spec(spec_ref)
    if dry_run:
        for line in dry_run_lines(spec):
            click.echo(line)
        return
    data_uris = _parse_data(data)
    if not data_uris:
        raise click.UsageError("--data is required (except with --dry-run)")
    missing = sorted(set(spec.datasets) - set(data_uris))
    if spec.axes.get("dataset") and missing:
        raise click.UsageError(f"the spec's dataset axis needs --data for: {', '.join(missing)}")
    summary = run_sweep(spec, data_uris, out_uri or f"runs/sweeps/{spec.name}", address=address, resume=resume,
                        max_concurrent=max_concurrent, num_cpus=num_cpus)
    click.echo(f"sweep {spec.name}: {summary['trials']} trials, {summary['stopped_early']} stopped early, "
               f"{summary['failed']} failed, best {summary['best_trial']} -> {out_uri or 'runs/sweeps/' + spec.name}")
