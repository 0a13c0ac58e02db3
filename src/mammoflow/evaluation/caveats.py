"""What a reader must know to read an evaluation right, said in ``metrics.json`` and in the report.

- **Model selection on the reported fold** (Xi et al. 2018's five-fold protocol): a run trained with
  ``data.fold = k`` validates on fold k (early stopping, the best checkpoint) and is then reported on fold k.
  That is faithful to the paper but optimistic: the reported fold helped choose the model.
- **Degenerate bootstrap intervals** (:func:`mammoflow.evaluation.metrics.degenerate_reason`): an interval of
  zero width, or one from too few resampling units or resamples, is not a 95% CI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SELECTION_NOTE = ("model selection on the reported fold: each run validated (early stopping, best checkpoint) on "
                  "the cross-validation fold it is reported on, as in Xi et al. 2018. Faithful to the paper, but "
                  "optimistic: the reported fold helped choose the model. For an unbiased number, evaluate on a "
                  "held-out split that no run validated on (e.g. --split test).")


def fold_selection(trained_fold: int | None, evaluated_fold: int | None) -> dict[str, Any]:
    """The ``metrics.json`` fields of one evaluation: ``selection_on_test_fold`` (a run trained with
    ``data.fold = k``, whose validation data is fold k, evaluated on fold k) and, when true, ``selection_note``."""
    return cv_selection(evaluated_fold is not None and trained_fold == evaluated_fold)


def cv_selection(selected_on_reported_fold: bool) -> dict[str, Any]:
    """The same fields for a cross-validation summary (``--fold-of-each``: every run on its own fold)."""
    out: dict[str, Any] = {"selection_on_test_fold": bool(selected_on_reported_fold)}
    if selected_on_reported_fold:
        out["selection_note"] = SELECTION_NOTE
    return out


def selection_notes(doc: Mapping[str, Any] | None) -> list[str]:
    """The report's warning for an evaluation (single or cross-validation) that selected on the reported fold."""
    if not doc or not doc.get("selection_on_test_fold"):
        return []
    return [f"Optimistic estimate, {doc.get('selection_note') or SELECTION_NOTE}"]


def degenerate_notes(evaluation: Mapping[str, Any] | None,
                     level_titles: Mapping[str, str] | None = None) -> list[str]:
    """One report warning per level whose bootstrap intervals are flagged degenerate, naming metrics and reasons."""
    level_titles = level_titles or {}
    notes = []
    for level, rep in ((evaluation or {}).get("levels") or {}).items():
        cells = {k: c for k, c in (rep.get("metrics") or {}).items() if isinstance(c, Mapping) and c.get("degenerate")}
        if not cells:
            continue
        reasons = "; ".join(dict.fromkeys(str(c.get("degenerate_reason") or "flagged") for c in cells.values()))
        notes.append(f"{level_titles.get(level, level)} level: the confidence intervals of {', '.join(cells)} are "
                     f"degenerate ({reasons}). Read them as not estimable from this sample, not as certainty.")
    return notes


def sweep_notes(columns: list[str] | tuple[str, ...]) -> list[str]:
    """A sweep over ``data.fold`` (Xi et al.'s cross-validation) ranks trials by the fold each one validated on."""
    if not any("data.fold" in str(c) for c in columns):
        return []
    return ["Cross-validation sweep: each trial's numbers are on the fold it validated on (early stopping, best "
            "checkpoint), as in Xi et al. 2018, so they are optimistic. Evaluate on a held-out split for an "
            "unbiased number."]
