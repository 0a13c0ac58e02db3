"""The reproduction report: every cell of Yu et al. 2020's Tables 1-3 next to ours, with 95% CIs.

For each row of the paper's tables the report shows the paper's number, ours with its bootstrap 95% CI on the same
64 test ROIs, and a verdict per metric:

- **match**: the paper's value lies inside our CI (the difference is within what 64 ROIs can resolve);
- **beat**: our whole CI lies above the paper's value;
- **miss**: our whole CI lies below it.

The paper's own numbers get an interval too (recomputed from the confusion counts its recalls imply, see
:func:`mammoflow.evaluation.papers.paper_predictions`), which shows how wide a 64-ROI test set's uncertainty is.
Written as ``report.md`` (+ ``report_files/``) and a self-contained ``report.html`` (images embedded).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mammoflow.evaluation.papers import paper_ci
from mammoflow.reproduce.render import fmt, fmt_ci, render_html
from mammoflow.storage import atomic_write_text

PAPER = "yu2020"
# The paper's columns (Tables 1-3), in its order, then the ranking metric it shows only as curves.
COLUMNS = (
    ("tumour_recall", "T recall"), ("tumour_precision", "T precision"), ("tumour_f1", "T F1"),
    ("normal_recall", "N recall"), ("normal_precision", "N precision"), ("accuracy", "Accuracy"),
)
HEADLINE = (("accuracy", "Accuracy"), ("tumour_recall", "Tumour recall (sensitivity)"),
            ("tumour_precision", "Tumour precision (PPV)"), ("specificity", "Specificity (normal recall)"),
            ("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"))
TABLE_TITLES = {"Table 1": "Table 1: baselines (VGG16/VGG19 with a GAP head, other networks and hand-crafted features)",
                "Table 2": "Table 2: Fusion1 (GAP of each block, concatenated) by branch subset",
                "Table 3": "Table 3: Fusion2 (per-branch BN, pooling, 1x1 conv, GAP) by branch subset"}
_YU_MODEL = {"vgg16_gap": "VGG16", "vgg19_gap": "VGG19"}


def jsonable(obj: Any) -> Any:
    from mammoflow.evaluation.metrics import jsonable as _jsonable

    return _jsonable(obj)


# ============================================================================================ comparisons


def verdict(paper: float | None, low: float | None, high: float | None) -> str:
    """``match`` (paper inside our CI), ``beat`` (our CI above it), ``miss`` (our CI below it) or ``n/a``."""
    if paper is None or low is None or high is None:
        return "n/a"
    if high < paper:
        return "miss"
    if low > paper:
        return "beat"
    return "match"


def paper_model_of(model_name: str, branches: Sequence[int] | None) -> tuple[str, list[int] | None] | None:
    """The paper's (model, branches) of a registered Yu model (``vgg16_fusion1`` -> ``VGG16_Fusion1``)."""
    if model_name in _YU_MODEL:
        return _YU_MODEL[model_name], None
    if model_name.startswith(("vgg16_fusion", "vgg19_fusion")):
        backbone, variant = model_name.split("_", 1)
        return f"{backbone.upper()}_{variant.capitalize()}", list(branches or (1, 2, 3, 4, 5))
    return None


def metric_cells(entry: Mapping[str, Any] | None, ours: Mapping[str, Any] | None,
                 paper_intervals: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One cell per paper column: paper value (+ its CI), ours (+ CI) and the verdict."""
    cells = []
    for key, title in COLUMNS:
        paper_value = None if entry is None else entry["metrics"].get(key)
        mine = (ours or {}).get(key) or {}
        pci = (paper_intervals or {}).get(key) or {}
        cells.append({"metric": key, "title": title, "paper": paper_value,
                      "paper_ci_low": pci.get("ci_low"), "paper_ci_high": pci.get("ci_high"),
                      "ours": mine.get("value"), "ci_low": mine.get("ci_low"), "ci_high": mine.get("ci_high"),
                      "degenerate": bool(mine.get("degenerate")),
                      "verdict": verdict(paper_value, mine.get("ci_low"), mine.get("ci_high")) if mine else "not run"})
    return cells


def _cell_key(report: Mapping[str, Any]) -> tuple[str, tuple[int, ...] | None] | None:
    model = report.get("model") or {}
    params = ((model.get("config") or {}).get("model") or {}).get("params") or {}
    found = paper_model_of(model.get("name") or "", params.get("branches"))
    if found is None:
        return None
    name, branches = found
    return name, None if branches is None else tuple(branches)


def paper_tables(cells: Mapping[str, Mapping[str, Any]], n_bootstrap: int) -> list[dict[str, Any]]:
    """Tables 1-3 of the paper, each row paired with our evaluated cell of the same model and branches."""
    from mammoflow.evaluation.papers import load_paper_results

    ours_by_key = {}
    for name, info in cells.items():
        key = _cell_key(info["report"])
        if key is not None:
            ours_by_key[key] = (name, info)
    tables: dict[str, list[dict[str, Any]]] = {}
    for entry in load_paper_results():
        if entry["paper"] != PAPER:
            continue
        key = (entry["model"], None if entry.get("branches") is None else tuple(entry["branches"]))
        name, info = ours_by_key.get(key, (None, None))
        roi = None if info is None else info["report"]["levels"]["roi"]["metrics"]
        table = (entry.get("source") or {}).get("table", "other")
        tables.setdefault(table, []).append({
            "model": entry["model"], "branches": entry.get("branches"), "best": bool(entry.get("best")),
            "cell": name, "cell_report": None if info is None else info.get("cell_report"),
            "roc_auc": None if roi is None else roi.get("roc_auc"),
            "metrics": metric_cells(entry, roi, paper_ci(entry, n_bootstrap)),
        })
    return [{"table": t, "title": TABLE_TITLES.get(t, t), "rows": rows} for t, rows in sorted(tables.items())]


# ============================================================================================ summary


def _data_section(out: Path) -> dict[str, Any]:
    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    return {"counts": manifest.get("counts") or {k: v.get("counts") for k, v in manifest["splits"].items()},
            "uri": str(out / "dataset")}


def _ours_section(info: Mapping[str, Any], n_bootstrap: int) -> dict[str, Any]:
    from mammoflow.evaluation.papers import paper_cell
    from mammoflow.reproduce.ours import headline, target_check

    report = info["report"]
    best = [paper_cell(PAPER, "VGG16_Fusion1", branches=[1, 2, 3, 4, 5]),
            paper_cell(PAPER, "VGG16_Fusion2", branches=[1, 2, 3, 4, 5])]
    roi = report["levels"]["roi"]["metrics"]
    comparisons = [{"model": e["model"], "branches": e.get("branches"), "table": e["source"].get("table"),
                    "metrics": metric_cells(e, roi, paper_ci(e, n_bootstrap))} for e in best]
    paper_rule = info.get("paper_rule_report")
    members = [_member_summary(Path(m["run"])) for m in info.get("members") or [{"run": info["run"]}]]
    return {
        "model": info.get("model"), "run": info["run"], "evaluation": info["evaluation"],
        "cell_report": info.get("cell_report"), "config": info.get("config"), "members": members,
        "headline": headline(report), "target": target_check(report), "protocol": report.get("protocol"),
        "temperature": (report.get("calibration") or {}).get("temperature"),
        "calibration": {k: (report.get("calibration") or {}).get(k) for k in ("roi", "patch")},
        "calibrated": (report.get("calibration") or {}).get("calibrated"),
        "paper_rule": None if paper_rule is None else {
            "headline": headline(paper_rule), "protocol": paper_rule.get("protocol"),
            "metrics": metric_cells(best[0], paper_rule["levels"]["roi"]["metrics"], None)},
        "comparisons": comparisons,
        # This call's training time; a resumed, already finished run reports the wall time its runs recorded.
        "train_wall_s": info.get("train_wall_s") or sum(m["wall_s"] or 0.0 for m in members),
        "reused_runs": sum(1 for m in info.get("members") or [] if m.get("resumed_finished_run")),
        "experiments": _experiments_file(),
    }


def _member_summary(run: Path) -> dict[str, Any]:
    """Epochs, best epoch (lowest validation loss) and recorded wall time of one training run folder."""
    run_json = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    history = json.loads((run / "history.json").read_text()) if (run / "history.json").exists() else []
    best = min(history, key=lambda h: h["val_loss"]) if history else {}
    return {"run": str(run), "epochs": len(history), "best_epoch": best.get("epoch"),
            "best_val_loss": best.get("val_loss"), "best_val_accuracy": best.get("val_accuracy"),
            "wall_s": run_json.get("wall_time_s_this_call")}


def _experiments_file() -> str | None:
    """The experiment log shipped inside the package, named relative to the package (not this machine's path)."""
    path = Path(__file__).with_name("EXPERIMENTS.md")
    return path.relative_to(Path(__file__).parents[2]).as_posix() if path.exists() else None


def _wall_time_line(summary: Mapping[str, Any]) -> str:
    """This invocation's wall time, saying so when finished training runs were reused (a re-run resumes)."""
    line = f"Wall time of this invocation: {summary['wall_time_s']:.0f} s"
    ours = summary.get("ours") or {}
    reused = ours.get("reused_runs") or 0
    if reused:
        line += (f" ({reused} of {len(ours.get('members') or [])} training runs of our model were already finished "
                 "and reused; the training time below is what those runs recorded)")
    return line + "."


def summarise(result: Any, *, overrides: Mapping[str, Any], n_bootstrap: int, wall_time_s: float,
              budget: Any) -> dict[str, Any]:
    """Everything the report shows, as plain data (written as ``summary.json``)."""
    from mammoflow.evaluation.papers import load_paper_results

    citation = next(e["source"]["citation"] for e in load_paper_results() if e["paper"] == PAPER)
    cells = {name: {"model": info.get("model"), "run": info["run"], "evaluation": info["evaluation"],
                    "cell_report": info.get("cell_report"), "roi": info["report"]["levels"]["roi"]["metrics"]}
             for name, info in result.cells.items()}
    summary: dict[str, Any] = {
        "kind": "mammoflow.reproduce.yu2020", "schema_version": 1,
        "title": "Reproduction of Yu et al. 2020 on the released MIAS ROIs",
        "generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "citation": citation, "budget": {"name": budget.name, "description": budget.description,
                                         "faithful": budget.faithful},
        "weights": result.weights, "overrides": dict(overrides), "n_bootstrap": n_bootstrap,
        "wall_time_s": round(wall_time_s, 1), "data": _data_section(result.out), "cells": cells,
        "tables": paper_tables(result.cells, n_bootstrap),
        "ours": _ours_section(result.cells["ours"], n_bootstrap) if "ours" in result.cells else None,
        "tsne": next((info["tsne"] for info in result.cells.values() if info.get("tsne")), None),
        "notes": notes(result, budget, overrides),
    }
    return summary


def notes(result: Any, budget: Any, overrides: Mapping[str, Any]) -> list[str]:
    """Warnings a reader needs before trusting the numbers."""
    out = []
    if budget.name == "cpu-pretrained":
        out.append("weights: hed-bsds500 = HED (BSDS500 edges, VGG16 initialised from ImageNet), not ImageNet weights; "
                   "torchvision-imagenet = torchvision ImageNet MobileNetV2. The paper used ImageNet VGG16.")
    if budget.name != "cpu" and result.weights == "none":
        out.append("weights: none - the VGG backbones are frozen at random weights, so these numbers check the "
                   "pipeline and say nothing about the paper's method. Use --weights imagenet (network needed).")
    if not budget.faithful and budget.name not in ("cpu", "cpu-pretrained"):
        out.append(f"budget '{budget.name}': {budget.description}. This is not the paper's protocol (500 / 2,000 "
                   "patches per ROI, 5 epochs); run --budget paper for that.")
    if overrides:
        out.append("overrides applied to every trained cell: "
                   + ", ".join(f"{k}={v}" for k, v in sorted(overrides.items())))
    out.append("All numbers: ROI level, test split of the released set (41 normal + 23 tumour ROIs). The authors "
               "dropped the MIAS image ids, so ROIs of one woman may sit in different splits (leakage cannot be "
               "checked on this set).")
    return out


# ============================================================================================ rendering


def _pair(cell: Mapping[str, Any]) -> str:
    """``paper / ours [CI] verdict`` for one table cell."""
    paper = fmt(cell["paper"])
    if cell["ours"] is None:
        return f"{paper} / -"
    flag = " (degenerate interval)" if cell.get("degenerate") else ""
    return (f"{paper} / {fmt(cell['ours'])} [{fmt(cell['ci_low'])}, {fmt(cell['ci_high'])}]{flag} "
            f"{cell['verdict']}")


def _branches(b: Sequence[int] | None) -> str:
    return "-" if not b else "[" + ",".join(str(i) for i in b) + "]"


def render_markdown(summary: Mapping[str, Any], tsne_src: str | None) -> str:
    lines = [f"# {summary['title']}", "",
             f"Generated {summary['generated']} by `mammoflow reproduce yu2020` (budget **{summary['budget']['name']}**"
             f", weights **{summary['weights'] or 'none (from scratch)'}**). Paper: {summary['citation']}", ""]
    for note in summary["notes"]:
        lines += [f"> **Note:** {note}", ""]
    counts = summary["data"]["counts"]
    lines += ["## Data", "", "Yu et al.'s released 120x120 ROIs, their split kept:", "",
              "| split | normal | tumour |", "| --- | --- | --- |"]
    lines += [f"| {s} | {c.get('normal', 0)} | {c.get('tumour', 0)} |" for s, c in counts.items()]
    lines += ["", f"Budget: {summary['budget']['description']}.", "", _wall_time_line(summary), ""]
    if summary.get("ours"):
        lines += _ours_markdown(summary["ours"])
    if summary.get("pretrained"):
        from mammoflow.reproduce.pretrained_report import markdown

        lines += markdown(summary["pretrained"])
    lines += ["## Our cells next to the paper's (Tables 1-3)", "",
              "Each cell: **paper / ours [95% CI] verdict**. *match* = the paper's value is inside our CI, "
              "*beat* = our CI is above it, *miss* = our CI is below it; `-` = not run at this budget. "
              "The paper gives no interval; recomputed from its implied confusion counts, a 64-ROI test set "
              "gives about +/-0.08 on accuracy.", ""]
    for table in summary["tables"]:
        lines += [f"### {table['title']}", "",
                  "| model | branches | " + " | ".join(t for _, t in COLUMNS) + " | ROC-AUC (ours) |",
                  "| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " | --- |"]
        for row in table["rows"]:
            name = f"**{row['model']}**" if row["best"] else row["model"]
            cells = " | ".join(_pair(c) for c in row["metrics"])
            lines.append(f"| {name} | {_branches(row['branches'])} | {cells} | {fmt_ci(row['roc_auc'], 3)} |")
        lines.append("")
    if summary["cells"]:
        lines += ["## Runs", "", "| cell | model | run folder | evaluation | report |", "| --- | --- | --- | --- | --- |"]
        for name, c in summary["cells"].items():
            lines.append(f"| {name} | {c['model']} | `{c['run']}` | `{c['evaluation']}` | "
                         f"{'`' + c['cell_report'] + '`' if c.get('cell_report') else '-'} |")
        lines.append("")
    if tsne_src:
        lines += ["## t-SNE of the test ROIs (the paper's Fig. 1)", "", f"![t-SNE]({tsne_src})", "",
                  "Each point is a test ROI: the mean, over its evaluation patches, of the model's penultimate-layer "
                  "features, embedded in 2-D with t-SNE (seeded). Separated colours = features that tell normal "
                  "from tumour.", ""]
    return "\n".join(lines) + "\n"


def _ours_markdown(ours: Mapping[str, Any]) -> list[str]:
    t = ours["target"]
    proto = ours.get("protocol") or {}
    thr = proto.get("threshold") or {}
    members = ours.get("members") or []
    epochs = ", ".join(f"{m['best_epoch']} of {m['epochs']}" for m in members)
    what = "one model" if len(members) == 1 else f"an ensemble of {len(members)} models (the preset with seeds " \
        "seed, seed + 1, ...; probabilities averaged)"
    lines = ["## Our from-scratch CPU model", "",
             f"Model `{ours['model']}` trained from scratch (no ImageNet weights) on the train split: {what}; best "
             f"epoch by validation loss {epochs}; training wall time {fmt(ours.get('train_wall_s'), 0)} s on this "
             "machine (2 CPU cores shared with other jobs).", "",
             f"ROI decision (fixed on the validation split): {proto.get('tta_views')} test-time views per patch "
             f"(rotations/mirrors), {proto.get('method')} vote, threshold {fmt(thr.get('threshold'), 2)} fitted on "
             f"validation (val tumour recall {fmt(thr.get('val_recall'))}, val accuracy {fmt(thr.get('val_accuracy'))}).",
             "", "| test split, ROI level | value [95% CI] |", "| --- | --- |"]
    lines += [f"| {title} | {fmt_ci(ours['headline'].get(key))} |" for key, title in HEADLINE
              if key in ours["headline"]]
    verdict_text = "**met**" if t["met"] else (
        f"**not met**: accuracy short by {fmt(t['accuracy_shortfall'])}, tumour recall short by "
        f"{fmt(t['recall_shortfall'])}")
    lines += ["", f"Target (accuracy >= {t['accuracy_target']} and tumour recall >= {t['recall_target']}): "
                  f"{verdict_text}.", ""]
    if ours.get("temperature"):
        temp = ours["temperature"]
        cal = ours.get("calibrated") or {}
        lines += [f"Temperature scaling: T = {fmt(temp['value'], 3)} fitted on the validation patches (val ECE "
                  f"{fmt(temp.get('val_ece_before'), 3)} -> {fmt(temp.get('val_ece_after'), 3)}); test ROI ECE "
                  f"{fmt((ours['calibration'].get('roi') or {}).get('ece'), 3)} -> "
                  f"{fmt(((cal.get('roi') or {}) if cal else {}).get('ece'), 3)}.", ""]
    if ours.get("paper_rule"):
        pr = ours["paper_rule"]["headline"]
        lines += ["The same model under the paper's rule (one view, majority vote of 25 patches, threshold 0.5): "
                  f"accuracy {fmt_ci(pr.get('accuracy'))}, tumour recall {fmt_ci(pr.get('tumour_recall'))}, "
                  f"ROC-AUC {fmt_ci(pr.get('roc_auc'), 3)}.", ""]
    lines += ["Against the paper's best cells (ImageNet VGG16): each cell **paper / ours [95% CI] verdict**.", "",
              "| paper cell | " + " | ".join(t for _, t in COLUMNS) + " |",
              "| --- | " + " | ".join("---" for _ in COLUMNS) + " |"]
    for comp in ours["comparisons"]:
        lines.append(f"| {comp['model']} {_branches(comp['branches'])} ({comp['table']}) | "
                     + " | ".join(_pair(c) for c in comp["metrics"]) + " |")
    lines.append("")
    if ours.get("experiments"):
        lines += [f"Every modelling choice was made on the validation split; the experiment log with the "
                  f"validation numbers is `{ours['experiments']}`.", ""]
    return lines


def write_report(summary: Mapping[str, Any], out: Path) -> dict[str, Path]:
    """``report.md`` (images in ``report_files/``) and a self-contained ``report.html`` in ``out``."""
    from mammoflow.evaluation.report import data_uri
    from mammoflow.storage import atomic_write_bytes

    tsne_png = Path(summary["tsne"]["png"]) if summary.get("tsne") else None
    src = None
    images: dict[str, str] = {}
    if tsne_png is not None and tsne_png.exists():
        src = "report_files/tsne.png"
        data = tsne_png.read_bytes()
        atomic_write_bytes(out / src, data)
        images[src] = data_uri(data)
    markdown = render_markdown(summary, src)
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.html", render_html(markdown, summary["title"], images))
    return {"markdown": out / "report.md", "html": out / "report.html"}
