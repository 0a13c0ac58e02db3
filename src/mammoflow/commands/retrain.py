"""``mammoflow retrain``: the retraining pipeline on one machine, once or every N seconds."""

from __future__ import annotations

import sys

import click

_EPILOG = """\b
Examples:
  mammoflow retrain --config retrain.yaml --once
  mammoflow retrain --config retrain.yaml --interval 86400          # every day, until stopped
  mammoflow retrain --config retrain.yaml --once --force-bless "new label definition" --by alice

\b
Each run: incremental ingest of the watched folder (only new files) -> preprocess -> shards (no patient
changes split) -> train (warm start from the champion) -> evaluate challenger and champion on the same
evaluation split -> blessing verdict with its reason -> register (+ promote when blessed) -> push metrics.
"Nothing new" stops before training. An interrupted run is resumed by the next one.

\b
Exit status (--once): 0 blessed or nothing new, 4 refused (the champion stays), 1 error."""

EXIT_REFUSED = 4


@click.command(epilog=_EPILOG)
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Retrain config YAML (source, paths, train preset, blessing policy, pushgateway).")
@click.option("--once", is_flag=True, help="Run once and exit.")
@click.option("--interval", type=float, default=None, metavar="SECONDS",
              help="Run, then again every SECONDS after each run ends, until stopped (Ctrl-C).")
@click.option("--max-runs", type=int, default=None, help="With --interval: stop after this many runs.")
@click.option("--force-bless", "force_reason", default=None, metavar="REASON",
              help="Bless this run's challenger whatever the verdict, for an intended change (audited, with --by).")
@click.option("--by", default=None, help="Who is running this (audit log; default: $USER).")
def command(config_path: str, once: bool, interval: float | None, max_runs: int | None, force_reason: str | None,
            by: str | None) -> None:
    """Retrain on new data and replace the champion only when the challenger is blessed."""
    from mammoflow import steps

    if once == (interval is not None):
        raise click.UsageError("give exactly one of --once and --interval SECONDS")
    if force_reason is not None and not once:
        raise click.UsageError("--force-bless applies to one run: use it with --once")
    if once:
        result = steps.retrain_once(config_path, force_bless_reason=force_reason, by=by)
        click.echo(result.summary())
        if result.status == "refused":
            sys.exit(EXIT_REFUSED)
        return
    try:
        results = steps.retrain_every(config_path, interval, max_runs=max_runs, by=by)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        click.echo("stopped")
        return
    for r in results:
        click.echo(r.summary())
