"""``mammoflow report``: one self-contained HTML page and a Markdown version, per run or per sweep.

The HTML embeds every image as a base64 ``data:`` URI, so the single file opens anywhere (e-mail, a shared drive,
an air-gapped workstation). The Markdown version links the same images, written beside it in ``report_files/``.

Written for a reader who is not a machine-learning engineer: plain headings, every number with its unit, the
split it comes from and how many ROIs / patients it rests on, 95% confidence intervals next to every metric, and
the paper's own number for the same protocol beside ours. Sections (each left out when its input is missing):
what was evaluated; the data; the metrics table; comparison with the paper; curves; confusion matrix;
calibration; class activation maps (from a ``mammoflow explain`` folder) with lesion outlines; the most
confident missed tumours (thumbnails cut from the dataset's shards); training history; the configuration; and for
a sweep, its results table and cross-validation summary.

Inputs are found from ``--run``: a training run folder (its ``evaluation/`` and ``explain/`` subfolders are used
when present), an evaluation folder (``mammoflow evaluate --out``; the run folder is read from its
``metrics.json``), a cross-validation evaluation folder, or a sweep folder (``results.csv``, ``summary.json``,
``best_config.yaml``).
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammoflow import storage
from mammoflow.errors import InputError
from mammoflow.evaluation import caveats
from mammoflow.storage import atomic_write_text, copies

log = logging.getLogger(__name__)

HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
ASSETS = "report_files"

# Metrics shown in the main table, with the words a clinician reads.
PROPORTIONS = (
    ("accuracy", "Accuracy", "share of all cases classified correctly"),
    ("sensitivity", "Sensitivity", "share of {pos} cases found (recall of {pos})"),
    ("specificity", "Specificity", "share of {neg} cases called {neg}"),
    ("{pos}_precision", "Positive predictive value", "share of {pos} calls that are {pos}"),
    ("{neg}_precision", "Negative predictive value", "share of {neg} calls that are {neg}"),
    ("{pos}_f1", "F1 ({pos})", "harmonic mean of sensitivity and PPV"),
    ("balanced_accuracy", "Balanced accuracy", "mean of sensitivity and specificity"),
)
RANKING = (
    ("roc_auc", "ROC-AUC", "probability that a random {pos} case scores above a random {neg} case (0.5 = chance)"),
    ("pr_auc", "PR-AUC (average precision)", "area under the precision-recall curve (chance = prevalence)"),
)
LEVEL_TITLES = {"patch": "Patch", "roi": "ROI", "roi_soft": "ROI (soft vote)", "roi_majority": "ROI (majority vote)",
                "image": "Image", "breast": "Breast", "patient": "Patient"}
LEVEL_UNITS = {"patch": "patches", "roi": "ROIs", "roi_soft": "ROIs", "roi_majority": "ROIs", "image": "images",
               "breast": "breasts", "patient": "patients"}


# ============================================================================================ small helpers


def data_uri(png: bytes, mime: str = "image/png") -> str:
    """A ``data:`` URI embedding ``png`` (so the HTML needs no other file)."""
    return f"data:{mime};base64," + base64.b64encode(png).decode("ascii")


def png_bytes(rgb_or_grey: np.ndarray) -> bytes:
    """PNG bytes of a uint8 grey (H, W) or RGB (H, W, 3) image."""
    import cv2

    img = np.ascontiguousarray(rgb_or_grey)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover
        raise ValueError("could not encode PNG")
    return buf.tobytes()


def fmt_proportion(value: float | None) -> str:
    """A proportion as a percentage with one decimal (``0.8906`` -> ``89.1%``)."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def fmt_score(value: float | None) -> str:
    """An AUC-like score with three decimals."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def fmt_cell(cell: Mapping[str, Any] | None, proportion: bool) -> dict[str, str]:
    """``{"value", "ci", "text"}`` for a metric cell of :func:`~mammoflow.evaluation.metrics.report_with_ci`:
    the value, its 95% CI as ``low to high`` ("" without one; ", degenerate" added when flagged) and both on one
    line."""
    if not cell or cell.get("value") is None:
        return {"value": "n/a", "ci": "", "text": "n/a"}
    f = fmt_proportion if proportion else fmt_score
    value = f(cell["value"])
    if cell.get("ci_low") is None or cell.get("ci_high") is None:
        return {"value": value, "ci": "", "text": value}
    ci = f"{f(cell['ci_low'])} to {f(cell['ci_high'])}" + (", degenerate" if cell.get("degenerate") else "")
    return {"value": value, "ci": ci, "text": f"{value} ({ci})"}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _local_folder(uri: str, cache_dir: str | Path | None) -> Path:
    """A local copy of a folder (the folder itself when local), for remote run / sweep folders."""
    if not storage.is_remote(uri):
        return storage.local_path(uri)
    base = copies.cache_dir(cache_dir) / "reports"
    local = base / hashlib.sha256(uri.encode()).hexdigest()[:16]
    for obj in storage.list(uri):
        rel = obj[len(uri.rstrip("/")) + 1:]
        if rel.endswith((".keras", ".h5")) or "/checkpoints/" in f"/{rel}" or rel.startswith(("tensorboard/", "ray/")):
            continue  # the report needs none of the weights or logs
        dest = local / rel
        if not dest.exists():
            storage.get_file(obj, dest)
    return local


# ============================================================================================ what to report


@dataclass
class Inputs:
    """The folders a report reads, found from ``--run``."""

    kind: str  # run | evaluation | cross_validation | sweep
    run: Path | None = None
    evaluation: Path | None = None
    explain: Path | None = None
    sweep: Path | None = None
    notes: list[str] = field(default_factory=list)


def find_inputs(run: str, evaluation: str | None = None, explain: str | None = None,
                cache_dir: str | Path | None = None) -> Inputs:
    """Decide what ``run`` is and where its evaluation and explain outputs are."""
    folder = _local_folder(run, cache_dir)
    if not folder.is_dir():
        raise InputError(run, "no such folder", "give a training run, evaluation or sweep folder", code="missing_file")
    metrics = _read_json(folder / "metrics.json") or {}
    kind_of = metrics.get("kind", "")
    if (folder / "results.csv").exists() or (folder / "summary.json").exists():
        inputs = Inputs(kind="sweep", sweep=folder)
    elif kind_of == "mammoflow.evaluation.cross_validation":
        inputs = Inputs(kind="cross_validation", evaluation=folder)
    elif kind_of == "mammoflow.evaluation":
        inputs = Inputs(kind="evaluation", evaluation=folder)
        run_uri = (metrics.get("model") or {}).get("run_uri")
        if run_uri:
            try:
                inputs.run = _local_folder(run_uri, cache_dir)
            except Exception as exc:  # a moved or remote run folder must not stop the report
                inputs.notes.append(f"the training run folder {run_uri} could not be read ({exc})")
    elif (folder / "config.yaml").exists() or (folder / "run.json").exists():
        inputs = Inputs(kind="run", run=folder)
    else:
        raise InputError(run, "not a training run, evaluation or sweep folder (no config.yaml, metrics.json of an "
                         "evaluation, results.csv or summary.json)",
                         "give the --out folder of `mammoflow train`, `mammoflow evaluate` or `mammoflow sweep`",
                         code="missing_file")
    if evaluation is not None:
        inputs.evaluation = Path(evaluation)
    elif inputs.evaluation is None:
        for candidate in (folder / "evaluation", folder / "eval"):
            if (candidate / "metrics.json").exists():
                inputs.evaluation = candidate
                break
    if explain is not None:
        inputs.explain = Path(explain)
    else:
        for base in (inputs.evaluation, folder, inputs.run):
            if base is not None and (base / "explain" / "explain.json").exists():
                inputs.explain = base / "explain"
                break
    return inputs


# ============================================================================================ sections


def metrics_rows(evaluation: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The metrics table: one row per metric, one column per level (value with 95% CI)."""
    neg, pos = evaluation["class_names"]
    levels = [lvl for lvl in ("patch", "roi", "roi_soft", "roi_majority", "image", "breast", "patient")
              if lvl in evaluation.get("levels", {})]
    rows = []
    for key, title, meaning in PROPORTIONS + RANKING:
        key = key.format(pos=pos, neg=neg)
        proportion = (key, title, meaning) not in RANKING and key not in ("roc_auc", "pr_auc")
        cells = {lvl: fmt_cell(evaluation["levels"][lvl]["metrics"].get(key), proportion) for lvl in levels}
        rows.append({"key": key, "title": title.format(pos=pos, neg=neg), "meaning": meaning.format(pos=pos, neg=neg),
                     "unit": "%" if proportion else "0 to 1", "cells": cells})
    return levels, rows


def level_columns(evaluation: Mapping[str, Any], levels: Sequence[str]) -> list[dict[str, Any]]:
    """Column headers: level, how many units, what decides, what the CI resamples."""
    out = []
    for lvl in levels:
        rep = evaluation["levels"][lvl]
        support = rep.get("support", {})
        boot = rep.get("bootstrap", {})
        out.append({
            "level": lvl, "title": LEVEL_TITLES.get(lvl, lvl), "n": rep.get("n"),
            "units": LEVEL_UNITS.get(lvl, "items"),
            "support": ", ".join(f"{v} {k}" for k, v in support.items()),
            "decision": rep.get("decision", ""),
            "bootstrap": f"{boot.get('n_resamples', '?')} resamples of {boot.get('n_units', '?')} "
                         f"{rep.get('unit', boot.get('unit', 'row'))}s" if boot else "",
        })
    return out


def paper_rows(evaluation: Mapping[str, Any]) -> dict[str, Any] | None:
    """The paper comparison, formatted (None when the model has no paper counterpart)."""
    comp = evaluation.get("paper_comparison")
    if not comp:
        return None
    rows = []
    for r in comp["rows"]:
        rows.append({"metric": r["metric"], "paper": fmt_proportion(r["paper"]),
                     "ours": fmt_cell({"value": r["ours"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]}, True),
                     "delta": "n/a" if r["delta"] is None else f"{100 * r['delta']:+.1f} points",
                     "within": {True: "yes", False: "no", None: "n/a"}[r["paper_within_ci"]]})
    source = comp.get("source") or {}
    protocol = comp.get("protocol") or {}
    branches = f" branches {comp['branches']}" if comp.get("branches") else ""
    return {"title": f"{comp['paper']} {comp['model']}{branches}", "citation": source.get("citation", ""),
            "table": source.get("table", ""), "level": comp["level"], "protocol": protocol, "rows": rows}


def calibration_rows(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    calib = evaluation.get("calibration") or {}
    rows = []
    for lvl in ("patch", "roi", "image"):
        c = calib.get(lvl)
        if c:
            after = (calib.get("calibrated") or {}).get(lvl) or {}
            rows.append({"level": LEVEL_TITLES[lvl], "ece": fmt_score(c["ece"]), "brier": fmt_score(c["brier"]),
                         "ece_after": fmt_score(after.get("ece")) if after else "",
                         "brier_after": fmt_score(after.get("brier")) if after else ""})
    temp = calib.get("temperature")
    return {"rows": rows, "temperature": temp, "n_bins": next((calib[k]["n_bins"] for k in ("patch", "roi", "image")
                                                               if calib.get(k)), 10)}


def figure(path: Path, caption: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return {"src": data_uri(path.read_bytes()), "file": path.name, "caption": caption, "path": path}


def cam_gallery(explain_dir: Path | None, limit: int = 12) -> dict[str, Any] | None:
    """CAM overlays from a ``mammoflow explain`` folder, with their pointing-game / IoU scores."""
    if explain_dir is None:
        return None
    index = _read_json(explain_dir / "explain.json")
    if not index:
        return None
    items = []
    tolerance = float(index.get("pointing_game_tolerance_px") or 0.0)
    for img in index.get("images", [])[:limit]:
        path = explain_dir / img["overlay"]
        if not path.exists():
            continue
        if img.get("pointing_hit") is None:
            score = "no lesion annotated"
        else:
            near = f" (or within {tolerance:g} px of it)" if tolerance else ""
            score = (f"peak {'inside' if img['pointing_hit'] else 'outside'} the lesion{near}; IoU {img['iou']:.2f} "
                     f"(map above {100 * img['iou_threshold']:.0f}% of its range)")
        items.append({"src": data_uri(path.read_bytes()), "file": path.name, "path": path,
                      "title": img.get("record_id") or img["name"], "label": img.get("label") or "", "score": score})
    return {"items": items, "summary": index.get("summary", {}), "method": index.get("method"),
            "layer": index.get("layer"), "model": (index.get("model") or {}).get("uri"), "tolerance": tolerance}


def worst_false_negatives(evaluation_dir: Path, evaluation: Mapping[str, Any], n: int,
                          cache_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The ``n`` missed positives with the lowest P(positive): ids, probabilities, votes and ROI thumbnails."""
    import pandas as pd

    path = evaluation_dir / "predictions.parquet"
    if n <= 0 or not path.exists():
        return None
    level = evaluation.get("primary_level", "roi")
    df = pd.read_parquet(path)
    units = df[(df["level"] == level) & (df["label"] == 1) & (df["pred"] == 0)].sort_values("prob").head(n)
    total_pos = int(((df["level"] == level) & (df["label"] == 1)).sum())
    items = []
    thumbs = _thumbnails(evaluation, list(units["example_id"]), cache_dir) if len(units) else {}
    for row in units.itertuples():
        votes = getattr(row, "votes_tumour", None)
        n_patches = getattr(row, "n_patches", None)
        items.append({
            "id": row.example_id, "patient": getattr(row, "patient_id", None) or "",
            "prob": fmt_proportion(float(row.prob)),
            "votes": f"{votes} of {n_patches} patches" if votes is not None and not pd.isna(votes) else "",
            "src": data_uri(thumbs[row.example_id]) if row.example_id in thumbs else None,
            "png": thumbs.get(row.example_id),
        })
    return {"items": items, "level": level, "units": LEVEL_UNITS.get(level, f"{level}s"), "n_missed": int(((df["level"] == level) & (df["label"] == 1)
                                                            & (df["pred"] == 0)).sum()),
            "n_positive": total_pos, "thumbnails": bool(thumbs)}


def _thumbnails(evaluation: Mapping[str, Any], example_ids: Sequence[str], cache_dir: str | Path | None,
                side: int = 160) -> dict[str, bytes]:
    """PNG thumbnails of examples, read from the dataset's shards (empty when the shards cannot be reached)."""
    import cv2

    from mammoflow.preprocess.ops import to_uint8

    data = evaluation.get("data") or {}
    split = evaluation.get("split")
    wanted = set(example_ids)
    try:
        from mammoflow.dataset.cache import shard_cache
        from mammoflow.dataset.shards import iter_examples

        cache = shard_cache(cache_dir)
        shards = cache.fetch(storage.join(data["uri"], "manifest.json"))
        out: dict[str, bytes] = {}
        for shard in shards.get(split, []):
            for ex in iter_examples(shard):
                if ex.example_id in wanted:
                    img = ex.image if ex.image.ndim == 2 else ex.image[..., 0]
                    img = img if img.dtype == np.uint8 else to_uint8(img)
                    scale = side / max(img.shape)
                    size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
                    img = cv2.resize(img, size, interpolation=cv2.INTER_NEAREST if scale > 1 else cv2.INTER_AREA)
                    out[ex.example_id] = png_bytes(img)
            if len(out) == len(wanted):
                break
        return out
    except Exception as exc:  # the report must be written even when the data has moved
        log.warning("no thumbnails for the missed tumours: the dataset's shards could not be read (%s)", exc)
        return {}


def manifest_summary(evaluation: Mapping[str, Any] | None, run_info: Mapping[str, Any],
                     cache_dir: str | Path | None) -> dict[str, Any] | None:
    """Counts per split and class from the dataset's manifest.json (None when it cannot be read)."""
    uri = ((evaluation or {}).get("data") or {}).get("uri") or run_info.get("data_uri")
    if not uri:
        return None
    try:
        manifest = json.loads(storage.get_bytes(storage.join(uri, "manifest.json")))
    except Exception as exc:  # noqa: BLE001 - a missing dataset only removes this section
        return {"uri": uri, "error": f"manifest not readable ({exc})"}
    names = manifest.get("label_names") or {}
    classes = [names[k] for k in sorted(names, key=int)] if isinstance(names, dict) else list(names)
    rows = []
    for split, info in (manifest.get("splits") or {}).items():
        per = info.get("counts") or {}
        classes += [c for c in per if c not in classes]
        rows.append({"split": split, "total": info.get("records", sum(per.values())), "patients": info.get("patients"),
                     "per_class": per})
    for row in rows:
        row["per_class"] = [row["per_class"].get(c, 0) for c in classes]
    config = manifest.get("config") or {}
    return {"uri": uri, "classes": classes, "rows": rows, "mode": config.get("mode"),
            "label_scheme": config.get("label_scheme"), "source": manifest.get("source"),
            "sha256": ((evaluation or {}).get("data") or {}).get("manifest_sha256")
            or run_info.get("data_manifest_sha256")}


def history_rows(run: Path | None) -> list[dict[str, str]]:
    if run is None or not (run / "history.csv").exists():
        return []
    with (run / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    keep = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
    out = []
    for row in rows:
        out.append({k: _short(row.get(k)) for k in keep if k in row})
    return out


def _short(value: str | None) -> str:
    if value in (None, ""):
        return ""
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() and abs(number) >= 1 else f"{number:.4g}"


def sweep_section(sweep: Path | None) -> dict[str, Any] | None:
    if sweep is None:
        return None
    rows: list[dict[str, str]] = []
    if (sweep / "results.csv").exists():
        with (sweep / "results.csv").open() as fh:
            rows = [{k: _short(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    columns = list(rows[0]) if rows else []
    best = (sweep / "best_config.yaml").read_text() if (sweep / "best_config.yaml").exists() else None
    return {"columns": columns, "rows": rows, "summary": _read_json(sweep / "summary.json") or {},
            "best_config": best, "name": sweep.name}


def cv_section(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Cross-validation summary: mean, sd, min-max per metric and level for each group of fold runs."""
    if not doc or doc.get("kind") != "mammoflow.evaluation.cross_validation":
        return None
    groups = []
    for key, group in doc.get("groups", {}).items():
        members = group_members(group)
        models = list(dict.fromkeys(str(m.get("model")) for m in members)) or [str(group.get("model"))]
        runs = ", ".join(_member_label(m, name_model=len(models) > 1) for m in members)
        for lvl, summary in group["levels"].items():
            rows = []
            for metric, s in summary["metrics"].items():
                rows.append({"metric": metric, "mean": f"{s['mean']:.4f}",
                             "sd": "n/a" if s["std"] is None else f"{s['std']:.4f}",
                             "range": f"{s['min']:.4f} to {s['max']:.4f}", "n": s["n"]})
            groups.append({"group": key, "model": " / ".join(models), "level": LEVEL_TITLES.get(lvl, lvl),
                           "runs": runs, "members": members, "rows": rows})
    return {"groups": groups, "split": doc.get("split"), "fold_of_each": doc.get("fold_of_each"),
            "selection_on_test_fold": bool(doc.get("selection_on_test_fold"))}


def group_members(group: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each run of a cross-validation group with its model and fold (older metrics.json: from runs and folds)."""
    if group.get("members"):
        return [dict(m) for m in group["members"]]
    folds = group.get("folds") or [None] * len(group.get("runs", []))
    return [{"run": r, "model": group.get("model"), "fold": f} for r, f in zip(group.get("runs", []), folds,
                                                                              strict=False)]


def _member_label(member: Mapping[str, Any], name_model: bool) -> str:
    details = ([str(member.get("model"))] if name_model else []) + \
        ([f"fold {member['fold']}"] if member.get("fold") is not None else [])
    return f"{member['run']} ({', '.join(details)})" if details else str(member["run"])


def model_summary(model: Mapping[str, Any]) -> dict[str, Any]:
    """Name, URI and sha256 of an evaluated model as the report shows them. An ensemble (``members``, as
    ``mammoflow reproduce`` evaluates one) is named by every member, not by its first one."""
    members = [m for m in model.get("members") or [] if isinstance(m, Mapping)]
    if len(members) <= 1:
        return {"name": model.get("name"), "uri": model.get("uri"), "sha256": model.get("sha256"),
                "members": members}
    names = list(dict.fromkeys(str(m.get("name")) for m in members))
    return {"name": f"ensemble of {len(members)} models ({', '.join(names)})",
            "uri": ", ".join(str(m.get("uri")) for m in members),
            "sha256": ", ".join(str(m.get("sha256")) for m in members), "members": members}


# ============================================================================================ build


def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("mammoflow", "templates"),
                             autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",),
                                                                 default_for_string=False),
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["md"] = lambda v: str(v if v is not None else "").replace("|", "\\|").replace("\n", " ")
    return env


def build_context(inputs: Inputs, n_worst: int = 8, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Everything the templates show, as plain data (also useful to test a report without rendering it)."""
    evaluation = _read_json(inputs.evaluation / "metrics.json") if inputs.evaluation else None
    cv_doc = evaluation if evaluation and evaluation.get("kind") == "mammoflow.evaluation.cross_validation" else None
    single = evaluation if evaluation and evaluation.get("kind") == "mammoflow.evaluation" else None
    run_info = (_read_json(inputs.run / "run.json") if inputs.run else None) or {}
    config_text = (inputs.run / "config.yaml").read_text() if inputs.run and (inputs.run / "config.yaml").exists() \
        else None
    if config_text is None and single and (single.get("model") or {}).get("config"):
        from mammoflow.config import dump_yaml

        config_text = dump_yaml(single["model"]["config"])
    ctx: dict[str, Any] = {
        "generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kind": inputs.kind, "notes": list(inputs.notes), "config": config_text, "run_info": run_info,
        "evaluation": None, "levels": [], "metric_rows": [], "paper": None, "figures": {}, "calibration": None,
        "cams": cam_gallery(inputs.explain), "worst": None, "history": history_rows(inputs.run),
        "sweep": sweep_section(inputs.sweep), "cv": cv_section(cv_doc), "data": None,
    }
    model = model_summary((single or {}).get("model") or {})
    if len(model["members"]) > 1 and inputs.run is not None:
        ctx["notes"].append(f"the training history and configuration shown are those of the first of the "
                            f"{len(model['members'])} ensemble members")
    ctx["notes"] += caveats.selection_notes(single or cv_doc) + caveats.degenerate_notes(single, LEVEL_TITLES) + \
        caveats.sweep_notes((ctx["sweep"] or {}).get("columns", []))
    ctx["title"] = _title(inputs, single, run_info)
    if single:
        levels, rows = metrics_rows(single)
        ctx.update(evaluation={"split": single["split"], "fold": single.get("fold"),
                               "selection_on_test_fold": bool(single.get("selection_on_test_fold")),
                               "class_names": single["class_names"], "positive": single["positive_class"],
                               "threshold": single["threshold"], "model_name": model.get("name"),
                               "model_uri": model.get("uri"), "model_sha256": model.get("sha256"),
                               "model_members": model["members"],
                               "voting": single.get("voting"), "primary_level": single["primary_level"],
                               "bootstrap_unit": single.get("bootstrap_unit"), "n_bootstrap": single.get("n_bootstrap")},
                   levels=level_columns(single, levels), metric_rows=rows, paper=paper_rows(single),
                   calibration=calibration_rows(single),
                   worst=worst_false_negatives(inputs.evaluation, single, n_worst, cache_dir))  # type: ignore[arg-type]
        split = single["split"]
        what = LEVEL_TITLES.get(single["primary_level"], single["primary_level"])
        captions = {
            "roc.png": f"ROC curves on the {split} split: sensitivity against 1 - specificity as the threshold on "
                       f"P({single['positive_class']}) moves (ROI curves from the mean patch probability).",
            "pr.png": f"Precision-recall curves on the {split} split; the dashed line is the prevalence (chance).",
            "confusion.png": f"{what} decisions on the {split} split (counts; rows = truth, columns = model).",
            "confusion_normalised.png": "The same, as the share of each true class (the diagonal holds "
                                        "specificity and sensitivity).",
            "calibration.png": f"Reliability on the {split} split: of the cases given probability p, the share "
                               f"that were {single['positive_class']} (on the diagonal = honest probabilities).",
        }
        ctx["figures"] = {name.removesuffix(".png"): f for name, cap in captions.items()
                          if (f := figure(inputs.evaluation / name, cap))}  # type: ignore[operator]
    elif cv_doc and inputs.evaluation is not None:
        f = figure(inputs.evaluation / "roc.png", "ROC curve of each run on its evaluated data.")
        ctx["figures"] = {"roc": f} if f else {}
    ctx["data"] = manifest_summary(single, run_info, cache_dir)
    return ctx


def _title(inputs: Inputs, single: Mapping[str, Any] | None, run_info: Mapping[str, Any]) -> str:
    if inputs.kind == "sweep" and inputs.sweep is not None:
        return f"Sweep {inputs.sweep.name}"
    if single:
        return f"Evaluation of {model_summary(single['model'])['name']} on the {single['split']} split"
    if inputs.kind == "cross_validation":
        return "Cross-validation summary"
    return f"Training run {inputs.run.name if inputs.run else ''} ({run_info.get('model', '')})"


def build_report(run: str, out: str | Path, *, evaluation: str | None = None, explain: str | None = None,
                 n_worst: int = 8, cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ ``report_files/``) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = find_inputs(run, evaluation, explain, cache_dir)
    ctx = build_context(inputs, n_worst, cache_dir)
    env = _environment()
    html = env.get_template("report.html.j2").render(**ctx)
    atomic_write_text(out / HTML_FILE, html)
    assets = out / ASSETS
    md_ctx = _markdown_assets(ctx, assets)
    markdown = env.get_template("report.md.j2").render(**md_ctx)
    atomic_write_text(out / MARKDOWN_FILE, markdown)
    log.info("report (%s) written to %s (%d KB HTML)", inputs.kind, out, len(html) // 1024)
    return {"html": out / HTML_FILE, "markdown": out / MARKDOWN_FILE}


def _markdown_assets(ctx: dict[str, Any], assets: Path) -> dict[str, Any]:
    """The context with image sources pointing at files in ``report_files/`` (written here) instead of data URIs."""
    from mammoflow.storage import atomic_write_bytes

    md = dict(ctx)

    def put(name: str, data: bytes) -> str:
        atomic_write_bytes(assets / name, data)
        return f"{ASSETS}/{name}"

    md["figures"] = {k: {**f, "src": put(f["file"], f["path"].read_bytes())} for k, f in ctx["figures"].items()}
    if ctx["cams"]:
        md["cams"] = {**ctx["cams"], "items": [{**i, "src": put(f"cam_{i['file']}", i["path"].read_bytes())}
                                               for i in ctx["cams"]["items"]]}
    if ctx["worst"]:
        items = []
        for k, item in enumerate(ctx["worst"]["items"]):
            src = put(f"missed_{k:02d}.png", item["png"]) if item.get("png") else None
            items.append({**item, "src": src})
        md["worst"] = {**ctx["worst"], "items": items}
    return md

