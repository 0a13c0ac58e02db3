"""``mammoflow predict``: class probabilities for images or ROIs from a trained run."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click


@click.command("predict")
@click.option("--model", "run_uri", required=True, help="Training run folder (local or gs://).")
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
    import logging

    from mammoflow.errors import InputError
    from mammoflow.training.predict import Predictor

    log = logging.getLogger("mammoflow.predict")
    files: list[Path] = []
    for item in images:
        files += sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item]
    predictor = Predictor(run_uri)
    lines, failed = [], 0
    for path in files:
        try:
            lines.append(json.dumps(asdict(predictor.predict_file(path, preprocess)), sort_keys=True))
        except InputError as exc:
            failed += 1
            log.error("%s", exc)
    text = "\n".join(lines) + ("\n" if lines else "")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        click.echo(f"predicted {len(lines)} image(s), {failed} unreadable -> {out}")
    else:
        click.echo(text, nl=False)
    if not lines:
        raise click.ClickException("no image could be predicted")
