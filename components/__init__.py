"""KFP v2 components: thin adapters from Kubeflow artifacts to the pipeline steps of :mod:`mammoflow.steps`.

Each stage is a plain typed function in this package (``data.py``, ``training.py``, ``evaluation.py``,
``retrain.py``): it unpacks KFP artifacts into local folders and URIs, calls one :mod:`mammoflow.steps` step
(itself a call into the library), and records what the KFP UI shows (artifact metadata, scalar metrics, ROC curve and confusion matrix,
the HTML report). The functions import everything inside their bodies, so KFP can ship each one alone as a
lightweight component running on the project's image (which has mammoflow installed; no pip install at run
time), and the same functions run under ``kfp.local.SubprocessRunner(use_venv=False)`` on a laptop.

The stage table :data:`mammoflow.components.stages.STAGES` lists every stage once: its function, image (GPU or CPU)
and pod settings. :func:`build_components` turns it into components for a pair of images (CPU, and GPU for the
stages that train or run a model at full-image scale); the pipelines apply the rest of each entry to their tasks
(:func:`mammoflow.pipelines.options.configure`).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from mammoflow import __version__

#: The project's images (images/Dockerfile, images/Dockerfile.gpu); override with these environment variables,
#: e.g. MAMMOFLOW_IMAGE=REGION-docker.pkg.dev/PROJECT_ID/mammoflow/mammoflow@sha256:... (images/digests.env, written by `make images`).
IMAGE_ENV, GPU_IMAGE_ENV = "MAMMOFLOW_IMAGE", "MAMMOFLOW_GPU_IMAGE"
DEFAULT_IMAGE = f"mammoflow/mammoflow:{__version__}"
DEFAULT_GPU_IMAGE = f"mammoflow/mammoflow-gpu:{__version__}"


def default_images() -> tuple[str, str]:
    """(CPU image, GPU image) from the environment, else the project's published names."""
    return os.environ.get(IMAGE_ENV, DEFAULT_IMAGE), os.environ.get(GPU_IMAGE_ENV, DEFAULT_GPU_IMAGE)


@functools.cache
def build_components(image: str | None = None, gpu_image: str | None = None) -> dict[str, Any]:
    """Stage name -> KFP component (a ``PythonComponent``) on ``image``, or ``gpu_image`` for the GPU stages of
    :data:`~.stages.STAGES`.

    ``install_kfp_package=False``: the images already hold the pinned kfp, so a step needs no network to start.
    """
    from kfp import dsl

    from mammoflow.components.stages import STAGES

    cpu_default, gpu_default = default_images()
    image, gpu_image = image or cpu_default, gpu_image or gpu_default
    return {stage.name: dsl.component(stage.load(), base_image=gpu_image if stage.gpu else image,
                                      install_kfp_package=False)
            for stage in STAGES}
