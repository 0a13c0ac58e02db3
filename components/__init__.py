"""KFP v2 components: thin adapters from Kubeflow artifacts to the pipeline steps of :mod:`mammoflow.steps`.

Each stage is a plain typed function in this package (``data.py``, ``training.py``, ``evaluation.py``,
``retrain.py``): it unpacks KFP artifacts into local folders and URIs, calls one :mod:`mammoflow.steps` step
(itself a call into the library), and records what the KFP UI shows (artifact metadata, scalar metrics, ROC curve and confusion matrix,
the HTML report). The functions import everything inside their bodies, so KFP can ship each one alone as a
lightweight component running on the project's image (which has mammoflow installed; no pip install at run
time), and the same functions run under ``kfp.local.SubprocessRunner(use_venv=False)`` on a laptop.

:func:`build_components` turns them into components for a pair of images (CPU, and GPU for the stages that
train or run a model at full-image scale); :data:`COMPONENTS` is the set for the default images.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from mammoflow import __version__

#: The project's images (images/Dockerfile, images/Dockerfile.gpu); override with these environment variables,
#: e.g. MAMMOFLOW_IMAGE=REGION-docker.pkg.dev/PROJECT_ID/mammoflow/mammoflow@sha256:... (images/digests.env, written by `make images`).
IMAGE_ENV, GPU_IMAGE_ENV = "MAMMOFLOW_IMAGE", "MAMMOFLOW_GPU_IMAGE"
DEFAULT_IMAGE = f"mammoflow/mammoflow:{__version__}"
DEFAULT_GPU_IMAGE = f"mammoflow/mammoflow-gpu:{__version__}"
#: Stages that run a model over many patches or whole images: they get the GPU image (and a GPU, see pipelines/).
GPU_STAGES = ("train", "sweep", "explain", "retrain_train")


def default_images() -> tuple[str, str]:
    """(CPU image, GPU image) from the environment, else the project's published names."""
    return os.environ.get(IMAGE_ENV, DEFAULT_IMAGE), os.environ.get(GPU_IMAGE_ENV, DEFAULT_GPU_IMAGE)


def stage_functions() -> dict[str, Callable[..., Any]]:
    """Stage name -> the plain function behind its component, in pipeline order."""
    from mammoflow.components import data, evaluation, retrain, status, training

    return {
        "demo_data": data.demo_data, "locate_data": data.locate_data, "ingest": data.ingest,
        "preprocess": data.preprocess, "build_dataset": data.build_dataset,
        "train": training.train, "sweep": training.sweep,
        "evaluate": evaluation.evaluate, "explain": evaluation.explain, "report": evaluation.report,
        "sweep_report": evaluation.sweep_report,
        "retrain_scan": retrain.retrain_scan, "retrain_ingest": retrain.retrain_ingest,
        "retrain_preprocess": retrain.retrain_preprocess, "retrain_build_dataset": retrain.retrain_build_dataset,
        "retrain_train": retrain.retrain_train, "retrain_evaluate": retrain.retrain_evaluate, "bless": retrain.bless,
        "register": retrain.register, "promote": retrain.promote, "push_retrain_metrics": retrain.push_retrain_metrics,
        "push_pipeline_status": status.push_pipeline_status,
    }


@functools.cache
def build_components(image: str | None = None, gpu_image: str | None = None) -> dict[str, Any]:
    """Stage name -> KFP component (a ``PythonComponent``) on ``image``, or ``gpu_image`` for :data:`GPU_STAGES`.

    ``install_kfp_package=False``: the images already hold the pinned kfp, so a step needs no network to start.
    """
    from kfp import dsl

    cpu_default, gpu_default = default_images()
    image, gpu_image = image or cpu_default, gpu_image or gpu_default
    return {name: dsl.component(fn, base_image=gpu_image if name in GPU_STAGES else image,
                                install_kfp_package=False)
            for name, fn in stage_functions().items()}
