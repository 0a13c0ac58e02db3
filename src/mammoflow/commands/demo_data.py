"""``mammoflow demo-data``: write synthetic mammograms with known lesions, laid out like MIAS or CBIS-DDSM."""

from __future__ import annotations

import re

import click


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a size; use HEIGHTxWIDTH (e.g. 640x480) or one number")
    height = int(match.group(1))
    width = int(match.group(2) or height)
    if min(height, width) < 64:
        raise click.BadParameter("phantoms need at least 64x64 pixels")
    return height, width


@click.command(name="demo-data")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder to write into (created if missing).")
@click.option("--n-images", default=24, show_default=True, type=click.IntRange(min=1),
              help="Number of mammograms (MIAS: images mdb001...; DICOM: full mammograms, CC and MLO per breast).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Random seed: the same seed writes the same files.")
@click.option("--format", "fmt", default="mias", show_default=True, type=click.Choice(["mias", "dicom"]),
              help="mias: 8-bit PGMs + Info.txt like the MIAS mini-database. "
                   "dicom: MG DICOMs + the four case-description CSVs like a CBIS-DDSM download; every file's "
                   "Manufacturer is 'mammoflow demo-data phantom', so `ingest --source dicom-dir` reads them "
                   "without a site salt (with the public demo salt, said in records_meta.json).")
@click.option("--size", default=None, metavar="HxW",
              help="Image size, e.g. 640x480 [default: 1024x1024 for mias (square only), 640x480 for dicom].")
def command(out: str, n_images: int, seed: int, fmt: str, size: str | None) -> None:
    """Write synthetic phantom mammograms with known ground truth.

    Each phantom has a breast silhouette on a black background, glandular texture, a pectoral muscle on
    MLO views, a burned-in label and, for about a third of the MIAS-like images and every CBIS-like one,
    masses, spiculated masses or calcification clusters with known centres. ground_truth.json lists
    every lesion in row/col pixel coordinates. Re-running with the same options does nothing; a folder
    holding a different demo dataset is refused.

    \b
    Examples:
      mammoflow demo-data --out data/demo-mias --n-images 24
      mammoflow demo-data --out data/demo-cbis --format dicom --n-images 16 --size 640x480
    """
    from mammoflow import steps

    shape = _parse_size(size)
    if fmt == "mias" and shape is not None and shape[0] != shape[1]:
        raise click.BadParameter("MIAS images are square: give one number or HxH", param_hint="--size")
    side_or_shape = (shape[0] if fmt == "mias" else shape) if shape else None
    summary = steps.demo_data(out, n_images, seed, fmt=fmt, size=side_or_shape)
    what = "MIAS-like PGM" if fmt == "mias" else "CBIS-DDSM-like DICOM"
    click.echo(f"{out}: {summary['images']} {what} phantom images, {summary['images_with_lesions']} with lesions "
               f"({summary['lesions']} lesions), seed {seed}; ground truth in {out}/ground_truth.json")
