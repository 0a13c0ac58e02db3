"""The ``cpu-pretrained`` section of the reproduction report: each test table with 95% CIs side by side with our
from-scratch ensemble (``--budget cpu``) and the paper's best cells, the weights named for what they are."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mammoflow.reproduce.render import fmt, fmt_ci

#: ``--budget cpu`` on this machine (EXPERIMENTS.md, "Final run"; identical on the session-2 re-run): our
#: from-scratch ensemble (3 seeds, 8-view TTA, threshold 0.21 fitted on validation), test split, 2,000 resamples.
FROM_SCRATCH = {
    "label": "from-scratch ensemble (--budget cpu)",
    "source": "src/mammoflow/reproduce/EXPERIMENTS.md, final run of --budget cpu",
    "metrics": {
        "accuracy": {"value": 0.6875, "ci_low": 0.5625, "ci_high": 0.7969},
        "tumour_recall": {"value": 0.9565, "ci_low": 0.85, "ci_high": 1.0},
        "tumour_precision": {"value": 0.5366, "ci_low": 0.3784, "ci_high": 0.6858},
        "specificity": {"value": 0.5366, "ci_low": 0.3863, "ci_high": 0.6857},
        "roc_auc": {"value": 0.9183, "ci_low": 0.8350, "ci_high": 0.9813},
        "pr_auc": {"value": 0.9006, "ci_low": 0.7962, "ci_high": 0.9722},
    },
}

ROWS = (("accuracy", "Accuracy"), ("tumour_recall", "Tumour recall"), ("tumour_precision", "Tumour precision"),
        ("specificity", "Specificity"), ("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"))
PAPER_CELLS = ("VGG16_Fusion1", "VGG16_Fusion2")


def _paper_columns(n_bootstrap: int) -> list[dict[str, Any]]:
    """Yu et al.'s best VGG16 cells (ImageNet weights, 500/2,000 patches per ROI) with CIs from their counts."""
    from mammoflow.evaluation.papers import paper_cell, paper_ci

    out = []
    for model in PAPER_CELLS:
        entry = paper_cell("yu2020", model, branches=[1, 2, 3, 4, 5])
        ci = paper_ci(entry, n_bootstrap) or {}
        out.append({"label": f"paper: Yu {model} [1-5] (ImageNet VGG16)", "metrics": {
            k: ci.get(k, {"value": entry["metrics"].get(k)}) for k, _ in ROWS}})
    return out


def _roi(report: Mapping[str, Any]) -> dict[str, Any]:
    return dict(report["levels"]["roi"]["metrics"])


def section(result: Mapping[str, Any], n_bootstrap: int) -> dict[str, Any]:
    """Plain data (``summary.json``'s ``pretrained``): per cell and for ours the test metrics, the choices made on
    validation, the wall times, the target check; the from-scratch and paper columns beside them."""
    from mammoflow.reproduce.ours import target_check

    cells = {}
    for name, info in result["cells"].items():
        stages = {s: {k: v.get(k) for k in ("run", "train_wall_s", "best_epoch", "epochs", "best_val_loss",
                                            "resumed_finished_run")} for s, v in info["stages"].items()}
        cells[name] = {
            "model": info["model"], "weights": info["weights"], "weights_label": info["weights_label"],
            "final_stage": info["final_stage"], "final_label": info.get("final_label", info["final_stage"]),
            "stages": stages, "run": info["run"],
            "evaluation": info["evaluation"], "tta_views": info["tta_views"], "val": info["val"],
            "train_wall_s": info["train_wall_s"], "test": _roi(info["report"]),
            "paper_rule": _roi(info["paper_rule_report"]), "target": target_check(info["report"]),
        }
    ours = result["ours"]
    return {
        "cells": cells,
        "ours": {"name": ours["name"], "members": ours["members"], "val": ours["val"],
                 "evaluation": ours["evaluation"], "test": _roi(ours["report"]),
                 "target": target_check(ours["report"]), "candidates": ours["candidates"]},
        "from_scratch": FROM_SCRATCH, "paper": _paper_columns(n_bootstrap),
        "train_wall_s": result["train_wall_s"], "eval_wall_s": result["eval_wall_s"],
        "recorded_train_wall_s": result.get("recorded_train_wall_s"),
    }


def _shortfall(t: Mapping[str, Any]) -> str:
    if t["met"]:
        return "**met**"
    return (f"**not met**: accuracy {fmt(t['accuracy'])} (short by {fmt(t['accuracy_shortfall'])}), tumour recall "
            f"{fmt(t['recall'])} (short by {fmt(t['recall_shortfall'])})")


def markdown(sec: Mapping[str, Any]) -> list[str]:
    """The section as Markdown lines."""
    cells, ours = sec["cells"], sec["ours"]
    cols = [(f"{n}: {c['model']} on {c['weights_label']}", c["test"]) for n, c in cells.items()]
    cols.append((f"ours (chosen on validation: {ours['name']})", ours["test"]))
    cols.append((sec["from_scratch"]["label"], sec["from_scratch"]["metrics"]))
    cols += [(p["label"], p["metrics"]) for p in sec["paper"]]
    lines = ["## Pretrained protocols (--budget cpu-pretrained)", "",
             "Test split (41 normal + 23 tumour ROIs), ROI level, value [95% bootstrap CI]. Our columns decide at a "
             "threshold fitted on the validation split (soft vote, tumour recall >= 0.9565 there); the paper's "
             "columns are its printed numbers (majority vote at 0.5) with CIs from the confusion counts they imply.",
             "", "| metric | " + " | ".join(label for label, _ in cols) + " |",
             "| --- | " + " | ".join("---" for _ in cols) + " |"]
    for key, title in ROWS:
        lines.append(f"| {title} | " + " | ".join(fmt_ci(m.get(key)) for _, m in cols) + " |")
    lines += ["", f"Target (accuracy >= 0.90 and tumour recall >= 0.9565) for ours: {_shortfall(ours['target'])}.",
              "", "Weights: **HED (BSDS500 edges, VGG16 initialised from ImageNet)** = `hed-bsds500` (not ImageNet "
              "weights); **torchvision ImageNet MobileNetV2** = `torchvision-imagenet`. The paper's columns used "
              "ImageNet VGG16 and 500 / 2,000 patches per ROI.", "",
              "| cell | weights | final stage (lower val loss) | stages: best epoch / epochs, val loss, train wall | "
              "val threshold: val accuracy / recall | val ROC-AUC | test at the paper's 0.5 rule: accuracy / recall | "
              "target on test |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, c in cells.items():
        stages = "; ".join(f"{s}: {v['best_epoch']} / {v['epochs']}, {fmt(v['best_val_loss'])}, "
                           f"{fmt(v['train_wall_s'], 0)} s" for s, v in c["stages"].items())
        thr = c["val"]["threshold"]
        rule = c["paper_rule"]
        lines.append(f"| {name} | {c['weights_label']} | {c['final_label']} | {stages} | {fmt(thr['threshold'], 2)}: "
                     f"{fmt(thr['val_accuracy'])} / {fmt(thr['val_recall'])} | {fmt(c['val']['roc_auc'])} | "
                     f"{fmt_ci(rule.get('accuracy'))} / {fmt_ci(rule.get('tumour_recall'))} | "
                     f"{_shortfall(c['target'])} |")
    lines += ["", "Candidates for ours (validation only; the winner has the target recall on validation, then the "
                  "best validation accuracy at its threshold, then the best validation ROC-AUC):", "",
              "| candidate | val threshold | val accuracy | val recall | val ROC-AUC |", "| --- | --- | --- | --- | --- |"]
    for cand in ours["candidates"]:
        mark = "**" if cand["name"] == ours["name"] else ""
        lines.append(f"| {mark}{cand['name']}{mark} | {fmt(cand['threshold'], 2)} | {fmt(cand['val_accuracy'])} | "
                     f"{fmt(cand['val_recall'])} | {fmt(cand['val_auc'])} |")
    lines += ["", f"Training wall time of the cells (as their run folders recorded it): "
                  f"{fmt(sec.get('recorded_train_wall_s'), 0)} s (training in this invocation: "
                  f"{fmt(sec['train_wall_s'], 0)} s; a re-run reuses finished runs); predictions, choices and test "
                  f"evaluation: {fmt(sec['eval_wall_s'], 0)} s (2 CPU cores shared with other jobs).", ""]
    return lines
