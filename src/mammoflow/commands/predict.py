"""``mammoflow predict``: class probabilities for images or ROIs from a trained run."""

from __future__ import annotations

from pathlib import Path

import click

from mammoflow.commands._outputs import check_out

_EPILOG = """\b
Examples:
  mammoflow predict --model run --images rois/test/tumour
  mammoflow predict --model run --images a.png --images b.pgm --out predictions.jsonl
  mammoflow predict --model gs://BUCKET/mammoflow/runs/demo --images raw/mdb009.pgm --preprocess yu2020

\b
One JSON line per image: image, probabilities per class, predicted (the patch vote's winner), votes
and n_patches. --out is written atomically and left as it was when no image could be predicted."""


@click.command("predict", epilog=_EPILOG)
@click.option("--model", "run_uri", required=True, help="Training run folder (local or gs://) or a .keras file.")
@click.option("--images", "images", required=True, multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Image files (PNG/PGM/DICOM) or folders of them; ROIs or full images.")
@click.option("--preprocess", default=None,
              help="Preprocessing preset or YAML to apply first (use the one the training data had).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Write the predictions here as JSON lines (default: print them).")
def command(run_uri: str, images: tuple[Path, ...], preprocess: str | None, out: Path | None) -> None:
    """Predict images with a trained run: per-class probabilities, the voted label and the patch votes.

    Unreadable files are reported with the reason and skipped; the others are still predicted.
    """
    from mammoflow import steps

    check_out(out, is_file=True)
    lines, failed = steps.predict(run_uri, images, out=out, preprocess=preprocess)
    if not lines:  # steps.predict leaves an earlier --out as it was
        raise click.ClickException("no image could be predicted")
    if out:
        click.echo(f"predicted {len(lines)} image(s), {failed} unreadable -> {out}")
    else:
        click.echo("\n".join(lines) + "\n", nl=False)
