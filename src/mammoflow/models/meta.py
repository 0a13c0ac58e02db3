"""What a built model carries: its parts by layer name (:class:`ModelParts`, from the builder) and everything
needed to build it again (:class:`ModelMeta`, attached by :func:`mammoflow.models.create_model`).

Kept apart from the registry so that the model surgery in :mod:`mammoflow.models.split` and the registry both
read it without importing each other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mammoflow.errors import ConfigError

if TYPE_CHECKING:
    import keras

InputShape = tuple[int | None, int | None, int]
CamMethod = Literal["cam", "gradcam"]


@dataclass(frozen=True)
class ModelParts:
    """What a builder knows about the model it built, by layer name (never by index).

    ``backbone_layers``: the pretrained layers that ``trainable_backbone`` freezes (empty for models trained from
    scratch). ``taps``: the backbone layers the head reads. ``head_inputs``: the layers whose outputs are the
    boundary between the frozen part and the trainable head (empty when no such cut exists), used by
    :func:`mammoflow.models.split.split_frozen_backbone`. ``cam_layer``: the feature maps a class activation map
    is computed on; ``cam_method`` is ``cam`` when a GAP feeds the softmax layer directly (CAM = sum_k w_k f_k,
    Xi et al. 2018) and ``gradcam`` otherwise. ``preprocessing``: the input scaling the ImageNet weights expect
    (``caffe``, ``tf``, ``torch``), for the input pipeline to apply; the model itself does not rescale.
    """

    backbone_layers: tuple[str, ...]
    taps: tuple[str, ...]
    head_inputs: tuple[str, ...]
    cam_layer: str
    cam_method: CamMethod
    preprocessing: str | None = None


@dataclass(frozen=True)
class ModelMeta(ModelParts):
    """Everything needed to find a built model's parts and to build it again (:meth:`create_kwargs`)."""

    name: str = ""
    family: str = ""
    input_shape: InputShape = (None, None, 3)
    num_classes: int = 2
    weights: str = "none"
    backbone_weights: str | None = None
    trainable_backbone: bool = False
    backbone: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that make :func:`create_model` build this model again."""
        kwargs = {"name": self.name, "input_shape": self.input_shape, "num_classes": self.num_classes,
                  "weights": self.weights, "trainable_backbone": self.trainable_backbone, **self.params}
        if self.backbone_weights is not None:
            kwargs["backbone_weights"] = self.backbone_weights
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-able data (tuples become lists)."""
        from mammoflow.config import to_dict

        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        """The inverse of :meth:`to_dict` (e.g. read back from a run folder's JSON)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"model metadata has unknown key(s) {unknown}. Fix: use ModelMeta.to_dict() output")
        def tuples(mapping: dict[str, Any]) -> dict[str, Any]:  # JSON/YAML lists back to tuples, as built
            return {k: tuple(v) if isinstance(v, list) else v for k, v in mapping.items()}
        fixed = tuples({k: v for k, v in data.items() if k != "params"})
        return cls(**fixed, params=tuples(data.get("params", {})))


def model_meta(model: keras.Model) -> ModelMeta:
    """The :class:`ModelMeta` that :func:`create_model` attached to ``model``."""
    meta = getattr(model, "mammoflow_meta", None)
    if not isinstance(meta, ModelMeta):
        raise ConfigError(f"model {getattr(model, 'name', model)!r} was not built by mammoflow.models.create_model "
                          "and has no metadata. Fix: build it with create_model(name, ...); after "
                          "keras.models.load_model, call attach_meta(model, saved ModelMeta.to_dict())")
    return meta


def attach_meta(model: keras.Model, meta: ModelMeta | dict[str, Any]) -> keras.Model:
    """Give a model its metadata back, e.g. after ``keras.models.load_model`` (a ``.keras`` file keeps the layers
    but not Python attributes). ``meta`` is a :class:`ModelMeta` or its :meth:`ModelMeta.to_dict` form; every layer
    it names must exist in ``model``."""
    if isinstance(meta, dict):
        meta = ModelMeta.from_dict(meta)
    names = {layer.name for layer in model.layers}
    missing = sorted({*meta.backbone_layers, *meta.taps, *meta.head_inputs, meta.cam_layer} - names)
    if missing:
        raise ConfigError(f"model {model.name!r} does not match the metadata of {meta.name!r}: no layer(s) "
                          f"{missing[:5]}. Fix: attach the metadata saved with this model")
    model.mammoflow_meta = meta
    return model
