"""Preprocessing chains: steps from :mod:`mammoflow.preprocess.ops` composed by a config.

A config (a preset name such as ``yu2020``, a YAML file or a dict) lists steps by name::

    output_dtype: uint8
    steps:
      - name: median
        params: {ksize: 3}
      - clahe: {clip_limit: 2.0}      # shorthand: {step: params}
      - remove_background             # shorthand: a bare name takes the defaults

The same :class:`Chain` runs in training, evaluation and inference, so there is no train/serve skew. Steps that
move pixels compose a :class:`~mammoflow.preprocess.ops.Transform`; lesion masks and the breast mask are moved
with the image (nearest neighbour), and callers map lesion centres and radii with the returned transform.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mammoflow.config import from_dict, resolve_config, to_dict
from mammoflow.errors import ConfigError, InputError
from mammoflow.preprocess import ops
from mammoflow.preprocess.ops import Transform

# Bumped when a step's behaviour changes, so resumed runs redo images made by the old code.
CHAIN_VERSION = 1

OutputDType = Literal["uint8", "uint16", "float32", "same"]


# --------------------------------------------------------------------------------------------------- config


@dataclass
class StepConfig:
    """One step: a registered name and its parameters (defaults fill whatever is left out)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreprocessConfig:
    """A preprocessing chain: ordered steps and the dtype of the image it returns.

    ``output_dtype``: ``uint8`` / ``uint16`` (written as 8- / 16-bit PNG), ``float32`` (in [0, 1], in memory only)
    or ``same`` (the input's dtype). A ``normalize`` step maps straight to it; otherwise the result is converted
    over the full range at the end (uint16 -> uint8 divides by 257).
    """

    steps: list[StepConfig] = field(default_factory=list)
    output_dtype: OutputDType = "uint8"
    description: str = ""  # for people; not part of the hash

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PreprocessConfig:
        data = dict(data or {})
        steps = data.get("steps") or []
        if not isinstance(steps, list):
            raise ConfigError(f"PreprocessConfig.steps: expected a list of steps, got {steps!r}")
        data["steps"] = [_expand_shorthand(s, i) for i, s in enumerate(steps)]
        cfg = from_dict(cls, data)
        for i, step in enumerate(cfg.steps):
            _step_params(step, i)  # validate names and parameters now, not halfway through a run
        return cfg


def _expand_shorthand(item: Any, index: int) -> Any:
    if isinstance(item, str):
        return {"name": item, "params": {}}
    if isinstance(item, dict) and "name" not in item and len(item) == 1:
        ((name, params),) = item.items()
        return {"name": name, "params": params or {}}
    if not isinstance(item, dict):
        raise ConfigError(f"PreprocessConfig.steps[{index}]: expected a step name or mapping, got {item!r}")
    return item


def load_preprocess_config(spec: str | Path | dict[str, Any] | PreprocessConfig | None) -> PreprocessConfig:
    """A config from a preset name (``yu2020``), a YAML path, a dict, a config (returned as is) or None (empty)."""
    if isinstance(spec, PreprocessConfig):
        return spec
    return PreprocessConfig.from_dict(resolve_config(spec, kind="preprocess"))


# --------------------------------------------------------------------------------------------------- steps


@dataclass
class _State:
    image: np.ndarray
    masks: list[np.ndarray]
    transform: Transform
    breast_mask: np.ndarray | None
    target_dtype: str  # what normalize maps to
    path: str
    record_id: str | None


@dataclass(frozen=True)
class StepSpec:
    """A registered step: its parameter dataclass and the function that applies it."""

    name: str
    params: type
    run: Callable[[_State, Any], None]
    summary: str


STEPS: dict[str, StepSpec] = {}


def _step(name: str, params: type, summary: str) -> Callable[[Callable[[_State, Any], None]], Callable]:
    def register(fn: Callable[[_State, Any], None]) -> Callable[[_State, Any], None]:
        STEPS[name] = StepSpec(name, params, fn, summary)
        return fn
    return register


def _intensity_step(name: str, params: type, op: Callable[..., np.ndarray], summary: str) -> None:
    """Register a step that maps the image alone through ``op(image, **params)``."""
    def run(state: _State, p: Any) -> None:
        state.image = op(state.image, **{f.name: getattr(p, f.name) for f in fields(p)})
    _step(name, params, summary)(run)


def _require(ok: bool, message: str) -> None:
    """A parameter check of a step's params dataclass (``from_dict`` names the step when it fails)."""
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class NoParams:
    """The params of a step that takes none."""


def step_names() -> list[str]:
    return sorted(STEPS)


def _step_params(step: StepConfig, index: int) -> Any:
    spec = STEPS.get(step.name)
    where = f"PreprocessConfig.steps[{index}] ({step.name})"
    if spec is None:
        raise ConfigError(f"PreprocessConfig.steps[{index}]: unknown step {step.name!r}. "
                          f"Fix: use one of {', '.join(step_names())}")
    if not isinstance(step.params, dict):
        raise ConfigError(f"{where}: params must be a mapping, got {step.params!r}")
    return from_dict(spec.params, step.params, where=where)


def _move(state: _State, fn: Callable[..., tuple[np.ndarray, Transform]]) -> None:
    """Apply one geometric op to the image, and the same op (nearest neighbour) to every mask."""
    state.image, t = fn(state.image, interpolation="auto")
    state.masks = [fn(m, interpolation="nearest")[0] for m in state.masks]
    if state.breast_mask is not None:
        state.breast_mask = fn(state.breast_mask, interpolation="nearest")[0]
    state.transform = state.transform.then(t)


def _ensure_breast_mask(state: _State) -> np.ndarray:
    if state.breast_mask is None:
        _compute_breast_mask(state, None)
    assert state.breast_mask is not None
    return state.breast_mask


def _compute_breast_mask(state: _State, threshold: float | None) -> None:
    image = state.image if state.image.dtype != np.float32 else ops.to_uint16(state.image)
    mask = ops.breast_mask(image, threshold=threshold)
    if not mask.any():
        raise InputError(state.path, "no breast tissue found: the image is blank or uniform",
                         "check that the file holds a mammogram (or drop breast-mask steps from the config)",
                         code="blank_image", record_id=state.record_id)
    state.breast_mask = mask


@dataclass(frozen=True)
class MedianParams:
    ksize: int = 3

    def __post_init__(self) -> None:
        _require(self.ksize >= 3 and self.ksize % 2 == 1, f"ksize must be an odd integer >= 3, got {self.ksize}")


@dataclass(frozen=True)
class ClaheParams:
    clip_limit: float = 2.0
    tile_grid: tuple[int, int] = (8, 8)

    def __post_init__(self) -> None:
        _require(self.clip_limit > 0, f"clip_limit must be > 0, got {self.clip_limit}")
        _require(len(self.tile_grid) == 2 and min(self.tile_grid) >= 1,
                 f"tile_grid must be two positive integers [rows, cols], got {list(self.tile_grid)}")


@dataclass(frozen=True)
class GaussianParams:
    sigma: float = 0.5

    def __post_init__(self) -> None:
        _require(self.sigma > 0, f"sigma must be > 0, got {self.sigma}")


# Intensity steps: the image alone through one pure function of mammoflow.preprocess.ops, the step's params as its
# keyword arguments; masks and geometry are untouched.
_intensity_step("median", MedianParams, ops.median_filter, "median filter, ksize x ksize (Yu et al. 2020)")
_intensity_step("clahe", ClaheParams, ops.clahe, "contrast limited adaptive histogram equalisation (Yu et al. 2020)")
_intensity_step("gaussian", GaussianParams, ops.gaussian_filter, "Gaussian filter, sigma in pixels (Jaamour et al. 2023)")
_intensity_step("equalize", NoParams, ops.equalize_histogram,
                "global histogram equalisation, 8 or 16 bit (Jaamour et al. 2023)")


@dataclass(frozen=True)
class BreastMaskParams:
    threshold: float | None = None  # None: Otsu


@_step("breast_mask", BreastMaskParams,
       "compute the breast mask (Otsu, largest component, holes filled) for later steps; image unchanged")
def _breast_mask(state: _State, p: BreastMaskParams) -> None:
    _compute_breast_mask(state, p.threshold)


@_step("remove_background", NoParams,
       "zero everything outside the breast mask: labels, markers (Yu et al. 2020); computes the mask if needed")
def _remove_background(state: _State, p: NoParams) -> None:
    state.image = ops.remove_background(state.image, _ensure_breast_mask(state))


@dataclass(frozen=True)
class CropBreastParams:
    margin: int = 0

    def __post_init__(self) -> None:
        _require(self.margin >= 0, f"margin must be >= 0, got {self.margin}")


@_step("crop_breast", CropBreastParams, "crop to the breast mask's bounding box plus margin pixels")
def _crop_breast(state: _State, p: CropBreastParams) -> None:
    bbox = ops.mask_bbox(_ensure_breast_mask(state), p.margin)
    _move(state, lambda img, interpolation: ops.crop(img, bbox))


@dataclass(frozen=True)
class SizeParams:
    height: int
    width: int

    def __post_init__(self) -> None:
        _require(self.height >= 1 and self.width >= 1,
                 f"height and width must be positive, got {self.height}x{self.width}")


@_step("resize", SizeParams, "resize to height x width, aspect ratio not kept (area interpolation when shrinking)")
def _resize(state: _State, p: SizeParams) -> None:
    _move(state, lambda img, interpolation: ops.resize(img, (p.height, p.width), interpolation))


@dataclass(frozen=True)
class ResizePadParams:
    height: int
    width: int
    align: Literal["center", "start"] = "center"

    def __post_init__(self) -> None:
        SizeParams(self.height, self.width)


@_step("resize_pad", ResizePadParams,
       "resize to fit height x width keeping the aspect ratio, zero padding (Jaamour et al. 2023)")
def _resize_pad(state: _State, p: ResizePadParams) -> None:
    _move(state, lambda img, interpolation: ops.resize_with_padding(
        img, (p.height, p.width), interpolation, align=p.align))


@_step("flip_left", NoParams, "mirror right-facing breasts so every chest wall is on the left edge")
def _flip_left(state: _State, p: NoParams) -> None:
    side = state.breast_mask if state.breast_mask is not None else state.image
    if ops.is_right_facing(side):
        _move(state, lambda img, interpolation: ops.flip_horizontal(img))


@dataclass(frozen=True)
class NormalizeParams:
    low_pct: float = 0.0
    high_pct: float = 100.0
    within_breast: bool = False  # percentiles inside the breast mask only (computed if needed)

    def __post_init__(self) -> None:
        _require(0.0 <= self.low_pct < self.high_pct <= 100.0,
                 f"need 0 <= low_pct < high_pct <= 100, got {self.low_pct}, {self.high_pct}")


@_step("normalize", NormalizeParams,
       "linear stretch of the [low_pct, high_pct] percentiles to the output dtype's full range")
def _normalize(state: _State, p: NormalizeParams) -> None:
    mask = _ensure_breast_mask(state) if p.within_breast else None
    state.image = ops.normalize_intensity(state.image, p.low_pct, p.high_pct, state.target_dtype, mask)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------- chain


@dataclass
class ChainResult:
    """A preprocessed image, its masks (boolean, same frame), the input -> output transform and the breast mask."""

    image: np.ndarray
    masks: list[np.ndarray]
    transform: Transform
    breast_mask: np.ndarray | None

    def map_lesion(self, row: float, col: float, radius: float | None = None) -> tuple[float, float, float | None]:
        """A lesion centre (and radius) from the input image's frame to the output's."""
        r, c = self.transform.apply_points(row, col)
        return float(r), float(c), None if radius is None else float(radius) * self.transform.scale


class Chain:
    """A validated preprocessing chain; call it on a 2-D uint8/uint16 image."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config
        self._steps = [(STEPS[s.name], _step_params(s, i)) for i, s in enumerate(config.steps)]

    @classmethod
    def from_config(cls, config: PreprocessConfig | dict[str, Any] | str | Path | None) -> Chain:
        return cls(load_preprocess_config(config))

    def resolved(self) -> dict[str, Any]:
        """The config with every default filled in (what :meth:`config_hash` covers and what runs write out)."""
        steps = [{"name": spec.name, "params": to_dict(params)} for spec, params in self._steps]
        out: dict[str, Any] = {"output_dtype": self.config.output_dtype, "steps": steps}
        if self.config.description:
            out = {"description": self.config.description, **out}
        return out

    def config_hash(self) -> str:
        """Stable sha256 of the resolved config and the chain version (the description is left out)."""
        resolved = self.resolved()
        resolved.pop("description", None)
        text = json.dumps({"chain_version": CHAIN_VERSION, **resolved}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Chain({' -> '.join(spec.name for spec, _ in self._steps) or 'identity'})"

    def __call__(self, image: np.ndarray, masks: Sequence[np.ndarray] = (), path: object = "",
                 record_id: str | None = None, timings: dict[str, float] | None = None) -> ChainResult:
        """Run every step. ``masks`` (any dtype, non-zero = inside) must have the image's shape.

        ``timings``: when given, each step's wall seconds are added to it under the step's name (and the final dtype
        conversion's under ``output_dtype``), for benchmarks and profiles.
        Raises :class:`InputError` (naming ``path``) for images the chain cannot use: not 2-D, not 8/16-bit,
        masks of another size, no breast found.
        """
        where = str(path)
        _check_input(image, where, record_id)
        bool_masks = []
        for i, m in enumerate(masks):
            if m.shape != image.shape:
                raise InputError(where, f"lesion mask {i} is {m.shape[:2]} but the image is {image.shape}",
                                 "give masks of the same size as their image", code="mask_size",
                                 record_id=record_id)
            bool_masks.append(np.asarray(m) > 0)
        out_dtype = image.dtype.name if self.config.output_dtype == "same" else self.config.output_dtype
        state = _State(image=image, masks=bool_masks, transform=Transform.identity(), breast_mask=None,
                       target_dtype=out_dtype, path=where, record_id=record_id)
        clock = _Clock(timings)
        for spec, params in self._steps:
            spec.run(state, params)
            clock.lap(spec.name)
        result = state.image if state.image.dtype == np.dtype(out_dtype) else ops.convert_dtype(
            state.image, out_dtype)  # type: ignore[arg-type]
        clock.lap("output_dtype")
        if result is image:  # an identity chain still hands back its own array
            result = image.copy()
        return ChainResult(image=result, masks=state.masks, transform=state.transform,
                           breast_mask=state.breast_mask)


class _Clock:
    """Adds the wall seconds since the last lap to ``timings[name]``; does nothing without ``timings``."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.last = time.perf_counter() if timings is not None else 0.0

    def lap(self, name: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[name] = self.timings.get(name, 0.0) + now - self.last
            self.last = now


def _check_input(image: np.ndarray, where: str, record_id: str | None) -> None:
    if image.ndim == 3:
        raise InputError(where, f"the image has {image.shape[2]} channels", "give a greyscale image",
                         code="rgb", record_id=record_id)
    if image.ndim != 2 or image.size == 0:
        raise InputError(where, f"expected a 2-D image, got shape {image.shape}", "give a 2-D greyscale image",
                         code="invalid", record_id=record_id)
    if image.dtype not in (np.uint8, np.uint16):
        raise InputError(where, f"pixel type {image.dtype} is not 8- or 16-bit unsigned",
                         "convert the image to 8- or 16-bit greyscale", code="bit_depth", record_id=record_id)
