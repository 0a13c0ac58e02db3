"""Predictions for single images or ROIs from a trained model package: probabilities, not just labels (the
confidence Jaamour et al. ask for), with the package's own input settings so that inference matches training."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammoflow.errors import ConfigError
from mammoflow.training.package import ModelPackage, load_package

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    image: str
    probabilities: dict[str, float]  # label name -> mean probability over the image's patches (soft vote)
    predicted: str  # majority vote of the patch labels; ties by the mean probability (Yu et al. eq. 1)
    votes: dict[str, int] = field(default_factory=dict)
    n_patches: int = 1


class Predictor:
    """A trained model package (run folder, ``gs://`` URI or ``.keras`` file) loaded once, predicting many images."""

    def __init__(self, run_uri: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None = None,
                 package: ModelPackage | None = None):
        self.package = package or load_package(run_uri or "", cache_dir)
        self.input_cfg = self.package.input_config()
        self.model = self.package.model
        self.label_names = list(self.package.label_names)

    def predict_array(self, image: np.ndarray, name: str = "") -> Prediction:
        """Predict one 2-D image: the run's grid of patches (patch models) or the resized image (whole-image)."""
        from mammoflow.dataset.pipeline import grid_patch_origins, prepare_patches

        if image.ndim != 2:
            raise ConfigError(f"{name}: expected a 2-D greyscale image, got shape {image.shape}")
        if self.package.whole_image:
            from mammoflow.preprocess.ops import resize_with_padding

            side = int(self.package.image_size)  # type: ignore[arg-type]
            patches = resize_with_padding(image, (side, side))[0][None]
        else:
            p = self.package.patch_size
            if min(image.shape) < p:
                raise ConfigError(f"{name}: image {image.shape} is smaller than the model's {p}x{p} patches")
            origins = grid_patch_origins(image.shape, p, self.package.eval_grid)
            patches = np.stack([image[r:r + p, c:c + p] for r, c in origins])
        probs = np.asarray(self.model.predict_on_batch(prepare_patches(patches, self.input_cfg)))
        mean = probs.mean(axis=0)
        labels = probs.argmax(axis=1)
        votes = np.bincount(labels, minlength=len(self.label_names))
        top = np.flatnonzero(votes == votes.max())
        winner = int(top[0]) if len(top) == 1 else int(top[np.argmax(mean[top])])
        return Prediction(image=name, probabilities={n: float(v) for n, v in zip(self.label_names, mean, strict=True)},
                          predicted=self.label_names[winner],
                          votes={n: int(v) for n, v in zip(self.label_names, votes, strict=True)},
                          n_patches=len(patches))

    def predict_file(self, path: str | Path, preprocess: Any = None) -> Prediction:
        from mammoflow.io.images import read_image

        image = read_image(path)
        if preprocess is not None:
            from mammoflow.preprocess.chain import Chain, load_preprocess_config

            image = Chain.from_config(load_preprocess_config(preprocess))(image, path=str(path)).image
        return self.predict_array(image, str(path))
