"""Class activation maps of a patch classifier over a whole mammogram, and how well they point at the lesion.

Xi et al. 2018 (Section 2.3) feed the *full* mammogram to a patch classifier whose head is GAP + one dense layer
and draw CAM = sum_k w_k f_k over the last convolutional feature maps f_k. They compared the maps with the ROI
masks by eye only; here every map is scored against the known lesions:

- **pointing game** (:mod:`mammoflow.evaluation.pointing`): the map's peak inside the breast falls inside a
  lesion, or within the tolerance of one (a hit), or not; chance is the lesion dilated by the tolerance over the
  breast area (the probability that a peak drawn uniformly in the breast hits under the same rule);
- **IoU**: the map thresholded at a fraction of its range (default half-way between its minimum and maximum
  in the breast) against the lesion mask.

Two ways to compute a map, chosen from the model (see :func:`cam_target`):

- ``cam`` (GAP feeding the softmax layer directly, Xi et al.'s models): the model is rebuilt with a
  variable-size input and run fully convolutionally over the image in overlapping tiles (so a 4000x3000
  mammogram never needs more than one tile's activations in memory). The map is the CAM of the tumour-vs-normal
  log-odds, sum_k (w_{k,pos} - w_{k,neg}) f_k: with a two-class softmax that is exactly what moves P(tumour),
  whereas one class's own CAM also lights up features both classes share.
- ``gradcam`` (every other head, Yu et al.'s Fusion models included, which need a fixed input size): a window
  of the model's input size slides over the breast; in each window Grad-CAM (Selvaraju et al. 2017) of the
  log-odds on the model's CAM layer is normalised to [0, 1] and weighted by the window's P(tumour), so windows
  the model finds normal contribute little; overlapping windows are averaged with a broad Gaussian weight
  centred on each window (sigma = half the window), because a patch classifier trained on lesion-centred
  patches is most reliable about the middle of its window, while Grad-CAM on a 4x4 deep feature map is coarse
  and drifts towards the window's edges (on held-out phantoms the weighting moved the pointing game from 0.75
  to 0.875 and from 0.71 to 0.75 on two sets of 24).

Images enter the model as in the input pipeline (:mod:`mammoflow.dataset.pipeline`): the dtype's maximum mapped
to ``value_range`` (255), grey repeated to the model's channels, and centred like the training patches
(``patch_mean``: every window minus its own mean; in the fully convolutional pass, every pixel minus the mean of
the patch-sized window around it, which is the same thing at the window's centre; or the ImageNet conventions
``caffe`` / ``tf`` / ``torch``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mammoflow.errors import ConfigError, InputError
from mammoflow.evaluation.pointing import chance_hit_rate, peak, pointing_game  # noqa: F401  (part of this API)
from mammoflow.records import atomic_write_text

if TYPE_CHECKING:
    import keras

    from mammoflow.evaluation.evaluate import LoadedModel

log = logging.getLogger(__name__)

CamMethod = Literal["cam", "gradcam"]
Centring = Literal["patch_mean", "none"]
LesionCircle = tuple[float, float, float]  # (row, col, radius) in pixels

EXPLAIN_INDEX = "explain.json"
_EPS = 1e-7


# =========================================================================================== pure map functions


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
    out = np.zeros_like(cam) if hi - lo <= _EPS else np.clip((cam - lo) / (hi - lo), 0.0, 1.0)
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

    from mammoflow.io.images import atomic_write_bytes

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV only fails on unsupported arrays
        raise ValueError("OpenCV could not encode the overlay as PNG")
    atomic_write_bytes(path, buf.tobytes())
    return Path(path)


def save_npy(path: Path | str, array: np.ndarray) -> Path:
    """Save an array as .npy atomically."""
    import io

    from mammoflow.io.images import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


# =========================================================================================== the model side


@dataclass(frozen=True)
class CamTarget:
    """What a map is computed on: the layer, the method, and how the model's inputs look."""

    layer: str
    method: CamMethod
    patch_size: int  # the window side for Grad-CAM and the centring window
    channels: int
    centring: str
    positive_index: int = 1
    dense: str | None = None  # CAM: the dense (softmax) layer after the GAP
    value_range: float = 255.0  # pixel scale of the input pipeline (InputConfig.value_range)

    def windows_input(self, windows: np.ndarray) -> np.ndarray:
        """Model inputs from scaled windows (N, H, W), centred like training patches."""
        return finish(windows, self.centring, self.channels, self.value_range)

    def image_input(self, image: np.ndarray) -> np.ndarray:
        """Model input (1, H, W, C) of a whole scaled image for a fully convolutional pass (patch_mean centring
        becomes the local mean of the patch-sized window around each pixel)."""
        local = window_mean(image, self.patch_size)[None] if self.centring == "patch_mean" else None
        return finish(image[None], self.centring, self.channels, self.value_range, local_mean=local)


def _producer(tensor: Any) -> Any:
    """The layer that produced a symbolic Keras tensor."""
    return tensor._keras_history[0]  # noqa: SLF001 - Keras' public graph API has no accessor for this


def _gap_dense_head(model: keras.Model) -> tuple[str, str] | None:
    """(feature layer, dense layer) when the model ends in feature maps -> GAP -> dense softmax, else None."""
    from keras import layers

    out_layer = _producer(model.outputs[0])
    if not isinstance(out_layer, layers.Dense):
        return None
    gap = _producer(out_layer.input)
    if not isinstance(gap, layers.GlobalAveragePooling2D):
        return None
    features = _producer(gap.input)
    return features.name, out_layer.name


def has_gap_dense_head(model: keras.Model) -> bool:
    """Whether plain CAM applies: the model ends in feature maps -> GAP -> dense (Xi et al. 2018's head)."""
    return _gap_dense_head(model) is not None


def _last_feature_layer(model: keras.Model) -> str:
    """The deepest spatial convolution (kernel larger than 1x1, output at least 2x2): Grad-CAM's usual layer
    when no registry metadata names one (1x1 convolutions belong to heads such as Yu et al.'s Fusion2)."""
    from keras import layers

    name = None
    for layer in model.layers:
        if not isinstance(layer, layers.Conv2D) or tuple(layer.kernel_size) == (1, 1):
            continue
        shape = layer.output.shape
        if len(shape) == 4 and all(s is None or s >= 2 for s in shape[1:3]):
            name = layer.name
    if name is None:
        raise ConfigError(f"model {model.name!r} has no convolutional feature maps to explain")
    return name


def cam_target(model: keras.Model, *, patch_size: int | None = None, centring: str = "patch_mean",
               layer: str | None = None, method: CamMethod | None = None, positive_index: int = 1,
               value_range: float = 255.0) -> CamTarget:
    """Find the CAM layer and method of ``model``.

    The registry's metadata (``model.mammoflow_meta.cam_layer``) names the layer when the model was built by
    :func:`mammoflow.models.create_model`; a loaded ``.keras`` file has no metadata, so the graph is read: a
    model ending in feature maps -> GAP -> dense gets ``cam`` on those maps, any other gets ``gradcam`` on the
    registry's layer or the deepest spatial convolution. ``layer`` / ``method`` override.
    """
    head = _gap_dense_head(model)
    meta = getattr(model, "mammoflow_meta", None)
    chosen = method or ("cam" if head is not None else "gradcam")
    if chosen == "cam" and head is None:
        raise ConfigError(f"model {model.name!r} has no GAP -> dense head, so plain CAM does not apply. "
                          "Fix: use method gradcam")
    if layer is None:
        if chosen == "cam":
            layer = head[0]  # type: ignore[index]
        elif meta is not None:
            layer = meta.cam_layer
        else:
            layer = _last_feature_layer(model)
    model.get_layer(layer)  # raises a clear ValueError when the name is wrong
    side = model.input_shape[1]
    size = int(patch_size or side or 0)
    if size < 1:
        raise ConfigError(f"model {model.name!r} takes any input size: give the training patch size")
    n_out = int(model.output_shape[-1])
    if not 0 <= positive_index < n_out:
        raise ConfigError(f"positive class index {positive_index} outside the model's {n_out} outputs")
    return CamTarget(layer=layer, method=chosen, patch_size=size, channels=int(model.input_shape[-1]),
                     centring=centring, positive_index=positive_index, value_range=float(value_range),
                     dense=head[1] if chosen == "cam" and head is not None else None)


def variable_input_model(model: keras.Model) -> keras.Model:
    """The same model (same weights) with a ``(None, None, C)`` input, so it runs on any image size.

    Rebuilt from its config: a Keras functional model checks its input shape, so calling it on a larger image
    fails even when every layer is convolutional.
    """
    import keras

    config = model.get_config()
    changed = False
    for layer in config.get("layers", []):
        if layer.get("class_name") == "InputLayer":
            shape = list(layer["config"].get("batch_shape") or layer["config"].get("batch_input_shape"))
            key = "batch_shape" if "batch_shape" in layer["config"] else "batch_input_shape"
            layer["config"][key] = [shape[0], None, None, shape[-1]]
            changed = True
    if not changed:
        raise ConfigError(f"model {model.name!r} is not a functional model with an input layer")
    try:
        rebuilt = keras.Model.from_config(config)
    except Exception as exc:  # a layer that needs a fixed size (Flatten -> Dense, fixed pooling) refuses
        raise ConfigError(f"model {model.name!r} cannot take a variable input size ({exc})") from None
    rebuilt.set_weights(model.get_weights())
    return rebuilt


@dataclass
class CamProjection:
    """A GAP + dense model split for CAM: variable-size feature model, and the dense weights of the log-odds."""

    features: Any  # keras.Model: image (any size) -> feature maps (1, h, w, K)
    weights: np.ndarray  # (K,): w_pos - w_neg (two classes) or w_pos
    bias: float  # b_pos - b_neg (or b_pos): GAP(map) + bias is the log-odds (the logit for more classes)
    stride: int  # input pixels per feature-map pixel

    def feature_map(self, x: np.ndarray) -> np.ndarray:
        """The CAM at feature-map resolution of one model input (1, H, W, C)."""
        feats = np.asarray(self.features(x, training=False))[0]
        return feats @ self.weights


def cam_projection(model: keras.Model, target: CamTarget) -> CamProjection:
    """Split a GAP + dense model for CAM (see :class:`CamProjection`)."""
    import keras

    if target.method != "cam" or target.dense is None:
        raise ConfigError("plain CAM needs a GAP -> dense model (method cam)")
    # model.input (one tensor, not the list model.inputs): sub-models then take a bare array without warnings.
    features = variable_input_model(keras.Model(model.input, model.get_layer(target.layer).output))
    dense = model.get_layer(target.dense).get_weights()
    kernel = np.asarray(dense[0], np.float32)  # (K, classes)
    bias = np.asarray(dense[1], np.float32) if len(dense) > 1 else np.zeros(kernel.shape[1], np.float32)
    pos = target.positive_index
    if kernel.shape[1] == 2:  # two-class softmax: the log-odds uses the difference of the two columns
        weights, b = kernel[:, pos] - kernel[:, 1 - pos], float(bias[pos] - bias[1 - pos])
    else:
        weights, b = kernel[:, pos], float(bias[pos])
    probe = _round_up(max(64, target.patch_size), 64)
    out_side = int(features(np.zeros((1, probe, probe, target.channels), np.float32), training=False).shape[1])
    stride = max(1, round(probe / out_side))
    return CamProjection(features=features, weights=weights, bias=b, stride=int(stride))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def fully_convolutional_cam(model: keras.Model, image: np.ndarray, target: CamTarget, tile: int = 1024,
                            margin: int | None = None) -> np.ndarray:
    """The CAM (log-odds, see module docstring) of a GAP + dense model over a scaled image
    (:func:`model_range`), in tiles.

    Each tile is cut with ``margin`` pixels of context on every side (default: twice the patch size, so the
    feature maps at the tile's edge see the same pixels as in one pass over the whole image), run through the
    variable-size feature model, projected on the dense weights, upsampled to the tile's pixels and cropped to
    the tile. The image is padded to a multiple of the feature stride and tile side and margin are rounded up to
    it, so every tile's feature grid lines up with the whole image's and, with a margin covering the receptive
    field, the tiled map equals a single pass. Peak memory: one (tile + 2 margin)^2 pass, plus the full-size
    float32 map.
    """
    proj = cam_projection(model, target)
    tile = _round_up(int(tile), proj.stride)
    margin = _round_up(int(2 * target.patch_size if margin is None else margin), proj.stride)
    x = target.image_input(np.asarray(image, np.float32))[0]
    height, width = x.shape[:2]
    # Pad to a multiple of the stride (reflecting tissue): 'same' padding then lines up identically in every tile
    # and in a single pass, so the tiled map equals the one-pass map exactly.
    pad_h, pad_w = (-height) % proj.stride, (-width) % proj.stride
    if pad_h or pad_w:
        x = np.pad(x, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
    h, w = x.shape[:2]
    out = np.zeros((h, w), np.float32)
    for r0 in tile_starts(h, tile):
        for c0 in tile_starts(w, tile):
            r1, c1 = min(h, r0 + tile), min(w, c0 + tile)
            wr0, wc0 = max(0, r0 - margin), max(0, c0 - margin)
            wr1, wc1 = min(h, r1 + margin), min(w, c1 + margin)
            window = x[wr0:wr1, wc0:wc1]
            fmap = proj.feature_map(window[None])
            # Feature cell i covers input pixels [i * stride, (i + 1) * stride): upsample by exactly the stride and
            # crop, so tiles and a single pass put every cell on the same pixels.
            up = upsample(fmap, (fmap.shape[0] * proj.stride, fmap.shape[1] * proj.stride))
            out[r0:r1, c0:c1] = up[r0 - wr0:r1 - wr0, c0 - wc0:c1 - wc0]
    return np.ascontiguousarray(out[:height, :width])


def _windows(image: np.ndarray, origins: Sequence[tuple[int, int]], size: int) -> np.ndarray:
    return np.stack([image[r:r + size, c:c + size] for r, c in origins])


def sliding_gradcam(model: keras.Model, image: np.ndarray, target: CamTarget, stride: int | None = None,
                    valid: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
    """Patch-wise Grad-CAM over a scaled image (:func:`model_range`) for a fixed-input model (see module
    docstring).

    Windows of the model's input size step by ``stride`` (default half a window); only windows whose centre
    lies in ``valid`` (the breast) are run. Returns a float32 map in [0, 1] of the image's shape: the average,
    over the windows covering a pixel and weighted by :func:`window_prior`, of (window Grad-CAM normalised to
    [0, 1]) x (window P(tumour)).
    """
    import keras
    import tensorflow as tf

    size = target.patch_size
    stride = int(stride or max(1, size // 2))
    image = np.asarray(image, np.float32)
    h, w = image.shape
    pad_h, pad_w = max(0, size - h), max(0, size - w)
    if pad_h or pad_w:  # an image smaller than one window: pad with background
        image = np.pad(image, ((0, pad_h), (0, pad_w)))
    ph, pw = image.shape
    origins = [(r, c) for r in window_starts(ph, size, stride) for c in window_starts(pw, size, stride)]
    if valid is not None:
        valid_padded = np.pad(valid, ((0, pad_h), (0, pad_w))) if (pad_h or pad_w) else valid
        origins = [(r, c) for r, c in origins if valid_padded[r + size // 2, c + size // 2]]
    grad_model = keras.Model(model.input, [model.get_layer(target.layer).output, model.outputs[0]])
    pos, n_out = target.positive_index, int(model.output_shape[-1])
    acc = np.zeros((ph, pw), np.float32)
    count = np.zeros((ph, pw), np.float32)
    prior = window_prior(size)
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        x = tf.convert_to_tensor(target.windows_input(_windows(image, chunk, size)))
        with tf.GradientTape() as tape:
            feats, probs = grad_model(x, training=False)
            p = tf.clip_by_value(probs, _EPS, 1.0)
            log_p = tf.math.log(p[:, pos])
            # Log-odds against the other class (two classes) or the log-probability (more classes).
            score = log_p - tf.math.log(p[:, 1 - pos]) if n_out == 2 else log_p
        grads = tape.gradient(score, feats)
        alpha = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cams = tf.nn.relu(tf.reduce_sum(alpha * feats, axis=-1)).numpy()
        p_pos = probs.numpy()[:, pos]
        for (r, c), cam, pp in zip(chunk, cams, p_pos, strict=True):
            top = float(cam.max())
            local = upsample(cam / top, (size, size)) if top > _EPS else np.zeros((size, size), np.float32)
            acc[r:r + size, c:c + size] += float(pp) * prior * local
            count[r:r + size, c:c + size] += prior
    out = np.divide(acc, count, out=np.zeros_like(acc), where=count > 0)
    return out[:h, :w]


def window_prior(size: int, sigma_fraction: float = 0.5) -> np.ndarray:
    """A Gaussian weight over a window (sigma = ``sigma_fraction`` x side, peak 1 at the centre), float32."""
    axis = np.arange(size, dtype=np.float32) - (size - 1) / 2
    g = np.exp(-0.5 * (axis / (sigma_fraction * size)) ** 2)
    return np.outer(g, g).astype(np.float32)


def compute_cam(model: keras.Model, image: np.ndarray, target: CamTarget, *, stride: int | None = None,
                tile: int = 1024, valid: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
    """The map of ``target.method`` over a scaled image (:func:`model_range`; same shape, float32)."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    if target.method == "cam":
        try:
            return fully_convolutional_cam(model, image, target, tile=tile)
        except ConfigError as exc:
            log.warning("%s; falling back to sliding-window Grad-CAM", exc)
            target = CamTarget(**{**asdict(target), "method": "gradcam", "dense": None})
    return sliding_gradcam(model, image, target, stride=stride, valid=valid, batch_size=batch_size)


# =========================================================================================== explain


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


def explain_image(loaded: LoadedModel, item: ImageToExplain, out: Path, *, chain: Any = None,
                  target: CamTarget | None = None, stride: int | None = None, tile: int = 1024,
                  iou_fraction: float = 0.5, tolerance: float = 0.0, fingerprint: str | None = None
                  ) -> ExplainResult:
    """Map one image, write ``<name>_overlay.png``, ``<name>_cam.npy`` and ``<name>.json`` into ``out``.

    The JSON is written last, so an interrupted image never looks finished to a re-run (see :func:`explain`).
    """
    t0 = time.perf_counter()
    target = target or loaded.cam_target()
    image, lesion, breast = _prepare(item, chain)
    scaled = model_range(image, target.value_range)
    cam = compute_cam(loaded.model, scaled, target, stride=stride, tile=tile, valid=breast)
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


def images_from_records(records_dir: str | Path, ids: Sequence[str] = (), limit: int | None = None
                        ) -> Iterator[ImageToExplain]:
    """Records by id (or, with no ids, the first ``limit`` records that have lesion geometry) with their lesions."""
    from mammoflow.records import RecordsTable

    table = RecordsTable.read(records_dir)
    for rec in _chosen_records(table, records_dir, ids, limit):
        yield _record_item(table, records_dir, rec)


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
    from mammoflow.io.images import file_sha256

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
            cache_dir: str | Path | None = None) -> dict[str, Any]:
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
    from mammoflow.evaluation.evaluate import load_model
    from mammoflow.logs import progress
    from mammoflow.preprocess.chain import Chain

    out = Path(out)
    loaded = load_model(model_uri, cache_dir=cache_dir)
    target = loaded.cam_target(method=method, layer=layer)
    chain = Chain.from_config(preprocess) if preprocess else None
    paths = [i for i in images if Path(i).exists()]
    ids = [i for i in images if not Path(i).exists()]
    if ids and records is None:
        raise InputError(ids[0], "no such file", "give an existing image path, or --records DIR to look up "
                         "record ids", code="missing_file")
    if (circles or mask_paths) and len(images) != 1:
        raise ConfigError("--lesion / --mask describe one image: give exactly one --image with them")
    info = {"model": loaded.describe(), "preprocess": chain.resolved() if chain is not None else None,
            "method": target.method, "layer": target.layer, "centring": target.centring,
            "patch_size": target.patch_size, "stride": stride or (target.patch_size // 2 if target.method ==
                                                                    "gradcam" else None),
            "pointing_game_tolerance_px": tolerance, **({"pointing_game_chance": "lesion dilated by the tolerance, "
                                                          "over the breast area"} if tolerance > 0 else {}),
            "coordinates": "maps, overlays and peaks are in the preprocessed image's pixel frame (row 0 at the top)"}
    # Everything else a map or a score depends on, besides the input itself.
    settings = {**{k: v for k, v in info.items() if k not in ("model", "coordinates")}, "model_sha256": loaded.sha256,
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
                results.append(explain_image(loaded, item, out, chain=chain, target=target, stride=stride, tile=tile,
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
