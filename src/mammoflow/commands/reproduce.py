"""``mammoflow reproduce``: a paper's experiment end to end on real data, with a report next to the paper's tables."""

from __future__ import annotations

import click

from mammoflow.commands.train import parse_overrides

_DEFAULT_DATA = "../shared/data/mias_rois/MIAS_ROIs.zip"

_EPILOG = """\b
Examples:
  mammoflow fetch mias-rois --out data/mias_rois
  mammoflow reproduce yu2020 --data data/mias_rois/MIAS_ROIs.zip --out runs/yu2020-fast --weights none
  mammoflow reproduce yu2020 --data data/mias_rois/MIAS_ROIs.zip --out runs/yu2020-fast --weights none \\
      --set schedule.steps_per_epoch=5 --n-bootstrap 200 --no-tsne   # a minutes-long smoke test
  mammoflow reproduce yu2020 --data data/mias_rois/MIAS_ROIs.zip --out runs/yu2020-cpu --budget cpu
  mammoflow reproduce yu2020 --out runs/yu2020-pretrained --weights hed-bsds500   # --budget cpu-pretrained
  mammoflow reproduce yu2020 --data data/mias_rois/MIAS_ROIs.zip --out runs/yu2020 --budget paper \\
      --address ray://127.0.0.1:10001   # ImageNet weights, every cell of Tables 1-3: a GPU cluster

\b
Re-running the same command resumes: finished cells are reused. OUT/report.html puts each cell
next to the paper's numbers with 95% bootstrap CIs."""


@click.group("reproduce", epilog=_EPILOG)
def command() -> None:
    """Reproduce a paper's experiment on real data and compare every number with the paper's."""


@command.command("yu2020", short_help="Yu et al. 2020 (MIAS fusion models): Tables 1-3 on the released ROIs.",
                 epilog=_EPILOG)
@click.option("--data", "data", default=_DEFAULT_DATA, show_default=True, type=click.Path(exists=True),
              help="Yu et al.'s released MIAS_ROIs.zip (or its extracted folder); `mammoflow fetch mias-rois` "
                   "downloads it.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Output folder (re-running the same command resumes it).")
@click.option("--weights", default=None,
              help="imagenet (default, the faithful reproduction; needs the network), none, hed-bsds500 / "
                   "torchvision-imagenet (installed; they select --budget cpu-pretrained when --budget is left out), "
                   "a whole-model .weights.h5 file, or a keras.applications backbone .h5 file. Not for --budget cpu.")
@click.option("--budget", type=click.Choice(["fast", "paper", "cpu", "cpu-pretrained"]), default=None,
              help="fast: one cell, 10/40 patches per normal/tumour ROI, one epoch. paper: every cell of Tables "
                   "1-3 with the paper's 500/2,000 patches and 5 epochs (a sweep). cpu: our from-scratch CNN "
                   "(train preset yu2020_cpu) with TTA and a validation-fitted threshold. cpu-pretrained: Yu's VGG16 Fusion1/2 "
                   "on HED (BSDS500 edges, VGG16 initialised from ImageNet), frozen then fine-tuned, and Jaamour's "
                   "MobileNetV2 on torchvision ImageNet weights, choices on validation.  [default: cpu-pretrained for "
                   "those weights, else fast]")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a training-config value of every trained cell (repeatable), e.g. "
                   "schedule.steps_per_epoch=5.")
@click.option("--n-bootstrap", default=2000, show_default=True, type=click.IntRange(min=100),
              help="Bootstrap resamples for the 95% confidence intervals.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the bootstrap and the t-SNE.")
@click.option("--address", default=None, help="Ray cluster address for --budget paper (default: a local Ray).")
@click.option("--cache-dir", default=None, help="Local cache for shards and remote run folders.")
@click.option("--tsne/--no-tsne", default=True, show_default=True,
              help="Draw the t-SNE of the test ROIs' features (the paper's Fig. 1).")
def yu2020(data: str, out: str, weights: str | None, budget: str | None, overrides: tuple[str, ...], n_bootstrap: int,
           seed: int, address: str | None, cache_dir: str | None, tsne: bool) -> None:
    """Yu et al. 2020 (MIAS, deep fusion learning): Tables 1-3 on the released ROIs and split.

    Ingests the zip, builds the dataset (released split kept: train 125/72, val 41/24, test 41/23 normal/tumour),
    trains the budget's cells, votes 25 patches per test ROI, and writes OUT/report.md and OUT/report.html with
    each of our cells next to the paper's (95% bootstrap CIs), a per-cell report and the t-SNE figure.
    """
    from mammoflow import steps

    result = steps.reproduce_yu2020(data, out, weights=weights, budget=budget, overrides=parse_overrides(overrides),
                                    n_bootstrap=n_bootstrap, seed=seed, address=address, cache_dir=cache_dir, tsne=tsne)
    lines = [f"reproduce yu2020 ({result.budget}): {len(result.cells)} cell(s) -> {result.report['html']}"]
    for name, info in result.cells.items():
        m = info["report"]["levels"]["roi"]["metrics"]
        lines.append(f"  {name}: ROI accuracy {m['accuracy']['value']:.4f} "
                     f"[{m['accuracy']['ci_low']:.4f}, {m['accuracy']['ci_high']:.4f}], tumour recall "
                     f"{m['tumour_recall']['value']:.4f} [{m['tumour_recall']['ci_low']:.4f}, "
                     f"{m['tumour_recall']['ci_high']:.4f}] (test split)")
    ours = (result.summary.get("pretrained") or {}).get("ours")
    if ours:
        m, t = ours["test"], ours["target"]
        lines.append(f"  ours ({ours['name']}, chosen on validation): ROI accuracy {m['accuracy']['value']:.4f}, "
                     f"tumour recall {m['tumour_recall']['value']:.4f}; target {'met' if t['met'] else 'not met'}")
    click.echo("\n".join(lines))
