"""Xi et al. 2018, "Abnormality detection in mammography using deep convolutional neural networks".

Patch classifiers (AlexNet, VGG16, GoogLeNet -> InceptionV3, ResNet50) whose head is a global average pooling
followed by one softmax layer: ``last_conv -> gap -> predictions``. With that head the class activation map of
Section 2.3 is CAM_c = sum_k w_{k,c} f_k over the ``last_conv`` feature maps, using the ``predictions`` kernel
as is. Everything up to the GAP is convolutional, so a model built with ``input_shape=(None, None, C)`` takes
whole mammograms for localisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mammoflow.models.backbones import BACKBONES, imagenet_backbone, preprocessing, tap, three_channels
from mammoflow.models.meta import ModelParts
from mammoflow.models.registry import register_model

if TYPE_CHECKING:
    import keras

PAPER = "Xi et al. 2018"

# AlexNet's five convolutions (filters, kernel, stride, max-pool after): Krizhevsky et al. 2012, as used by Xi.
ALEXNET_CONVS = ((96, 11, 4, True), (256, 5, 1, True), (384, 3, 1, False), (384, 3, 1, False), (256, 3, 1, False))


def cam_head(features: Any, num_classes: int) -> Any:
    """``last_conv`` (identity, so every Xi model names its CAM layer alike) -> ``gap`` -> softmax ``predictions``."""
    from keras import layers

    maps = layers.Identity(name="last_conv")(features)
    x = layers.GlobalAveragePooling2D(name="gap")(maps)
    return layers.Dense(num_classes, activation="softmax", name="predictions")(x)


def build_xi(backbone: str, *, model: str, input_shape: tuple, num_classes: int,
             backbone_weights: str | None) -> tuple[keras.Model, ModelParts]:
    """inputs -> ImageNet backbone up to its last conv feature maps -> CAM head."""
    import keras

    spec = BACKBONES[backbone]
    inputs = keras.Input(input_shape, name="image")
    base, backbone_layers = imagenet_backbone(backbone, inputs, three_channels(inputs), backbone_weights)
    # Tap the last conv maps before any final pooling (VGG's block5_pool): CAMs at twice the resolution.
    outputs = cam_head(tap(base, spec.last_conv), num_classes)
    net = keras.Model(inputs, outputs, name=model)
    used = {layer.name for layer in net.layers}
    parts = ModelParts(backbone_layers=tuple(n for n in backbone_layers if n in used), taps=(spec.last_conv,),
                       head_inputs=("gap",), cam_layer="last_conv", cam_method="cam",
                       preprocessing=preprocessing(backbone, backbone_weights))
    return net, parts


@register_model("xi_alexnet", family="xi2018", paper=PAPER, input_shape=(224, 224, 1),
                description="AlexNet-style patch classifier from scratch (BN for LRN), GAP + softmax head for CAMs")
def xi_alexnet(*, input_shape, num_classes, backbone_weights):
    """AlexNet's convolutions built from layers (no Keras ImageNet weights exist for it), trained from scratch.

    BatchNormalization replaces the original local response normalisation (it trains faster from scratch);
    'same' padding keeps it valid for any input size.
    """
    import keras
    from keras import layers

    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for i, (filters, kernel, stride, pool) in enumerate(ALEXNET_CONVS, start=1):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        if pool:
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{i}")(x)
    net = keras.Model(inputs, cam_head(x, num_classes), name="xi_alexnet")
    return net, ModelParts(backbone_layers=(), taps=("relu5",), head_inputs=(), cam_layer="last_conv",
                           cam_method="cam")


def _register(backbone: str, label: str, side: int) -> None:
    name = f"xi_{backbone}"

    @register_model(name, family="xi2018", paper=PAPER, input_shape=(side, side, 1), backbone=backbone,
                    description=f"{label} patch classifier, GAP + softmax head for CAMs, fully convolutional")
    def builder(*, input_shape, num_classes, backbone_weights):
        return build_xi(backbone, model=name, input_shape=input_shape, num_classes=num_classes,
                        backbone_weights=backbone_weights)

    builder.__name__ = builder.__qualname__ = name


for _backbone, _label, _side in (("vgg16", "VGG16 (the paper's best)", 224),
                                 ("inceptionv3", "InceptionV3 (for GoogLeNet)", 299),
                                 ("resnet50", "ResNet50", 224)):
    _register(_backbone, _label, _side)
