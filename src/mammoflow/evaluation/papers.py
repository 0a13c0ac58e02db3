"""The papers' target numbers (``mammoflow/data/paper_results.yaml``) and how to set a result beside them.

Each entry: ``paper`` (``yu2020``, ``jaamour2023``, ``xi2018``), ``model``, ``branches`` (Yu's fusion
branch subsets, else None), optionally ``subset`` (Xi: ``all`` / ``calcification`` / ``mass``) and ``best``
(the row the paper headlines), ``source`` (table + citation), ``protocol`` (data set, split, level,
decision rule, test size), ``metrics`` (keys as produced by :mod:`mammoflow.evaluation.metrics`) and,
for Yu, ``counts`` (the confusion counts the printed numbers imply).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import yaml

RESOURCE = "paper_results.yaml"


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    text = (resources.files("mammoflow") / "data" / RESOURCE).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def load_paper_results() -> list[dict[str, Any]]:
    """Every target cell as a fresh list of dicts; ``source`` gains the paper's ``citation`` and each entry
    its paper's ``class_names``."""
    doc = _document()
    entries = []
    for raw in doc["entries"]:
        entry = copy.deepcopy(raw)
        paper = doc["papers"][entry["paper"]]
        entry["source"] = {"citation": paper["citation"], **entry.get("source", {})}
        entry["class_names"] = paper["class_names"]
        entries.append(entry)
    return entries


def paper_cell(paper: str, model: str, branches: Sequence[int] | None = None,
               subset: str | None = None) -> dict[str, Any]:
    """The one entry of ``paper``'s ``model`` (e.g. ``paper_cell("yu2020", "VGG16_Fusion1")``).

    When several rows match (Yu's branch subsets, Xi's calcification/mass/all) and ``branches`` / ``subset``
    do not choose, the row the paper headlines (``best: true``) is returned. Raises ``KeyError`` listing the
    rows that exist otherwise.
    """
    entries = load_paper_results()
    rows = [e for e in entries if e["paper"] == paper and e["model"] == model]
    if branches is not None:
        rows = [e for e in rows if e.get("branches") is not None and list(e["branches"]) == list(branches)]
    if subset is not None:
        rows = [e for e in rows if e.get("subset") == subset]
    if len(rows) > 1:
        rows = [e for e in rows if e.get("best")] or rows
    if len(rows) == 1:
        return rows[0]
    known = sorted({(e["paper"], e["model"], str(e.get("branches")), str(e.get("subset"))) for e in entries
                    if e["paper"] == paper})
    problem = "no" if not rows else "more than one"
    raise KeyError(f"{problem} paper result for paper={paper!r} model={model!r} branches={branches!r} "
                   f"subset={subset!r}; known (paper, model, branches, subset): {known}")


def paper_predictions(entry: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and decisions (y_true, y_pred) that reproduce an entry's ``counts`` (order is irrelevant to
    every metric), so the paper's numbers can be recomputed and given bootstrap CIs like our own."""
    counts = entry.get("counts")
    if not counts:
        raise ValueError(f"{entry['paper']} {entry['model']}: the paper's numbers do not determine the counts")
    tn, fp, fn, tp = (int(counts[k]) for k in ("tn", "fp", "fn", "tp"))
    y_true = np.repeat([0, 0, 1, 1], [tn, fp, fn, tp])
    y_pred = np.repeat([0, 1, 0, 1], [tn, fp, fn, tp])
    return y_true, y_pred


def compare_with_paper(report: Mapping[str, Any], entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per metric the paper reports: paper value, ours (with CI when the report has one), the
    difference and whether the paper's value lies inside our CI. Metrics we did not compute are skipped."""
    ours = report.get("metrics", {})
    rows = []
    for name, paper_value in entry["metrics"].items():
        if paper_value is None or name not in ours:
            continue
        cell = ours[name] if isinstance(ours[name], Mapping) else {"value": ours[name]}
        value, lo, hi = cell.get("value"), cell.get("ci_low"), cell.get("ci_high")
        rows.append({
            "metric": name,
            "paper": float(paper_value),
            "ours": value,
            "ci_low": lo,
            "ci_high": hi,
            "delta": None if value is None else float(value) - float(paper_value),
            "paper_within_ci": None if lo is None or hi is None else bool(lo <= paper_value <= hi),
        })
    return rows


def paper_ci(entry: Mapping[str, Any], n_bootstrap: int, seed: int = 0) -> dict[str, Any] | None:
    """The paper's metrics with bootstrap CIs, from the confusion counts its printed numbers imply."""
    from mammoflow.evaluation import metrics

    if not entry.get("counts"):
        return None
    y_true, y_pred = paper_predictions(entry)
    return metrics.report_with_ci(y_true, y_pred.astype(float), y_pred, n_resamples=n_bootstrap, seed=seed,
                                  class_names=tuple(entry.get("class_names") or ("normal", "tumour")))["metrics"]
