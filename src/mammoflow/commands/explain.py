"""``mammoflow explain``: class activation maps of a patch classifier over full mammograms."""

from __future__ import annotations

import click

from mammoflow.commands._outputs import check_out


def _circle(text: str) -> tuple[float, float, float]:
    try:
        row, col, radius = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected ROW,COL,RADIUS in pixels, e.g. 512,300,40",
                                 param_hint="--lesion") from None
    if radius <= 0:
        raise click.BadParameter(f"{text!r}: the radius must be positive", param_hint="--lesion")
    return row, col, radius


_EPILOG = """\b
Examples:
  mammoflow explain --model run --records pre --image mias:mdb011 --out cams
  mammoflow explain --model run --records pre --limit 16 --out cams   # first 16 records with lesions
  mammoflow explain --model run --image raw/mdb011.pgm --preprocess yu2020 --out cams-raw
  mammoflow explain --model run --image raw/mdb002.pgm --preprocess yu2020 --lesion 594,278,47 \\
      --method gradcam --stride 24 --out cams-raw

\b
Lesions come from the records, from --lesion/--mask, or from a ground_truth.json beside the image
(demo-data writes one). An unreadable image or unknown id is quarantined in OUT/explain.json (path,
problem, fix) and the others go on; re-running reuses the maps made with the same model, settings
and input, so only new or changed images are computed."""


@click.command("explain", epilog=_EPILOG)
@click.option("--model", "model_uri", required=True, help="Training run folder (local or gs://) or a .keras file.")
@click.option("--image", "images", multiple=True, metavar="PATH_OR_ID",
              help="Image file (PGM, PNG, DICOM) or a record id from --records. Repeatable.")
@click.option("--records", type=click.Path(exists=True, file_okay=False), default=None,
              help="Records folder: look up --image ids there; without --image, explain its first --limit records "
                   "that have lesions.")
@click.option("--preprocess", default=None,
              help="Preprocessing preset or YAML applied before the model (use the one the training data had; "
                   "default: none, for images that are already preprocessed).")
@click.option("--out", required=True, type=click.Path(), help="Output folder.")
@click.option("--lesion", "lesions", multiple=True, metavar="ROW,COL,RADIUS",
              help="A known lesion of the single --image, in its pixels (row 0 at the top). Repeatable.")
@click.option("--mask", "masks", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A lesion mask image (non-zero = lesion) of the single --image. Repeatable.")
@click.option("--limit", type=click.IntRange(min=1), default=8, show_default=True,
              help="Records to explain when --records is given without --image.")
@click.option("--method", type=click.Choice(["cam", "gradcam"]), default=None,
              help="Force a method (default: CAM for GAP + dense models, Grad-CAM otherwise).")
@click.option("--layer", default=None, help="Feature layer to explain (default: the model's CAM layer).")
@click.option("--stride", type=click.IntRange(min=1), default=None,
              help="Grad-CAM window step in pixels (default: half the patch size).")
@click.option("--tile", type=click.IntRange(min=64), default=1024, show_default=True,
              help="CAM tile side in pixels (bounds memory on large images).")
@click.option("--iou-threshold", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Fraction of the map's range above which a pixel counts as highlighted for the IoU.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Pointing game: a peak within this many pixels of a lesion counts as a hit.")
@click.option("--cache-dir", default=None, help="Local cache for remote models.")
def command(model_uri: str, images: tuple[str, ...], records: str | None, preprocess: str | None, out: str,
            lesions: tuple[str, ...], masks: tuple[str, ...], limit: int, method: str | None, layer: str | None,
            stride: int | None, tile: int, iou_threshold: float, tolerance: float, cache_dir: str | None) -> None:
    """Class activation maps over whole mammograms: the patch classifier run fully convolutionally (CAM, Xi et
    al. 2018) or window by window (Grad-CAM), overlaid on the image (PNG) and saved raw (NPY). Where lesions are
    known, each map is scored: pointing game (peak inside a lesion) and IoU with the lesion mask.
    """
    from mammoflow import steps

    if not images and records is None:
        raise click.UsageError("give --image PATH_OR_ID, or --records DIR")
    check_out(out)
    index = steps.explain_images(model_uri, out, images=images, records=records, cache_dir=cache_dir,
                                 preprocess=preprocess, circles=[_circle(t) for t in lesions], mask_paths=masks,
                                 limit=limit, stride=stride, tile=tile, method=method, layer=layer,
                                 iou_fraction=iou_threshold, tolerance=tolerance)
    summary = index["summary"]
    n_reused, n_held = len(index["reused_now"]), len(index["quarantined_now"])
    line = f"explained {len(index['explained_now'])} image(s) with {index['method']} on {index['layer']}"
    if n_reused:
        line += f" ({n_reused} reused: same model, settings and input as before)"
    if n_held:
        line += f"; {n_held} quarantined (path, problem and fix in {out}/explain.json)"
    if summary.get("n_scored"):
        line += (f"; over the {summary['n_scored']} annotated image(s) in {out}: pointing game "
                 f"{summary['pointing_game_hits']}/{summary['n_scored']} (chance {summary['chance_rate_mean']:.3f}), "
                 f"mean IoU {summary['iou_mean']:.3f}")
    click.echo(f"{line} -> {out}")
