"""Patient-grouped, label-stratified train/val/test splits and K folds, checked for leakage.

None of the three papers split by patient: Yu et al. 2020 split the ROIs 60/20/20 at ROI level, Jaamour et al. 2023
used the official CBIS-DDSM split (patient-disjoint within calc and within mass, but merging the two puts some
patients in both train and test), Xi et al. 2018 ran five-fold cross-validation over patches. Here every image,
view and breast of a patient stays in one split (or one fold), classes keep their proportions in every split,
and :func:`check_plan` refuses any plan in which a patient appears twice.

The plan is made from records only (no pixels), so it is written and checked before any example is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mammoflow.errors import ConfigError, MammoflowError
from mammoflow.records import Record

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
GroupBy = Literal["patient", "record"]
StratifyBy = Literal["binary_label", "label", "none"]
OnLeak = Literal["move_to_test", "move_to_train", "error"]
UNLABELLED = "unlabelled"


class SplitLeakError(MammoflowError):
    """A patient would appear in more than one split (or fold): the plan is refused."""

    def __init__(self, message: str, patients: Sequence[str]):
        self.patients = list(patients)
        super().__init__(message)


@dataclass
class SplitConfig:
    """How records are split (the ``splits`` section of a dataset config)."""

    ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train / val / test
    seed: int = 0
    group_by: GroupBy = "patient"  # "record" only when patients are unknown (Yu's released ROIs)
    stratify_by: StratifyBy = "binary_label"
    k_folds: int | None = None  # K-fold cross-validation over the non-test part (Xi et al. 2018: 5)
    keep_existing: bool = False  # keep the split that came with the source (Yu's release, CBIS official)
    on_leak: OnLeak = "move_to_test"  # a patient in two source splits (merged CBIS calc + mass)


@dataclass
class SplitPlan:
    """Which split (and fold) every record goes to, with the groups and counts behind it."""

    assignments: dict[str, str]  # record_id -> train / val / test
    folds: dict[str, int] = field(default_factory=dict)  # record_id -> fold (K-fold mode, non-test records)
    groups: dict[str, list[str]] = field(default_factory=dict)  # group (patient) id -> record ids
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> records
    group_counts: dict[str, int] = field(default_factory=dict)  # split -> groups (patients)
    fold_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # fold -> class -> records
    moved: list[dict[str, Any]] = field(default_factory=list)  # groups re-assigned because the source leaked
    params: dict[str, Any] = field(default_factory=dict)

    def split_of(self, record_id: str) -> str:
        return self.assignments[record_id]

    def fold_of(self, record_id: str) -> int | None:
        return self.folds.get(record_id)

    def group_split(self) -> dict[str, str]:
        """Group id -> split (every record of a group shares it)."""
        return {g: self.assignments[rids[0]] for g, rids in self.groups.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "counts": self.counts,
            "group_counts": self.group_counts,
            "fold_counts": self.fold_counts,
            "moved": self.moved,
            "groups": {g: sorted(r) for g, r in sorted(self.groups.items())},
            "assignments": dict(sorted(self.assignments.items())),
            "folds": dict(sorted(self.folds.items())),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SplitPlan:
        return cls(assignments=dict(d["assignments"]), folds={k: int(v) for k, v in d.get("folds", {}).items()},
                   groups={k: list(v) for k, v in d.get("groups", {}).items()}, counts=d.get("counts", {}),
                   group_counts=d.get("group_counts", {}), fold_counts=d.get("fold_counts", {}),
                   moved=list(d.get("moved", [])), params=dict(d.get("params", {})))

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): the same plan always gives the same bytes."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def summary_markdown(self) -> str:
        """A table a person can read: records per split and class, patients per split, re-grouped patients."""
        classes = sorted({c for per in self.counts.values() for c in per})
        lines = ["# Split plan", "", f"Parameters: `{json.dumps(self.params, sort_keys=True)}`", "",
                 "| split | patients | records | " + " | ".join(classes) + " |",
                 "| --- | --- | --- | " + " | ".join("---" for _ in classes) + " |"]
        for split in SPLITS:
            if split not in self.counts:
                continue
            per = self.counts[split]
            total = sum(per.values())
            cells = [f"{per.get(c, 0)} ({per.get(c, 0) / total:.0%})" if total else "0" for c in classes]
            lines.append(f"| {split} | {self.group_counts.get(split, 0)} | {total} | " + " | ".join(cells) + " |")
        if self.fold_counts:
            lines += ["", "| fold | records | " + " | ".join(classes) + " |",
                      "| --- | --- | " + " | ".join("---" for _ in classes) + " |"]
            for fold, per in sorted(self.fold_counts.items(), key=lambda kv: int(kv[0])):
                lines.append(f"| {fold} | {sum(per.values())} | " + " | ".join(str(per.get(c, 0)) for c in classes)
                             + " |")
        if self.moved:
            lines += ["", f"{len(self.moved)} patient(s) were in more than one source split and were re-grouped:", ""]
            lines += [f"- {m['group']}: {', '.join(m['from'])} -> {m['to']} ({m['records']} records)"
                      for m in self.moved]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------- helpers


def class_of(rec: Record, stratify_by: str) -> str:
    """The class a record is stratified by."""
    if stratify_by == "none":
        return "all"
    if stratify_by == "binary_label":
        return rec.binary_label or UNLABELLED
    if stratify_by == "label":
        return rec.label or UNLABELLED
    raise ConfigError(f"splits.stratify_by: {stratify_by!r} is not one of binary_label, label, none")


def group_of(rec: Record, group_by: str) -> str:
    if group_by == "patient":
        return rec.patient_id
    if group_by == "record":
        return rec.record_id
    raise ConfigError(f"splits.group_by: {group_by!r} is not one of patient, record")


def leaking_patients(records: Iterable[Record], split_of: Mapping[str, str | None]) -> dict[str, list[str]]:
    """Patients whose records fall in more than one split: patient id -> sorted split names.

    ``split_of`` maps record ids to splits (records missing from it, or mapped to None, are ignored).
    """
    seen: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        split = split_of.get(rec.record_id)
        if split is not None:
            seen[rec.patient_id].add(str(split))
    return {p: sorted(s) for p, s in sorted(seen.items()) if len(s) > 1}


def _check_ratios(ratios: Sequence[float], k_folds: int | None) -> tuple[float, float, float]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ConfigError(f"splits.ratios: need three non-negative train/val/test fractions summing to 1, "
                          f"got {list(ratios)}")
    if ratios[0] <= 0:
        raise ConfigError(f"splits.ratios: the train fraction must be > 0, got {list(ratios)}")
    if k_folds is not None:
        if k_folds < 2:
            raise ConfigError(f"splits.k_folds: need at least 2 folds, got {k_folds}")
        if ratios[1] > 0:
            raise ConfigError("splits: with k_folds the validation data is the held-out fold; "
                              f"set the val ratio to 0 (got {list(ratios)})")
    return float(ratios[0]), float(ratios[1]), float(ratios[2])


def _assign(vectors: Mapping[str, np.ndarray], ratios: Sequence[float], rng: np.random.Generator,
            initial: np.ndarray | None = None) -> dict[str, int]:
    """Greedy stratified assignment of groups to bins with target ``ratios`` (one bin per ratio).

    Groups are visited largest first (ties in a seeded random order); each goes to the bin that brings every
    class's share, and the bin's total share, closest to the targets (squared error over the final totals).
    ``initial`` (bins x classes) holds counts already placed (kept or earlier groups), so only the deficit is
    filled. This is the idea of scikit-learn's StratifiedGroupKFold, generalised to unequal ratios.
    """
    targets = np.asarray(ratios, dtype=np.float64)
    open_bins = np.flatnonzero(targets > 0)
    names = sorted(vectors)
    if not names:
        return {}
    n_classes = len(next(iter(vectors.values())))
    counts = np.zeros((len(targets), n_classes)) if initial is None else initial.astype(np.float64).copy()
    class_totals = counts.sum(axis=0) + np.sum([vectors[g] for g in names], axis=0)
    class_totals[class_totals == 0] = 1.0
    grand_total = class_totals.sum()
    order = [names[i] for i in rng.permutation(len(names))]
    order.sort(key=lambda g: -float(vectors[g].sum()))  # stable: the permutation breaks ties
    out: dict[str, int] = {}
    for g in order:
        v = vectors[g]
        best, best_cost = int(open_bins[0]), np.inf
        for b in open_bins:
            trial = counts.copy()
            trial[b] += v
            class_err = ((trial / class_totals) - targets[:, None]) ** 2
            size_err = (trial.sum(axis=1) / grand_total - targets) ** 2
            cost = float(class_err.sum() + size_err.sum())
            if cost < best_cost - 1e-12:
                best, best_cost = int(b), cost
        counts[best] += v
        out[g] = best
    return out


def _vectors(groups: Mapping[str, list[Record]], classes: list[str], stratify_by: str) -> dict[str, np.ndarray]:
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for g, recs in groups.items():
        v = np.zeros(len(classes))
        for r in recs:
            v[index[class_of(r, stratify_by)]] += 1
        out[g] = v
    return out


def _counts_of(group_ids: Iterable[str], vectors: Mapping[str, np.ndarray], n_classes: int) -> np.ndarray:
    total = np.zeros(n_classes)
    for g in group_ids:
        total += vectors[g]
    return total


def _normalise_split(name: str | None, record_id: str) -> str | None:
    if name is None:
        return None
    aliases = {"training": "train", "validation": "val", "valid": "val", "testing": "test"}
    name = aliases.get(str(name).lower(), str(name).lower())
    if name not in SPLITS:
        raise ConfigError(f"record {record_id}: source split {name!r} is not one of {', '.join(SPLITS)}")
    return name


# --------------------------------------------------------------------------------------------------- planning


def plan_splits(records: Sequence[Record], ratios: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0,
                group_by: GroupBy = "patient", stratify_by: StratifyBy = "binary_label",
                k_folds: int | None = None, keep_existing: bool = False,
                fixed: Mapping[str, str] | None = None, on_leak: OnLeak = "move_to_test") -> SplitPlan:
    """Assign every record to train / val / test (and a fold), grouped by patient and stratified by label.

    - ``ratios``: train/val/test fractions, met per class as closely as whole patient groups allow.
    - ``k_folds``: the non-test part is split into K grouped, stratified folds (all in split ``train``,
      fold 0..K-1); the test fraction is held out first. The val ratio must then be 0.
    - ``keep_existing``: records keep the split they came with (``Record.split``); if the source has no
      validation split and ``ratios`` asks for one, val is carved out of train by patient groups with fraction
      ``val / (train + val)``; records without a source split are planned with ``ratios``. A patient present
      in two source splits (merged CBIS-DDSM calc + mass) is moved to test (``on_leak="move_to_test"``), to
      train (``"move_to_train"``), or refused (``"error"``); moves are listed in ``plan.moved``.
    - ``fixed``: group id -> split, pinned before anything else.
    Same records and arguments give the same plan.
    """
    train_r, val_r, test_r = _check_ratios(ratios, k_folds)
    if on_leak not in ("move_to_test", "move_to_train", "error"):
        raise ConfigError(f"splits.on_leak: {on_leak!r} is not one of move_to_test, move_to_train, error")
    rng = np.random.default_rng(seed)
    records = sorted(records, key=lambda r: r.record_id)
    groups: dict[str, list[Record]] = defaultdict(list)
    for rec in records:
        groups[group_of(rec, group_by)].append(rec)
    classes = sorted({class_of(r, stratify_by) for r in records})
    vectors = _vectors(groups, classes, stratify_by)
    group_split: dict[str, str] = {}
    moved: list[dict[str, Any]] = []

    for g, split in (fixed or {}).items():
        if g in groups:
            group_split[g] = _normalise_split(split, g) or "train"

    if keep_existing:
        leaks = []
        for g, recs in groups.items():
            if g in group_split:
                continue
            source = sorted({s for r in recs if (s := _normalise_split(r.split, r.record_id)) is not None})
            if len(source) == 1:
                group_split[g] = source[0]
            elif len(source) > 1:
                leaks.append((g, source, len(recs)))
        if leaks and on_leak == "error":
            names = [g for g, _, _ in leaks]
            raise SplitLeakError(
                f"{len(names)} patient(s) are in more than one source split (e.g. {', '.join(names[:10])}): "
                "the merged source split leaks patients. Fix: set splits.on_leak to move_to_test or "
                "move_to_train, or plan new splits (keep_existing: false)", names)
        target = "test" if on_leak == "move_to_test" else "train"
        for g, source, n in leaks:
            group_split[g] = target
            moved.append({"group": g, "from": source, "to": target, "records": n})
        if leaks:
            log.warning("%d patient(s) were in more than one source split; moved to %s (listed in the plan)",
                        len(leaks), target)

    # Groups not placed yet are planned with the ratios, filling what the placed groups leave.
    free = [g for g in sorted(groups) if g not in group_split]
    initial = np.stack([_counts_of([g for g, s in group_split.items() if s == split], vectors, len(classes))
                        for split in SPLITS])
    if free:
        first = _assign({g: vectors[g] for g in free}, (train_r + val_r, 0.0, test_r) if k_folds
                        else (train_r, val_r, test_r), rng, initial)
        for g, b in first.items():
            group_split[g] = SPLITS[b]

    # keep_existing without a source validation split: carve val out of train by patient groups.
    if keep_existing and not k_folds and val_r > 0 and "val" not in group_split.values():
        train_groups = sorted(g for g, s in group_split.items() if s == "train")
        frac = val_r / (train_r + val_r)
        carved = _assign({g: vectors[g] for g in train_groups}, (1.0 - frac, frac), rng)
        for g, b in carved.items():
            if b == 1:
                group_split[g] = "val"

    group_fold: dict[str, int] = {}
    if k_folds:
        cv_groups = sorted(g for g, s in group_split.items() if s != "test")
        for g, s in list(group_split.items()):
            if s == "val":  # a source val split joins the folds
                group_split[g] = "train"
        group_fold = _assign({g: vectors[g] for g in cv_groups}, [1.0 / k_folds] * k_folds, rng)

    params = {"ratios": [train_r, val_r, test_r], "seed": seed, "group_by": group_by, "stratify_by": stratify_by,
              "k_folds": k_folds, "keep_existing": keep_existing, "on_leak": on_leak}
    return _make_plan(groups, group_split, group_fold, moved, params, stratify_by)


def _make_plan(groups: Mapping[str, list[Record]], group_split: Mapping[str, str], group_fold: Mapping[str, int],
               moved: list[dict[str, Any]], params: dict[str, Any], stratify_by: str) -> SplitPlan:
    assignments, folds = {}, {}
    counts: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    fold_counts: dict[str, Counter[str]] = defaultdict(Counter)
    group_counts: Counter[str] = Counter()
    for g, recs in groups.items():
        split = group_split[g]
        group_counts[split] += 1
        for r in recs:
            assignments[r.record_id] = split
            counts[split][class_of(r, stratify_by)] += 1
            if g in group_fold:
                folds[r.record_id] = int(group_fold[g])
                fold_counts[str(group_fold[g])][class_of(r, stratify_by)] += 1
    return SplitPlan(
        assignments=assignments, folds=folds,
        groups={g: sorted(r.record_id for r in recs) for g, recs in sorted(groups.items())},
        counts={s: dict(sorted(c.items())) for s, c in counts.items() if c},
        group_counts={s: group_counts[s] for s in SPLITS if group_counts[s]},
        fold_counts={f: dict(sorted(c.items())) for f, c in sorted(fold_counts.items())},
        moved=sorted(moved, key=lambda m: m["group"]), params=params)


def extend_plan(old_plan: SplitPlan, new_records: Sequence[Record], seed: int | None = None) -> SplitPlan:
    """Add records to an existing plan without moving anyone (incremental data for retraining).

    Records already planned keep their split and fold; new records of a known patient join that patient's
    split (and fold); new patients are assigned with the old plan's ratios, filling the deficit left by the
    existing counts. With ``keep_existing``, a new patient's source split is kept.
    """
    p = old_plan.params
    group_by, stratify_by, k_folds = p.get("group_by", "patient"), p.get("stratify_by", "binary_label"), p.get("k_folds")
    train_r, val_r, test_r = _check_ratios(p.get("ratios", (0.6, 0.2, 0.2)), k_folds)
    rng = np.random.default_rng(p.get("seed", 0) if seed is None else seed)
    old_group_split = old_plan.group_split()
    old_group_fold = {g: old_plan.folds[rids[0]] for g, rids in old_plan.groups.items()
                      if rids[0] in old_plan.folds}

    new_records = sorted((r for r in new_records if r.record_id not in old_plan.assignments),
                         key=lambda r: r.record_id)
    new_groups: dict[str, list[Record]] = defaultdict(list)
    for rec in new_records:
        new_groups[group_of(rec, group_by)].append(rec)
    classes = sorted(set().union(*[set(c) for c in old_plan.counts.values()],
                                 {class_of(r, stratify_by) for r in new_records}))
    vectors = _vectors(new_groups, classes, stratify_by)

    def old_counts(per: Mapping[str, Mapping[str, int]], keys: Sequence[str]) -> np.ndarray:
        return np.array([[per.get(k, {}).get(c, 0) for c in classes] for k in keys], dtype=np.float64)

    group_split: dict[str, str] = {}
    group_fold: dict[str, int] = {}
    fresh = []
    for g, recs in sorted(new_groups.items()):
        if g in old_group_split:
            group_split[g] = old_group_split[g]
            if g in old_group_fold:
                group_fold[g] = old_group_fold[g]
        elif p.get("keep_existing") and recs[0].split is not None:
            group_split[g] = _normalise_split(recs[0].split, recs[0].record_id) or "train"
        else:
            fresh.append(g)
    placed = {s: {c: 0 for c in classes} for s in SPLITS}
    for s, per in old_plan.counts.items():
        for c, n in per.items():
            placed[s][c] += n
    initial = old_counts(placed, SPLITS)
    for g, s in group_split.items():
        initial[SPLITS.index(s)] += vectors[g]
    first = _assign({g: vectors[g] for g in fresh}, (train_r + val_r, 0.0, test_r) if k_folds
                    else (train_r, val_r, test_r), rng, initial)
    for g, b in first.items():
        group_split[g] = SPLITS[b]
    if k_folds:
        fold_keys = [str(f) for f in range(k_folds)]
        fold_initial = old_counts(old_plan.fold_counts, fold_keys)
        need_fold = sorted(g for g, s in group_split.items() if s != "test" and g not in group_fold)
        for g in need_fold:
            group_split[g] = "train"
        group_fold.update(_assign({g: vectors[g] for g in need_fold}, [1.0 / k_folds] * k_folds, rng,
                                  fold_initial))

    # Merge: old groups keep everything; new records of old groups join them.
    merged = SplitPlan.from_dict(old_plan.to_dict())
    added = _make_plan(new_groups, group_split, group_fold, [], p, stratify_by)
    merged.assignments.update(added.assignments)
    merged.folds.update(added.folds)
    for g, rids in added.groups.items():
        merged.groups[g] = sorted(set(merged.groups.get(g, [])) | set(rids))
    for s, per in added.counts.items():
        tgt = merged.counts.setdefault(s, {})
        for c, n in per.items():
            tgt[c] = tgt.get(c, 0) + n
        merged.counts[s] = dict(sorted(tgt.items()))
    for f, per in added.fold_counts.items():
        tgt = merged.fold_counts.setdefault(f, {})
        for c, n in per.items():
            tgt[c] = tgt.get(c, 0) + n
    merged.group_counts = dict(Counter(merged.group_split().values()))
    merged.group_counts = {s: merged.group_counts[s] for s in SPLITS if s in merged.group_counts}
    return merged


def plan_from_config(records: Sequence[Record], cfg: SplitConfig) -> SplitPlan:
    return plan_splits(records, ratios=cfg.ratios, seed=cfg.seed, group_by=cfg.group_by,
                       stratify_by=cfg.stratify_by, k_folds=cfg.k_folds, keep_existing=cfg.keep_existing,
                       on_leak=cfg.on_leak)


# --------------------------------------------------------------------------------------------------- checking


def check_plan(plan: SplitPlan, records: Sequence[Record]) -> None:
    """Refuse a plan that misses a record or puts a patient in two splits (or two folds).

    Leakage is checked on ``patient_id`` whatever the plan was grouped by. Raises :class:`SplitLeakError`
    naming the patients, or :class:`ConfigError` for records the plan does not cover.
    """
    missing = sorted(r.record_id for r in records if r.record_id not in plan.assignments)
    if missing:
        raise ConfigError(f"the split plan has no split for {len(missing)} record(s) (e.g. {', '.join(missing[:5])}). "
                          "Fix: re-plan the splits for these records (plan_splits / extend_plan)")
    for what, mapping in (("split", plan.assignments), ("fold", {k: str(v) for k, v in plan.folds.items()})):
        leaks = leaking_patients(records, mapping)
        if leaks:
            named = "; ".join(f"{p} in {' and '.join(s)}" for p, s in list(leaks.items())[:10])
            raise SplitLeakError(
                f"patient leakage: {len(leaks)} patient(s) are in more than one {what} ({named}"
                f"{', ...' if len(leaks) > 10 else ''}). Fix: plan splits grouped by patient "
                "(splits.group_by: patient) or re-group the source split (splits.on_leak)", list(leaks))
