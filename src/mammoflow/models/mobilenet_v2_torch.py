"""MobileNetV2 as torchvision builds it, in Keras with Keras' layer names, loadable from torchvision's checkpoint.

Sandler et al. 2018; torchvision.models.mobilenet_v2. It differs from ``keras.applications.MobileNetV2`` where
torchvision's ImageNet weights would notice: every 3x3 convolution pads one pixel on *each* side (an explicit
``ZeroPadding2D(1)`` then a ``valid`` convolution; Keras pads stride-2 layers asymmetrically), BatchNormalization
uses epsilon 1e-5 (Keras: 1e-3) and momentum 0.9 (torch's 0.1), and the input is scaled with ImageNet's mean and
standard deviation (``torch`` preprocessing). Layer names are ``keras.applications.MobileNetV2``'s (``Conv1``,
``block_13_expand_relu``, ``out_relu``, ...), so taps and CAM layers by name work for both; :data:`TORCHVISION_MAP`
pairs each weighted layer with its torchvision module.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

# (expansion t, output channels c, repeats n, first stride s): torchvision's inverted_residual_setting.
SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
           (6, 320, 1, 1))
STEM, LAST = 32, 1280
BN_EPSILON, BN_MOMENTUM = 1e-5, 0.9
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _blocks() -> list[tuple[int, int, int, int]]:
    """(index, expansion, output channels, stride) of the 17 inverted residual blocks (Keras' expanded_conv,
    block_1 .. block_16; torchvision's features.1 .. features.17)."""
    out, index = [], 0
    for t, c, n, s in SETTING:
        for i in range(n):
            out.append((index, t, c, s if i == 0 else 1))
            index += 1
    return out


def _prefix(index: int) -> str:
    return "expanded_conv" if index == 0 else f"block_{index}"


def torchvision_map(include_top: bool = False) -> dict[str, str]:
    """Keras layer name -> torchvision module prefix, for every layer with weights."""
    mapping = {"Conv1": "features.0.0", "bn_Conv1": "features.0.1"}
    for index, t, _, _ in _blocks():
        name, module = _prefix(index), f"features.{index + 1}.conv"
        parts = (["expand", "expand_BN"] if t != 1 else []) + ["depthwise", "depthwise_BN", "project", "project_BN"]
        torch_parts = ["0.0", "0.1", "1.0", "1.1", "2", "3"] if t != 1 else ["0.0", "0.1", "1", "2"]
        mapping.update({f"{name}_{part}": f"{module}.{tp}" for part, tp in zip(parts, torch_parts, strict=True)})
    mapping.update({"Conv_1": "features.18.0", "Conv_1_bn": "features.18.1"})
    if include_top:
        mapping["predictions"] = "classifier.1"
    return mapping


TORCHVISION_MAP = torchvision_map(include_top=True)


def mobilenet_v2_torch(x: Any, *, include_top: bool = False, classes: int = 1000) -> Any:
    """Build the network on 3-channel tensor ``x``; returns the output tensor (``out_relu``, or the softmax
    ``predictions`` over ``classes`` when ``include_top``)."""
    from keras import layers

    def conv_bn(y: Any, filters: int, kernel: int, stride: int, name: str, bn: str, relu: str | None) -> Any:
        if kernel == 3:
            y = layers.ZeroPadding2D(1, name=f"{name}_pad")(y)
        y = layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False, name=name)(y)
        y = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=bn)(y)
        return layers.ReLU(6.0, name=relu)(y) if relu else y

    y = conv_bn(x, STEM, 3, 2, "Conv1", "bn_Conv1", "Conv1_relu")
    channels = STEM
    for index, t, c, s in _blocks():
        name, block_in = _prefix(index), y
        if t != 1:
            y = conv_bn(y, channels * t, 1, 1, f"{name}_expand", f"{name}_expand_BN", f"{name}_expand_relu")
        y = layers.ZeroPadding2D(1, name=f"{name}_pad")(y)
        y = layers.DepthwiseConv2D(3, strides=s, padding="valid", use_bias=False, name=f"{name}_depthwise")(y)
        y = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_depthwise_BN")(y)
        y = layers.ReLU(6.0, name=f"{name}_depthwise_relu")(y)
        y = conv_bn(y, c, 1, 1, f"{name}_project", f"{name}_project_BN", None)
        if s == 1 and channels == c:
            y = layers.Add(name=f"{name}_add")([block_in, y])
        channels = c
    y = conv_bn(y, LAST, 1, 1, "Conv_1", "Conv_1_bn", "out_relu")
    if include_top:
        y = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(y)
        y = layers.Dense(classes, activation="softmax", name="predictions")(y)  # torch's Dropout(0.2) is a no-op here
    return y


def load_torchvision(model: keras.Model, state: dict[str, np.ndarray], source: str, include_top: bool) -> None:
    """Copy torchvision's MobileNetV2 state dict into ``model`` (built by :func:`mobilenet_v2_torch`)."""
    from mammoflow.models.torch_checkpoint import assign

    assigned = assign(model, state, torchvision_map(include_top), source)
    log.info("loaded torchvision MobileNetV2 weights into %d layers from %s", len(assigned), source)


def classifier(input_shape: tuple[int, int, int] = (224, 224, 3)) -> keras.Model:
    """The whole ImageNet classifier (random weights), input already scaled by :func:`scale`."""
    import keras

    inputs = keras.Input(input_shape, name="image")
    return keras.Model(inputs, mobilenet_v2_torch(inputs, include_top=True), name="mobilenet_v2_torchvision")


def scale(rgb: np.ndarray) -> np.ndarray:
    """torchvision's ImageNet input scaling: RGB 0..255 -> (x / 255 - mean) / std, per channel."""
    return ((np.asarray(rgb, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def resize_crop(rgb: np.ndarray, resize: int = 256, crop: int = 224) -> np.ndarray:
    """torchvision's evaluation transform: the shorter side to ``resize`` (bilinear, antialiased), then the
    centre ``crop`` x ``crop``."""
    from PIL import Image

    image = Image.fromarray(np.asarray(rgb, np.uint8))
    width, height = image.size
    # torchvision.transforms.Resize(int): the longer side truncated; CenterCrop: the offsets rounded.
    short, long = sorted((width, height))
    size = (resize, int(resize * long / short)) if width <= height else (int(resize * long / short), resize)
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = round((size[0] - crop) / 2), round((size[1] - crop) / 2)
    return np.asarray(image.crop((left, top, left + crop, top + crop)))
