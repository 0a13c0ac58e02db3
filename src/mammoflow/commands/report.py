"""``mammoflow report``: one self-contained HTML page (and a Markdown version) per run or sweep."""

from __future__ import annotations

import click

from mammoflow.commands._outputs import check_out

_EPILOG = """\b
Examples:
  mammoflow report --run run --evaluation eval --explain cams --out report   # report/report.html
  mammoflow report --run run --out report        # uses run/evaluation and run/explain when present
  mammoflow report --run eval --out report-eval  # an evaluation folder on its own
  mammoflow report --run runs/sweeps/demo --out report-sweep   # every trial and the best config
  mammoflow report --run gs://BUCKET/mammoflow/runs/demo --out report --cache-dir /tmp/mammoflow-cache"""


@click.command("report", epilog=_EPILOG)
@click.option("--run", "run", required=True,
              help="A training run folder, an evaluation folder (`mammoflow evaluate --out`) or a sweep folder.")
@click.option("--out", required=True, type=click.Path(), help="Output folder for report.html/.md.")
@click.option("--evaluation", "evaluation", default=None, type=click.Path(exists=True, file_okay=False),
              help="Evaluation folder (default: RUN/evaluation when it exists).")
@click.option("--explain", "explain_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Explain folder with CAM overlays (default: RUN/explain or EVALUATION/explain when present).")
@click.option("--worst", type=click.IntRange(min=0), default=8, show_default=True,
              help="How many of the most confident missed tumours to show.")
@click.option("--cache-dir", default=None, help="Local cache for shards and remote folders.")
def command(run: str, out: str, evaluation: str | None, explain_dir: str | None, worst: int,
            cache_dir: str | None) -> None:
    """Write report.html (images embedded, opens anywhere) and report.md: config, data, metrics with 95% CIs next
    to the paper's numbers, curves, confusion matrix, calibration, CAM gallery and the worst false negatives.
    """
    from mammoflow import steps

    check_out(out)
    paths = steps.report(run, out, evaluation=evaluation, explain=explain_dir, n_worst=worst, cache_dir=cache_dir)
    click.echo(f"report -> {paths['html']} and {paths['markdown']}")
