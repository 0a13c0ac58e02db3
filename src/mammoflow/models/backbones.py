"""ImageNet backbones from ``keras.applications``, built into the model's own graph so every layer has its name.

The backbone is built on the model's input tensor (not nested as a sub-model), so ``model.get_layer("block3_pool")``
works on the finished model and taps, CAM layers and freezing all go by layer *name*. Pretrained weights are
loaded into a stand-alone copy of the application and copied layer by layer, by name: this keeps the
grey-to-RGB layer and extra input blocks in front of the backbone out of Keras' topological weight loading.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mammoflow.errors import ConfigError
from mammoflow.models.weights import imagenet_unavailable, is_download_failure, local_file

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """One ``keras.applications`` backbone: its constructor, limits and the layer names we tap."""

    app: str  # attribute of keras.applications
    min_size: int  # smallest input side keras.applications accepts
    last_conv: str  # last feature maps before global pooling: the CAM layer
    preprocessing: str  # input scaling its ImageNet weights expect (keras.applications preprocess_input mode)
    block_pools: tuple[str, ...] = ()  # VGG: the pooling output of blocks 1..5 (Yu et al.'s L1..L5)


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec("VGG16", 32, "block5_conv3", "caffe",
                          tuple(f"block{i}_pool" for i in range(1, 6))),
    "vgg19": BackboneSpec("VGG19", 32, "block5_conv4", "caffe",
                          tuple(f"block{i}_pool" for i in range(1, 6))),
    "resnet50": BackboneSpec("ResNet50", 32, "conv5_block3_out", "caffe"),
    "inceptionv3": BackboneSpec("InceptionV3", 75, "mixed10", "tf"),
    "densenet121": BackboneSpec("DenseNet121", 32, "relu", "torch"),
    "mobilenetv2": BackboneSpec("MobileNetV2", 32, "out_relu", "tf"),
}


def three_channels(x: Any) -> Any:
    """Repeat a grey channel three times for an ImageNet backbone (layer ``grey_to_rgb``); RGB passes as is."""
    from keras import layers

    if x.shape[-1] == 3:
        return x
    if x.shape[-1] != 1:
        raise ConfigError(f"an ImageNet backbone needs 1 or 3 input channels, got {x.shape[-1]}")
    return layers.Concatenate(axis=-1, name="grey_to_rgb")([x, x, x])


def imagenet_backbone(name: str, inputs: Any, x: Any, weights: str | None) -> tuple[keras.Model, tuple[str, ...]]:
    """Build backbone ``name`` on 3-channel tensor ``x`` (computed from model input ``inputs``).

    Returns the application model and the names of its own layers (not those in front of it).

    ``weights``: ``None`` (random), ``"imagenet"`` (downloaded by Keras), another named entry of
    :mod:`mammoflow.models.pretrained` (``torchvision-imagenet``, ``hed-bsds500``), or a local file: a
    ``keras.applications`` notop ``.h5``, a PyTorch ``.pth``/``.pt`` or a layer-name map ``.yaml``/``.json``.
    MobileNetV2 with PyTorch weights is built in torchvision's layout (:mod:`mammoflow.models.mobilenet_v2_torch`).
    """
    import keras

    from mammoflow.models import pretrained

    spec = BACKBONES[name]
    if x.shape[-1] != 3:
        raise ConfigError(f"backbone {name}: expects 3 channels, got {x.shape[-1]}")
    height, width = x.shape[1], x.shape[2]
    for side in (height, width):
        if side is not None and side < spec.min_size:
            raise ConfigError(f"backbone {name}: the input reaching it is {height}x{width}, below its minimum "
                              f"{spec.min_size}x{spec.min_size}. Fix: use a larger input_shape")
    constructor = getattr(keras.applications, spec.app)
    before = {layer.name for layer in keras.Model(inputs, x).layers} if x is not inputs else set()
    if pretrained.torch_layout(name, weights):
        from mammoflow.models.mobilenet_v2_torch import mobilenet_v2_torch

        app = keras.Model(inputs, mobilenet_v2_torch(x), name="mobilenetv2_torchvision")
    else:
        app = constructor(include_top=False, weights=None, input_tensor=x, input_shape=(height, width, 3))
    own = tuple(layer.name for layer in app.layers if layer.name not in before and not _is_input_layer(layer))
    if weights is None:
        return app, own
    if weights == "imagenet" or weights.endswith(".h5"):
        _copy_pretrained(app, constructor, spec.app, weights, (height, width, 3))
    else:
        assigned = load_pretrained(app, name, weights)
        log.info("loaded %s backbone weights (%s) into %d layers", spec.app, weights, len(assigned))
    return app, own


def preprocessing(name: str, weights: str | None) -> str:
    """The input scaling backbone ``name`` expects with ``weights`` (ModelParts.preprocessing)."""
    from mammoflow.models import pretrained

    return pretrained.preprocessing(BACKBONES[name].preprocessing, weights)


def tap(model: keras.Model, layer_name: str) -> Any:
    """The output tensor of layer ``layer_name``; a missing name is an error, never a silent substitute."""
    names = [layer.name for layer in model.layers]
    if layer_name not in names:
        close = difflib.get_close_matches(layer_name, names, n=3)
        raise ConfigError(f"{model.name}: no layer named {layer_name!r} to tap"
                          + (f" (close: {', '.join(close)})" if close else "")
                          + ". Fix: the backbone's layer names changed; update the tap names in mammoflow.models")
    return model.get_layer(layer_name).output


def spatial_size(tensor: Any) -> tuple[int | None, int | None]:
    """``(height, width)`` of a channels-last feature map."""
    return tensor.shape[1], tensor.shape[2]


def _copy_pretrained(app: keras.Model, constructor: Any, app_name: str, weights: str,
                     shape: tuple[int | None, int | None, int]) -> None:
    try:
        reference = constructor(include_top=False, weights=weights, input_shape=shape)
    except Exception as exc:  # Keras raises a bare Exception for download failures
        if weights == "imagenet" and is_download_failure(exc):
            raise imagenet_unavailable(app_name, exc) from None
        if weights != "imagenet":
            raise ConfigError(f"{weights}: cannot be loaded as {app_name} backbone weights ({exc}). Fix: give "
                              f"the keras.applications {app_name} notop weights file") from None
        raise
    for layer in reference.layers:
        if layer.weights:
            app.get_layer(layer.name).set_weights(layer.get_weights())
    log.info("loaded %s backbone weights (%s)", app_name, weights)


def _is_input_layer(layer: Any) -> bool:
    return type(layer).__name__ == "InputLayer"


def load_pretrained(app: Any, backbone: str, weights: str) -> list[str]:
    """Load named weights or a PyTorch file / layer-name map into backbone ``app``; returns the layers assigned.

    (``imagenet`` and Keras ``.h5`` files go through :func:`_copy_pretrained`.)
    """
    from mammoflow.models import mobilenet_v2_torch, pretrained, torch_checkpoint

    if weights in pretrained.CATALOGUE:
        entry = pretrained.check_fits(weights, backbone, app.name)
        if entry.name == "hed-bsds500":
            convs = pretrained.hed_vgg16_convs(entry.path())
            for name, arrays in convs.items():
                app.get_layer(name).set_weights(arrays)
            return list(convs)
        state, source, layers = torch_checkpoint.read_state_dict(entry.path()), entry.path(), None
    elif weights.endswith(pretrained.MAP_SUFFIXES):
        source = Path(weights)
        uri, layers = pretrained.read_layer_map(source)
        state = torch_checkpoint.read_state_dict(local_file(uri, pretrained.TORCH_SUFFIXES))
    else:
        state, source, layers = torch_checkpoint.read_state_dict(weights), Path(weights), None
    if layers is None:
        if backbone != "mobilenetv2":
            raise ConfigError(f"{weights}: a PyTorch state dict for {backbone} needs a layer-name map. Fix: give a "
                              ".yaml file {state_dict: FILE, layers: {keras_layer: torch_module}} instead")
        layers = mobilenet_v2_torch.torchvision_map(include_top=False)
    return torch_checkpoint.assign(app, state, layers, source)
