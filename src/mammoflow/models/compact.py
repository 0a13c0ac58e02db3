"""``compact_fusion``: our small from-scratch CNN with Yu et al.'s fusion head, for CPU-only training.

This model is not from any of the three papers. It keeps Yu et al. 2020's idea (global-average-pool every
block's output and concatenate, Fusion1) on a network small enough to train from scratch on two CPU cores
(about 100 72x72 patches/s in training), so the demo, the tests and laptops without ImageNet weights have a
real model.
Four blocks of two 3x3 conv -> BN -> ReLU, each ending in a 2x2 max pool (``block{i}_pool``), give eight convs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mammoflow.models import checks
from mammoflow.models.meta import ModelParts
from mammoflow.models.registry import register_model

if TYPE_CHECKING:
    import keras


@register_model("compact_fusion", family="mammoflow", paper="ours (not from the papers)", input_shape=(72, 72, 1),
                description="8-conv CNN from scratch with a Fusion1-style head (GAP of every block, concatenated)")
def compact_fusion(*, input_shape, num_classes, backbone_weights, widths: Any = (32, 64, 96, 128),
                   convs_per_block: int = 2, fc_units: Any = (128,), dropout: float = 0.3,
                   bn_momentum: float = 0.9, input_scale: float = 1 / 255) -> tuple[keras.Model, ModelParts]:
    """inputs -> rescale -> blocks (conv-BN-ReLU x ``convs_per_block``, max pool) -> GAP of each block -> concat -> BN
    -> FC.

    ``input_scale`` brings 8-bit pixel values to about [0, 1] and ``bn_momentum`` 0.9 (Keras: 0.99) lets the
    BatchNorm moving statistics settle within the few hundred steps a CPU run has; with 0.99 they lag so far
    behind that inference-mode predictions collapse to one class after short trainings.
    """
    import keras
    from keras import layers

    widths = checks.units(widths, "widths", "compact_fusion")
    convs_per_block = checks.count(convs_per_block, "convs_per_block", "compact_fusion", minimum=1)
    fc_units = checks.units(fc_units, "fc_units", "compact_fusion")
    dropout = checks.rate(dropout, "dropout", "compact_fusion")
    bn_momentum = checks.rate(bn_momentum, "bn_momentum", "compact_fusion")

    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(float(input_scale), name="rescale")(inputs)
    gaps, last_conv = [], ""
    for block, filters in enumerate(widths, start=1):
        for conv in range(1, convs_per_block + 1):
            last_conv = f"block{block}_conv{conv}"
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=last_conv)(x)
            x = layers.BatchNormalization(momentum=bn_momentum, name=f"block{block}_bn{conv}")(x)
            x = layers.ReLU(name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"block{block}_pool")(x)
        gaps.append(layers.GlobalAveragePooling2D(name=f"gap_l{block}")(x))
    x = layers.Concatenate(name="fusion_concat")(gaps) if len(gaps) > 1 else gaps[0]
    x = layers.BatchNormalization(momentum=bn_momentum, name="bn_head")(x)
    for i, units in enumerate(fc_units, start=1):
        x = layers.Dense(units, activation="relu", name=f"fc{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"dropout{i}")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    net = keras.Model(inputs, outputs, name="compact_fusion")
    taps = tuple(f"block{b}_pool" for b in range(1, len(widths) + 1))
    return net, ModelParts(backbone_layers=(), taps=taps, head_inputs=(), cam_layer=last_conv,
                           cam_method="gradcam")
