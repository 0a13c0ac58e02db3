"""Jaamour et al. 2023, "A divide and conquer approach to maximise deep learning mammography classification
accuracies": whole-image classifiers on five ImageNet backbones (Section 3.3, Fig. 4).

grey image -> 3 channels -> [extra conv+pool blocks for 1024/2048 inputs] -> backbone -> flatten (or GAP)
-> dropout -> FC 512 -> FC 32 -> softmax. Any input size works, including the paper's 2048x1376 crop: the extra
blocks (default: enough halvings to bring the longer side to 512 or less) keep the backbone's input near the
512x512 baseline, and end in a 1x1 conv to the 3 channels the backbone expects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mammoflow.errors import ConfigError
from mammoflow.models import checks
from mammoflow.models.backbones import BACKBONES, imagenet_backbone, preprocessing, three_channels
from mammoflow.models.meta import ModelParts
from mammoflow.models.registry import register_model

if TYPE_CHECKING:
    import keras

PAPER = "Jaamour et al. 2023"
BACKBONE_SIDE = 512  # the paper's baseline input; extra blocks halve larger inputs down to this


def default_extra_blocks(input_shape: tuple, target: int = BACKBONE_SIDE) -> int:
    """Number of conv+pool blocks (each halves the image) bringing the longer side to ``target`` or less.

    224 and 512 -> 0, 1024 -> 1, 2048 and 2048x1376 -> 2; an unknown size (None) -> 0.
    """
    sides = [s for s in input_shape[:2] if s is not None]
    if not sides:
        return 0
    blocks, side = 0, max(sides)
    while side > target:
        side = (side + 1) // 2
        blocks += 1
    return blocks


def build_jaamour(backbone: str, *, model: str, input_shape: tuple, num_classes: int, backbone_weights: str | None,
                  dropout: float = 0.2, pooling: str = "flatten", fc_units: Any = (512, 32),
                  extra_blocks: int | None = None, extra_filters: int = 16) -> tuple[keras.Model, ModelParts]:
    """inputs -> [extra blocks] -> backbone -> flatten/GAP -> dropout -> FC 512 -> FC 32 -> softmax."""
    import keras
    from keras import layers

    dropout = checks.rate(dropout, "dropout", model)
    pooling = checks.choice(pooling, ("flatten", "gap"), "pooling", model)
    fc_units = checks.units(fc_units, "fc_units", model)
    extra_filters = checks.count(extra_filters, "extra_filters", model, minimum=1)
    blocks = default_extra_blocks(input_shape) if extra_blocks is None else checks.count(
        extra_blocks, "extra_blocks", model)
    spec = BACKBONES[backbone]

    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for i in range(1, blocks + 1):
        x = layers.Conv2D(extra_filters, 3, padding="same", activation="relu", name=f"extra{i}_conv")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"extra{i}_pool")(x)
    # Learned blocks map to 3 channels themselves; a plain grey image is repeated into 3 channels.
    x = layers.Conv2D(3, 1, name="extra_to_rgb")(x) if blocks else three_channels(x)
    base, backbone_layers = imagenet_backbone(backbone, inputs, x, backbone_weights)

    features = base.output
    if pooling == "flatten":
        if None in features.shape[1:]:
            raise ConfigError(f"model {model!r}: flatten needs a fixed input size. Fix: give input_shape with a "
                              "height and width, or set pooling: gap")
        x = layers.Flatten(name="flatten")(features)
    else:
        x = layers.GlobalAveragePooling2D(name="gap")(features)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    for i, units in enumerate(fc_units, start=1):
        x = layers.Dense(units, activation="relu", name=f"fc{i}")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    net = keras.Model(inputs, outputs, name=model)

    parts = ModelParts(backbone_layers=backbone_layers, taps=(base.layers[-1].name,),
                       # Learned extra blocks sit in front of the backbone: there is no frozen prefix to cache.
                       head_inputs=() if blocks else (pooling,),
                       cam_layer=spec.last_conv, cam_method="gradcam", preprocessing=preprocessing(backbone, backbone_weights))
    return net, parts


def _register(backbone: str, label: str) -> None:
    name = f"jaamour_{backbone}"

    @register_model(name, family="jaamour2023", paper=PAPER, input_shape=(512, 512, 1), backbone=backbone,
                    description=f"{label} whole-image classifier: backbone -> flatten -> dropout -> FC 512 -> FC 32")
    def builder(*, input_shape, num_classes, backbone_weights, dropout=0.2, pooling="flatten", fc_units=(512, 32),
                extra_blocks=None, extra_filters=16):
        return build_jaamour(backbone, model=name, input_shape=input_shape, num_classes=num_classes,
                             backbone_weights=backbone_weights, dropout=dropout, pooling=pooling,
                             fc_units=fc_units, extra_blocks=extra_blocks, extra_filters=extra_filters)

    builder.__name__ = builder.__qualname__ = name


for _backbone, _label in (("vgg19", "VGG19 (the paper's baseline)"), ("resnet50", "ResNet50"),
                          ("inceptionv3", "InceptionV3"), ("densenet121", "DenseNet121"),
                          ("mobilenetv2", "MobileNetV2 (the paper's best, model H)")):
    _register(_backbone, _label)
