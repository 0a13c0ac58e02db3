"""Compile-time options of the pipelines and the Kubernetes settings of each step.

Run-time choices (data, presets, storage root) are pipeline parameters; what the cluster looks like (images, GPU
node pool, spot nodes, credentials) is fixed when compiling, from :class:`PipelineOptions`
(``mammoflow pipeline compile --image ... --gpu-node-selector ...`` or the environment variables below).

Every step gets CPU and memory requests and limits, the pod labels ``app.kubernetes.io/part-of=mammoflow`` and
``app.kubernetes.io/component=<stage>`` (``training`` for the train steps: the ``mammoflow-training`` PodMonitor of
k8s/base/monitoring.yaml selects it), and its caching setting. GPU stages (train, sweep, explain, the retraining's
train) ask for one ``nvidia.com/gpu``, tolerate the GPU taint and select the GPU node pool. The training steps are
retried with back-off: they checkpoint to object storage and resume, so a preempted pod costs minutes, not the run.

Pods authenticate to GCS with Workload Identity: submit runs with the Kubernetes service account
``mammoflow-pipeline-runner`` (k8s/base/rbac.yaml; the default of ``mammoflow pipeline submit``). Without Workload
Identity, ``gcs_secret`` mounts a Secret holding a service-account key (key ``key.json``) in every step.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mammoflow.errors import ConfigError

GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_GPU_NODE_SELECTOR = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
SPOT_NODE_SELECTOR = {"cloud.google.com/gke-spot": "true"}
SALT_SECRET = "mammoflow-salt"  # see k8s/README.md: `kubectl create secret generic mammoflow-salt ...`
SALT_ENV = "MAMMOFLOW_SALT"
#: Ray's token authentication (k8s/base/raycluster.yaml): a sweep driving the Ray cluster presents this Secret's token.
RAY_TOKEN_SECRET = "mammoflow-ray-token"  # key auth_token; see k8s/README.md
GCS_KEY_MOUNT = "/var/secrets/google"
SERVICE_ACCOUNT = "mammoflow-pipeline-runner"
PART_OF = ("app.kubernetes.io/part-of", "mammoflow")
COMPONENT_LABEL = "app.kubernetes.io/component"
#: Port of the training runs' Prometheus endpoint; k8s/base/monitoring.yaml scrapes it.
METRICS_PORT = 9400
STORAGE_ROOT_ENV = "MAMMOFLOW_STORAGE_ROOT"


@dataclass(frozen=True)
class Resources:
    """Kubernetes requests and limits of one step (CPU in cores, memory with a unit)."""

    cpu: str
    cpu_limit: str
    memory: str
    memory_limit: str
    gpu: bool = False


#: Sized for CBIS-DDSM-scale runs: whole 16-bit mammograms in preprocess, a VGG16 fusion model in train/explain.
RESOURCES: dict[str, Resources] = {
    "demo_data": Resources("1", "2", "2Gi", "4Gi"),
    "locate_data": Resources("250m", "500m", "256Mi", "512Mi"),
    "ingest": Resources("1", "2", "2Gi", "4Gi"),
    "preprocess": Resources("2", "4", "4Gi", "8Gi"),
    "build_dataset": Resources("2", "4", "4Gi", "8Gi"),
    "train": Resources("4", "8", "16Gi", "32Gi", gpu=True),
    "sweep": Resources("4", "8", "16Gi", "32Gi", gpu=True),
    "evaluate": Resources("2", "4", "8Gi", "16Gi"),
    "explain": Resources("2", "4", "8Gi", "16Gi", gpu=True),
    "report": Resources("500m", "1", "1Gi", "2Gi"),
    "sweep_report": Resources("500m", "1", "1Gi", "2Gi"),
    # The retraining pipeline (pipelines/retrain.py).
    "retrain_scan": Resources("500m", "1", "1Gi", "2Gi"),
    "retrain_ingest": Resources("1", "2", "2Gi", "4Gi"),
    "retrain_preprocess": Resources("2", "4", "4Gi", "8Gi"),
    "retrain_build_dataset": Resources("2", "4", "4Gi", "8Gi"),
    "retrain_train": Resources("4", "8", "16Gi", "32Gi", gpu=True),
    "retrain_evaluate": Resources("2", "4", "8Gi", "16Gi"),
    "bless": Resources("1", "2", "2Gi", "4Gi"),
    "register": Resources("500m", "1", "1Gi", "2Gi"),
    "promote": Resources("250m", "500m", "256Mi", "512Mi"),
    "push_retrain_metrics": Resources("250m", "500m", "512Mi", "1Gi"),
    # The exit handler of the training and sweep pipelines.
    "push_pipeline_status": Resources("100m", "250m", "256Mi", "512Mi"),
}

#: The sweep step when its trials run on a Ray cluster (``ray_address``, compiled with ``sweep_on_ray``): it only
#: drives Tune, so it holds no GPU and little CPU for the days a sweep takes.
RAY_DRIVER = Resources("1", "2", "2Gi", "4Gi")

#: KFP caching per stage. On where the outputs are a pure function of the inputs (data steps read immutable
#: inputs: a changed dataset must get a new data_root; evaluation steps read artifacts). Off for training, whose
#: re-runs are wanted (new seeds, resumed preemptions), and for the steps that look at the outside world.
CACHING: dict[str, bool] = {
    "demo_data": False, "locate_data": False, "ingest": True, "preprocess": True, "build_dataset": True,
    "train": False, "sweep": False, "evaluate": True, "explain": True, "report": True, "sweep_report": True,
    # Retraining reads and writes shared state (the watched folder, state.json, the registry): never cached.
    **{stage: False for stage in ("retrain_scan", "retrain_ingest", "retrain_preprocess", "retrain_build_dataset",
                                  "retrain_train", "retrain_evaluate", "bless", "register", "promote",
                                  "push_retrain_metrics")},
    "push_pipeline_status": False,  # reports how this very run ended
}

#: Retries of the preemptible steps (exponential back-off from 1 minute, at most 1 hour apart).
RETRIES: dict[str, int] = {"train": 3, "sweep": 3, "retrain_train": 3}
#: Wall-clock ceilings, so a hung step does not hold a GPU for ever.
TIMEOUTS_S: dict[str, int] = {"train": 48 * 3600, "sweep": 72 * 3600, "explain": 6 * 3600,
                              "retrain_train": 48 * 3600}
#: Stages that read patient identifiers and pseudonymise them with the site's salt (Secret salt_secret, required:
#: create it before running, see k8s/README.md).
SALTED_STAGES = ("ingest", "retrain_ingest")
#: Pod label app.kubernetes.io/component per stage (default: the stage name with dashes). Both training steps are
#: ``training``: the mammoflow-training PodMonitor scrapes their metrics port.
COMPONENT_NAMES = {"train": "training", "retrain_train": "training"}


def _parse_selector(text: str) -> dict[str, str]:
    """``key=value,key2=value2`` -> dict; ``none`` or empty -> {}."""
    if text.strip().lower() in ("", "none"):
        return {}
    out = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise ConfigError(f"node selector {item!r}: expected KEY=VALUE (or 'none')")
        out[key] = value
    return out


@dataclass(frozen=True)
class PipelineOptions:
    """What the cluster looks like, fixed at compile time."""

    image: str = ""  # CPU image; "" = $MAMMOFLOW_IMAGE or mammoflow/mammoflow:<version>
    gpu_image: str = ""  # GPU image; "" = $MAMMOFLOW_GPU_IMAGE or mammoflow/mammoflow-gpu:<version>
    gpu: bool = True  # False: no GPU request anywhere (CPU-only clusters such as kind), CPU image everywhere
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_GPU_NODE_SELECTOR))
    spot: bool = False  # run train and sweep on spot nodes (they resume after preemption)
    gcs_secret: str = ""  # Secret with a service-account key.json, mounted when Workload Identity is not used
    salt_secret: str = SALT_SECRET  # Secret with MAMMOFLOW_SALT for the salted stages (required: a pod without it
    # does not start, rather than pseudonymising with a public salt)
    storage_root: str = ""  # default of the storage_root parameter; "" = $MAMMOFLOW_STORAGE_ROOT
    caching: bool = True  # False: no step is ever taken from KFP's cache (e.g. after deleting a storage root)
    retries: bool = True  # False for local runs: kfp.local honours retries, and a laptop run should fail fast
    sweep_on_ray: bool = False  # the sweep's trials run on a Ray cluster (ray_address): a small CPU driver step
    push_gateway: str = ""  # default of the push_gateway parameter (each run's end status); "" = $MAMMOFLOW_PUSH_GATEWAY

    @classmethod
    def from_env(cls, **overrides: Any) -> PipelineOptions:
        """Options from MAMMOFLOW_IMAGE, MAMMOFLOW_GPU_IMAGE, MAMMOFLOW_GPU (0/1), MAMMOFLOW_GPU_NODE_SELECTOR
        (``key=value,...`` or ``none``), MAMMOFLOW_SPOT (0/1), MAMMOFLOW_GCS_SECRET, MAMMOFLOW_STORAGE_ROOT,
        MAMMOFLOW_SWEEP_ON_RAY (0/1), MAMMOFLOW_PUSH_GATEWAY, then
        ``overrides`` (None values are ignored)."""
        env = os.environ
        values: dict[str, Any] = {
            "gpu": env.get("MAMMOFLOW_GPU", "1") not in ("0", "false", "no"),
            "spot": env.get("MAMMOFLOW_SPOT", "0") in ("1", "true", "yes"),
            "gcs_secret": env.get("MAMMOFLOW_GCS_SECRET", ""),
            "storage_root": env.get(STORAGE_ROOT_ENV, ""),
            "sweep_on_ray": env.get("MAMMOFLOW_SWEEP_ON_RAY", "0") in ("1", "true", "yes"),
            "push_gateway": env.get("MAMMOFLOW_PUSH_GATEWAY", ""),
        }
        if "MAMMOFLOW_GPU_NODE_SELECTOR" in env:
            values["gpu_node_selector"] = _parse_selector(env["MAMMOFLOW_GPU_NODE_SELECTOR"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("gpu_node_selector"), str):
            values["gpu_node_selector"] = _parse_selector(values["gpu_node_selector"])
        return cls(**values)

    def images(self) -> tuple[str, str]:
        """(CPU image, image of the GPU stages)."""
        from mammoflow.components import default_images

        cpu, gpu = default_images()
        cpu = self.image or cpu
        return cpu, (self.gpu_image or gpu) if self.gpu else cpu

    def components(self) -> dict[str, Any]:
        from mammoflow.components import build_components

        return build_components(*self.images())


def configure(task: Any, stage: str, options: PipelineOptions) -> Any:
    """Apply the stage's resources, GPU, retries, caching, timeouts, labels and credentials to a task."""
    from kfp import kubernetes

    res = RAY_DRIVER if stage == "sweep" and options.sweep_on_ray else RESOURCES[stage]
    task.set_display_name(stage.replace("_", "-"))
    task.set_cpu_request(res.cpu).set_cpu_limit(res.cpu_limit)
    task.set_memory_request(res.memory).set_memory_limit(res.memory_limit)
    task.set_caching_options(CACHING[stage] and options.caching)
    task.set_env_variable("MAMMOFLOW_LOG_LEVEL", "INFO")
    task.set_env_variable("TF_CPP_MIN_LOG_LEVEL", "2")
    if stage in RETRIES and options.retries:
        task.set_retry(num_retries=RETRIES[stage], backoff_duration="60s", backoff_factor=2.0,
                       backoff_max_duration="3600s")
    if stage in TIMEOUTS_S:
        kubernetes.set_timeout(task, TIMEOUTS_S[stage])
    kubernetes.add_pod_label(task, *PART_OF)
    kubernetes.add_pod_label(task, COMPONENT_LABEL, COMPONENT_NAMES.get(stage, stage.replace("_", "-")))
    if res.gpu and options.gpu:
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
        kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
        for key, value in options.gpu_node_selector.items():
            kubernetes.add_node_selector(task, key, value)
    if options.spot and stage in RETRIES:
        for key, value in SPOT_NODE_SELECTOR.items():
            kubernetes.add_node_selector(task, key, value)
        kubernetes.add_toleration(task, key="cloud.google.com/gke-spot", operator="Equal", value="true",
                                  effect="NoSchedule")
    if stage == "sweep" and options.sweep_on_ray:
        task.set_env_variable("RAY_AUTH_MODE", "token")
        kubernetes.use_secret_as_env(task, RAY_TOKEN_SECRET, {"auth_token": "RAY_AUTH_TOKEN"}, optional=False)
    if stage in SALTED_STAGES and options.salt_secret:
        kubernetes.use_secret_as_env(task, options.salt_secret, {SALT_ENV: SALT_ENV}, optional=False)
    if options.gcs_secret:
        kubernetes.use_secret_as_volume(task, options.gcs_secret, mount_path=GCS_KEY_MOUNT)
        task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{GCS_KEY_MOUNT}/key.json")
    return task



def pushes_its_status(name: str, description: str, options: PipelineOptions) -> Callable[[Callable], Any]:
    """Decorator in place of ``@dsl.pipeline(name=..., description=...)``: the decorated function's steps become
    a sub-pipeline ``<name>-steps``, followed by a ``push_pipeline_status`` task that runs whatever happened in it
    (``ignore_upstream_failure``, with its final status) and pushes ``mammoflow_pipeline_*`` for the alerts.

    The pipeline takes the function's parameters plus ``push_gateway`` (default ``options.push_gateway``) and
    returns the sub-pipeline's outputs (an exit handler could not: KFP returns no output from inside one).
    """
    from kfp import dsl

    from mammoflow.pipelines.signature import _with_args

    def decorate(fn: Callable) -> Any:
        steps = dsl.pipeline(name=f"{name}-steps", description=description)(fn)
        inner = inspect.signature(fn)
        gateway = inspect.Parameter("push_gateway", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str,
                                    default=options.push_gateway)
        signature = inner.replace(parameters=[*inner.parameters.values(), gateway])
        outputs = inner.return_annotation

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)  # KFP passes the parameters positionally, in signature order
            bound.apply_defaults()
            values = dict(bound.arguments)
            push_gateway = values.pop("push_gateway")
            body = steps(**values)
            body.set_caching_options(False)  # a sub-DAG: each step inside keeps its own caching option
            push = configure(options.components()["push_pipeline_status"](pipeline=name, push_gateway=push_gateway),
                             "push_pipeline_status", options)
            push.after(body).ignore_upstream_failure()
            return outputs(**{key: body.outputs[key] for key in outputs._fields})

        pipeline.__name__ = fn.__name__
        pipeline.__signature__ = signature  # type: ignore[attr-defined]
        pipeline.__annotations__ = {**{p.name: p.annotation for p in signature.parameters.values()},
                                    "return": outputs}
        pipeline.__doc__ = _with_args(fn.__doc__, {
            "push_gateway": "Pushgateway URL for how the run ended (mammoflow_pipeline_*); empty: not pushed."})
        return dsl.pipeline(name=name, description=description)(pipeline)

    return decorate
