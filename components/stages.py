"""The stage table: every pipeline step once, with everything the components and the pipelines derive from it.

A :class:`Stage` names the plain function behind its component (in this package), the image it runs on (GPU or
CPU), its Kubernetes requests and limits, whether KFP may take it from its cache, its retries and wall-clock
ceiling, whether it reads the site's salt, and its pod label. :func:`mammoflow.components.build_components` makes
the components from it and :func:`mammoflow.pipelines.options.configure` applies it to a task; adding a stage is one
entry here (plus its function and its place in a pipeline).

Sized for CBIS-DDSM-scale runs: whole 16-bit mammograms in preprocess, a VGG16 fusion model in train/explain.
Caching is on where the outputs are a pure function of the inputs (data steps read immutable inputs: a changed
dataset gets a new data digest; evaluation steps read artifacts); off for training, whose re-runs are wanted (new
seeds, resumed preemptions), for the steps that look at the outside world, and for retraining, which reads and
writes shared state (the watched folder, state.json, the registry). The preemptible steps checkpoint to object
storage and resume, so they are retried (exponential back-off from 1 minute, at most 1 hour apart) and may run on
spot nodes; the wall-clock ceilings keep a hung step from holding a GPU for ever.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HOUR = 3600


@dataclass(frozen=True)
class Resources:
    """Kubernetes requests and limits of one step (CPU in cores, memory with a unit)."""

    cpu: str
    cpu_limit: str
    memory: str
    memory_limit: str


@dataclass(frozen=True)
class Stage:
    """One pipeline step: its component's function and every setting of its pod."""

    name: str
    function: str  # "module.function" in mammoflow.components, imported when the component is built
    resources: Resources
    gpu: bool = False  # runs a model over many patches or whole images: the GPU image, one GPU, the GPU node pool
    caching: bool = False  # KFP may reuse a finished run of it with the same inputs
    retries: int = 0  # preemptible: retried with back-off, and on spot nodes when those are asked for
    timeout_s: int = 0  # wall-clock ceiling; 0: none
    salted: bool = False  # reads patient identifiers and pseudonymises them with the site's salt (Secret)
    component: str = ""  # pod label app.kubernetes.io/component; "": the name with dashes
    scratch: str = ""  # local disk of a data step: an emptyDir of this size limit holds its cache ("": none)

    @property
    def label(self) -> str:
        """The pod label ``app.kubernetes.io/component`` (both training steps are ``training``: the
        mammoflow-training PodMonitor of k8s/base/monitoring.yaml scrapes their metrics port)."""
        return self.component or self.name.replace("_", "-")

    def load(self) -> Callable[..., Any]:
        """The plain function behind the component."""
        module, _, attr = self.function.rpartition(".")
        return getattr(importlib.import_module(f"mammoflow.components.{module}"), attr)


TINY = Resources("100m", "250m", "256Mi", "512Mi")
XSMALL = Resources("250m", "500m", "256Mi", "512Mi")
SMALL = Resources("500m", "1", "1Gi", "2Gi")
MEDIUM = Resources("1", "2", "2Gi", "4Gi")
LARGE = Resources("2", "4", "4Gi", "8Gi")
EVAL = Resources("2", "4", "8Gi", "16Gi")
TRAIN = Resources("4", "8", "16Gi", "32Gi")

#: The sweep step when its trials run on a Ray cluster (``ray_address``, compiled with ``sweep_on_ray``): it only
#: drives Tune, so it holds no GPU and little CPU for the days a sweep takes.
RAY_DRIVER = MEDIUM

#: Local disk (the step's cache, an emptyDir with this size limit) of the data steps, sized for CBIS-DDSM (about
#: 163 GB of DICOM, 3,032 full images, up to ~40 MB each). Ingest streams mias and cbis-ddsm roots through a 4 GiB
#: window (MAMMOFLOW_STREAM_LIMIT) but copies the other sources whole; a preprocess
#: partition holds one chunk of records at a time (16 raw images and their outputs: < 2 GB); a build partition
#: holds its partition's preprocessed images; the merge holds one split's example spools and a few shards.
WHOLE_DATASET, CHUNK, PARTITION, SPOOLS, SMALL_DISK = "200Gi", "8Gi", "32Gi", "32Gi", "1Gi"

#: In pipeline order: the data steps, training and sweep, evaluation, the retraining pipeline, the exit handler.
STAGES: tuple[Stage, ...] = (
    Stage("demo_data", "data.demo_data", MEDIUM),
    Stage("locate_data", "data.locate_data", XSMALL),
    Stage("ingest", "data.ingest", MEDIUM, caching=True, salted=True, scratch=WHOLE_DATASET),
    # Preprocessing and dataset building in N record partitions (a ParallelFor each; N=1: one piece); a
    # partition's work is resumable, so it is retried alone.
    Stage("partition_list", "data.partition_list", TINY),
    Stage("preprocess_partition", "data.preprocess_partition", LARGE, caching=True, retries=2, scratch=CHUNK),
    Stage("plan_dataset", "data.plan_dataset", SMALL, caching=True, scratch=SMALL_DISK),
    Stage("build_partition", "data.build_partition", LARGE, caching=True, retries=2, scratch=PARTITION),
    Stage("merge_dataset", "data.merge_dataset", MEDIUM, caching=True, scratch=SPOOLS),
    Stage("train", "training.train", TRAIN, gpu=True, retries=3, timeout_s=48 * HOUR, component="training"),
    Stage("sweep", "training.sweep", TRAIN, gpu=True, retries=3, timeout_s=72 * HOUR),
    Stage("evaluate", "evaluation.evaluate", EVAL, caching=True),
    Stage("explain", "evaluation.explain", EVAL, gpu=True, caching=True, timeout_s=6 * HOUR),
    Stage("report", "evaluation.report", SMALL, caching=True),
    Stage("sweep_report", "evaluation.sweep_report", SMALL, caching=True),
    Stage("retrain_scan", "retrain.retrain_scan", SMALL),
    Stage("retrain_ingest", "retrain.retrain_ingest", MEDIUM, salted=True),
    Stage("retrain_preprocess", "retrain.retrain_preprocess", LARGE),
    Stage("retrain_build_dataset", "retrain.retrain_build_dataset", LARGE),
    Stage("retrain_train", "retrain.retrain_train", TRAIN, gpu=True, retries=3, timeout_s=48 * HOUR,
          component="training"),
    Stage("retrain_evaluate", "retrain.retrain_evaluate", EVAL),
    Stage("bless", "retrain.bless", MEDIUM),
    Stage("register", "retrain.register", SMALL),
    Stage("promote", "retrain.promote", XSMALL),
    Stage("push_retrain_metrics", "retrain.push_retrain_metrics", Resources("250m", "500m", "512Mi", "1Gi")),
    Stage("push_pipeline_status", "status.push_pipeline_status", TINY),  # how this very run ended: never cached
)

STAGE: dict[str, Stage] = {stage.name: stage for stage in STAGES}
