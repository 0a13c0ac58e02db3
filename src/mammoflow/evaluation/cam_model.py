"""Maps from a model: CAM target selection and model surgery (variable-size inputs, the GAP + dense split), and
the two ways to compute a map over a whole mammogram, chosen from the model (see :func:`cam_target`):

- ``cam`` (GAP feeding the softmax layer directly, Xi et al. 2018's models): the model is rebuilt with a
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

The numpy side (input scaling, map normalisation, scores, overlays) is :mod:`mammoflow.evaluation.cam`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mammoflow.errors import ConfigError
from mammoflow.evaluation.cam import (
    EPS,
    finish,
    tile_starts,
    upsample,
    window_mean,
    window_prior,
    window_starts,
)

if TYPE_CHECKING:
    import keras

    from mammoflow.training.package import ModelPackage

log = logging.getLogger(__name__)

CamMethod = Literal["cam", "gradcam"]


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
            p = tf.clip_by_value(probs, EPS, 1.0)
            log_p = tf.math.log(p[:, pos])
            # Log-odds against the other class (two classes) or the log-probability (more classes).
            score = log_p - tf.math.log(p[:, 1 - pos]) if n_out == 2 else log_p
        grads = tape.gradient(score, feats)
        alpha = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cams = tf.nn.relu(tf.reduce_sum(alpha * feats, axis=-1)).numpy()
        p_pos = probs.numpy()[:, pos]
        for (r, c), cam, pp in zip(chunk, cams, p_pos, strict=True):
            top = float(cam.max())
            local = upsample(cam / top, (size, size)) if top > EPS else np.zeros((size, size), np.float32)
            acc[r:r + size, c:c + size] += float(pp) * prior * local
            count[r:r + size, c:c + size] += prior
    out = np.divide(acc, count, out=np.zeros_like(acc), where=count > 0)
    return out[:h, :w]


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


def package_cam_target(package: ModelPackage, method: str | None = None, layer: str | None = None) -> CamTarget:
    """The CAM target of a model package: its input settings, and the registry's CAM layer for Grad-CAM (a
    loaded .keras file carries no registry metadata, so the package names it from its config)."""
    if layer is None and (method == "gradcam" or (method is None and not has_gap_dense_head(package.model))):
        layer = package.registry_cam_layer()
    return cam_target(package.model, patch_size=package.patch_size, centring=package.centring, layer=layer,
                      method=method, positive_index=package.positive_index,  # type: ignore[arg-type]
                      value_range=package.input_config().value_range)
