"""``mammoflow evaluate``: a trained model on one split -> predictions, metrics with 95% CIs, figures."""

from __future__ import annotations

import click

from mammoflow.commands._outputs import check_out

_EPILOG = """\b
Examples:
  mammoflow evaluate --model run --data data --split test --out eval
  mammoflow evaluate --model run --data data --out eval-soft --method soft --calibrate --n-bootstrap 500
  mammoflow evaluate --model runs/sweeps/demo --data data --out eval-sweep   # every finished trial
  mammoflow evaluate --model runs/xi/fold0 --model runs/xi/fold1 --model runs/xi/fold2 \\
      --data runs/datasets/xi --fold-of-each --out runs/xi/eval            # each run on its own fold
  mammoflow evaluate --model gs://BUCKET/mammoflow/runs/demo --data gs://BUCKET/mammoflow/datasets/demo \\
      --out eval --cache-dir /tmp/mammoflow-cache

\b
Then: mammoflow report --run run --evaluation eval --out report"""


@click.command("evaluate", epilog=_EPILOG)
@click.option("--model", "models", required=True, multiple=True, metavar="RUN_OR_MODEL_URI",
              help="Training run folder (local or gs://), a .keras file, or a sweep folder. Repeat for several runs "
                   "(e.g. the five folds of a cross-validation).")
@click.option("--data", "data_uri", required=True, help="Dataset folder or gs:// prefix holding manifest.json.")
@click.option("--split", default=None,
              help="Split to evaluate [default: test; with --fold-of-each, the split holding the folds (train)].")
@click.option("--out", "out", required=True, type=click.Path(), help="Output folder.")
@click.option("--method", type=click.Choice(["majority", "soft"]), default="majority", show_default=True,
              help="ROI decision: majority vote of the patch labels (Yu et al., ties by mean P(tumour)) or soft vote "
                   "(mean P(tumour) >= 0.5). The other is reported beside it.")
@click.option("--calibrate", is_flag=True,
              help="Fit a temperature on the validation split and report calibrated probabilities too.")
@click.option("--n-bootstrap", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Bootstrap resamples for the 95% CIs (patients, or ROIs when the data has no patient ids).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Decision threshold on P(positive).")
@click.option("--fold-of-each", is_flag=True,
              help="With several runs: evaluate each run on its own cross-validation fold (data.fold) of --split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Prediction batch size.")
@click.option("--cache-dir", default=None, help="Local cache for shards and remote models.")
def command(models: tuple[str, ...], data_uri: str, split: str | None, out: str, method: str, calibrate: bool,
            n_bootstrap: int, seed: int, threshold: float, fold_of_each: bool, batch_size: int | None,
            cache_dir: str | None) -> None:
    """Evaluate trained models: patch, ROI (majority and soft vote), breast and patient metrics with bootstrap
    95% CIs, ROC/PR curves, confusion matrices, calibration, and the paper's numbers for the same protocol.

    Writes metrics.json, predictions.parquet, roc.png, pr.png, confusion.png, confusion_normalised.png,
    calibration.png and classification_metrics.json (for Kubeflow) into --out.
    """
    from mammoflow import steps
    from mammoflow.evaluation.evaluate import METRICS_KIND

    check_out(out)
    doc = steps.evaluate_runs(models, data_uri, out, split=split, fold_of_each=fold_of_each, method=method,
                              calibrate=calibrate, n_bootstrap=n_bootstrap, seed=seed, threshold=threshold,
                              batch_size=batch_size, cache_dir=cache_dir)
    if doc["kind"] == METRICS_KIND:  # one run
        level = doc["primary_level"]
        m = doc["levels"].get(level, {}).get("metrics", {})
        acc, auc = m.get("accuracy") or {}, m.get("roc_auc") or {}
        click.echo(f"{doc['model']['name']} on {doc['split']}: {level} accuracy {_num(acc.get('value'))} "
                   f"(95% CI {_num(acc.get('ci_low'))}-{_num(acc.get('ci_high'))}"
                   f"{', flagged: not a reliable 95% CI, see metrics.json' if acc.get('degenerate') else ''}), "
                   f"ROC-AUC {_num(auc.get('value'))}"
                   f" -> {out}")
        return
    for group in doc["groups"].values():
        level = "roi" if "roi" in group["levels"] else next(iter(group["levels"]), None)
        acc = group["levels"].get(level, {}).get("metrics", {}).get("accuracy", {}) if level else {}
        click.echo(f"{group['model']}: {len(group['runs'])} runs, {level} accuracy mean {_num(acc.get('mean'))} "
                   f"(sd {_num(acc.get('std'))})")
    click.echo(f"-> {out}")


def _num(value: object) -> str:
    return "n/a" if value is None else f"{value:.4f}"
