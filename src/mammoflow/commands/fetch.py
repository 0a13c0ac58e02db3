"""``mammoflow fetch``: download a public dataset (checksummed), or install one downloaded elsewhere."""

from __future__ import annotations

from pathlib import Path

import click

_EPILOG = """\b
Examples:
  mammoflow fetch mias-rois --out data/mias_rois
  mammoflow ingest --source mias-rois --root data/mias_rois/MIAS_ROIs.zip --out runs/records/yu
  mammoflow fetch mias --out data/mias
  mammoflow fetch mias --from-file ~/Downloads/all-mias.tar.gz --out data/mias   # no internet here

\b
Sources: mias-rois = Yu et al. 2020's released ROIs (github yxchspring/MIAS, SHA-256 checked);
mias = mini-MIAS all-mias.tar.gz from the Pilot European Image Processing Archive (content checked:
322 PGMs + Info.txt). Both are research-use-only under the MIAS licence. Mirrors: --url, or the
environment variables MAMMOFLOW_MIAS_ROIS_URL / MAMMOFLOW_MIAS_URL."""


@click.command(epilog=_EPILOG)
@click.argument("dataset", type=click.Choice(["mias", "mias-rois"]))
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder to install the dataset into.")
@click.option("--from-file", "from_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Verify and install an archive already downloaded (no network used).")
@click.option("--url", default=None, help="Download from this URL instead of the official one (a mirror).")
@click.option("--timeout", default=60.0, show_default=True, type=float, help="Network timeout in seconds.")
def command(dataset: str, out: Path, from_file: Path | None, url: str | None, timeout: float) -> None:
    """Download DATASET into --out and verify it; re-running resumes or does nothing.

    Without internet it fails with what to do instead: download the file elsewhere and pass it
    with --from-file.
    """
    from mammoflow import steps
    from mammoflow.sources.fetch import FetchError

    try:
        installed = steps.fetch_dataset(dataset, out, from_file=from_file, url=url, timeout=timeout)
    except FetchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"fetch {dataset}: verified -> {installed} (ingest with --source {dataset} --root {installed})")
