"""Yu et al. 2020, "Mammographic image classification with deep fusion learning": VGG baselines and fusion models.

All read the pooling outputs of VGG blocks 1..5 (the paper's L1..L5, layers ``block{l}_pool``) of a frozen
ImageNet VGG16/VGG19 on 72x72 patches (Section 3):

- ``vgg{16,19}_gap``: GAP of L5 -> BN -> FC -> FC -> softmax (the paper's VGG baseline, Table 1).
- ``vgg{16,19}_fusion1`` (Model1, Fig. 3): GAP of each selected Li -> concatenation (VGG16 [1..5]:
  64+128+256+512+512 = 1,472) -> BN -> FC1 -> FC2 -> softmax.
- ``vgg{16,19}_fusion2`` (Model2, Fig. 4): per branch BN -> average pooling to L5's size -> 1x1 conv
  (32/32/32/64/64 filters) -> GAP; concatenation (224 for [1..5]) -> BN -> FC1 -> FC2 -> softmax. BN and pooling
  are built in the other order, pooling first and the BN's batch statistics from the whole map's moments
  (:mod:`mammoflow.models.layers`: the same values), so a head cache holds the small pooled maps.

``branches`` picks the levels (the paper's experiments: [5], [4,5], [3,4,5], [2,3,4,5], [1..5]);
``fc_units`` are FC1, FC2 (1024, 1024 in the released code).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from mammoflow.errors import ConfigError
from mammoflow.models import checks
from mammoflow.models.backbones import (
    BACKBONES,
    imagenet_backbone,
    preprocessing,
    spatial_size,
    tap,
    three_channels,
)
from mammoflow.models.meta import ModelParts
from mammoflow.models.registry import register_model

if TYPE_CHECKING:
    import keras

PAPER = "Yu et al. 2020"
ALL_LEVELS = (1, 2, 3, 4, 5)
FUSION2_FILTERS = (32, 32, 32, 64, 64)  # 1x1 conv filters of branches L1..L5 (Section 3.3)
Variant = Literal["gap", "fusion1", "fusion2"]


def fusion2_pool_size(tap_hw: tuple[int, int], deepest_hw: tuple[int, int]) -> tuple[int, int]:
    """Average-pooling size that brings a branch down to the deepest block's spatial size (Yu et al. Fig. 4).

    The largest power of two not above ``tap / deepest`` per axis: at 72x72 input (L1..L5 = 36, 18, 9, 4, 2)
    this gives the paper's 16/8/4/2/1 (1 = no pooling), and it follows the input size elsewhere
    (224x224: 16/8/4/2/1 on 112..7).
    """
    def one_axis(tap_size: int, deepest: int) -> int:
        return 1 << ((tap_size // max(deepest, 1)).bit_length() - 1)

    return one_axis(tap_hw[0], deepest_hw[0]), one_axis(tap_hw[1], deepest_hw[1])


def build_yu(backbone: str, variant: Variant, *, model: str, input_shape: tuple, num_classes: int,
             backbone_weights: str | None, branches: Any = (5,), fc_units: Any = (1024, 1024),
             dropout: float = 0.0, branch_filters: Any = FUSION2_FILTERS) -> tuple[keras.Model, ModelParts]:
    """inputs -> VGG -> taps L_i (by name) -> GAP / Fusion1 / Fusion2 branches -> BN -> FC1 -> FC2 -> softmax."""
    import keras
    from keras import layers

    levels = checks.branches(branches, model)
    fc_units = checks.units(fc_units, "fc_units", model)
    dropout = checks.rate(dropout, "dropout", model)
    branch_filters = checks.units(branch_filters, "branch_filters", model, length=5)
    spec = BACKBONES[backbone]

    inputs = keras.Input(input_shape, name="image")
    vgg, backbone_layers = imagenet_backbone(backbone, inputs, three_channels(inputs), backbone_weights)
    tap_names = tuple(spec.block_pools[level - 1] for level in levels)
    taps = {level: tap(vgg, name) for level, name in zip(levels, tap_names, strict=True)}

    if variant == "fusion2":
        deepest = spatial_size(tap(vgg, spec.block_pools[-1]))
        if None in deepest:
            raise ConfigError(f"model {model!r}: Fusion2 pools each branch to block 5's size, which needs a fixed "
                              "input size. Fix: give input_shape with a height and width (e.g. [72, 72, 3])")
        branches_out = [_fusion2_branch(taps[level], name, level, branch_filters[level - 1], deepest)
                        for level, name in zip(levels, tap_names, strict=True)]
        features = [feature for feature, _ in branches_out]
        fusion2_inputs = tuple(name for _, names in branches_out for name in names)
    else:
        features = [layers.GlobalAveragePooling2D(name=f"gap_l{level}")(taps[level]) for level in levels]

    if variant == "gap":
        x, head_inputs = features[0], (f"gap_l{levels[0]}",)
    else:
        x = _concat(features)
        # Fusion1's GAPs have no weights, so the cut can sit after the concatenation; Fusion2 trains per-branch
        # BN and 1x1 convs, so its head starts at each branch's pooled map and moments.
        head_inputs = ("fusion_concat",) if variant == "fusion1" else fusion2_inputs
    x = layers.BatchNormalization(name="bn_head")(x)
    for i, units in enumerate(fc_units, start=1):
        x = layers.Dense(units, activation="relu", name=f"fc{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"dropout{i}")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    net = keras.Model(inputs, outputs, name=model)

    deepest_level = levels[-1]
    cam_layer = [n for n in backbone_layers if n.startswith(f"block{deepest_level}_conv")][-1]
    used = {layer.name for layer in net.layers}
    parts = ModelParts(backbone_layers=tuple(n for n in backbone_layers if n in used), taps=tap_names,
                       head_inputs=head_inputs, cam_layer=cam_layer, cam_method="gradcam",
                       preprocessing=preprocessing(backbone, backbone_weights))
    return net, parts


def _fusion2_branch(tap_out: Any, tap_name: str, level: int, filters: int, deepest_hw: tuple[int, int]
                    ) -> tuple[Any, tuple[str, str]]:
    """BN -> average pooling -> 1x1 conv -> GAP, built as pooling and moments -> BN of the pooled map (the same
    values: see :mod:`mammoflow.models.layers`). Returns the branch's output and the names of the layers the frozen
    part ends at: the pooled map (the tap itself where it is not pooled) and the tap's moments."""
    from keras import layers

    from mammoflow.models.layers import BatchNormFromMoments, ChannelMoments

    pool = fusion2_pool_size(spatial_size(tap_out), deepest_hw)
    pooled, pooled_name = tap_out, tap_name
    if pool != (1, 1):
        pooled_name = f"avgpool_l{level}"
        pooled = layers.AveragePooling2D(pool, name=pooled_name)(tap_out)
    moments = ChannelMoments(name=f"moments_l{level}")(tap_out)
    x = BatchNormFromMoments(name=f"bn_l{level}")([pooled, moments])
    x = layers.Conv2D(filters, 1, activation="relu", name=f"conv1x1_l{level}")(x)
    return layers.GlobalAveragePooling2D(name=f"gap_l{level}")(x), (pooled_name, f"moments_l{level}")


def _concat(features: list) -> Any:
    from keras import layers

    if len(features) == 1:  # one branch: nothing to concatenate, but keep the layer name the paper uses
        return layers.Identity(name="fusion_concat")(features[0])
    return layers.Concatenate(name="fusion_concat")(features)


_BASELINE = "{}: GAP of block 5 -> BN -> FC -> FC -> softmax (the paper's VGG baseline)"
_FUSION1 = "{}: Fusion1 (Model1), GAP of each selected block's pooling output, concatenated -> BN -> FC1 -> FC2"
_FUSION2 = ("{}: Fusion2 (Model2), per block BN -> avg pool -> 1x1 conv -> GAP, concatenated -> BN -> FC1 -> FC2")


@register_model("vgg16_gap", family="yu2020", paper=PAPER, description=_BASELINE.format("VGG16"),
                input_shape=(72, 72, 3), backbone="vgg16")
def vgg16_gap(*, input_shape, num_classes, backbone_weights, fc_units=(1024, 1024), dropout=0.0):
    return build_yu("vgg16", "gap", model="vgg16_gap", input_shape=input_shape, num_classes=num_classes,
                    backbone_weights=backbone_weights, fc_units=fc_units, dropout=dropout)


@register_model("vgg19_gap", family="yu2020", paper=PAPER, description=_BASELINE.format("VGG19"),
                input_shape=(72, 72, 3), backbone="vgg19")
def vgg19_gap(*, input_shape, num_classes, backbone_weights, fc_units=(1024, 1024), dropout=0.0):
    return build_yu("vgg19", "gap", model="vgg19_gap", input_shape=input_shape, num_classes=num_classes,
                    backbone_weights=backbone_weights, fc_units=fc_units, dropout=dropout)


@register_model("vgg16_fusion1", family="yu2020", paper=PAPER, description=_FUSION1.format("VGG16"),
                input_shape=(72, 72, 3), backbone="vgg16")
def vgg16_fusion1(*, input_shape, num_classes, backbone_weights, branches=ALL_LEVELS, fc_units=(1024, 1024),
                  dropout=0.0):
    return build_yu("vgg16", "fusion1", model="vgg16_fusion1", input_shape=input_shape, num_classes=num_classes,
                    backbone_weights=backbone_weights, branches=branches, fc_units=fc_units, dropout=dropout)


@register_model("vgg19_fusion1", family="yu2020", paper=PAPER, description=_FUSION1.format("VGG19"),
                input_shape=(72, 72, 3), backbone="vgg19")
def vgg19_fusion1(*, input_shape, num_classes, backbone_weights, branches=ALL_LEVELS, fc_units=(1024, 1024),
                  dropout=0.0):
    return build_yu("vgg19", "fusion1", model="vgg19_fusion1", input_shape=input_shape, num_classes=num_classes,
                    backbone_weights=backbone_weights, branches=branches, fc_units=fc_units, dropout=dropout)


@register_model("vgg16_fusion2", family="yu2020", paper=PAPER, description=_FUSION2.format("VGG16"),
                input_shape=(72, 72, 3), backbone="vgg16")
def vgg16_fusion2(*, input_shape, num_classes, backbone_weights, branches=ALL_LEVELS, fc_units=(1024, 1024),
                  dropout=0.0, branch_filters=FUSION2_FILTERS):
    return build_yu("vgg16", "fusion2", model="vgg16_fusion2", input_shape=input_shape, num_classes=num_classes,
                    backbone_weights=backbone_weights, branches=branches, fc_units=fc_units, dropout=dropout,
                    branch_filters=branch_filters)


@register_model("vgg19_fusion2", family="yu2020", paper=PAPER, description=_FUSION2.format("VGG19"),
                input_shape=(72, 72, 3), backbone="vgg19")
def vgg19_fusion2(*, input_shape, num_classes, backbone_weights, branches=ALL_LEVELS, fc_units=(1024, 1024),
                  dropout=0.0, branch_filters=FUSION2_FILTERS):
    return build_yu("vgg19", "fusion2", model="vgg19_fusion2", input_shape=input_shape, num_classes=num_classes,
                    backbone_weights=backbone_weights, branches=branches, fc_units=fc_units, dropout=dropout,
                    branch_filters=branch_filters)
