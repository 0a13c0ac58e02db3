"""``mammoflow explain``: class activation maps of a model package over whole mammograms, scored against the
known lesions (pointing game, IoU), resumable and with a quarantine for images that cannot be used.

Per image ``<name>_overlay.png``, ``<name>_cam.npy`` and ``<name>.json``; ``explain.json`` indexes every image of
the folder with the pointing-game / IoU summary (read by the report). The maps come from
:mod:`mammoflow.evaluation.cam_model`, the numpy side from :mod:`mammoflow.evaluation.cam`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammoflow.errors import ConfigError, InputError
from mammoflow.evaluation.cam import (
    LesionCircle,
    chance_hit_rate,
    lesion_mask_from_circles,
    model_range,
    normalise_map,
    overlay_heatmap,
    peak,
    pointing_game,
    save_npy,
    threshold_iou,
    write_rgb_png,
)
from mammoflow.evaluation.cam_model import CamMethod, CamTarget, compute_cam, package_cam_target
from mammoflow.storage import atomic_write_text
from mammoflow.training.package import ModelPackage, load_package

log = logging.getLogger(__name__)

EXPLAIN_INDEX = "explain.json"


@dataclass
class ImageToExplain:
    """One image and what is known about its lesions, in the image's own frame (before preprocessing)."""

    name: str  # file stem for outputs (record id or file name, made safe)
    image: np.ndarray  # 2-D uint8 / uint16
    source: str  # path or record id, for the index
    lesion_circles: list[LesionCircle] = field(default_factory=list)
    lesion_masks: list[np.ndarray] = field(default_factory=list)
    record_id: str | None = None
    label: str | None = None


@dataclass
class ExplainResult:
    """What one explained image produced (also written as ``<name>.json``)."""

    name: str
    source: str
    record_id: str | None
    label: str | None
    method: str
    layer: str
    shape: list[int]
    overlay: str  # file names, relative to the output folder
    cam_npy: str
    seconds: float
    n_lesions: int
    pointing_hit: bool | None = None
    peak_row: int | None = None
    peak_col: int | None = None
    iou: float | None = None
    iou_threshold: float | None = None
    chance_hit_rate: float | None = None
    lesion_area_fraction: float | None = None
    # sha256 of the model, the settings and the input's content (see explain()): a re-run reuses these outputs when
    # it matches, and computes them again when anything they depend on changed.
    fingerprint: str | None = None


def safe_name(text: str) -> str:
    """A file-name-safe stem from a record id or a path (``mias:mdb001`` -> ``mias_mdb001``)."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return stem[:120] or "image"


def _prepare(item: ImageToExplain, chain: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Preprocess the image; return it with its lesion mask (None when nothing is known) and breast mask."""
    from mammoflow.preprocess import ops

    known = bool(item.lesion_circles or item.lesion_masks)
    masks = list(item.lesion_masks)
    if item.lesion_circles:
        masks.append(lesion_mask_from_circles(item.image.shape, item.lesion_circles))
    if chain is not None:
        result = chain(item.image, masks, path=item.source, record_id=item.record_id)
        image, moved, breast = result.image, result.masks, result.breast_mask
    else:
        image, moved, breast = item.image, masks, None
    lesion = np.logical_or.reduce(moved) if moved else None
    if breast is None:
        grey = image if image.dtype in (np.uint8, np.uint16) else ops.to_uint8(image)
        try:
            breast = ops.breast_mask(grey)
        except (ValueError, InputError):
            breast = None
    if breast is not None and not breast.any():
        breast = None
    return image, (lesion if known else None), breast


def explain_image(package: ModelPackage, item: ImageToExplain, out: Path, *, chain: Any = None,
                  target: CamTarget | None = None, stride: int | None = None, tile: int = 1024,
                  iou_fraction: float = 0.5, tolerance: float = 0.0, fingerprint: str | None = None
                  ) -> ExplainResult:
    """Map one image, write ``<name>_overlay.png``, ``<name>_cam.npy`` and ``<name>.json`` into ``out``.

    The JSON is written last, so an interrupted image never looks finished to a re-run (see :func:`explain`).
    """
    t0 = time.perf_counter()
    target = target or package_cam_target(package)
    image, lesion, breast = _prepare(item, chain)
    scaled = model_range(image, target.value_range)
    cam = compute_cam(package.model, scaled, target, stride=stride, tile=tile, valid=breast)
    del scaled
    cam01 = normalise_map(cam, breast)
    out.mkdir(parents=True, exist_ok=True)
    result = ExplainResult(name=item.name, source=item.source, record_id=item.record_id, label=item.label,
                           method=target.method, layer=target.layer, shape=list(image.shape),
                           overlay=f"{item.name}_overlay.png", cam_npy=f"{item.name}_cam.npy", seconds=0.0,
                           n_lesions=len(item.lesion_circles) + len(item.lesion_masks), fingerprint=fingerprint)
    peak_at = peak(cam, breast)
    result.peak_row, result.peak_col = int(peak_at[0]), int(peak_at[1])
    if lesion is not None and lesion.any():
        game = pointing_game(cam, lesion, breast, tolerance)
        result.pointing_hit = game["hit"]
        result.iou = threshold_iou(cam, lesion, iou_fraction, breast)
        result.iou_threshold = iou_fraction
        result.chance_hit_rate = chance_hit_rate(lesion, breast, tolerance)
        result.lesion_area_fraction = float(lesion.mean())
    save_npy(out / result.cam_npy, cam.astype(np.float32))
    write_rgb_png(out / result.overlay, overlay_heatmap(image, cam01, lesion_mask=lesion, peak_at=peak_at))
    result.seconds = round(time.perf_counter() - t0, 3)
    atomic_write_text(out / f"{item.name}.json", json.dumps(asdict(result), indent=2, sort_keys=True) + "\n")
    log.info("%s: %s on %s, peak at (%d, %d)%s", item.name, target.method, target.layer, *peak_at,
             "" if result.pointing_hit is None else f", pointing game {'hit' if result.pointing_hit else 'miss'}, "
             f"IoU {result.iou:.3f}")
    return result


def summarise(results: Sequence[ExplainResult]) -> dict[str, Any]:
    """Pointing-game hit rate, mean IoU and mean chance over the images with known lesions."""
    scored = [r for r in results if r.pointing_hit is not None]
    summary: dict[str, Any] = {"n_images": len(results), "n_scored": len(scored)}
    if scored:
        hits = sum(bool(r.pointing_hit) for r in scored)
        summary.update({
            "pointing_game_hits": hits,
            "pointing_game_rate": hits / len(scored),
            "chance_rate_mean": float(np.mean([r.chance_hit_rate for r in scored])),
            "iou_mean": float(np.mean([r.iou for r in scored])),
            "iou_threshold": scored[0].iou_threshold,
        })
    return summary


def write_index(out: Path, results: Sequence[ExplainResult], info: dict[str, Any],
                quarantine: Sequence[dict[str, Any]] = (), last_run: dict[str, int] | None = None) -> Path:
    """``explain.json`` (written atomically): the settings, the per-image results, the quarantined images (path,
    problem, fix, code) and their summary (read by the report).

    Explaining more images into the same folder with the same model and settings adds them to the index (an image
    explained or quarantined again replaces its entry; an image is listed in ``images`` or in ``quarantine``, never
    both); other settings start a new index.
    """
    path = out / EXPLAIN_INDEX
    images: dict[str, dict[str, Any]] = {}
    held: dict[str, dict[str, Any]] = {}
    previous = _read_index(path)
    same = previous is not None and all(previous.get(k) == v for k, v in info.items() if k != "model") and \
        (previous.get("model") or {}).get("sha256") == (info.get("model") or {}).get("sha256")
    if same:
        images = {img["name"]: img for img in previous["images"]}  # type: ignore[index]
        held = {q["name"]: q for q in previous.get("quarantine", [])}  # type: ignore[union-attr]
    for r in results:
        images[r.name] = asdict(r)
        held.pop(r.name, None)
    for q in quarantine:
        held[q["name"]] = dict(q)
        images.pop(q["name"], None)
    listed = [images[k] for k in sorted(images)]
    summary = summarise([ExplainResult(**img) for img in listed])
    by_code: dict[str, int] = {}
    for q in held.values():
        by_code[q["code"]] = by_code.get(q["code"], 0) + 1
    summary.update({"n_quarantined": len(held), "quarantined_by_code": dict(sorted(by_code.items()))})
    index = {"schema_version": 1, "kind": "mammoflow.explain", **info, "summary": summary, "images": listed,
             "quarantine": [held[k] for k in sorted(held)]}
    if last_run is not None:
        index["last_run"] = last_run
    atomic_write_text(path, json.dumps(index, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def _read_index(path: Path) -> dict[str, Any] | None:
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return index if isinstance(index, dict) and index.get("kind") == "mammoflow.explain" else None


# ----------------------------------------------------------------------------------------- inputs


def _ground_truth_circles(path: Path) -> list[LesionCircle] | None:
    """Lesions of an image from a ``ground_truth.json`` beside it (synthetic phantoms), or None."""
    truth_file = path.parent / "ground_truth.json"
    if not truth_file.is_file():
        return None
    try:
        truth = json.loads(truth_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    for entry in truth.get("images", []):
        if entry.get("file") == path.name:
            return [(float(les["center_row"]), float(les["center_col"]), float(les["radius"]))
                    for les in entry.get("lesions", []) if les.get("radius") is not None]
    return None


def image_from_path(path: str | Path, circles: Sequence[LesionCircle] = (),
                    mask_paths: Sequence[str | Path] = ()) -> ImageToExplain:
    """An image file (PGM, PNG, DICOM) with lesions given explicitly or from a ``ground_truth.json`` beside it."""
    from mammoflow.io.images import read_image

    path = Path(path)
    image = read_image(path)
    circles = list(circles)
    if not circles and not mask_paths:
        circles = _ground_truth_circles(path) or []
    masks = [_read_mask(m, image.shape) for m in mask_paths]
    return ImageToExplain(name=safe_name(path.stem), image=image, source=str(path), lesion_circles=circles,
                          lesion_masks=masks)


def _read_mask(path: str | Path, shape: tuple[int, ...], record_id: str | None = None) -> np.ndarray:
    from mammoflow.io.images import read_image

    mask = read_image(path) > 0
    if mask.shape != shape:
        raise InputError(path, f"the lesion mask is {mask.shape} but its image is {shape}",
                         "give a mask of the same size as the image", code="mask_size", record_id=record_id)
    return mask


def _record_item(table: Any, records_dir: str | Path, rec: Any) -> ImageToExplain:
    """Read one record's image and lesion masks."""
    from mammoflow.io.images import read_image

    image = read_image(table.image_path(rec, records_dir))
    circles = [(les.center_row, les.center_col, les.radius) for les in rec.lesions
               if les.center_row is not None and les.center_col is not None and les.radius]
    masks = [_read_mask(_record_relative(table, records_dir, les.mask_path), image.shape, rec.record_id)
             for les in rec.lesions if les.mask_path]
    return ImageToExplain(name=safe_name(rec.record_id), image=image, source=rec.record_id,
                          lesion_circles=circles, lesion_masks=masks, record_id=rec.record_id, label=rec.label)


def _chosen_records(table: Any, records_dir: str | Path, ids: Sequence[str], limit: int | None) -> list[Any]:
    """Records by id (or, with no ids, the first ``limit`` that have lesion geometry); an unknown id raises."""
    by_id = {r.record_id: r for r in table.records}
    if not ids:
        return [r for r in table.records if any(les.has_geometry for les in r.lesions)][:limit]
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise _missing_record(records_dir, missing[0])
    return [by_id[i] for i in ids]


def _missing_record(records_dir: str | Path, record_id: str) -> InputError:
    return InputError(Path(records_dir) / "records.jsonl", f"no record with id {record_id!r}",
                      "give an image path or a record_id listed in records.jsonl", code="missing_record",
                      record_id=record_id)


def _record_relative(table: Any, records_dir: str | Path, rel: str) -> Path:
    root = Path(table.image_root)
    if not root.is_absolute():
        root = Path(records_dir) / root
    return root / rel


# ----------------------------------------------------------------------------------------- one call, resumable


def _sha256_json(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _content_sha256(path: str | Path) -> str:
    """sha256 of a file's (or zip member's) bytes; ``InputError`` when it cannot be read."""
    from mammoflow.io.files import file_sha256

    try:
        return file_sha256(path)
    except OSError as exc:  # missing files already raise InputError; this is permissions, I/O errors, ...
        raise InputError(path, f"the file cannot be read ({exc.strerror or exc})",
                         "check that the file exists and is readable", code="unreadable") from None


@dataclass
class _Pending:
    """One image of an explain call, not read yet: its output name, what its outputs depend on, how to read it."""

    name: str
    source: str  # the path or record id the user gave
    path: str  # the image file (named in the quarantine)
    files: tuple[str, ...]  # the image and mask files whose content the outputs depend on
    about: dict[str, Any]  # lesions and label the outputs depend on
    load: Callable[[], ImageToExplain]
    record_id: str | None = None
    data_source: str = ""  # the dataset source of a record

    def fingerprint(self, settings: str) -> str:
        """sha256 of the settings fingerprint, the input files' content and the known lesions."""
        return _sha256_json({"settings": settings, "source": self.source, "about": self.about,
                             "files": [_content_sha256(f) for f in self.files]})


def _path_pending(path: str, circles: Sequence[LesionCircle], mask_paths: Sequence[str]) -> _Pending:
    known = list(circles) if (circles or mask_paths) else (_ground_truth_circles(Path(path)) or [])
    return _Pending(name=safe_name(Path(path).stem), source=str(path), path=str(path),
                    files=(str(path), *map(str, mask_paths)),
                    about={"lesion_circles": [[float(v) for v in c] for c in known]},
                    load=functools.partial(image_from_path, path, known, mask_paths))


def _record_pendings(records_dir: str | Path, ids: Sequence[str], limit: int | None
                     ) -> tuple[list[_Pending], list[InputError]]:
    """The records to explain, and an error for each id that is not in the table."""
    from mammoflow.records import RecordsTable

    table = RecordsTable.read(records_dir)
    by_id = {r.record_id: r for r in table.records}
    missing = [_missing_record(records_dir, i) for i in ids if i not in by_id]
    if ids:
        chosen = [by_id[i] for i in ids if i in by_id]
    else:
        chosen = _chosen_records(table, records_dir, (), limit)
    pending = []
    for rec in chosen:
        masks = [str(_record_relative(table, records_dir, les.mask_path)) for les in rec.lesions if les.mask_path]
        image_path = str(table.image_path(rec, records_dir))
        pending.append(_Pending(
            name=safe_name(rec.record_id), source=rec.record_id, path=image_path, files=(image_path, *masks),
            about={"label": rec.label, "lesions": rec.to_dict()["lesions"]},
            load=functools.partial(_record_item, table, records_dir, rec), record_id=rec.record_id,
            data_source=rec.source))
    return pending, missing


def _distinct(pending: Sequence[_Pending], out: Path) -> list[_Pending]:
    """Drop repeated inputs; give distinct inputs distinct output names (two ``x.png`` in different folders, in this
    call or an earlier one into ``out``), and never the index's own name."""
    kept: list[_Pending] = []
    sources: set[str] = set()
    names = {Path(EXPLAIN_INDEX).stem}
    for p in pending:
        if p.source in sources:
            continue
        sources.add(p.source)
        if p.name in names or _written_for_another_source(out, p.name, p.source):
            p.name = f"{p.name}-{hashlib.sha256(p.source.encode()).hexdigest()[:8]}"
        names.add(p.name)
        kept.append(p)
    return kept


def _written_for_another_source(out: Path, name: str, source: str) -> bool:
    try:
        written = json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(written, dict) and written.get("source") not in (None, source)


def _reusable(out: Path, name: str, fingerprint: str) -> ExplainResult | None:
    """The result an earlier call wrote for ``name`` when it has the same fingerprint and its files are there."""
    try:
        result = ExplainResult(**json.loads((out / f"{name}.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if result.fingerprint != fingerprint or result.name != name:
        return None
    return result if (out / result.overlay).is_file() and (out / result.cam_npy).is_file() else None


def _quarantine_entry(name: str, err: InputError, record_id: str | None = None, source: str = "") -> dict[str, Any]:
    from mammoflow.records import QuarantineEntry

    if err.record_id is None:
        err.record_id = record_id
    entry = {"name": name, **asdict(QuarantineEntry.from_error(err, source=source))}
    log.warning("quarantined %s (%s) [%s]: %s. Fix: %s", err.record_id or name, err.path, err.code, err.problem,
                err.fix)
    return entry


def explain(model_uri: str, *, out: str | Path, images: Sequence[str] = (), records: str | Path | None = None,
            preprocess: str | None = None, circles: Sequence[LesionCircle] = (), mask_paths: Sequence[str] = (),
            limit: int = 8, stride: int | None = None, tile: int = 1024, method: CamMethod | None = None,
            layer: str | None = None, iou_fraction: float = 0.5, tolerance: float = 0.0,
            cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``mammoflow explain``: maps for images given as paths or record ids (from ``records``).

    With ``records`` and no ``images``, the first ``limit`` records with lesion geometry are explained. Lesions
    come from the records (centre/radius, masks), from ``circles``/``mask_paths`` (a single path image), or from a
    ``ground_truth.json`` beside the image. Writes per image ``<name>_overlay.png``, ``<name>_cam.npy``,
    ``<name>.json`` and ``explain.json`` (index + pointing game / IoU summary of every image in ``out``).

    An image that cannot be used (unreadable, unknown record id, mask of the wrong size, ...) is quarantined in
    ``explain.json`` with its path, problem, fix and code, and the others go on. An image whose outputs an earlier
    call wrote with the same fingerprint (model weights, settings, the input's content and lesions) is reused, not
    computed again. Returns the index, with ``explained_now`` (the images of this call, computed or reused),
    ``reused_now`` and ``quarantined_now``. Raises ``InputError`` when no image of the call could be explained.
    """
    from mammoflow.logs import progress
    from mammoflow.preprocess.chain import Chain

    out = Path(out)
    package = load_package(model_uri, cache_dir=cache_dir)
    target = package_cam_target(package, method=method, layer=layer)
    chain = Chain.from_config(preprocess) if preprocess else None
    paths = [i for i in images if Path(i).exists()]
    ids = [i for i in images if not Path(i).exists()]
    if ids and records is None:
        raise InputError(ids[0], "no such file", "give an existing image path, or --records DIR to look up "
                         "record ids", code="missing_file")
    if (circles or mask_paths) and len(images) != 1:
        raise ConfigError("--lesion / --mask describe one image: give exactly one --image with them")
    info = {"model": package.describe(), "preprocess": chain.resolved() if chain is not None else None,
            "method": target.method, "layer": target.layer, "centring": target.centring,
            "patch_size": target.patch_size, "stride": stride or (target.patch_size // 2 if target.method ==
                                                                    "gradcam" else None),
            "pointing_game_tolerance_px": tolerance, **({"pointing_game_chance": "lesion dilated by the tolerance, "
                                                          "over the breast area"} if tolerance > 0 else {}),
            "coordinates": "maps, overlays and peaks are in the preprocessed image's pixel frame (row 0 at the top)"}
    # Everything else a map or a score depends on, besides the input itself.
    settings = {**{k: v for k, v in info.items() if k not in ("model", "coordinates")}, "model_sha256": package.sha256,
                "tile": tile, "iou_fraction": iou_fraction, "value_range": target.value_range,
                "positive_index": target.positive_index, "channels": target.channels}
    info["fingerprint"] = _sha256_json(settings)

    pending = [_path_pending(p, circles, mask_paths) for p in paths]
    quarantine: list[dict[str, Any]] = []
    if records is not None and (ids or not images):
        from_records, missing = _record_pendings(records, ids, None if ids else limit)
        pending += from_records
        quarantine += [_quarantine_entry(safe_name(err.record_id or ""), err) for err in missing]
    pending = _distinct(pending, out)

    results: list[ExplainResult] = []
    reused: list[str] = []
    try:
        for p in progress(pending, desc="explain", unit="img"):
            try:
                fingerprint = p.fingerprint(info["fingerprint"])
                done = _reusable(out, p.name, fingerprint)
                if done is not None:
                    results.append(done)
                    reused.append(done.name)
                    continue
                item = p.load()
                item.name = p.name
                results.append(explain_image(package, item, out, chain=chain, target=target, stride=stride, tile=tile,
                                             iou_fraction=iou_fraction, tolerance=tolerance, fingerprint=fingerprint))
            except InputError as err:
                quarantine.append(_quarantine_entry(p.name, err, p.record_id, p.data_source))
    except BaseException:
        # Index what this call finished before the failure, so its maps are not left out of explain.json.
        if results or quarantine:
            write_index(out, results, info, quarantine)
        raise
    last_run = {"computed": len(results) - len(reused), "reused": len(reused), "quarantined": len(quarantine)}
    if results or quarantine:
        write_index(out, results, info, quarantine, last_run)
    log.info("explain: %d computed, %d reused (same model, settings and input), %d quarantined -> %s",
             last_run["computed"], last_run["reused"], last_run["quarantined"], out)
    if not results:
        if quarantine:
            first = quarantine[0]
            raise InputError(first["path"], f"none of the {len(quarantine)} image(s) could be explained, e.g. "
                             f"{first['problem']}", f"{first['fix']} (every problem is listed in {out / EXPLAIN_INDEX})",
                             code=first["code"], record_id=first["record_id"])
        raise InputError(records or out, "nothing to explain", "give --image PATH_OR_ID, or --records with "
                         "records that have lesions", code="empty")
    index = json.loads((out / EXPLAIN_INDEX).read_text())
    index["explained_now"] = [r.name for r in results]
    index["reused_now"] = reused
    index["quarantined_now"] = quarantine
    return index
