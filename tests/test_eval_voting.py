"""ROI voting (Yu et al. 2020, eq. 1) and breast/patient aggregation, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mammoflow.errors import InputError
from mammoflow.evaluation.metrics import classification_report
from mammoflow.evaluation.voting import aggregate, aggregate_groups, majority_vote, soft_vote


def test_majority_vote_takes_the_mode():
    assert majority_vote([1, 1, 0], [0.2, 0.2, 0.9]) == 1  # the mode wins even against the mean probability
    assert majority_vote([0, 0, 1, 1, 0], [0.9] * 5) == 0
    assert majority_vote([1] * 25, [0.7] * 25) == 1


def test_majority_vote_tie_goes_to_tumour_when_mean_probability_is_high():
    assert majority_vote([1, 1, 0, 0], [0.9, 0.8, 0.3, 0.2]) == 1  # mean 0.55


def test_majority_vote_tie_goes_to_normal_when_mean_probability_is_low():
    assert majority_vote([1, 1, 0, 0], [0.6, 0.55, 0.45, 0.1]) == 0  # mean 0.425


def test_majority_vote_tie_at_exactly_one_half_is_tumour():
    assert majority_vote([1, 0], [0.75, 0.25]) == 1


def test_majority_vote_rejects_bad_input():
    with pytest.raises(ValueError):
        majority_vote([], [])
    with pytest.raises(ValueError):
        majority_vote([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        majority_vote([0, 1], [0.1])


def test_soft_vote_is_the_mean_probability():
    assert soft_vote([0.2, 0.4, 0.9]) == pytest.approx(0.5)


def _patches() -> pd.DataFrame:
    rows = [
        # roi, true label, P(tumour) of each patch
        ("A", 1, [0.9, 0.6, 0.2]),  # 2 of 3 votes -> tumour, mean 0.5667
        ("B", 0, [0.7, 0.55, 0.4, 0.1]),  # tie 2-2, mean 0.4375 -> normal
        ("C", 1, [0.95, 0.3]),  # tie 1-1, mean 0.625 -> tumour
        ("D", 0, [0.51, 0.51, 0.0]),  # 2 of 3 votes -> tumour, but mean 0.34 -> soft says normal
    ]
    return pd.DataFrame([{"roi_id": r, "label": y, "prob": p, "patient_id": f"P{r}"}
                         for r, y, probs in rows for p in probs])


def test_aggregate_majority_hand_computed():
    out = aggregate(_patches(), method="majority", keep=("patient_id",)).set_index("roi_id")
    assert list(out.index) == ["A", "B", "C", "D"]
    assert out["n_patches"].tolist() == [3, 4, 2, 3]
    assert out["votes_tumour"].tolist() == [2, 2, 1, 2]
    assert out["decision"].tolist() == [1, 0, 1, 1]
    assert out["label"].tolist() == [1, 0, 1, 0]
    np.testing.assert_allclose(out["mean_prob"], [1.7 / 3, 1.75 / 4, 0.625, 1.02 / 3])
    np.testing.assert_allclose(out["prob"], out["mean_prob"])
    assert out["patient_id"].tolist() == ["PA", "PB", "PC", "PD"]


def test_aggregate_soft_uses_mean_probability():
    out = aggregate(_patches(), method="soft").set_index("roi_id")
    assert out["decision"].tolist() == [1, 0, 1, 0]


def test_aggregate_uses_given_patch_predictions():
    df = _patches()
    df["pred"] = 0  # e.g. an argmax computed elsewhere that never says tumour
    out = aggregate(df, method="majority").set_index("roi_id")
    assert out["votes_tumour"].tolist() == [0, 0, 0, 0]
    assert out["decision"].tolist() == [0, 0, 0, 0]


def test_aggregate_without_labels_keeps_going():
    out = aggregate(_patches().drop(columns="label"))
    assert out["label"].isna().all()
    assert out["decision"].tolist() == [1, 0, 1, 1]


def test_aggregate_refuses_inconsistent_labels_and_missing_columns():
    df = _patches()
    df.loc[0, "label"] = 0  # ROI A now has both labels
    with pytest.raises(InputError, match="label"):
        aggregate(df)
    with pytest.raises(InputError, match="prob"):
        aggregate(_patches().drop(columns="prob"))
    with pytest.raises(ValueError):
        aggregate(_patches(), method="median")  # type: ignore[arg-type]


def test_roi_auc_from_probabilities_differs_from_auc_of_hard_votes():
    # Every ROI is voted "tumour" (most patches above 0.5), yet the mean probabilities rank the ROIs
    # perfectly. The papers' code drew the ROI ROC from the votes: AUC 0.5 here instead of 1.0.
    patches = pd.DataFrame(
        [{"roi_id": f"t{i}", "label": 1, "prob": p} for i, m in enumerate((0.9, 0.8)) for p in (m, m, m - 0.4)]
        + [{"roi_id": f"n{i}", "label": 0, "prob": p} for i, m in enumerate((0.6, 0.55)) for p in (m, m, m - 0.4)]
    )
    rois = aggregate(patches, method="majority")
    assert rois["decision"].tolist() == [1, 1, 1, 1]
    wrong = roc_auc_score(rois["label"].astype(int), rois["decision"])
    right = classification_report(rois["label"].astype(int), rois["prob"], y_pred=rois["decision"])
    assert wrong == pytest.approx(0.5)
    assert right["metrics"]["roc_auc"] == pytest.approx(1.0)
    assert right["metrics"]["accuracy"] == pytest.approx(0.5)  # decisions still come from the votes


def test_aggregate_groups_max_and_mean():
    rois = pd.DataFrame({
        "breast_id": ["p1:L", "p1:L", "p1:R", "p2:L"],
        "patient_id": ["p1", "p1", "p1", "p2"],
        "label": [0, 1, 0, 0],
        "prob": [0.2, 0.7, 0.1, 0.4],
    })
    by_max = aggregate_groups(rois, by="breast_id", how="max", keep=("patient_id",)).set_index("breast_id")
    assert by_max["label"].tolist() == [1, 0, 0]
    assert by_max["n_items"].tolist() == [2, 1, 1]
    np.testing.assert_allclose(by_max["prob"], [0.7, 0.1, 0.4])
    assert by_max["decision"].tolist() == [1, 0, 0]
    assert by_max["patient_id"].tolist() == ["p1", "p1", "p2"]
    by_mean = aggregate_groups(rois, by="patient_id", how="mean").set_index("patient_id")
    np.testing.assert_allclose(by_mean["prob"], [1.0 / 3, 0.4])
    assert by_mean["label"].tolist() == [1, 0]
    assert by_mean["decision"].tolist() == [0, 0]
