"""CAM maths: pure numpy functions that turn model outputs into maps over a mammogram and score them against the
known lesions (no model, no files besides the two atomic writers).

Class activation maps follow Xi et al. 2018 (Section 2.3): CAM = sum_k w_k f_k over the last convolutional feature
maps f_k. They compared the maps with the ROI masks by eye only; here every map is scored against the lesions:

- **pointing game** (:mod:`mammoflow.evaluation.pointing`): the map's peak inside the breast falls inside a
  lesion, or within the tolerance of one (a hit), or not; chance is the lesion dilated by the tolerance over the
  breast area (the probability that a peak drawn uniformly in the breast hits under the same rule);
- **IoU** (:func:`threshold_iou`): the map thresholded at a fraction of its range (default half-way between its
  minimum and maximum in the breast) against the lesion mask.

Images enter the model as in the input pipeline (:mod:`mammoflow.dataset.pipeline`): the dtype's maximum mapped
to ``value_range`` (255), grey repeated to the model's channels, and centred like the training patches
(``patch_mean``: every window minus its own mean; in the fully convolutional pass, every pixel minus the mean of
the patch-sized window around it, which is the same thing at the window's centre; or the ImageNet conventions
``caffe`` / ``tf`` / ``torch``): :func:`model_range` and :func:`finish`. How a model gives the maps is in
:mod:`mammoflow.evaluation.cam_model`; the ``explain`` job in :mod:`mammoflow.evaluation.explain`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mammoflow.errors import ConfigError
from mammoflow.evaluation.pointing import chance_hit_rate, peak, pointing_game  # noqa: F401  (part of this API)

LesionCircle = tuple[float, float, float]  # (row, col, radius) in pixels

EPS = 1e-7


def model_range(image: np.ndarray, value_range: float = 255.0) -> np.ndarray:
    """Pixel values on the input pipeline's scale: float32, the dtype's maximum mapped to ``value_range``
    (:class:`mammoflow.dataset.pipeline.InputConfig`, 255 by default for uint8 and uint16 images alike)."""
    from mammoflow.preprocess.ops import to_float01

    return to_float01(image) * np.float32(value_range)


def window_mean(image: np.ndarray, size: int) -> np.ndarray:
    """Mean of the ``size`` x ``size`` window centred on every pixel (borders reflected), float32."""
    import cv2

    return cv2.blur(np.asarray(image, np.float32), (int(size), int(size)), borderType=cv2.BORDER_REFLECT)


# ImageNet conventions of Keras' preprocess_input, as mammoflow.dataset.pipeline applies them.
_CAFFE_MEAN = np.array((103.939, 116.779, 123.68), np.float32)
_TORCH_MEAN = np.array((0.485, 0.456, 0.406), np.float32)
_TORCH_STD = np.array((0.229, 0.224, 0.225), np.float32)
CENTRINGS = ("patch_mean", "none", "caffe", "tf", "torch")


def finish(x: np.ndarray, centring: str, channels: int, value_range: float = 255.0,
           local_mean: np.ndarray | None = None) -> np.ndarray:
    """Model inputs ``(N, H, W, channels)`` from scaled grey windows ``(N, H, W)``: the numpy twin of the input
    pipeline's last step (centring, grey -> channels, ImageNet conventions), so maps see what training saw.

    ``patch_mean`` subtracts each window's own mean, or ``local_mean`` (the mean of the patch-sized window around
    every pixel) when a whole image is run fully convolutionally.
    """
    if centring not in CENTRINGS:
        raise ConfigError(f"centring {centring!r} is not one of {', '.join(CENTRINGS)}")
    x = np.asarray(x, np.float32)
    if centring == "patch_mean":
        x = x - (local_mean if local_mean is not None else x.mean(axis=(1, 2), keepdims=True))
    x = x[..., None]
    if channels == 3:
        x = np.repeat(x, 3, axis=-1)
    scale = np.float32(255.0 / value_range)
    if centring == "caffe":
        x = x * scale - (_CAFFE_MEAN if channels == 3 else _CAFFE_MEAN.mean())
    elif centring == "tf":
        x = x * (scale / np.float32(127.5)) - np.float32(1.0)
    elif centring == "torch":
        mean, std = (_TORCH_MEAN, _TORCH_STD) if channels == 3 else (_TORCH_MEAN.mean(), _TORCH_STD.mean())
        x = (x * (scale / np.float32(255.0)) - mean) / std
    return x.astype(np.float32, copy=False)


def upsample(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``shape`` (rows, cols), float32."""
    import cv2

    small = np.asarray(small, np.float32)
    if small.shape == tuple(shape):
        return small
    return cv2.resize(small, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR)


def tile_starts(length: int, tile: int) -> list[int]:
    """Starts of consecutive ``tile``-long pieces covering ``0..length`` (the last one may be shorter)."""
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    return list(range(0, max(length, 1), tile))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Starts of ``window``-long windows with step ``stride`` covering ``0..length``; the last one ends at the
    edge so that no pixel is left out (a single window at 0 when ``length <= window``)."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def normalise_map(cam: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """The map scaled to [0, 1] by its minimum and maximum inside ``valid`` (everywhere when None);
    pixels outside ``valid`` are 0. A flat map gives zeros."""
    cam = np.asarray(cam, np.float32)
    values = cam[valid] if valid is not None else cam
    if values.size == 0:
        return np.zeros_like(cam)
    lo, hi = float(values.min()), float(values.max())
    out = np.zeros_like(cam) if hi - lo <= EPS else np.clip((cam - lo) / (hi - lo), 0.0, 1.0)
    if valid is not None:
        out = np.where(valid, out, 0.0).astype(np.float32)
    return out


def threshold_iou(cam: np.ndarray, lesion_mask: np.ndarray, fraction: float = 0.5,
                  valid: np.ndarray | None = None) -> float:
    """IoU of ``normalise_map(cam, valid) >= fraction`` with the lesion mask (0 when both are empty)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    lesion_mask = np.asarray(lesion_mask, bool)
    hot = normalise_map(cam, valid) >= fraction
    if valid is not None:
        hot &= valid
    union = int((hot | lesion_mask).sum())
    return float((hot & lesion_mask).sum() / union) if union else 0.0


def lesion_mask_from_circles(shape: tuple[int, int], circles: Sequence[LesionCircle]) -> np.ndarray:
    """Union of discs (row, col, radius) as a boolean mask."""
    rows = np.arange(shape[0], dtype=np.float32)[:, None]
    cols = np.arange(shape[1], dtype=np.float32)[None, :]
    mask = np.zeros(shape, bool)
    for row, col, radius in circles:
        mask |= (rows - row) ** 2 + (cols - col) ** 2 <= float(radius) ** 2
    return mask


def overlay_heatmap(image: np.ndarray, cam01: np.ndarray, alpha: float = 0.45,
                    lesion_mask: np.ndarray | None = None, peak_at: tuple[int, int] | None = None,
                    max_side: int | None = 1600) -> np.ndarray:
    """RGB uint8: the grey image with the [0, 1] map as a JET heatmap on top, lesion outlines in green and the
    peak as a white cross. Downscaled (area) so its longer side is at most ``max_side`` (None keeps the size)."""
    import cv2

    from mammoflow.preprocess.ops import to_uint8

    grey = to_uint8(image) if image.dtype != np.uint8 else image
    scale = 1.0
    if max_side is not None and max(grey.shape) > max_side:
        scale = max_side / max(grey.shape)
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        cam01 = cv2.resize(np.asarray(cam01, np.float32), size, interpolation=cv2.INTER_AREA)
        if lesion_mask is not None:
            lesion_mask = cv2.resize(lesion_mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    heat = cv2.applyColorMap(np.rint(np.clip(cam01, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32)
    base = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    # Weight the heat by the map itself so cold areas show the mammogram unchanged.
    weight = alpha * np.clip(cam01, 0, 1)[..., None]
    rgb = np.rint(base * (1 - weight) + heat * weight).astype(np.uint8)
    thickness = max(1, round(max(rgb.shape[:2]) / 400))
    if lesion_mask is not None and lesion_mask.any():
        contours, _ = cv2.findContours(lesion_mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(rgb, contours, -1, (0, 255, 0), thickness, lineType=cv2.LINE_AA)
    if peak_at is not None:
        centre_xy = (round(peak_at[1] * scale), round(peak_at[0] * scale))
        cv2.drawMarker(rgb, centre_xy, (255, 255, 255), cv2.MARKER_CROSS, 6 * thickness + 6, thickness)
    return rgb


def write_rgb_png(path: Path | str, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image as PNG atomically."""
    import cv2

    from mammoflow.storage import atomic_write_bytes

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV only fails on unsupported arrays
        raise ValueError("OpenCV could not encode the overlay as PNG")
    atomic_write_bytes(path, buf.tobytes())
    return Path(path)


def save_npy(path: Path | str, array: np.ndarray) -> Path:
    """Save an array as .npy atomically."""
    import io

    from mammoflow.storage import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def window_prior(size: int, sigma_fraction: float = 0.5) -> np.ndarray:
    """A Gaussian weight over a window (sigma = ``sigma_fraction`` x side, peak 1 at the centre), float32."""
    axis = np.arange(size, dtype=np.float32) - (size - 1) / 2
    g = np.exp(-0.5 * (axis / (sigma_fraction * size)) ** 2)
    return np.outer(g, g).astype(np.float32)
