"""Freezing the pretrained backbone and cutting a model at the frozen/trainable boundary.

With the backbone frozen (Yu et al. 2020 train only BN/FC layers), its outputs never change during training, so
they can be computed once and cached; :func:`split_frozen_backbone` returns the two halves. The head *shares its
layers* with the full model, so training the head on cached features trains the full model.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from mammoflow.errors import ConfigError
from mammoflow.models.meta import model_meta

if TYPE_CHECKING:
    import keras


def set_backbone_trainable(model: keras.Model, trainable: bool, keep_bn_frozen: bool = True) -> None:
    """Freeze or unfreeze the pretrained backbone layers named in the model's metadata.

    Recompile the model afterwards. ``keep_bn_frozen``: when unfreezing, backbone BatchNormalization layers stay
    frozen (inference mode, ImageNet statistics), as Keras' fine-tuning guide advises: re-estimating them on
    small mammography batches (Jaamour et al.'s phase 2 uses batch 8) destroys what the backbone learned.
    Models trained from scratch have no backbone layers: nothing changes.
    """
    from keras import layers

    meta = model_meta(model)
    for name in meta.backbone_layers:
        layer = model.get_layer(name)
        is_bn = isinstance(layer, layers.BatchNormalization)
        layer.trainable = trainable and not (keep_bn_frozen and is_bn)
    model.mammoflow_meta = dataclasses.replace(meta, trainable_backbone=trainable)


def head_variable_paths(model: keras.Model) -> list[str]:
    """Names of the layers with weights outside the pretrained backbone: the new layers a paper trains at a
    higher rate (Xi et al. 2018: the new head at 20x). Keras variable paths start with these names
    (``predictions/kernel``). For a model trained from scratch this is every layer with weights."""
    meta = model_meta(model)
    backbone = set(meta.backbone_layers)
    return [layer.name for layer in model.layers if layer.weights and layer.name not in backbone]


def split_frozen_backbone(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """``(backbone, head)`` with ``head(backbone(x)) == model(x)``.

    ``backbone`` maps the model input to the outputs of the layers in ``meta.head_inputs`` (Fusion1: the
    1,472-wide ``fusion_concat``; Fusion2: each branch's average-pooled block output and its moments, since its
    per-branch BN and 1x1 convs are trained, see :mod:`mammoflow.models.layers`); it has no trainable weights.
    ``head`` takes those features (one array, or a list in ``head_inputs`` order) and shares its layers with
    ``model``.
    """
    import keras

    meta = model_meta(model)
    if not meta.head_inputs:
        raise ConfigError(f"model {meta.name!r} has no frozen part to cache (it is trained from scratch or has "
                          "trainable layers in front of its backbone). Fix: train it end to end (head_cache: false)")
    if meta.trainable_backbone:
        raise ConfigError(f"model {meta.name!r} was built with trainable_backbone=True: cached features would go "
                          "stale. Fix: freeze the backbone (trainable_backbone: false) to cache features")
    boundary = [model.get_layer(name).output for name in meta.head_inputs]
    features = boundary[0] if len(boundary) == 1 else boundary
    backbone = keras.Model(model.inputs, features, name=f"{meta.name}_backbone")
    if backbone.trainable_weights:
        names = sorted({w.path.split("/")[0] for w in backbone.trainable_weights})
        raise ConfigError(f"model {meta.name!r}: layers {names} before the head are trainable. Fix: freeze them "
                          "or train end to end")
    head = keras.Model(features, model.outputs[0], name=f"{meta.name}_head")
    return backbone, head

