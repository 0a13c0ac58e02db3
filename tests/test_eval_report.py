"""The report's view of evaluations of several models: every cross-validation member and every ensemble member is
named (pure functions on metrics.json documents; the rendered reports are tested in test_evaluate.py)."""

from __future__ import annotations

from mammoflow.evaluation.report import cv_section, model_summary

LEVEL = {"metrics": {"accuracy": {"mean": 0.8, "std": 0.1, "min": 0.7, "max": 0.9, "n": 2}}, "n_folds": 2}


def _cv(groups: dict) -> dict:
    return {"kind": "mammoflow.evaluation.cross_validation", "split": ["train"], "fold_of_each": True,
            "groups": groups}


def test_cv_section_names_each_member_run_with_its_fold():
    members = [{"run": f"fold{k}", "model": "xi_vgg16", "fold": k, "uri": f"/runs/fold{k}"} for k in range(2)]
    section = cv_section(_cv({"xi_vgg16-abc": {"model": "xi_vgg16", "models": ["xi_vgg16"], "members": members,
                                               "runs": ["fold0", "fold1"], "folds": [0, 1],
                                               "levels": {"roi": LEVEL}}}))
    (group,) = section["groups"]
    assert group["model"] == "xi_vgg16" and group["runs"] == "fold0 (fold 0), fold1 (fold 1)"
    assert group["rows"][0]["metric"] == "accuracy" and group["rows"][0]["n"] == 2


def test_cv_section_of_a_group_of_different_models_names_every_model():
    members = [{"run": "a", "model": "compact_fusion", "fold": None, "uri": "a.keras"},
               {"run": "b", "model": "xi_alexnet", "fold": None, "uri": "b.keras"}]
    (group,) = cv_section(_cv({"g": {"model": "compact_fusion", "members": members, "runs": ["a", "b"],
                                     "folds": [None, None], "levels": {"roi": LEVEL}}}))["groups"]
    assert group["model"] == "compact_fusion / xi_alexnet"
    assert group["runs"] == "a (compact_fusion), b (xi_alexnet)"


def test_cv_section_reads_groups_written_before_members_were_recorded():
    (group,) = cv_section(_cv({"g": {"model": "xi_vgg16", "runs": ["fold0", "fold1"], "folds": [0, 1],
                                     "levels": {"roi": LEVEL}}}))["groups"]
    assert group["model"] == "xi_vgg16" and group["runs"] == "fold0 (fold 0), fold1 (fold 1)"


def test_model_summary_of_one_model_and_of_an_ensemble():
    one = {"name": "compact_fusion", "uri": "/runs/a", "sha256": "1" * 64}
    assert model_summary(one) == {**one, "members": []}
    members = [{"name": "compact_fusion", "uri": f"/runs/m{k}", "sha256": f"{k}" * 64} for k in range(3)]
    summary = model_summary({**members[0], "members": members})
    assert summary["name"] == "ensemble of 3 models (compact_fusion)"
    assert summary["uri"] == "/runs/m0, /runs/m1, /runs/m2"
    assert summary["sha256"].split(", ") == [f"{k}" * 64 for k in range(3)]
