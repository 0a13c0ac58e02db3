"""Compile-time options of the pipelines and the Kubernetes settings of each step.

Run-time choices (data, presets, storage root) are pipeline parameters; what the cluster looks like (images, GPU
node pool, spot nodes, credentials) is fixed when compiling, from :class:`PipelineOptions`
(``mammoflow pipeline compile --image ... --gpu-node-selector ...`` or the environment variables below).

:func:`configure` gives every step what its entry in the stage table (:mod:`mammoflow.components.stages`) says:
CPU and memory requests and limits, the pod labels ``app.kubernetes.io/part-of=mammoflow`` and
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

from mammoflow.components.stages import RAY_DRIVER, STAGE
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
#: Where a data step's local disk (an emptyDir sized by the stage table's ``scratch``) is mounted: the default
#: cache root of :func:`mammoflow.storage.copies.cache_dir` in a container (no MAMMOFLOW_CACHE there), so a local
#: run, where mounts have no effect, keeps its own cache.
SCRATCH_MOUNT = "/tmp/mammoflow-cache"


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
        """Stage name -> its KFP component on this cluster's images."""
        from mammoflow.components import build_components

        return build_components(*self.images())

    def task(self, stage: str, **inputs: Any) -> Any:
        """Add the stage's step to the pipeline being defined, with ``inputs``, configured by its entry of the stage
        table (:func:`configure`); returns the task."""
        return configure(self.components()[stage](**inputs), stage, self)


def configure(task: Any, stage: str, options: PipelineOptions) -> Any:
    """Apply the stage's entry of the stage table (resources, GPU, retries, caching, timeout, labels, salt) and the
    cluster's credentials to a task."""
    from kfp import kubernetes

    entry = STAGE[stage]
    ray_driver = stage == "sweep" and options.sweep_on_ray
    res = RAY_DRIVER if ray_driver else entry.resources
    task.set_display_name(stage.replace("_", "-"))
    task.set_cpu_request(res.cpu).set_cpu_limit(res.cpu_limit)
    task.set_memory_request(res.memory).set_memory_limit(res.memory_limit)
    task.set_caching_options(entry.caching and options.caching)
    task.set_env_variable("MAMMOFLOW_LOG_LEVEL", "INFO")
    task.set_env_variable("TF_CPP_MIN_LOG_LEVEL", "2")
    if entry.retries and options.retries:
        task.set_retry(num_retries=entry.retries, backoff_duration="60s", backoff_factor=2.0,
                       backoff_max_duration="3600s")
    if entry.timeout_s:
        kubernetes.set_timeout(task, entry.timeout_s)
    kubernetes.add_pod_label(task, *PART_OF)
    kubernetes.add_pod_label(task, COMPONENT_LABEL, entry.label)
    if entry.gpu and not ray_driver and options.gpu:
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
        kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
        for key, value in options.gpu_node_selector.items():
            kubernetes.add_node_selector(task, key, value)
    if options.spot and entry.retries:
        for key, value in SPOT_NODE_SELECTOR.items():
            kubernetes.add_node_selector(task, key, value)
        kubernetes.add_toleration(task, key="cloud.google.com/gke-spot", operator="Equal", value="true",
                                  effect="NoSchedule")
    if ray_driver:
        task.set_env_variable("RAY_AUTH_MODE", "token")
        kubernetes.use_secret_as_env(task, RAY_TOKEN_SECRET, {"auth_token": "RAY_AUTH_TOKEN"}, optional=False)
    if entry.scratch:
        # KFP 2.17 has no ephemeral-storage request: the step's disk is an emptyDir with a size limit (the kubelet
        # evicts a pod that writes more), holding the step's cache.
        kubernetes.empty_dir_mount(task, volume_name="mammoflow-cache", mount_path=SCRATCH_MOUNT,
                                   size_limit=entry.scratch)
    if entry.salted and options.salt_secret:
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
            push = options.task("push_pipeline_status", pipeline=name, push_gateway=push_gateway)
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
