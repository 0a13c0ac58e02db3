"""Blessing: clear errors instead of silent never-blessing, readable reasons, first-model policy, paired tests,
audited overrides."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mammoflow.errors import ConfigError
from mammoflow.evaluation.metrics import classification_report, report_with_ci
from mammoflow.retrain.blessing import (
    BlessingPolicy,
    PairedRows,
    Verdict,
    bless,
    paired_bootstrap_delta,
    paired_rows,
)

RULES = [{"metric": "tumour_recall", "margin": 0.02}, {"metric": "roc_auc", "margin": 0.02}]


def policy(**kw) -> BlessingPolicy:
    return BlessingPolicy.load({"first_model": "bless", "rules": RULES, "n_bootstrap": 200, **kw})


def report(recall: float, auc: float, level: str = "roi") -> dict:
    """An evaluation report (the shape `mammoflow evaluate` writes) with given values and made-up CIs."""
    def m(v: float) -> dict:
        return {"value": v, "ci_low": v - 0.05, "ci_high": min(1.0, v + 0.05), "n": 60}
    return {"primary_level": level, "levels": {level: {"metrics": {"tumour_recall": m(recall), "roc_auc": m(auc),
                                                                   "accuracy": m(0.8)}}}}


# ------------------------------------------------------------------------------------------------ the policy


def test_no_thresholds_is_a_clear_error_never_a_silent_refusal():
    with pytest.raises(ConfigError, match="no metric rules.*never blesses.*Fix: add"):
        BlessingPolicy.load({"first_model": "bless"})
    with pytest.raises(ConfigError, match=r"rules\[0\] \(roc_auc\): no threshold"):
        BlessingPolicy.load({"first_model": "bless", "rules": [{"metric": "roc_auc"}]})
    with pytest.raises(ConfigError, match="margin must be a finite number >= 0"):
        BlessingPolicy.load({"first_model": "bless", "rules": [{"metric": "roc_auc", "margin": -0.1}]})
    with pytest.raises(ConfigError, match="first_model: required"):
        BlessingPolicy.load({"rules": RULES})
    with pytest.raises(ConfigError, match="minimums is empty"):
        BlessingPolicy.load({"first_model": "require_minimums", "rules": RULES})
    with pytest.raises(ConfigError, match="paired_test: true"):
        BlessingPolicy.load({"first_model": "bless", "rules": RULES, "decision": "ci", "paired_test": False})
    with pytest.raises(ConfigError, match="unknown key"):
        BlessingPolicy.load({"first_model": "bless", "rules": RULES, "threshold": 0.5})


def test_unknown_metric_or_level_names_what_exists():
    with pytest.raises(ConfigError, match="'recall' is not in the evaluation.*tumour_recall"):
        bless(report(0.9, 0.9), report(0.9, 0.9), policy(rules=[{"metric": "recall", "margin": 0.1}]))
    with pytest.raises(ConfigError, match="no 'breast' level"):
        bless(report(0.9, 0.9), report(0.9, 0.9), policy(level="breast"))


# ------------------------------------------------------------------------------------------------ first model


def test_first_model_bless_says_so():
    v = bless(report(0.7, 0.8), None, policy())
    assert v.blessed and v.kind == "first_model"
    assert "first model" in v.reason and "first_model: bless" in v.reason and "roi.roc_auc 0.800" in v.reason


def test_first_model_minimums_refuse_naming_the_metric():
    pol = policy(first_model="require_minimums", minimums={"roc_auc": 0.85, "roi.tumour_recall": 0.6})
    v = bless(report(0.7, 0.8), None, pol)
    assert not v.blessed
    assert "roi.roc_auc 0.800 (required >= 0.85)" in v.reason and "met: roi.tumour_recall 0.700" in v.reason
    assert v.deltas["roi.roc_auc"]["passed"] is False and v.deltas["roi.tumour_recall"]["passed"] is True
    assert bless(report(0.7, 0.9), None, pol).blessed


# ------------------------------------------------------------------------------------------------ comparisons


def test_worse_challenger_is_refused_with_metric_values_and_delta():
    v = bless(report(0.62, 0.90), report(0.80, 0.91), policy(), challenger="v0002", champion="v0001")
    assert not v.blessed and v.kind == "comparison"
    assert "roi.tumour_recall" in v.reason and "-0.180" in v.reason and "allowed drop of 0.02" in v.reason
    assert "v0002 0.620 vs v0001 0.800" in v.reason
    assert "Passed: roi.roc_auc" in v.reason  # a drop of 0.01 is within the margin
    assert v.deltas["roi.tumour_recall"]["delta"] == pytest.approx(-0.18)
    assert v.deltas["roi.roc_auc"]["passed"] is True


def test_non_inferior_challenger_is_blessed_and_min_gain_is_enforced():
    assert bless(report(0.79, 0.90), report(0.80, 0.905), policy()).blessed  # within both margins
    strict = policy(rules=[{"metric": "roc_auc", "min_gain": 0.02}])
    v = bless(report(0.8, 0.91), report(0.8, 0.90), strict)
    assert not v.blessed and "below the required gain of 0.02" in v.reason
    assert bless(report(0.8, 0.93), report(0.8, 0.90), strict).blessed


def test_lower_is_better_metrics():
    pol = policy(rules=[{"metric": "accuracy", "margin": 0.01, "higher_is_better": False}])
    a, b = report(0.8, 0.9), report(0.8, 0.9)
    a["levels"]["roi"]["metrics"]["accuracy"]["value"] = 0.85  # "higher" is worse for this rule
    assert not bless(a, b, pol).blessed
    a["levels"]["roi"]["metrics"]["accuracy"]["value"] = 0.75
    assert bless(a, b, pol).blessed


def test_undefined_metric_fails_the_rule_with_a_reason():
    a = report(0.8, 0.9)
    a["levels"]["roi"]["metrics"]["roc_auc"]["value"] = None
    v = bless(a, report(0.8, 0.9), policy())
    assert not v.blessed and "undefined" in v.reason


def test_evaluations_on_different_splits_are_refused():
    a, b = report(0.8, 0.9), report(0.8, 0.9)
    a["evaluation_split"] = {"split": "test", "split_sha256": "aaa"}
    b["evaluation_split"] = {"split": "test", "split_sha256": "bbb"}
    with pytest.raises(ConfigError, match="meaningless"):
        bless(a, b, policy())


def test_forced_blessing_keeps_the_refusal_and_needs_a_reason():
    with pytest.raises(ConfigError, match="needs a reason"):
        bless(report(0.5, 0.6), report(0.8, 0.9), policy(), force=True, force_reason=" ")
    v = bless(report(0.5, 0.6), report(0.8, 0.9), policy(), force=True, force_reason="new label definition",
              by="alice")
    assert v.blessed and v.forced and v.would_have_blessed is False and v.forced_by == "alice"
    assert v.reason.startswith("FORCED BLESSING by alice: new label definition.")
    assert "Without the override the verdict was: Not blessed" in v.reason


def test_verdict_json_and_markdown():
    v = bless(report(0.62, 0.90), report(0.80, 0.91), policy(), challenger="v0002", champion="v0001")
    again = Verdict.from_dict(json.loads(v.to_json()))
    assert again.to_dict() == v.to_dict()
    md = v.to_markdown()
    assert md.startswith("# Blessing verdict: NOT BLESSED")
    assert "| roi.tumour_recall | 0.620 [0.570, 0.670] | 0.800 [0.750, 0.850] | -0.180 | drop <= 0.02 | FAIL |" in md
    assert '"first_model": "bless"' in md


def test_flat_and_report_with_ci_inputs():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    good, bad = np.clip(y * 0.6 + rng.random(80) * 0.4, 0, 1), rng.random(80)
    pol = policy(rules=[{"metric": "roc_auc", "margin": 0.05}])
    assert not bless(report_with_ci(y, bad, n_resamples=100), report_with_ci(y, good, n_resamples=100), pol).blessed
    assert bless({"roc_auc": 0.9}, {"roc_auc": 0.9}, pol).blessed


# ------------------------------------------------------------------------------------------------ paired tests


def _patients(n: int) -> np.ndarray:
    return np.repeat(np.arange(n // 4), 4)


def test_paired_delta_of_identical_models_is_exactly_zero():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 2, 120), rng.random(120)
    d = paired_bootstrap_delta(y, p, p, "roc_auc", n=200, seed=0, groups=_patients(120))
    assert d["delta"] == 0.0 and d["ci_low"] == 0.0 and d["ci_high"] == 0.0 and d["unit"] == "group"
    assert d["n_units"] == 30


def test_paired_delta_finds_a_real_difference_and_is_seeded():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    old = np.clip(0.5 + (y - 0.5) * 0.3 + rng.normal(0, 0.25, 200), 0, 1)
    new = np.clip(0.5 + (y - 0.5) * 0.8 + rng.normal(0, 0.15, 200), 0, 1)
    d = paired_bootstrap_delta(y, new, old, "roc_auc", n=300, seed=5)
    assert d["delta"] == pytest.approx(classification_report(y, new)["metrics"]["roc_auc"]
                                       - classification_report(y, old)["metrics"]["roc_auc"])
    assert 0 < d["ci_low"] < d["delta"] < d["ci_high"] and d["fraction_negative"] == 0.0
    assert paired_bootstrap_delta(y, new, old, "roc_auc", n=300, seed=5) == d
    # Pairing: the CI of the difference is narrower than the two separate CIs side by side would suggest.
    lone_new = report_with_ci(y, new, n_resamples=300, seed=5)["metrics"]["roc_auc"]
    lone_old = report_with_ci(y, old, n_resamples=300, seed=5)["metrics"]["roc_auc"]
    assert d["ci_high"] - d["ci_low"] < (lone_new["ci_high"] - lone_new["ci_low"]) + (lone_old["ci_high"] - lone_old["ci_low"])


def test_paired_delta_skips_undefined_resamples_and_checks_inputs():
    y = np.array([0, 0, 0, 1])
    d = paired_bootstrap_delta(y, np.array([0.1, 0.2, 0.3, 0.9]), np.array([0.1, 0.2, 0.9, 0.3]), "roc_auc", n=200)
    assert d["n_skipped"] > 0 and d["n_skipped"] < 200
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap_delta(y, y, y, "auc")
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap_delta(y, y[:3], y, "roc_auc")


def test_ci_decision_refuses_a_drop_the_point_rule_would_allow():
    """decision: ci is a non-inferiority test: a small drop with a wide paired CI is not shown to be harmless."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    old = np.clip(0.5 + (y - 0.5) * 0.5 + rng.normal(0, 0.3, 40), 0, 1)
    new = np.clip(old + rng.normal(0, 0.25, 40), 0, 1)
    rows = {"roi": PairedRows(ids=np.arange(40), y_true=y, p_new=new, p_old=old)}
    a = report_with_ci(y, new, n_resamples=100)
    b = report_with_ci(y, old, n_resamples=100)
    a["primary_level"] = b["primary_level"] = "roi"
    margin = abs(a["metrics"]["roc_auc"]["value"] - b["metrics"]["roc_auc"]["value"]) + 0.02
    rule = [{"metric": "roc_auc", "margin": margin}]
    point = bless(a, b, policy(rules=rule), paired=rows)
    ci = bless(a, b, policy(rules=rule, decision="ci"), paired=rows)
    assert point.blessed and not ci.blessed
    assert "the lower bound of the paired CI" in ci.reason and "paired 95% CI of the difference" in ci.reason
    with pytest.raises(ConfigError, match="decision: ci needs"):
        bless(a, b, policy(rules=rule, decision="ci"))


def _predictions(path, ids, labels, probs, patients) -> None:
    pd.DataFrame({"level": "roi", "id": ids, "label": pd.array(labels, dtype="Int64"), "prob": probs,
                  "pred": pd.array((np.asarray(probs) >= 0.5).astype(int), dtype="Int64"),
                  "patient_id": patients}).to_parquet(path)


def test_paired_rows_join_on_ids_and_refuse_different_rows(tmp_path):
    ids, labels, pats = ["c", "a", "b", "d"], [1, 0, 1, 0], ["p1", "p1", "p2", "p2"]
    _predictions(tmp_path / "new.parquet", ids, labels, [0.9, 0.2, 0.7, 0.4], pats)
    _predictions(tmp_path / "old.parquet", ids[::-1], labels[::-1], [0.3, 0.6, 0.1, 0.8], pats[::-1])
    rows = paired_rows(tmp_path / "new.parquet", tmp_path / "old.parquet", "roi")
    assert list(rows.ids) == ["a", "b", "c", "d"]
    assert list(rows.p_new) == [0.2, 0.7, 0.9, 0.4] and list(rows.p_old) == [0.1, 0.6, 0.8, 0.3]
    assert list(rows.groups) == ["p1", "p2", "p1", "p2"]
    _predictions(tmp_path / "other.parquet", ["a", "b", "c", "e"], labels, [0.5] * 4, pats)
    with pytest.raises(ConfigError, match="different roi rows"):
        paired_rows(tmp_path / "new.parquet", tmp_path / "other.parquet", "roi")
    with pytest.raises(ConfigError, match="no labelled 'patch' rows"):
        paired_rows(tmp_path / "new.parquet", tmp_path / "old.parquet", "patch")
