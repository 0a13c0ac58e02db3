"""``mammoflow preprocess``: apply a preprocessing chain to a records folder (see mammoflow.preprocess.run)."""

from __future__ import annotations

from pathlib import Path

import click

from mammoflow.commands._outputs import check_out

_EPILOG = """\b
Examples:
  mammoflow demo-data --out raw --n-images 48 --seed 1 --format mias
  mammoflow ingest --source mias --root raw --out records
  mammoflow preprocess --records records --config yu2020 --out pre --export-png pre-png
  mammoflow preprocess --records records --config yu2020 --out pre   # again: resumes, nothing redone
  mammoflow preprocess --records records --config xi2018 --out pre-xi --workers 2
  mammoflow preprocess --records records --config minimal --out pre --overwrite   # replaces the yu2020 images

\b
OUT gets images/, masks/, records.jsonl, quarantine.md, preprocess_config.yaml (the resolved chain)
and preprocess_summary.json. An OUT made with another config, or holding records that preprocess
did not write (an ingest folder), is refused unless --overwrite is given."""


@click.command("preprocess", epilog=_EPILOG)
@click.option("--records", "records_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Records folder to read (made by `mammoflow ingest`).")
@click.option("--config", "config", required=True,
              help="Preset name (yu2020, jaamour2023, jaamour2023_breast, xi2018, minimal, none), a YAML file or "
                   "its gs:// URI.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),  # checked by check_out
              help="Folder for the preprocessed images and the new records table.")
@click.option("--export-png", "export_dir", type=click.Path(path_type=Path), default=None,
              help="Also write 8-bit viewable PNGs with lesion outlines here, to look at.")
@click.option("--strict", is_flag=True, help="Exit non-zero if any record was quarantined in this run.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes to use (one image per process at a time). Default: every CPU this process may use "
                   "(the container's limit), one per 4 images at most.")
@click.option("--overwrite", is_flag=True,
              help="Replace what --out holds when it was made with another config, or is a records folder that "
                   "preprocess did not write (default: refuse).")
def command(records_dir: Path, config: str, out_dir: Path, export_dir: Path | None, strict: bool,
            workers: int | None, overwrite: bool) -> None:
    """Preprocess every image of a records folder with one chain and write a new records folder.

    Lesion centres, radii and masks are moved with the image. Unusable images are quarantined and the run goes
    on; re-running with the same config skips records already done.
    """
    from mammoflow import steps

    check_out(out_dir)
    check_out(export_dir, "--export-png")
    try:
        summary = steps.preprocess(records_dir, config, out_dir, workers=workers, export_dir=export_dir,
                                   overwrite=overwrite)
    except steps.NothingUsable as err:
        click.echo(summary_line(err.summary, out_dir))
        raise click.ClickException(str(err)) from None
    click.echo(summary_line(summary, out_dir))
    if strict and summary["quarantined_new"]:
        raise click.ClickException(f"--strict: {summary['quarantined_new']} record(s) quarantined "
                                   "(see quarantine.md in the output folder)")


def summary_line(summary: dict, out_dir: Path) -> str:
    return (f"preprocessed {summary['processed']}, reused {summary['reused']}, quarantined "
            f"{summary['quarantined_new']} new ({summary['quarantined_total']} in total) -> {out_dir}")
