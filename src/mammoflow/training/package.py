"""A trained model package: a run's Keras model with the input settings it was trained with.

One way to load a trained model, for ``evaluate``, ``predict``, ``explain`` and ``reproduce``: a training run folder
(local or ``gs://``, holding ``model.keras``) or a ``.keras`` file. The run folder's ``config.yaml`` gives the patch
size, channels, centring (the preprocessing scaling of the input pipeline) and mode; ``metrics.json`` the label
names (label index -> name); ``run.json`` the data it was trained on; :data:`PACKAGE_FILES` are the files that make
the package usable elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mammoflow import storage
from mammoflow.errors import ConfigError, InputError
from mammoflow.storage.copies import cache_dir as cache_root
from mammoflow.storage.copies import uri_key

if TYPE_CHECKING:
    import keras

    from mammoflow.dataset.pipeline import InputConfig
    from mammoflow.training.config import TrainConfig

log = logging.getLogger(__name__)

#: Files of a training run folder that make a self-contained model package (evaluate, explain and report read them).
PACKAGE_FILES = ("model.keras", "config.yaml", "metrics.json", "run.json", "history.csv", "history.json")
DEFAULT_LABELS = ("normal", "tumour")


@dataclass
class ModelPackage:
    """A Keras model with what its run folder says about it (config, label names, data it was trained on)."""

    model: keras.Model
    uri: str  # what the user gave
    local_path: Path  # the .keras file on local disk
    sha256: str
    config: TrainConfig | None = None
    label_names: list[str] = field(default_factory=lambda: list(DEFAULT_LABELS))
    run_uri: str | None = None
    run_info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.model.name if self.config is not None else str(self.model.name)

    @property
    def whole_image(self) -> bool:
        return self.config is not None and self.config.data.mode == "whole_image"

    @property
    def patch_size(self) -> int:
        if self.config is not None and not self.whole_image:
            return int(self.config.data.patch_size)
        side = self.model.input_shape[1]
        if side is None:
            raise ConfigError(f"{self.uri}: the model takes any input size and no config.yaml gives the patch size. "
                              "Fix: pass the run folder (with config.yaml) instead of the .keras file")
        return int(side)

    @property
    def image_size(self) -> int | None:
        """Whole-image models: the side of the (resized, padded) input image; None for patch models."""
        if not self.whole_image:
            return None
        size = (self.config.data.image_size if self.config is not None else None) or self.model.input_shape[1]
        if not size:
            raise ConfigError(f"{self.uri}: whole-image model without data.image_size in its config.yaml")
        return int(size)

    @property
    def centring(self) -> str:
        return self.config.data.centring if self.config is not None else "patch_mean"

    @property
    def eval_grid(self) -> tuple[int, int]:
        return tuple(self.config.data.eval_grid) if self.config is not None else (5, 5)  # type: ignore[return-value]

    @property
    def positive_index(self) -> int:
        return 1

    @property
    def fold(self) -> int | None:
        return self.config.data.fold if self.config is not None else None

    def meta(self) -> Any:
        """The model registry's metadata of this architecture (layer names a saved .keras file does not keep:
        taps, CAM layer, backbone). The model is built again, untrained, from its config to read it; None when
        there is no config or the architecture cannot be rebuilt."""
        from mammoflow.errors import MammoflowError
        from mammoflow.models import create_model, model_meta

        if self.config is None:
            return None
        try:
            twin = create_model(self.config.model.name, input_shape=tuple(self.model.input_shape[1:]),
                                num_classes=int(self.model.output_shape[-1]), weights="none",
                                **self.config.model.params)
        except (MammoflowError, ValueError, TypeError) as exc:
            log.debug("no registry metadata for %s: %s", self.name, exc)
            return None
        return model_meta(twin)

    def registry_cam_layer(self) -> str | None:
        """The CAM layer the model registry names for this architecture, when the model has it; None when unknown."""
        meta = self.meta()
        if meta is None:
            return None
        names = {lay.name for lay in self.model.layers}
        return meta.cam_layer if meta.cam_layer in names else None

    def input_config(self, batch_size: int | None = None) -> InputConfig:
        """The :class:`~mammoflow.dataset.pipeline.InputConfig` the model was validated with during training."""
        from mammoflow.dataset.pipeline import InputConfig

        if self.config is not None:
            d = self.config.data
            return InputConfig(patch_size=d.patch_size, patches_per_roi=dict(d.patches_per_roi),
                               channels=d.channels, centring=d.centring,  # type: ignore[arg-type]
                               eval_grid=tuple(d.eval_grid), batch_size=batch_size or d.batch_size,  # type: ignore[arg-type]
                               seed=self.config.seed)
        return InputConfig(patch_size=self.patch_size, channels=int(self.model.input_shape[-1]),
                           batch_size=batch_size or 32)

    def describe(self) -> dict[str, Any]:
        from mammoflow.config import to_dict

        return {"uri": self.uri, "name": self.name, "sha256": self.sha256, "run_uri": self.run_uri,
                "data_uri": self.run_info.get("data_uri"), "fold": self.fold,
                "config": to_dict(self.config) if self.config is not None else None}


def _fetch(uri: str, cache: Path) -> Path | None:
    """A local copy of ``uri`` (the path itself when local); None when it does not exist."""
    if not storage.is_remote(uri):
        path = storage.local_path(uri)
        return path if path.is_file() else None
    if not storage.exists(uri):
        return None
    dest = cache / uri_key(uri) / uri.rsplit("/", 1)[-1]
    if not dest.exists():
        storage.get_file(uri, dest)
    return dest


def _is_run_folder(uri: str) -> bool:
    return not uri.endswith(".keras") and (storage.exists(storage.join(uri, "model.keras"))
                                           or storage.exists(storage.join(uri, "config.yaml")))


def _run_of_keras_file(uri: str) -> str | None:
    """The run folder a ``.keras`` file belongs to (``run/model.keras``, ``run/checkpoints/best.keras``)."""
    parent = uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri else "."
    for candidate in (parent, parent.rsplit("/", 1)[0] if "/" in parent else None):
        if candidate and storage.exists(storage.join(candidate, "config.yaml")):
            return candidate
    return None


def _label_names(metrics_path: Path | None) -> list[str]:
    if metrics_path is not None:
        names = json.loads(metrics_path.read_text()).get("label_names")
        if names:
            return [names[str(i)] for i in range(len(names))]
    return list(DEFAULT_LABELS)


def load_package(uri: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> ModelPackage:
    """Load a model package from a training run folder (local or ``gs://``, holding ``model.keras``) or a ``.keras``
    file; remote files are cached under ``cache_dir`` (default ``$MAMMOFLOW_CACHE``)."""
    from mammoflow.models import load_model
    from mammoflow.training.config import load_train_config

    uri = str(uri).rstrip("/")
    cache = cache_root(cache_dir) / "models"
    if _is_run_folder(uri):
        run_uri: str | None = uri
        model_uri = storage.join(uri, "model.keras")
    elif uri.endswith(".keras"):
        run_uri, model_uri = _run_of_keras_file(uri), uri
    else:
        raise InputError(uri, "neither a training run folder (with model.keras) nor a .keras file",
                         "give the --out folder of `mammoflow train` or a .keras model file", code="missing_file")
    model_path = _fetch(model_uri, cache)
    if model_path is None:
        raise InputError(model_uri, "no trained model here (the run may not have finished)",
                         "finish or resume the training run (`mammoflow train` with the same --out)",
                         code="missing_file")
    config = None
    label_names = list(DEFAULT_LABELS)
    run_info: dict[str, Any] = {}
    if run_uri is not None:
        cfg_path = _fetch(storage.join(run_uri, "config.yaml"), cache)
        config = load_train_config(str(cfg_path)) if cfg_path is not None else None
        label_names = _label_names(_fetch(storage.join(run_uri, "metrics.json"), cache))
        run_path = _fetch(storage.join(run_uri, "run.json"), cache)
        if run_path is not None:
            run_info = json.loads(run_path.read_text())
    try:
        model = load_model(model_path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad archive
        raise InputError(model_uri, f"cannot be loaded as a Keras model ({type(exc).__name__}: {exc})",
                         "give a .keras file written by `mammoflow train`", code="corrupt") from None
    n_out = int(model.output_shape[-1])
    if n_out != len(label_names):
        label_names = list(DEFAULT_LABELS) if n_out == 2 else [str(i) for i in range(n_out)]
    return ModelPackage(model=model, uri=uri, local_path=model_path, sha256=storage.file_sha256(model_path),
                        config=config, label_names=label_names, run_uri=run_uri, run_info=run_info)
