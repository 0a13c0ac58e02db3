"""``mammoflow build-dataset``: records folder -> examples (ROIs, whole images or lesion crops) -> shards + manifest.

Order of work, so that nothing is built on a bad split and readers never see half a dataset:

1. read the records table and decide, from metadata alone, which records can give an example under the label
   scheme (the rest are counted as ``skipped`` with a reason);
2. plan the splits (:mod:`mammoflow.dataset.splits`), check them for patient leakage and write
   ``split_plan.json`` + ``split_summary.md``;
3. per split, read each image, cut its examples (:mod:`mammoflow.dataset.rois`) and stream them to
   :func:`mammoflow.dataset.shards.write_split` (which resumes finished shards); an image that cannot be read
   is quarantined (``quarantine.jsonl``) and the run goes on;
4. write ``manifest.json`` last: counts per split and class, shard hashes, the resolved config, the code
   version and the split plan's hash. The same inputs and config give a byte-identical manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mammoflow import storage
from mammoflow.config import dump_yaml, from_dict, resolve_config, to_dict
from mammoflow.dataset import rois
from mammoflow.dataset.png_export import PngExport
from mammoflow.dataset.splits import SPLITS, SplitConfig, SplitPlan, check_plan, plan_from_config
from mammoflow.errors import ConfigError, InputError
from mammoflow.logs import progress
from mammoflow.masks import mask_geometry
from mammoflow.preprocess import ops
from mammoflow.records import QuarantineEntry, Record, RecordsTable

log = logging.getLogger(__name__)

DATASET_FORMAT = "mammoflow.build-dataset/1"  # the keys this module adds to the shards manifest
PLAN_FILE = "split_plan.json"
PLAN_SUMMARY = "split_summary.md"
CONFIG_FILE = "dataset_config.yaml"
QUARANTINE_FILE = "quarantine.jsonl"

Mode = Literal["roi", "whole_image", "lesion_crop"]
LabelScheme = Literal["binary", "benign_malignant", "normal_benign_malignant", "calc_mass"]

#: Class names per label scheme; an example's integer label is the index in this tuple.
CLASSES: dict[str, tuple[str, ...]] = {
    "binary": ("normal", "tumour"),  # Yu et al. 2020
    "benign_malignant": ("benign", "malignant"),  # Jaamour et al. 2023, Xi et al. 2018
    "normal_benign_malignant": ("normal", "benign", "malignant"),  # Jaamour et al.'s "future work"
    "calc_mass": ("calcification", "mass"),  # Xi et al. 2018 (abnormality type)
}
# MIAS abnormality classes that are masses (CIRC, SPIC, MISC) or calcifications (CALC).
_KIND = {"calcification": "calcification", "calc": "calcification", "mass": "mass", "circ": "mass",
         "spic": "mass", "misc": "mass"}


@dataclass
class DatasetConfig:
    """How examples are cut, labelled, split and sharded (``mammoflow build-dataset --config``)."""

    mode: Mode = "roi"
    label_scheme: LabelScheme = "binary"
    # ROI mode (Yu et al. 2020) and the output side of lesion crops.
    roi_size: int = 120
    scale_to_radius: bool = False  # side = max(roi_size, 2 * radius * radius_margin), then resized
    radius_margin: float = 1.2
    normal_rois_per_image: int = 1
    lesion_free_rois_per_abnormal_image: int = 0
    # Distance from a normal ROI's centre to every lesion's edge; None = half the ROI diagonal, so that no lesion
    # pixel can fall inside a normal ROI.
    min_distance_from_lesion: float | None = None
    min_breast_fraction: float = 0.9
    normal_min_separation: float = 0.0  # between normal ROIs of one image
    remove_background: bool = True  # zero the non-breast area (Otsu + largest component)
    image_is_roi: Literal["auto", "always", "never"] = "auto"  # auto: an image no larger than an ROI is one
    # Whole-image mode (Jaamour et al. 2023).
    image_size: int | tuple[int, int] = 512
    pad: bool = True
    # Lesion crops (Xi et al. 2018).
    crop_context: float = 0.2
    crop_min_side: int = 32
    include_masks: bool = True  # store the lesion mask of every example (for CAM scoring)
    seed: int = 0  # normal-ROI sampling; each record gets its own stream derived from this and its id
    splits: SplitConfig = field(default_factory=SplitConfig)
    shard_target_bytes: int = 64 * 1024 * 1024
    description: str = ""

    def __post_init__(self) -> None:
        if self.mode not in ("roi", "whole_image", "lesion_crop"):
            raise ValueError(f"mode {self.mode!r} is not one of roi, whole_image, lesion_crop")
        if self.label_scheme not in CLASSES:
            raise ValueError(f"label_scheme {self.label_scheme!r} is not one of {', '.join(CLASSES)}")
        if self.roi_size < 8:
            raise ValueError(f"roi_size must be >= 8, got {self.roi_size}")
        if self.normal_rois_per_image < 0 or self.lesion_free_rois_per_abnormal_image < 0:
            raise ValueError("normal_rois_per_image and lesion_free_rois_per_abnormal_image must be >= 0")
        if isinstance(self.image_size, list):
            self.image_size = tuple(self.image_size)  # type: ignore[assignment]

    @property
    def classes(self) -> tuple[str, ...]:
        return CLASSES[self.label_scheme]

    @property
    def output_size(self) -> tuple[int, int]:
        if self.mode == "whole_image":
            s = self.image_size
            return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))
        return self.roi_size, self.roi_size

    @property
    def normal_distance(self) -> float:
        if self.min_distance_from_lesion is not None:
            return float(self.min_distance_from_lesion)
        return math.ceil(self.roi_size / math.sqrt(2.0))

    @classmethod
    def load(cls, name_or_path: str | Path | dict | None) -> DatasetConfig:
        """From a preset name (``yu2020``, ``jaamour2023``, ``xi2018``), a YAML path or a dict."""
        return from_dict(cls, resolve_config(name_or_path, kind="dataset"), where="dataset config")


# --------------------------------------------------------------------------------------------------- labels


def class_name(scheme: str, label: str | None, kind: str | None = None) -> str | None:
    """The class of an example under ``scheme`` (None: the example does not belong to this task)."""
    if scheme == "binary":
        return None if label is None else ("normal" if label == "normal" else "tumour")
    if scheme == "calc_mass":
        return _KIND.get((kind or "").lower())
    return label if label in CLASSES[scheme] else None


# --------------------------------------------------------------------------------------------------- example specs


@dataclass(frozen=True)
class ExampleSpec:
    """One example to cut from a record, decided from metadata alone."""

    kind: Literal["lesion", "normal", "image"]
    index: int  # lesion index in ``Record.lesions`` / normal ROI number / 0
    class_name: str

    def example_id(self, record_id: str) -> str:
        return rois.example_id(record_id, self.kind, None if self.kind == "image" else self.index)


def _has_centre(lesion: Any) -> bool:
    return lesion.center_row is not None and lesion.center_col is not None


def plan_examples(rec: Record, cfg: DatasetConfig, shape: tuple[int, int] | None = None,
                  ) -> tuple[list[ExampleSpec], Counter[str]]:
    """The examples a record gives under ``cfg`` and the reasons for what it cannot give.

    ``shape`` is the image's (height, width) when known (it decides ``image_is_roi: auto``).
    """
    skipped: Counter[str] = Counter()
    specs: list[ExampleSpec] = []
    scheme = cfg.label_scheme
    if rec.label is None:
        skipped["unlabelled"] += 1
        return specs, skipped

    if cfg.mode == "whole_image":
        kinds = {_KIND.get((les.kind or "").lower()) for les in rec.lesions} - {None}
        cls = class_name(scheme, rec.label, next(iter(kinds)) if len(kinds) == 1 else None)
        if cls is None:
            skipped["label_not_in_scheme"] += 1
        else:
            specs.append(ExampleSpec("image", 0, cls))
        return specs, skipped

    if cfg.mode == "lesion_crop":
        for k, les in enumerate(rec.lesions):
            cls = class_name(scheme, les.label or rec.label, les.kind)
            if cls is None:
                skipped["label_not_in_scheme"] += 1
            elif les.mask_path is None and not (_has_centre(les) and les.radius):
                skipped["lesion_without_geometry"] += 1
            else:
                specs.append(ExampleSpec("lesion", k, cls))
        if not rec.lesions:
            skipped["no_lesion"] += 1
        return specs, skipped

    # ROI mode.
    h, w = shape if shape is not None else (rec.height, rec.width)
    geometric = [les for les in rec.lesions if _has_centre(les) or les.mask_path]
    known_small = h is not None and w is not None and h <= cfg.roi_size and w <= cfg.roi_size
    if cfg.image_is_roi == "always" or (cfg.image_is_roi == "auto" and (
            known_small or (h is None and not geometric and rec.label != "normal"))):
        # Released ROIs (Yu et al.'s zip): the image is the example. When the size is unknown (metadata-only
        # records) an abnormal record without lesion geometry can only be used this way.
        cls = class_name(scheme, rec.label)
        if cls is None:
            skipped["label_not_in_scheme"] += 1
        else:
            specs.append(ExampleSpec("image", 0, cls))
        return specs, skipped
    normal_cls = class_name(scheme, "normal")
    if rec.label == "normal":
        n_normal = cfg.normal_rois_per_image
    else:
        for k, les in enumerate(rec.lesions):
            cls = class_name(scheme, les.label or rec.label, les.kind)
            if cls is None:
                skipped["label_not_in_scheme"] += 1
            elif not (_has_centre(les) or les.mask_path):
                skipped["lesion_without_geometry"] += 1
            else:
                specs.append(ExampleSpec("lesion", k, cls))
        n_normal = cfg.lesion_free_rois_per_abnormal_image
    if n_normal and normal_cls is None:
        skipped["label_not_in_scheme"] += n_normal
    elif normal_cls is not None:
        specs += [ExampleSpec("normal", k, normal_cls) for k in range(n_normal)]
    return specs, skipped


# --------------------------------------------------------------------------------------------------- cutting


@dataclass
class Cut:
    """One cut example before it gets its split: pixels, lesion mask and lesion geometry in its own frame."""

    example_id: str
    class_name: str
    image: np.ndarray
    mask: np.ndarray | None = None  # uint8 0/255 (lesion pixels 255), same shape as image
    lesion_rows: list[float] = field(default_factory=list)
    lesion_cols: list[float] = field(default_factory=list)
    lesion_radii: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _record_rng(seed: int, record_id: str) -> np.random.Generator:
    """A stream per record, so a record's normal ROIs do not depend on which other records are built."""
    digest = int.from_bytes(hashlib.sha256(record_id.encode()).digest()[:8], "big")
    return np.random.default_rng([seed, digest])


def _lesion_union(shape: tuple[int, int], geometry: Sequence[tuple[float, float, float]],
                  masks: Sequence[np.ndarray | None]) -> np.ndarray:
    union = np.zeros(shape, dtype=bool)
    for (r, c, rad), m in zip(geometry, masks, strict=True):
        if m is not None:
            union |= m
        elif rad > 0:
            union |= rois.disk_mask(shape, r, c, rad)
    return union


def _map_lesions(t: ops.Transform, geometry: Sequence[tuple[float, float, float]], out: tuple[int, int],
                 cut: Cut) -> None:
    """Lesions whose centre falls inside the example, in the example's coordinates."""
    for r, c, rad in geometry:
        rr, cc = t.apply_points(r, c)
        if -0.5 <= rr < out[0] - 0.5 and -0.5 <= cc < out[1] - 0.5:
            cut.lesion_rows.append(round(float(rr), 3))
            cut.lesion_cols.append(round(float(cc), 3))
            cut.lesion_radii.append(round(float(rad) * t.scale, 3))


def cut_examples(rec: Record, image: np.ndarray, cfg: DatasetConfig,
                 lesion_masks: Sequence[np.ndarray | None] | None = None, path: object = "") -> list[Cut]:
    """Cut every example of one record from its image (pure: no I/O).

    ``lesion_masks[k]`` is the boolean mask of ``rec.lesions[k]`` (None when the lesion is given as a
    centre/radius). Raises :class:`InputError` when the record's annotations do not fit its image.
    """
    shape = (int(image.shape[0]), int(image.shape[1]))
    masks = list(lesion_masks) if lesion_masks is not None else [None] * len(rec.lesions)
    if len(masks) != len(rec.lesions):
        raise ValueError("cut_examples: one mask (or None) per lesion is needed")
    geometry: list[tuple[float, float, float]] = []  # per lesion: centre and radius (0 when unknown)
    for k, les in enumerate(rec.lesions):
        if masks[k] is not None:
            if masks[k].shape != shape:
                raise InputError(les.mask_path or path, f"lesion mask {masks[k].shape} does not match the "
                                 f"{shape} image", "re-export the mask at the image's size", code="bad_mask",
                                 record_id=rec.record_id)
            if not masks[k].any():
                raise InputError(les.mask_path or path, "the lesion mask is empty", "re-export the mask",
                                 code="bad_mask", record_id=rec.record_id)
        if _has_centre(les):
            geometry.append((float(les.center_row), float(les.center_col), float(les.radius or 0.0)))
        elif masks[k] is not None:
            geometry.append(mask_geometry(masks[k]))
        else:
            geometry.append((math.nan, math.nan, 0.0))
        r, c, _ = geometry[-1]
        if not math.isnan(r) and not (0 <= r < shape[0] and 0 <= c < shape[1]):
            raise InputError(path, f"lesion {les.lesion_id} centre ({r:.0f}, {c:.0f}) is outside the {shape} image",
                             "check the annotation's coordinates (and their origin)", code="outside_image",
                             record_id=rec.record_id)
    known = [g for g in geometry if not math.isnan(g[0])]
    known_masks = [m for g, m in zip(geometry, masks, strict=True) if not math.isnan(g[0])]
    specs, _ = plan_examples(rec, cfg, shape)
    if not specs:
        return []
    is_image_roi = cfg.mode == "roi" and specs[0].kind == "image"
    breast = None
    # Released ROIs are all tissue: Otsu would cut into them, so they are used as they are.
    if not is_image_roi and (cfg.remove_background or any(s.kind == "normal" for s in specs)):
        breast = ops.breast_mask(image)
        if not breast.any():
            raise InputError(path, "no breast found (the image is blank)", "check the image", code="blank",
                             record_id=rec.record_id)
    tissue = breast if cfg.remove_background else None  # zero what lies outside it
    union = _lesion_union(shape, known, known_masks) if cfg.include_masks and known else None
    out_size = cfg.output_size
    cuts: list[Cut] = []

    def add(spec: ExampleSpec, pixels: np.ndarray, t: ops.Transform, mask: np.ndarray | None,
            extra: dict[str, Any]) -> None:
        cut = Cut(spec.example_id(rec.record_id), spec.class_name, pixels, mask, extra=extra)
        _map_lesions(t, known, out_size, cut)
        cuts.append(cut)

    def boxed_mask(box: ops.BBox) -> np.ndarray | None:
        if union is None:
            return None
        m, _ = ops.resize(rois.crop_padded(union, box), out_size, interpolation="nearest")
        return m.astype(np.uint8) * np.uint8(255)

    normal_specs = [s for s in specs if s.kind == "normal"]
    for spec in specs:
        if spec.kind == "image" and cfg.mode == "whole_image":
            pixels, t = rois.whole_image(image, out_size, pad=cfg.pad, breast_mask=tissue)
            mask = None
            if union is not None:
                if cfg.pad:
                    m, _ = ops.resize_with_padding(union, out_size, interpolation="nearest")
                else:
                    m, _ = ops.resize(union, out_size, interpolation="nearest")
                mask = m.astype(np.uint8) * np.uint8(255)
            add(spec, pixels, t, mask, {"source_shape": list(shape), "transform": t.to_list()})
        elif spec.kind == "image":  # a released ROI: used as it is (padded/resized only if its size differs)
            pixels, box = rois.lesion_roi(image, (shape[0] - 1) / 2, (shape[1] - 1) / 2, size=cfg.roi_size)
            add(spec, pixels, rois.box_transform(box, cfg.roi_size), boxed_mask(box), {"box": list(box)})
        elif spec.kind == "lesion":
            r, c, rad = geometry[spec.index]
            # Named in the quarantine if its ROI is refused.
            what = f"lesion {rec.lesions[spec.index].lesion_id} (centred at row {r:.0f}, col {c:.0f})"
            if cfg.mode == "lesion_crop":
                pixels, box = rois.lesion_crop(image, cfg.roi_size, mask=masks[spec.index], center=(r, c),
                                               radius=rad or None, context=cfg.crop_context,
                                               min_side=cfg.crop_min_side, breast_mask=tissue, what=what, path=path)
            else:
                pixels, box = rois.lesion_roi(image, r, c, size=cfg.roi_size, breast_mask=tissue, radius=rad,
                                              scale_to_radius=cfg.scale_to_radius, margin=cfg.radius_margin,
                                              what=what, path=path)
            add(spec, pixels, rois.box_transform(box, cfg.roi_size), boxed_mask(box),
                {"box": list(box), "lesion_id": rec.lesions[spec.index].lesion_id,
                 "lesion_kind": rec.lesions[spec.index].kind})
    if normal_specs:
        assert breast is not None
        centres = rois.sample_normal_centres(
            breast, len(normal_specs), cfg.roi_size, _record_rng(cfg.seed, rec.record_id), avoid=known,
            min_distance=cfg.normal_distance, min_breast_fraction=cfg.min_breast_fraction,
            min_separation=cfg.normal_min_separation, path=path)
        for spec, (r, c) in zip(normal_specs, centres, strict=False):
            pixels, box = rois.lesion_roi(image, r, c, size=cfg.roi_size, breast_mask=tissue)
            add(spec, pixels, rois.box_transform(box, cfg.roi_size), boxed_mask(box),
                {"box": list(box), "centre": [r, c]})
    return cuts


# --------------------------------------------------------------------------------------------------- building


@dataclass
class BuildResult:
    """What one build wrote (the manifest holds the same numbers)."""

    out_uri: str
    manifest: dict[str, Any]
    plan: SplitPlan
    quarantine: list[QuarantineEntry]

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        return self.manifest["counts"]


def _read_mask(table: RecordsTable, records_dir: Path, rec: Record, k: int) -> np.ndarray | None:
    from mammoflow.io.images import read_image

    les = rec.lesions[k]
    if les.mask_path is None:
        return None
    path = Path(table.image_root)
    path = (path if path.is_absolute() else Path(records_dir) / path) / les.mask_path
    try:
        return read_image(path, expect_modality=None) > 0
    except InputError as err:
        err.record_id = err.record_id or rec.record_id
        raise


def _put_text(uri: str, text: str) -> None:
    storage.put_bytes(uri, text.encode("utf-8"))


@dataclass
class Tally:
    """What the examples of a build gave, gathered while they are cut: quarantined records, examples per split and
    class, the records that gave at least one example."""

    quarantine: list[QuarantineEntry] = field(default_factory=list)
    counts: dict[str, Counter[str]] = field(default_factory=lambda: {s: Counter() for s in SPLITS})
    used_records: set[str] = field(default_factory=set)


def usable_records(table: RecordsTable, cfg: DatasetConfig, where: object) -> tuple[list[Record], Counter[str]]:
    """Step 1: the records that can give examples under ``cfg`` (metadata only), and why the others cannot."""
    skipped: Counter[str] = Counter()
    usable: list[Record] = []
    for rec in table.records:
        specs, reasons = plan_examples(rec, cfg)
        skipped.update(reasons)
        if specs:
            usable.append(rec)
        else:
            skipped["record_without_examples"] += 1
    if not usable:
        raise ConfigError(f"{where}: no record gives an example under label_scheme={cfg.label_scheme!r}, "
                          f"mode={cfg.mode!r} (skipped: {dict(skipped)}). Fix: choose a label scheme that fits "
                          "the records' labels")
    return usable, skipped


def check_out_uri(out_uri: str) -> str:
    if not storage.is_remote(out_uri) and any(p.is_file() for p in (Path(out_uri), *Path(out_uri).parents)):
        raise ConfigError(f"{out_uri}: is (or is under) a file, not a folder. Fix: give a folder path or a gs:// "
                          "prefix for the dataset")
    return out_uri


def write_plan(out_uri: str, usable: list[Record], cfg: DatasetConfig) -> SplitPlan:
    """Step 2: the split plan over every usable record, made, checked and written before anything is built."""
    plan = plan_from_config(usable, cfg.splits)
    check_plan(plan, usable)
    plan_json = plan.to_json()
    plan_uri = storage.join(out_uri, PLAN_FILE)
    if storage.exists(plan_uri) and storage.get_bytes(plan_uri).decode() != plan_json:
        raise ConfigError(f"{out_uri} already holds a dataset built from other records or another split config. "
                          "Fix: write to a new --out (or delete the old dataset)")
    _put_text(plan_uri, plan_json)
    _put_text(storage.join(out_uri, PLAN_SUMMARY), plan.summary_markdown())
    _put_text(storage.join(out_uri, CONFIG_FILE), dump_yaml(to_dict(cfg)))
    log.info("split plan: %s", ", ".join(f"{s} {sum(c.values())}" for s, c in plan.counts.items()))
    return plan


def records_by_split(usable: Sequence[Record], plan: SplitPlan) -> dict[str, list[Record]]:
    by_split: dict[str, list[Record]] = defaultdict(list)
    for rec in usable:
        by_split[plan.split_of(rec.record_id)].append(rec)
    return by_split


def split_examples(records: Sequence[Record], split: str, plan: SplitPlan, table: RecordsTable, records_dir: Path,
                   cfg: DatasetConfig, tally: Tally, exporter: PngExport | None = None) -> Iterator[Any]:
    """Step 3: the examples of ``records`` (all of ``split``), read and cut one record at a time; a record that
    cannot be read or cut goes to ``tally``'s quarantine, and the run goes on."""
    from mammoflow.dataset import shards
    from mammoflow.io.images import read_image

    classes = cfg.classes
    for rec in progress(records, desc=f"build {split}", unit="image"):
        path = table.image_path(rec, records_dir)
        try:
            image = read_image(path, expect_modality=None)
            masks = [_read_mask(table, records_dir, rec, k) for k in range(len(rec.lesions))]
            cuts = cut_examples(rec, image, cfg, masks, path=rec.image_path)
        except InputError as err:
            err.record_id = err.record_id or rec.record_id
            tally.quarantine.append(QuarantineEntry.from_error(err, source=rec.source))
            log.warning("quarantined %s (%s) [%s]: %s. Fix: %s", rec.record_id, err.path, err.code, err.problem,
                        err.fix)
            continue
        if cuts:
            tally.used_records.add(rec.record_id)
        for cut in cuts:
            tally.counts[split][cut.class_name] += 1
            if exporter is not None:
                exporter.add(split, cut)
            fold = plan.fold_of(rec.record_id)
            extra = {**cut.extra, "source": rec.source, "view": rec.view, "laterality": rec.laterality}
            yield shards.Example(
                example_id=cut.example_id, record_id=rec.record_id, patient_id=rec.patient_id,
                breast_id=rec.breast_id, label=classes.index(cut.class_name), label_name=cut.class_name,
                split=split, fold=-1 if fold is None else fold, image=cut.image, mask=cut.mask,
                lesion_rows=cut.lesion_rows, lesion_cols=cut.lesion_cols, lesion_radii=cut.lesion_radii,
                extra=json.dumps(extra, sort_keys=True))


def finish_build(out_uri: str, table: RecordsTable, cfg: DatasetConfig, plan: SplitPlan, usable: Sequence[Record],
                 skipped: Counter[str], split_results: Sequence[Any], tally: Tally) -> dict[str, Any]:
    """Step 4: the quarantine, then the manifest last; returns the manifest."""
    from mammoflow import __version__
    from mammoflow.dataset import shards

    built = {r.split for r in split_results}
    tally.quarantine.sort(key=lambda q: (q.record_id or "", q.path))
    _put_text(storage.join(out_uri, QUARANTINE_FILE),
              "".join(json.dumps(asdict(q), sort_keys=True) + "\n" for q in tally.quarantine))
    manifest = shards.build_manifest(split_results, config=to_dict(cfg), code_version=__version__)
    manifest.update({
        "dataset_format": DATASET_FORMAT,
        "classes": list(cfg.classes),
        "counts": {s: {c: tally.counts[s][c] for c in cfg.classes} for s in SPLITS if s in built},
        "examples": sum(sum(c.values()) for c in tally.counts.values()),
        "inputs": {"records_read": len(table.records), "records_planned": len(usable),
                   "records_used": len(tally.used_records), "records_quarantined": len(tally.quarantine),
                   "skipped": dict(sorted(skipped.items())), "source": table.source},
        "quarantine_file": QUARANTINE_FILE,
        "split_plan": {"file": PLAN_FILE, "summary": PLAN_SUMMARY, "sha256": plan.sha256(),
                       "moved_patients": len(plan.moved), "k_folds": cfg.splits.k_folds},
    })
    shards.write_manifest(out_uri, manifest)
    log.info("dataset at %s: %s", out_uri, {s: dict(c) for s, c in manifest["counts"].items()})
    return manifest


def build_dataset(records_dir: Path | str, config: DatasetConfig | str | Path | dict, out_uri: str,
                  export_png: Path | str | None = None) -> BuildResult:
    """Build a dataset from a records folder (see the module docstring for the order of work)."""
    from mammoflow.dataset import shards

    cfg = config if isinstance(config, DatasetConfig) else DatasetConfig.load(config)
    records_dir = Path(records_dir)
    table = RecordsTable.read(records_dir)
    out_uri = check_out_uri(str(out_uri))
    usable, skipped = usable_records(table, cfg, records_dir)
    plan = write_plan(out_uri, usable, cfg)
    tally = Tally()
    exporter = PngExport(Path(export_png), cfg.classes) if export_png else None
    by_split = records_by_split(usable, plan)
    split_results = [shards.write_split(split_examples(by_split[split], split, plan, table, records_dir, cfg, tally,
                                                       exporter),
                                        out_uri, split, target_shard_bytes=cfg.shard_target_bytes)
                     for split in SPLITS if by_split.get(split)]
    manifest = finish_build(out_uri, table, cfg, plan, usable, skipped, split_results, tally)
    if exporter is not None:
        exporter.contact_sheet()
    return BuildResult(out_uri=out_uri, manifest=manifest, plan=plan, quarantine=tally.quarantine)
