"""Blessing: may a retrained challenger replace the champion? A verdict with a reason a person can read.

TFX's Evaluator writes BLESSED / NOT_BLESSED; its users' complaints are the spec here:

- **No thresholds means an error, never a silent "never blessed".** A policy must name at least one metric rule,
  each with a margin ("not worse by more than") and/or a minimum gain; :meth:`BlessingPolicy.validate` refuses
  anything else, at config load, before hours of training.
- **The first model is an explicit choice** (``first_model: bless`` or ``require_minimums`` with thresholds), not an
  accident of having nothing to compare with.
- **Every verdict has a one-paragraph reason** naming each metric, both values, the difference and the rule, plus a
  table (:meth:`Verdict.to_markdown`, shown in the KFP UI) and JSON (:meth:`Verdict.to_dict`).
- **A human can override** (``force=True`` with a reason): the verdict says so, keeps what it would have been, and
  the caller writes it to the registry's audit log (:meth:`mammoflow.registry.ModelRegistry.record`).

Both models must be judged on the same evaluation rows. With ``paired_test`` the difference of every metric gets a
paired bootstrap CI (:func:`paired_bootstrap_delta`: both models scored on the *same* resamples of patients, which
is far tighter than comparing two separate CIs), and ``decision: ci`` decides on its bound instead of on the point
difference (a non-inferiority test: the challenger passes when the lower bound of its gain is above ``-margin``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mammoflow.config import from_dict, resolve_config, to_dict
from mammoflow.errors import ConfigError

log = logging.getLogger(__name__)

FirstModel = Literal["bless", "require_minimums"]
Decision = Literal["point", "ci"]
_EPS = 1e-12
_EXAMPLE = "rules: [{metric: tumour_recall, margin: 0.02}, {metric: roc_auc, margin: 0.02}]"


@dataclass
class MetricRule:
    """One metric the challenger is judged on."""

    metric: str  # a metric key of the evaluation report: roc_auc, pr_auc, tumour_recall, sensitivity, ...
    margin: float | None = None  # non-inferiority: the challenger may be worse than the champion by at most this
    min_gain: float | None = None  # superiority: the challenger must be better by at least this
    level: str | None = None  # report level (roi, patch, image, breast, patient); default: the policy's level
    higher_is_better: bool = True


@dataclass
class BlessingPolicy:
    """How a challenger is judged (the ``blessing`` section of a retrain config)."""

    rules: list[MetricRule] = field(default_factory=list)
    level: str = "primary"  # the report's primary level (roi for patch models, image for whole-image models)
    first_model: FirstModel | None = None  # required: what to do when there is no champion yet
    minimums: dict[str, float] = field(default_factory=dict)  # first_model: require_minimums; "metric" or "level.metric"
    paired_test: bool = True  # paired bootstrap CI of every difference (needs both models' predictions)
    decision: Decision = "point"  # point: the point difference decides; ci: the paired CI's bound decides
    n_bootstrap: int = 2000
    alpha: float = 0.05
    seed: int = 0

    def validate(self) -> BlessingPolicy:
        """Refuse a policy that could never bless or never be applied, with the fix. Returns self."""
        if not self.rules:
            raise ConfigError(
                "blessing: no metric rules, so no challenger could ever be judged (TFX silently never blesses in "
                f"this case; mammoflow refuses to start). Fix: add e.g. `{_EXAMPLE}` to the blessing section")
        for i, rule in enumerate(self.rules):
            where = f"blessing.rules[{i}] ({rule.metric})"
            if rule.margin is None and rule.min_gain is None:
                raise ConfigError(f"{where}: no threshold. Fix: give margin (allowed drop, e.g. 0.02) and/or "
                                  "min_gain (required improvement)")
            for name in ("margin", "min_gain"):
                value = getattr(rule, name)
                if value is not None and (not math.isfinite(value) or value < 0):
                    raise ConfigError(f"{where}: {name} must be a finite number >= 0, got {value}")
        if self.first_model not in ("bless", "require_minimums"):
            raise ConfigError("blessing.first_model: required, so that the first model is blessed on purpose. "
                              "Fix: set first_model: bless, or first_model: require_minimums with minimums: "
                              "{roc_auc: 0.75}")
        if self.first_model == "require_minimums" and not self.minimums:
            raise ConfigError("blessing.first_model is require_minimums but minimums is empty. Fix: give e.g. "
                              "minimums: {roc_auc: 0.75, tumour_recall: 0.8}")
        if self.decision not in ("point", "ci"):
            raise ConfigError(f"blessing.decision: {self.decision!r} is not point or ci")
        if self.decision == "ci" and not self.paired_test:
            raise ConfigError("blessing.decision: ci decides on the paired bootstrap CI. Fix: set paired_test: true")
        if self.n_bootstrap < 100 or not 0 < self.alpha < 1:
            raise ConfigError("blessing: n_bootstrap must be >= 100 and alpha in (0, 1)")
        return self

    @classmethod
    def load(cls, ref: str | Path | Mapping[str, Any] | None) -> BlessingPolicy:
        """From a YAML path or a dict (the ``blessing`` section), validated."""
        data = dict(ref) if isinstance(ref, Mapping) else resolve_config(ref, kind="blessing")
        return from_dict(cls, data, "blessing").validate()

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass
class PairedRows:
    """Both models' predictions on the same evaluation rows (one level), for paired tests."""

    ids: np.ndarray
    y_true: np.ndarray
    p_new: np.ndarray
    p_old: np.ndarray
    pred_new: np.ndarray | None = None  # hard decisions (ROI majority votes); None: p >= threshold
    pred_old: np.ndarray | None = None
    groups: np.ndarray | None = None  # resampling units (patients); None: rows


@dataclass
class Verdict:
    """The outcome of :func:`bless`."""

    blessed: bool
    reason: str  # one paragraph for a person
    deltas: dict[str, dict[str, Any]]  # "level.metric" -> challenger, champion, delta, CIs, rule, passed
    policy: dict[str, Any]
    kind: Literal["first_model", "comparison"] = "comparison"
    forced: bool = False
    force_reason: str | None = None
    forced_by: str | None = None
    would_have_blessed: bool | None = None  # when forced: the verdict without the override
    challenger: str | None = None
    champion: str | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from mammoflow.evaluation.metrics import (
            jsonable,  # numpy to Python; NaN to null, so the JSON is valid
        )

        return jsonable(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Verdict:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_markdown(self) -> str:
        """Verdict, reason and a table of every judged metric (for people and the KFP UI)."""
        title = "BLESSED" if self.blessed else "NOT BLESSED"
        if self.forced:
            title += " (forced by override)"
        lines = [f"# Blessing verdict: {title}", "", self.reason, ""]
        if self.evaluation:
            ev = self.evaluation
            lines += [f"Evaluation split: `{ev.get('split', '?')}` (sha256 `{str(ev.get('split_sha256', '?'))[:16]}`)"
                      f", {ev.get('level', '')} level.", ""]
        if self.deltas:
            lines += ["| metric | challenger [95% CI] | champion [95% CI] | difference [paired CI] | rule | result |",
                      "| --- | --- | --- | --- | --- | --- |"]
            for key, d in self.deltas.items():
                lines.append("| " + " | ".join([
                    key, _with_ci(d.get("challenger"), d.get("challenger_ci")),
                    _with_ci(d.get("champion"), d.get("champion_ci")),
                    _with_ci(d.get("delta"), d.get("delta_ci"), signed=True), d.get("rule", ""),
                    "pass" if d.get("passed") else "FAIL"]) + " |")
            lines.append("")
        lines += ["Policy:", "", "```json", json.dumps(self.policy, indent=2, sort_keys=True), "```", ""]
        return "\n".join(lines)

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        """``verdict.json`` and ``verdict.md`` in a local folder (atomic writes)."""
        from mammoflow.storage import atomic_write_text

        folder = Path(folder)
        atomic_write_text(folder / "verdict.json", self.to_json())
        atomic_write_text(folder / "verdict.md", self.to_markdown())
        return folder / "verdict.json", folder / "verdict.md"


# ------------------------------------------------------------------------------------------- metric access


def _fmt(value: Any, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _with_ci(value: Any, ci: Sequence[Any] | None, signed: bool = False) -> str:
    text = _fmt(value, signed)
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" [{_fmt(ci[0], signed)}, {_fmt(ci[1], signed)}]"
    return text


def resolve_level(report: Mapping[str, Any] | None, level: str | None) -> str:
    if level and level != "primary":
        return level
    return str((report or {}).get("primary_level") or "roi")


def metric_entry(report: Mapping[str, Any], level: str, metric: str) -> dict[str, Any]:
    """``{"value", "ci_low", "ci_high"}`` of one metric from an evaluation report (``mammoflow evaluate``'s
    metrics.json), a ``report_with_ci`` report, or a flat ``{metric: value}`` / ``{"level.metric": ...}`` dict."""
    if "levels" in report:
        levels = report["levels"]
        if level not in levels:
            raise ConfigError(f"blessing: the evaluation has no {level!r} level (has {sorted(levels)}). Fix: set "
                              "the rule's level (or blessing.level) to one of those")
        source = levels[level].get("metrics", {})
    elif isinstance(report.get("metrics"), Mapping):
        source = report["metrics"]
    else:
        source = report
    raw = source.get(metric, source.get(f"{level}.{metric}"))
    if raw is None and metric not in source and f"{level}.{metric}" not in source:
        raise ConfigError(f"blessing: metric {metric!r} is not in the evaluation (has {sorted(source)}). Fix: "
                          "use one of those names in the blessing rules")
    if isinstance(raw, Mapping):
        return {"value": raw.get("value"), "ci_low": raw.get("ci_low"), "ci_high": raw.get("ci_high")}
    return {"value": None if raw is None else float(raw), "ci_low": None, "ci_high": None}


def evaluation_identity(report: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The evaluation split a report was computed on (``{"split", "split_sha256"}``), when recorded."""
    ident = (report or {}).get("evaluation_split")
    return dict(ident) if isinstance(ident, Mapping) else None


# ------------------------------------------------------------------------------------------- paired bootstrap


def paired_bootstrap_delta(y_true: Any, p_new: Any, p_old: Any, metric: str, n: int = 2000, seed: int = 0, *,
                           pred_new: Any = None, pred_old: Any = None, groups: Any = None, threshold: float = 0.5,
                           alpha: float = 0.05, class_names: Sequence[str] = ("normal", "tumour")) -> dict[str, Any]:
    """Paired percentile bootstrap CI of ``metric(new) - metric(old)`` on the same rows.

    Each resample draws units (``groups``, e.g. patients, or rows) with replacement and scores *both* models on it,
    so the variation both share (which patients happen to be drawn) cancels out of the difference. Resamples where
    the metric is undefined for either model (one class only, for ROC-AUC) are skipped and counted.
    Returns ``{"delta", "ci_low", "ci_high", "new", "old", "n", "n_units", "n_resamples", "n_skipped", "alpha",
    "unit", "fraction_negative"}`` (``fraction_negative``: share of resamples where the challenger was worse).
    """
    from mammoflow.evaluation.metrics import classification_report, metric_names

    names = tuple(class_names)
    if metric not in metric_names(names):
        raise ValueError(f"unknown metric {metric!r}; use one of {metric_names(names)}")
    if n < 1 or not 0 < alpha < 1:
        raise ValueError("n must be >= 1 and alpha in (0, 1)")
    y = np.asarray(y_true).astype(np.int8)
    pn, po = np.asarray(p_new, dtype=np.float64), np.asarray(p_old, dtype=np.float64)
    if not (y.shape == pn.shape == po.shape) or y.ndim != 1:
        raise ValueError(f"y_true, p_new and p_old must be 1-D of one length, got {y.shape}, {pn.shape}, {po.shape}")
    dn = None if pred_new is None else np.asarray(pred_new).astype(np.int8)
    do = None if pred_old is None else np.asarray(pred_old).astype(np.int8)

    def score(idx: np.ndarray | None, p: np.ndarray, d: np.ndarray | None) -> float | None:
        sel = slice(None) if idx is None else idx
        value = classification_report(y[sel], p[sel], threshold, None if d is None else d[sel], names)["metrics"][metric]
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    new, old = score(None, pn, dn), score(None, po, do)
    if groups is None:
        unit_of_row, n_units = np.arange(y.size), y.size
    else:
        _, unit_of_row = np.unique(np.asarray(groups), return_inverse=True)
        n_units = int(unit_of_row.max()) + 1
    rows_of_unit = [np.flatnonzero(unit_of_row == u) for u in range(n_units)]
    rng = np.random.default_rng(seed)
    deltas = []
    skipped = 0
    for _ in range(n):
        drawn = rng.integers(0, n_units, size=n_units)
        idx = np.concatenate([rows_of_unit[u] for u in drawn])
        a, b = score(idx, pn, dn), score(idx, po, do)
        if a is None or b is None:
            skipped += 1
            continue
        deltas.append(a - b)
    stats = np.asarray(deltas)
    lo = hi = frac = None
    if stats.size:
        lo, hi = (float(v) for v in np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)]))
        frac = float(np.mean(stats < 0))
    return {"delta": None if new is None or old is None else new - old, "ci_low": lo, "ci_high": hi, "new": new,
            "old": old, "n": int(y.size), "n_units": n_units, "n_resamples": n, "n_skipped": skipped,
            "alpha": alpha, "unit": "row" if groups is None else "group", "fraction_negative": frac}


def paired_rows(challenger_predictions: str | Path, champion_predictions: str | Path, level: str) -> PairedRows:
    """Both models' rows of one level from two ``predictions.parquet`` files (``mammoflow evaluate`` outputs),
    joined on the row id. Refuses evaluations of different rows: a paired comparison needs the very same rows."""
    import pandas as pd

    def load(path: str | Path) -> Any:
        df = pd.read_parquet(path)
        df = df[(df["level"] == level) & df["label"].notna()]
        if df.empty:
            raise ConfigError(f"{path}: no labelled {level!r} rows. Fix: choose a level the evaluation has")
        return df.set_index("id").sort_index()

    new, old = load(challenger_predictions), load(champion_predictions)
    if list(new.index) != list(old.index) or not (new["label"].astype(int).values == old["label"].astype(int).values).all():
        raise ConfigError(f"the challenger and the champion were evaluated on different {level} rows "
                          f"({len(new)} vs {len(old)}). Fix: evaluate both on the same dataset and split")
    groups = None
    if "patient_id" in new.columns and new["patient_id"].notna().all():
        groups = new["patient_id"].astype(str).to_numpy()
    return PairedRows(ids=new.index.to_numpy(), y_true=new["label"].astype(int).to_numpy(),
                      p_new=new["prob"].astype(float).to_numpy(), p_old=old["prob"].astype(float).to_numpy(),
                      pred_new=new["pred"].astype(int).to_numpy() if "pred" in new.columns else None,
                      pred_old=old["pred"].astype(int).to_numpy() if "pred" in old.columns else None,
                      groups=groups)


# ------------------------------------------------------------------------------------------- the verdict


def _rule_text(rule: MetricRule) -> str:
    parts = []
    if rule.margin is not None:
        parts.append(f"drop <= {rule.margin:g}")
    if rule.min_gain is not None:
        parts.append(f"gain >= {rule.min_gain:g}")
    return " and ".join(parts)


def _judge(rule: MetricRule, gain: float | None, gain_low: float | None, decision: Decision) -> tuple[bool, str]:
    """Whether a rule passes, and why not (empty when it passes). ``gain`` is the improvement (sign-adjusted)."""
    if gain is None:
        return False, "is undefined for one of the models on this split (e.g. only one class present)"
    basis = gain if decision == "point" else gain_low
    if basis is None:
        return False, "has no paired confidence interval (every bootstrap resample was undefined)"
    what = "" if decision == "point" else "the lower bound of the paired CI of "
    if rule.margin is not None and basis < -rule.margin - _EPS:
        return False, f"{what}its change {basis:+.3f} is worse than the allowed drop of {rule.margin:g}"
    if rule.min_gain is not None and basis < rule.min_gain - _EPS:
        return False, f"{what}its change {basis:+.3f} is below the required gain of {rule.min_gain:g}"
    return True, ""


def _first_model(challenger_metrics: Mapping[str, Any], policy: BlessingPolicy, level: str,
                 ) -> tuple[bool, str, dict[str, dict[str, Any]]]:
    deltas: dict[str, dict[str, Any]] = {}
    failures, shown = [], []
    if policy.first_model == "bless":
        for rule in policy.rules:
            lvl = rule.level or level
            m = metric_entry(challenger_metrics, lvl, rule.metric)
            deltas[f"{lvl}.{rule.metric}"] = {"level": lvl, "metric": rule.metric, "challenger": m["value"],
                                              "challenger_ci": [m["ci_low"], m["ci_high"]], "champion": None,
                                              "rule": "first model", "passed": True}
            shown.append(f"{lvl}.{rule.metric} {_with_ci(m['value'], [m['ci_low'], m['ci_high']])}")
        return True, ("Blessed as the first model: there is no champion to compare with and the policy says "
                      f"first_model: bless. Its metrics on the evaluation split: {'; '.join(shown)}."), deltas
    for key, minimum in policy.minimums.items():
        lvl, _, metric = key.rpartition(".")
        lvl = lvl or level
        m = metric_entry(challenger_metrics, lvl, metric)
        value = m["value"]
        passed = value is not None and value >= minimum - _EPS
        deltas[f"{lvl}.{metric}"] = {"level": lvl, "metric": metric, "challenger": value,
                                     "challenger_ci": [m["ci_low"], m["ci_high"]], "champion": None,
                                     "rule": f">= {minimum:g} (first model)", "passed": passed}
        text = f"{lvl}.{metric} {_fmt(value)} (required >= {minimum:g})"
        (shown if passed else failures).append(text)
    if failures:
        return False, ("Not blessed as the first model: there is no champion and the policy requires minimums, "
                       f"which {'; '.join(failures)} did not reach"
                       + (f" (met: {'; '.join(shown)})" if shown else "") + "."), deltas
    return True, ("Blessed as the first model: there is no champion to compare with and every required minimum "
                  f"is met: {'; '.join(shown)}."), deltas


def bless(challenger_metrics: Mapping[str, Any], champion_metrics: Mapping[str, Any] | None,
          policy: BlessingPolicy | Mapping[str, Any], *, paired: Mapping[str, PairedRows] | None = None,
          force: bool = False, force_reason: str | None = None, by: str | None = None,
          challenger: str | None = None, champion: str | None = None) -> Verdict:
    """Judge a challenger against the champion (None: there is none yet) under ``policy``; see the module docstring.

    ``challenger_metrics`` / ``champion_metrics``: evaluation reports of the two models on the same split (the
    ``metrics.json`` of ``mammoflow evaluate``; a ``report_with_ci`` dict or a flat ``{metric: value}`` also work).
    ``paired``: level -> both models' rows (:func:`paired_rows`), for paired bootstrap CIs of the differences.
    ``force``/``force_reason``: an audited override; the caller writes the verdict to the audit log.
    ``challenger`` / ``champion``: names shown in the reason (versions or run URIs).
    """
    pol = policy if isinstance(policy, BlessingPolicy) else BlessingPolicy.load(policy)
    pol.validate()
    if force and not (force_reason and force_reason.strip()):
        raise ConfigError("a forced blessing needs a reason (it goes to the audit log). Fix: give force_reason")
    level = resolve_level(challenger_metrics, pol.level)
    ident_new, ident_old = evaluation_identity(challenger_metrics), evaluation_identity(champion_metrics)
    if ident_new and ident_old and ident_new.get("split_sha256") != ident_old.get("split_sha256"):
        raise ConfigError(f"the challenger was evaluated on split {ident_new} and the champion on {ident_old}: "
                          "the comparison would be meaningless. Fix: evaluate both on the same evaluation split")
    evaluation = {**(ident_new or {}), "level": level}
    name_new = challenger or "the challenger"
    name_old = champion or "the champion"
    if champion_metrics is None:
        blessed, reason, deltas = _first_model(challenger_metrics, pol, level)
        kind: Literal["first_model", "comparison"] = "first_model"
    else:
        kind = "comparison"
        deltas = {}
        failures, passes = [], []
        for rule in pol.rules:
            lvl = rule.level or level
            new, old = metric_entry(challenger_metrics, lvl, rule.metric), metric_entry(champion_metrics, lvl,
                                                                                         rule.metric)
            sign = 1.0 if rule.higher_is_better else -1.0
            delta = None if new["value"] is None or old["value"] is None else new["value"] - old["value"]
            ci = None
            if pol.paired_test and paired and lvl in paired:
                rows = paired[lvl]
                ci = paired_bootstrap_delta(rows.y_true, rows.p_new, rows.p_old, rule.metric, pol.n_bootstrap,
                                            pol.seed, pred_new=rows.pred_new, pred_old=rows.pred_old,
                                            groups=rows.groups, alpha=pol.alpha)
            elif pol.decision == "ci":
                raise ConfigError(f"blessing.decision: ci needs both models' {lvl} predictions for a paired test. "
                                  "Fix: pass paired rows (retrain does), or use decision: point")
            gain = None if delta is None else sign * delta
            gain_low = None
            if ci is not None and ci["ci_low"] is not None:
                gain_low = ci["ci_low"] if sign > 0 else -ci["ci_high"]
            passed, why = _judge(rule, gain, gain_low, pol.decision)
            key = f"{lvl}.{rule.metric}"
            deltas[key] = {"level": lvl, "metric": rule.metric, "challenger": new["value"], "champion": old["value"],
                           "delta": delta, "challenger_ci": [new["ci_low"], new["ci_high"]],
                           "champion_ci": [old["ci_low"], old["ci_high"]],
                           "delta_ci": None if ci is None else [ci["ci_low"], ci["ci_high"]],
                           "paired_bootstrap": ci, "margin": rule.margin, "min_gain": rule.min_gain,
                           "higher_is_better": rule.higher_is_better, "rule": _rule_text(rule), "passed": passed}
            ci_text = "" if ci is None or ci["ci_low"] is None else \
                f", paired {100 * (1 - pol.alpha):.0f}% CI of the difference [{ci['ci_low']:+.3f}, {ci['ci_high']:+.3f}]"
            values = f"{name_new} {_fmt(new['value'])} vs {name_old} {_fmt(old['value'])}, " \
                     f"difference {_fmt(delta, signed=True)}{ci_text}"
            if passed:
                passes.append(f"{key} ({values}; rule: {_rule_text(rule)})")
            else:
                failures.append(f"{key} {why} ({values})")
        where = f" on evaluation split {evaluation.get('split', '?')}" + (
            f" (sha256 {str(evaluation['split_sha256'])[:12]})" if evaluation.get("split_sha256") else "")
        if failures:
            blessed = False
            reason = (f"Not blessed: {name_new} does not meet the policy against {name_old}{where}. Failed: "
                      + "; ".join(failures) + "." + (f" Passed: {'; '.join(passes)}." if passes else "")
                      + f" Decision basis: {'point difference' if pol.decision == 'point' else 'paired CI bound'}.")
        else:
            blessed = True
            reason = (f"Blessed: {name_new} meets every rule against {name_old}{where}: " + "; ".join(passes) + "."
                      + f" Decision basis: {'point difference' if pol.decision == 'point' else 'paired CI bound'}.")
    verdict = Verdict(blessed=blessed, reason=reason, deltas=deltas, policy=pol.to_dict(), kind=kind,
                      challenger=challenger, champion=champion, evaluation=evaluation)
    if force:
        verdict.would_have_blessed = blessed
        verdict.forced, verdict.force_reason, verdict.forced_by = True, force_reason.strip(), by  # type: ignore[union-attr]
        verdict.blessed = True
        verdict.reason = (f"FORCED BLESSING by {by or 'an operator'}: {force_reason.strip()}. "  # type: ignore[union-attr]
                          f"Without the override the verdict was: {reason}")
    log.info("blessing verdict: %s", verdict.reason)
    return verdict
