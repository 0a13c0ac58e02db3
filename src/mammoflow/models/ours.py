"""``scratch_fusion``: our from-scratch CPU model for Yu et al.'s MIAS ROIs (``mammoflow reproduce yu2020 --budget cpu``).

Not from any of the three papers. It keeps Yu et al. 2020's fusion idea (global-average-pool the output of every
block and concatenate, their Fusion1) on a narrow network that two CPU cores train from scratch in minutes, and
adds what a 197-ROI training set needs against over-fitting, all inside the model so that the input pipeline stays
the papers' (geometric augmentation, patch-wise centring):

- photometric augmentation layers, active in training only: a random contrast gain per patch and Gaussian noise
  (the released ROIs passed through CLAHE, so local contrast varies between images);
- L2 weight decay on every kernel and dropout in the head.

Layers: ``image`` -> (train-only) ``contrast_jitter``, ``noise`` -> ``rescale`` -> blocks ``block{i}_conv{j}`` (3x3
conv, BN, ReLU) ending in ``block{i}_pool`` -> ``gap_l{i}`` -> ``fusion_concat`` -> ``bn_head`` -> ``fc1`` ->
``predictions``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mammoflow.errors import ConfigError
from mammoflow.models import checks
from mammoflow.models.registry import ModelParts, register_model

if TYPE_CHECKING:
    import keras


@register_model("scratch_fusion", family="mammoflow", paper="ours (not from the papers)", input_shape=(72, 72, 1),
                description="narrow CNN from scratch with a Fusion1-style head, train-only contrast/noise "
                            "augmentation and L2 decay (our CPU model for Yu et al.'s MIAS ROIs)")
def scratch_fusion(*, input_shape, num_classes, backbone_weights, widths: Any = (16, 32, 64, 128),
                   convs_per_block: int = 2, fc_units: Any = (128,), dropout: float = 0.3,
                   contrast: float = 0.2, noise: float = 0.03, l2: float = 1e-4, bn_momentum: float = 0.9,
                   input_scale: float = 1 / 255) -> tuple[keras.Model, ModelParts]:
    """inputs -> train-only contrast jitter and noise -> rescale -> conv blocks -> GAP of each block -> concat -> BN
    -> FC -> softmax.

    ``contrast`` d: gain in [1 - d, 1 + d] around each input's mean; ``noise``: std of additive Gaussian noise
    on the rescaled input (0..1 scale); ``l2``: weight decay of every kernel; the rest as in ``compact_fusion``.
    """
    import keras
    from keras import layers

    name = "scratch_fusion"
    widths = checks.units(widths, "widths", name)
    convs_per_block = checks.count(convs_per_block, "convs_per_block", name, minimum=1)
    fc_units = checks.units(fc_units, "fc_units", name)
    dropout = checks.rate(dropout, "dropout", name)
    contrast = checks.rate(contrast, "contrast", name)
    bn_momentum = checks.rate(bn_momentum, "bn_momentum", name)
    if noise < 0 or l2 < 0:
        raise ConfigError(f"model {name!r}: noise and l2 must be >= 0, got {noise} and {l2}")
    reg = keras.regularizers.L2(l2) if l2 else None

    inputs = keras.Input(input_shape, name="image")
    x = inputs
    if contrast:
        # Built-in layer (so a saved model loads without custom objects); centred inputs lie within +-255, so
        # this value range never clips them.
        x = layers.RandomContrast(contrast, value_range=(-255.0, 255.0), seed=1, name="contrast_jitter")(x)
    x = layers.Rescaling(float(input_scale), name="rescale")(x)
    if noise:
        x = layers.GaussianNoise(float(noise), seed=2, name="noise")(x)
    gaps, last_conv = [], ""
    for block, filters in enumerate(widths, start=1):
        for conv in range(1, convs_per_block + 1):
            last_conv = f"block{block}_conv{conv}"
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=last_conv)(x)
            x = layers.BatchNormalization(momentum=bn_momentum, name=f"block{block}_bn{conv}")(x)
            x = layers.ReLU(name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"block{block}_pool")(x)
        gaps.append(layers.GlobalAveragePooling2D(name=f"gap_l{block}")(x))
    x = layers.Concatenate(name="fusion_concat")(gaps) if len(gaps) > 1 else gaps[0]
    x = layers.BatchNormalization(momentum=bn_momentum, name="bn_head")(x)
    for i, units in enumerate(fc_units, start=1):
        x = layers.Dense(units, activation="relu", kernel_regularizer=reg, name=f"fc{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"dropout{i}")(x)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg, name="predictions")(x)
    net = keras.Model(inputs, outputs, name=name)
    taps = tuple(f"block{b}_pool" for b in range(1, len(widths) + 1))
    return net, ModelParts(backbone_layers=(), taps=taps, head_inputs=(), cam_layer=last_conv, cam_method="gradcam")
