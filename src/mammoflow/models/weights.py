"""Where model weights come from: none, ImageNet (``keras.applications``), named pretrained weights
(:mod:`mammoflow.models.pretrained`), a local file or a ``gs://`` URI.

Two kinds of files: *whole-model* weights (``weights: path/to/run/model.weights.h5``, written by
``model.save_weights`` of the same registered model and params) and *backbone-only* weights
(``backbone_weights: ...``, a ``keras.applications`` notop file, so that a cluster without internet can load
ImageNet weights mirrored into object storage; or a PyTorch state dict / layer-name map, see
:mod:`mammoflow.models.pretrained`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mammoflow import storage
from mammoflow.errors import ConfigError

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

WeightsKind = Literal["none", "imagenet", "named", "file"]


def parse_weights(weights: str | os.PathLike | None) -> tuple[WeightsKind, str | None]:
    """``(kind, value)``: ``("none", None)``, ``("imagenet", None)``, ``("named", name)`` for the other backbone
    weights of :mod:`mammoflow.models.pretrained` (``torchvision-imagenet``, ``hed-bsds500``) or
    ``("file", path_or_gs_uri)`` for whole-model weights."""
    from mammoflow.models.pretrained import CATALOGUE

    if weights is None or str(weights).strip().lower() in ("", "none", "null", "random"):
        return "none", None
    text = str(weights).strip()
    if text.lower() == "imagenet":
        return "imagenet", None
    if text.lower() in CATALOGUE:
        return "named", text.lower()
    if not text.endswith(".weights.h5"):
        raise ConfigError(f"weights {text!r} is not none, {', '.join(CATALOGUE)} or a .weights.h5 file. Fix: give "
                          "one of those names (`mammoflow weights list`) or a path or gs:// URI of a file written by "
                          "model.save_weights (it must end in .weights.h5); backbone-only files go to backbone_weights")
    return "file", text


def cache_dir() -> Path:
    """Where weight files fetched from object storage are kept: ``weights/`` in the project's one local cache
    (:func:`mammoflow.storage.copies.cache_dir`: ``$MAMMOFLOW_CACHE``, else the system temp folder)."""
    from mammoflow.storage import copies

    return copies.cache_dir() / "weights"


def local_file(uri: str | os.PathLike, suffixes: tuple[str, ...]) -> Path:
    """A local path for a weights file, fetching a ``gs://`` URI once into :func:`cache_dir`."""
    text = str(uri)
    if not text.endswith(suffixes):
        raise ConfigError(f"{text}: a weights file must end in {' or '.join(suffixes)}")
    if storage.is_remote(text):
        # Keyed by the URI so two buckets holding the same file name never collide. A cached copy is reused:
        # weights files are written once per run folder, never overwritten in place.
        dest = cache_dir() / hashlib.sha256(text.encode()).hexdigest()[:16] / text.rsplit("/", 1)[-1]
        if not dest.is_file():
            log.info("fetching %s -> %s", text, dest)
            storage.get_file(text, dest)  # atomic: a killed download leaves no half file at dest
        return dest
    path = storage.local_path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: weights file not found. Fix: give an existing file, a gs:// URI, "
                          "or weights: none")
    return path


def load_model_weights(model: keras.Model, path: Path, name: str) -> None:
    """Load whole-model weights, turning Keras' mismatch errors into one message with the fix."""
    try:
        model.load_weights(str(path))
    except (ValueError, OSError, KeyError) as exc:
        # A .weights.h5 file addresses layers by class, not name: one saved before Fusion2's BN was built from
        # moments (mammoflow.models.layers) names that BN differently, and cannot be matched to today's model.
        fusion2 = any(type(layer).__name__ == "BatchNormFromMoments" for layer in model.layers)
        hint = (" A Fusion2 file saved before December 2026 (when its per-branch BN became BatchNormFromMoments) "
                "has another layout: train the model again, or for a retrain set warm_start: false." if fusion2
                else "")
        raise ConfigError(f"{path}: cannot be loaded into model {name!r} ({exc}). Fix: use a file saved by "
                          "model.save_weights from the same model name, input channels, num_classes and params "
                          f"(for backbone-only files use backbone_weights).{hint}") from None
    log.info("loaded whole-model weights from %s", path)


def imagenet_unavailable(app: str, exc: BaseException) -> ConfigError:
    """The error for ImageNet weights that cannot be downloaded (no network, as on air-gapped clusters)."""
    return ConfigError(
        f"ImageNet weights for {app} could not be downloaded ({exc}). Fix: this machine has no network access to "
        "the Keras weights host: use weights: none, a .weights.h5 file of the whole model, or backbone_weights "
        "pointing to a copy of the keras.applications notop file (local path or gs:// URI)")


def is_download_failure(exc: BaseException) -> bool:
    """Whether ``exc`` comes from ``keras.utils.get_file`` failing to fetch a URL."""
    import urllib.error

    if isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError)):
        return True
    # keras.utils.get_file re-raises URLError/HTTPError as a bare Exception("URL fetch failure on ...").
    return "URL fetch failure" in str(exc) or isinstance(exc.__context__, urllib.error.URLError)
