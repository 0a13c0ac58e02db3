"""Patient-grouped, stratified splits; K folds; source splits kept; leakage refused; incremental extension."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from mammoflow.dataset.splits import (
    SplitLeakError,
    SplitPlan,
    check_plan,
    extend_plan,
    leaking_patients,
    plan_splits,
)
from mammoflow.errors import ConfigError
from mammoflow.records import Record


def _records(n_patients: int = 90, seed: int = 0, prefix: str = "p", split: str | None = None) -> list[Record]:
    """Patients with 1-6 images (views, breasts), ~35% of patients abnormal."""
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        label = rng.choice(["benign", "malignant"]) if rng.random() < 0.35 else "normal"
        for k in range(int(rng.integers(1, 7))):
            out.append(Record(record_id=f"src:{prefix}{p:03d}-{k}", source="src", patient_id=f"{prefix}{p:03d}",
                              image_path=f"{prefix}{p}-{k}.png", label=str(label), split=split))
    return out


def _patient_splits(plan: SplitPlan, records: list[Record]) -> dict[str, set[str]]:
    seen = defaultdict(set)
    for r in records:
        seen[r.patient_id].add(plan.split_of(r.record_id))
    return seen


def _class_share(plan: SplitPlan, records: list[Record], split: str, cls: str = "tumour") -> float:
    labels = [r.binary_label for r in records if plan.split_of(r.record_id) == split]
    return sum(lab == cls for lab in labels) / len(labels)


def test_grouped_stratified_plan():
    records = _records()
    plan = plan_splits(records, ratios=(0.6, 0.2, 0.2), seed=1)
    check_plan(plan, records)
    assert set(plan.assignments) == {r.record_id for r in records}
    assert all(len(s) == 1 for s in _patient_splits(plan, records).values())
    n = Counter(plan.assignments.values())
    for split, ratio in zip(("train", "val", "test"), (0.6, 0.2, 0.2), strict=True):
        assert abs(n[split] / len(records) - ratio) < 0.03, (split, n)
    overall = sum(r.binary_label == "tumour" for r in records) / len(records)
    for split in ("train", "val", "test"):
        assert abs(_class_share(plan, records, split) - overall) < 0.05
    # Counts in the plan agree with the assignments.
    assert sum(sum(c.values()) for c in plan.counts.values()) == len(records)
    assert plan.counts["test"]["tumour"] == sum(
        1 for r in records if plan.split_of(r.record_id) == "test" and r.binary_label == "tumour")


def test_plan_is_seeded_and_order_independent():
    records = _records()
    a = plan_splits(records, seed=5)
    b = plan_splits(list(reversed(records)), seed=5)
    c = plan_splits(records, seed=6)
    assert a.to_json() == b.to_json() and a.sha256() == b.sha256()
    assert a.assignments != c.assignments


def test_fixed_groups_are_pinned():
    records = _records(40)
    pinned = {"p000": "test", "p001": "train", "p002": "val"}
    plan = plan_splits(records, fixed=pinned, seed=3)
    check_plan(plan, records)
    for r in records:
        if r.patient_id in pinned:
            assert plan.split_of(r.record_id) == pinned[r.patient_id]


def test_k_folds_cover_every_record_once_grouped_and_stratified():
    records = _records(120)
    plan = plan_splits(records, ratios=(0.85, 0.0, 0.15), k_folds=5, seed=0, stratify_by="label")
    check_plan(plan, records)
    test = [r for r in records if plan.split_of(r.record_id) == "test"]
    cv = [r for r in records if plan.split_of(r.record_id) == "train"]
    assert len(test) + len(cv) == len(records) and abs(len(test) / len(records) - 0.15) < 0.03
    assert {r.record_id for r in cv} == set(plan.folds) and all(r.record_id not in plan.folds for r in test)
    per_fold = Counter(plan.folds.values())
    assert sorted(per_fold) == [0, 1, 2, 3, 4]
    assert max(per_fold.values()) - min(per_fold.values()) <= 3
    folds_of_patient = defaultdict(set)
    for r in cv:
        folds_of_patient[r.patient_id].add(plan.fold_of(r.record_id))
    assert all(len(f) == 1 for f in folds_of_patient.values())
    # Every class is spread over the folds close to its overall share.
    for fold in range(5):
        labels = Counter(r.label for r in cv if plan.folds[r.record_id] == fold)
        assert abs(labels["normal"] / sum(labels.values()) - 0.65) < 0.1
    # Without a test share, every record is in exactly one fold.
    all_cv = plan_splits(records, ratios=(1.0, 0.0, 0.0), k_folds=5)
    assert set(all_cv.folds) == {r.record_id for r in records}


def test_bad_parameters_are_config_errors():
    records = _records(10)
    with pytest.raises(ConfigError, match="sum"):
        plan_splits(records, ratios=(0.5, 0.2, 0.2))
    with pytest.raises(ConfigError, match="held-out fold"):
        plan_splits(records, ratios=(0.6, 0.2, 0.2), k_folds=5)
    with pytest.raises(ConfigError, match="group_by"):
        plan_splits(records, group_by="breast")  # type: ignore[arg-type]


def test_check_plan_rejects_a_leaking_plan_and_names_the_patient():
    records = _records(20)
    plan = plan_splits(records, seed=0)
    check_plan(plan, records)
    victim = next(p for p, rids in plan.groups.items() if len(rids) >= 2)
    first, second = plan.groups[victim][:2]
    plan.assignments[second] = "test" if plan.assignments[first] != "test" else "train"
    with pytest.raises(SplitLeakError) as err:
        check_plan(plan, records)
    assert victim in str(err.value) and err.value.patients == [victim]
    # A record with no split at all is refused too.
    del plan.assignments[first]
    with pytest.raises(ConfigError, match=first):
        check_plan(plan, records)


def test_check_plan_rejects_a_patient_in_two_folds():
    records = _records(30)
    plan = plan_splits(records, ratios=(1.0, 0.0, 0.0), k_folds=3)
    victim = next(p for p, rids in plan.groups.items() if len(rids) >= 2)
    a, b = plan.groups[victim][:2]
    plan.folds[b] = (plan.folds[a] + 1) % 3
    with pytest.raises(SplitLeakError, match=victim):
        check_plan(plan, records)


def test_keep_existing_keeps_the_source_split_and_carves_val_by_patient():
    train = _records(60, seed=1, prefix="a", split="train")
    test = _records(20, seed=2, prefix="b", split="test")
    records = train + test
    plan = plan_splits(records, ratios=(0.75, 0.25, 0.0), keep_existing=True, seed=0)
    check_plan(plan, records)
    assert all(plan.split_of(r.record_id) == "test" for r in test)
    assert {plan.split_of(r.record_id) for r in train} == {"train", "val"}
    val = sum(plan.split_of(r.record_id) == "val" for r in train)
    assert abs(val / len(train) - 0.25) < 0.04
    assert not plan.moved


def test_merged_source_split_leak_is_regrouped_or_refused():
    calc = _records(30, seed=3, prefix="p", split="train")
    mass = [Record(record_id=f"mass:{r.record_id}", source="src", patient_id=r.patient_id,
                   image_path=r.image_path, label=r.label, split="test") for r in calc[:5]]
    leaked = sorted({r.patient_id for r in mass})
    records = calc + mass
    naive = {r.record_id: r.split for r in records}
    assert sorted(leaking_patients(records, naive)) == leaked
    plan = plan_splits(records, ratios=(1.0, 0.0, 0.0), keep_existing=True)
    check_plan(plan, records)
    assert sorted(m["group"] for m in plan.moved) == leaked
    assert all(plan.split_of(r.record_id) == "test" for r in records if r.patient_id in leaked)
    assert "re-grouped" in plan.summary_markdown() and leaked[0] in plan.summary_markdown()
    to_train = plan_splits(records, ratios=(1.0, 0.0, 0.0), keep_existing=True, on_leak="move_to_train")
    assert all(to_train.split_of(r.record_id) == "train" for r in records if r.patient_id in leaked)
    with pytest.raises(SplitLeakError) as err:
        plan_splits(records, keep_existing=True, on_leak="error")
    assert err.value.patients == leaked and leaked[0] in str(err.value)


def test_extend_plan_never_moves_an_existing_patient():
    old_records = _records(60, seed=4)
    old = plan_splits(old_records, seed=0)
    known = old_records[0].patient_id
    extra_of_known = Record(record_id="src:new-view-of-known", source="src", patient_id=known,
                            image_path="x.png", label="normal")
    newcomers = _records(30, seed=5, prefix="n")
    new = extend_plan(old, [extra_of_known, *newcomers, old_records[1]])
    all_records = old_records + [extra_of_known] + newcomers
    check_plan(new, all_records)
    assert all(new.split_of(rid) == split for rid, split in old.assignments.items())
    assert new.split_of(extra_of_known.record_id) == old.split_of(old_records[0].record_id)
    new_splits = Counter(new.split_of(r.record_id) for r in newcomers)
    assert set(new_splits) == {"train", "val", "test"}
    assert sum(sum(c.values()) for c in new.counts.values()) == len(all_records)
    # The round trip through JSON keeps the plan exactly.
    assert SplitPlan.from_dict(__import__("json").loads(new.to_json())).to_json() == new.to_json()


def test_extend_plan_in_k_fold_mode_keeps_folds():
    old_records = _records(40, seed=6)
    old = plan_splits(old_records, ratios=(0.8, 0.0, 0.2), k_folds=4)
    newcomers = _records(20, seed=7, prefix="n")
    new = extend_plan(old, newcomers)
    check_plan(new, old_records + newcomers)
    assert all(new.folds[rid] == f for rid, f in old.folds.items())
    assert all(r.record_id in new.folds for r in newcomers if new.split_of(r.record_id) != "test")


# --------------------------------------------------------------------------------------------------- real data


def _cbis_records(csvs) -> list[Record]:
    """One record per full mammogram from the four official CSVs (metadata only, no DICOMs needed)."""
    from mammoflow.sources.cbis_ddsm import read_cbis_ddsm

    return read_cbis_ddsm(csvs=csvs, metadata_only=True, salt="test-salt").records


@pytest.mark.realdata
def test_naive_merge_of_the_official_cbis_split_leaks_and_the_plan_does_not(cbis_csvs):
    records = _cbis_records(cbis_csvs)
    # The naive merge: every CSV row keeps its official split. Each official split (calc, mass) is
    # patient-disjoint on its own; merged, 31 patients have rows in both train and test.
    row_splits = defaultdict(set)
    for r in records:
        for lesion in r.lesions:
            row_splits[r.patient_id].add(lesion.extra["official_split"])
    naive_leaks = sorted(p for p, s in row_splits.items() if len(s) > 1)
    assert len(naive_leaks) == 31, len(naive_leaks)
    # Per image (an image with rows in both goes to test), 22 of them still have images in both splits.
    naive = {r.record_id: r.split for r in records}
    leaks = leaking_patients(records, naive)
    assert 0 < len(leaks) <= 31 and set(leaks) <= set(naive_leaks), len(leaks)
    assert all(s == ["test", "train"] for s in leaks.values())
    with pytest.raises(SplitLeakError):
        check_plan(SplitPlan(assignments=naive), records)

    kept = plan_splits(records, ratios=(0.75, 0.25, 0.0), keep_existing=True, stratify_by="label", seed=0)
    check_plan(kept, records)
    assert leaking_patients(records, kept.assignments) == {}
    assert sorted(m["group"] for m in kept.moved) == sorted(leaks)
    official_test = {r.record_id for r in records if r.split == "test"}
    assert all(kept.split_of(rid) == "test" for rid in official_test)  # the official test set stays whole

    fresh = plan_splits(records, ratios=(0.6, 0.2, 0.2), stratify_by="label", seed=0)
    check_plan(fresh, records)
    overall = sum(r.label == "malignant" for r in records) / len(records)
    for split in ("train", "val", "test"):
        assert abs(_class_share(fresh, records, split, "tumour") - 1.0) < 1e-9  # all CBIS images are abnormal
        labels = [r.label for r in records if fresh.split_of(r.record_id) == split]
        assert abs(labels.count("malignant") / len(labels) - overall) < 0.02


@pytest.mark.realdata
def test_keep_existing_reproduces_yus_released_split(mias_rois_zip):
    from mammoflow.sources.mias_rois import read_mias_rois

    records = read_mias_rois(mias_rois_zip, metadata_only=True).records
    plan = plan_splits(records, ratios=(0.6, 0.2, 0.2), keep_existing=True)
    check_plan(plan, records)
    assert plan.counts == {"train": {"normal": 125, "tumour": 72}, "val": {"normal": 41, "tumour": 24},
                           "test": {"normal": 41, "tumour": 23}}
    assert all(plan.split_of(r.record_id) == r.split for r in records)
