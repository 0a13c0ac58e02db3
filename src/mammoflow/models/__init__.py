"""Model registry: every model of the three papers (and our compact CNN) by name.

    from mammoflow.models import create_model, list_models
    model = create_model("vgg16_fusion1", branches=(4, 5), weights="imagenet")

``mammoflow models`` lists the registry; ``mammoflow models --show NAME`` prints one model. Importing this package
does not import TensorFlow: builders import Keras when called.
"""

from mammoflow.models.meta import ModelMeta, ModelParts, attach_meta, model_meta
from mammoflow.models.registry import (
    ModelInfo,
    create_model,
    get_model_info,
    list_models,
    load_model,
    register_model,
)
from mammoflow.models.split import head_variable_paths, set_backbone_trainable, split_frozen_backbone

# Importing the builder modules registers their models.
from mammoflow.models import compact, jaamour2023, xi2018, yu2020  # noqa: E402, F401  isort: skip

__all__ = [
    "ModelInfo",
    "ModelMeta",
    "ModelParts",
    "attach_meta",
    "create_model",
    "get_model_info",
    "head_variable_paths",
    "list_models",
    "load_model",
    "model_meta",
    "register_model",
    "set_backbone_trainable",
    "split_frozen_backbone",
]
