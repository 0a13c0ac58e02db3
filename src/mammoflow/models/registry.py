"""The model registry: every model of the three papers (and ours) reachable by one name, timm-style.

A model is registered with :func:`register_model` on a short builder function and built with
:func:`create_model`, which validates the arguments, resolves the weights (none, ImageNet, a ``.weights.h5`` file
or a ``gs://`` URI), freezes the pretrained backbone and attaches a :class:`ModelMeta` to the Keras model
(``model.mammoflow_meta``; read it with :func:`model_meta`) so that training and evaluation find the CAM layer,
the backbone layers and the head's inputs by *name*.

Builders receive ``input_shape``, ``num_classes`` and ``backbone_weights`` (``None``, ``"imagenet"``, another named
entry of :mod:`mammoflow.models.pretrained` or a local file path) plus their own keyword-only parameters, and return
``(keras.Model, ModelParts)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mammoflow.errors import ConfigError
from mammoflow.models.meta import InputShape, ModelMeta, ModelParts

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

# Arguments create_model hands to every builder; everything else in a builder's signature is its own parameter.
_COMMON = ("input_shape", "num_classes", "backbone_weights")


@dataclass(frozen=True)
class ModelInfo:
    """One registry entry: what ``mammoflow models`` lists."""

    name: str
    family: str  # yu2020 | jaamour2023 | xi2018 | mammoflow
    paper: str
    description: str
    default_input_shape: InputShape
    backbone: str | None  # key of models.backbones.BACKBONES, None when trained from scratch
    builder: Callable[..., tuple[keras.Model, ModelParts]] = field(repr=False, compare=False)

    @property
    def params(self) -> dict[str, Any]:
        """The builder's own keyword parameters and their defaults (``branches``, ``fc_units``, ...)."""
        sig = inspect.signature(self.builder)
        return {p.name: p.default for p in sig.parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _COMMON}


_REGISTRY: dict[str, ModelInfo] = {}
_FAMILY_ORDER = {"yu2020": 0, "jaamour2023": 1, "xi2018": 2, "mammoflow": 3}


def register_model(name: str, *, family: str, paper: str, description: str,
                   input_shape: InputShape, backbone: str | None = None) -> Callable:
    """Decorator adding a builder to the registry under ``name`` (names are unique)."""
    def decorate(builder: Callable[..., tuple[keras.Model, ModelParts]]) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        sig = inspect.signature(builder)
        missing = [c for c in _COMMON if c not in sig.parameters]
        if missing:
            raise TypeError(f"builder of {name!r} must take keyword arguments {missing}")
        _REGISTRY[name] = ModelInfo(name, family, paper, description, tuple(input_shape), backbone, builder)
        return builder
    return decorate


def list_models(family: str | None = None) -> list[ModelInfo]:
    """Registered models, papers first (Yu, Jaamour, Xi) then ours; ``family`` filters (``yu2020``, ...)."""
    infos = [i for i in _REGISTRY.values() if family is None or i.family == family]
    return sorted(infos, key=lambda i: (_FAMILY_ORDER.get(i.family, len(_FAMILY_ORDER)), i.family, i.name))


def get_model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; an unknown name raises ConfigError listing the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown model {name!r}.{hint} Fix: use one of {', '.join(sorted(_REGISTRY))} "
                          "(`mammoflow models` lists them)") from None


def load_model(path: Any, **kwargs: Any) -> keras.Model:
    """``keras.models.load_model(path, **kwargs)`` with the project's own layers registered first
    (:mod:`mammoflow.models.layers`: a Fusion2 model has them), so every saved model loads wherever it is read."""
    import keras

    import mammoflow.models.layers  # noqa: F401 - registers the project's layers with Keras

    return keras.models.load_model(path, **kwargs)


def create_model(name: str, *, input_shape: tuple[int | None, ...] | list | None = None, num_classes: int = 2,
                 weights: str | None = "none", trainable_backbone: bool = False,
                 backbone_weights: str | None = None, seed: int | None = None, **params: Any) -> keras.Model:
    """Build registered model ``name`` as a Keras model carrying a :class:`ModelMeta`.

    ``weights``: ``"none"``/``None`` (random), ``"imagenet"`` (the backbone from ``keras.applications``, which
    downloads it; the head stays random), another named backbone weights of :mod:`mammoflow.models.pretrained`
    (``torchvision-imagenet`` for MobileNetV2, ``hed-bsds500`` for VGG16; ``mammoflow weights list``), or a local path / ``gs://`` URI of a ``.weights.h5`` file saved with
    ``model.save_weights`` from the *whole* model (same name, input channels, ``num_classes`` and params).
    ``backbone_weights``: a local path / ``gs://`` URI of a backbone-only file in the ``keras.applications``
    format (e.g. a mirrored ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``), for clusters without
    internet; it replaces ``weights="imagenet"`` and cannot be combined with ``weights``. It may also be a PyTorch
    state dict (``.pth``/``.pt``, MobileNetV2 in torchvision's naming) or a layer-name map (``.yaml``/``.json``).
    ``trainable_backbone=False`` freezes the pretrained backbone (the papers' setting); ``True`` unfreezes it
    but keeps its BatchNormalization layers in inference mode (see :func:`set_backbone_trainable`); models
    trained from scratch have no backbone and are always fully trainable. ``seed`` seeds Keras' initialisers (it sets Keras'
    global seed, the only way to seed ``keras.applications``). ``params`` are the builder's own parameters,
    listed by ``mammoflow models --show NAME``.
    """
    from mammoflow.models import pretrained
    from mammoflow.models import weights as weights_io
    from mammoflow.models.split import set_backbone_trainable

    info = get_model_info(name)
    accepted = info.params
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"model {name!r} has no parameter(s) {unknown}. Fix: use only {sorted(accepted)} "
                          "(or input_shape, num_classes, weights, backbone_weights, trainable_backbone, seed)")
    shape = check_input_shape(info.default_input_shape if input_shape is None else input_shape, name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"model {name!r}: num_classes must be an integer >= 2, got {num_classes!r}")
    kind, value = weights_io.parse_weights(weights)
    if info.backbone is None and (kind in ("imagenet", "named") or backbone_weights):
        raise ConfigError(f"model {name!r} is trained from scratch and has no pretrained backbone. "
                          "Fix: use weights: none or a .weights.h5 file of this model")
    if backbone_weights and kind != "none":
        raise ConfigError(f"model {name!r}: give either weights ({weights!r}) or backbone_weights, not both")
    if kind == "named":
        pretrained.check_fits(value, info.backbone, name)

    # Resolve (and fetch) files before building, so a wrong path fails fast.
    if backbone_weights:
        backbone_source: str | None = str(weights_io.local_file(backbone_weights, suffixes=pretrained.FILE_SUFFIXES))
    else:
        backbone_source = {"imagenet": "imagenet", "named": value}.get(kind)
    whole_uri = value if kind == "file" else None
    whole_path = None if whole_uri is None else weights_io.local_file(whole_uri, suffixes=(".weights.h5",))
    if seed is not None:
        import keras
        keras.utils.set_random_seed(seed)
    call = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    model, parts = info.builder(input_shape=shape, num_classes=num_classes, backbone_weights=backbone_source,
                                **call)
    meta = ModelMeta(**dataclasses.asdict(parts), name=name, family=info.family, input_shape=shape,
                     num_classes=num_classes, weights={"file": whole_uri, "named": value}.get(kind, kind),
                     backbone_weights=backbone_weights, trainable_backbone=bool(trainable_backbone),
                     backbone=info.backbone, params={**accepted, **call})
    model.mammoflow_meta = meta
    set_backbone_trainable(model, bool(trainable_backbone))
    if whole_path is not None:
        weights_io.load_model_weights(model, whole_path, name)
    elif parts.backbone_layers and backbone_source is None and not trainable_backbone:
        log.warning("%s: the backbone is frozen but has random weights (weights: none); fine for tests, "
                    "not for results", name)
    log.info("built %s: input %s, %d classes, %s parameters (%s trainable), weights %s", name, shape,
             num_classes, f"{model.count_params():,}", f"{_count(model.trainable_weights):,}", meta.weights)
    return model


def check_input_shape(shape: Any, name: str) -> InputShape:
    """``(height, width, channels)`` with positive or ``None`` sizes and 1 or 3 channels."""
    if not isinstance(shape, (list, tuple)) or len(shape) != 3:
        raise ConfigError(f"model {name!r}: input_shape must be (height, width, channels), got {shape!r}")
    h, w, c = shape
    for size in (h, w):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigError(f"model {name!r}: input_shape sizes must be positive integers or None, got {shape!r}")
    if c not in (1, 3) or isinstance(c, bool):
        raise ConfigError(f"model {name!r}: input_shape must have 1 (grey) or 3 channels, got {shape!r}")
    return (h, w, c)


def _count(weights: list) -> int:
    return sum(math.prod(w.shape) for w in weights)
