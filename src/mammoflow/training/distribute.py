"""Multi-worker training: the cluster from ``TF_CONFIG`` (or built from a pod index), the strategy, who writes.

Data-parallel training with ``tf.distribute.MultiWorkerMirroredStrategy`` (MWMS): every worker runs the same
``mammoflow train`` command on the same data and the same run folder; the strategy all-reduces the gradients, so
all workers hold the same weights after every step. What this module adds to the plain strategy:

- **The cluster.** ``TF_CONFIG`` (TensorFlow's JSON: ``cluster.worker`` addresses, ``task`` type and index) is parsed
  and checked up front (:func:`parse_tf_config`), so a typo is an error naming the variable and the fix rather
  than a gRPC hang. On Kubernetes an indexed Job gives each pod ``JOB_COMPLETION_INDEX``; with
  ``MAMMOFLOW_TRAIN_WORKERS`` (how many) and ``MAMMOFLOW_TRAIN_WORKER_ADDRESS`` (an address template with
  ``{index}``, or a comma-separated list) set, :func:`resolve_cluster` builds ``TF_CONFIG`` from them
  (:func:`tf_config_from_index`; ``k8s/base/train-multiworker.yaml``).
- **One writer.** Only the chief (task ``chief``, else ``worker`` 0) writes the run folder. The other workers run
  the very same saving code (saving can involve collectives, so every worker must take part) into a scratch
  folder of their own, which is emptied when they start and removed when they end (:func:`scratch_dir`): Keras'
  multi-worker pattern. They read the run folder only to resume from the chief's checkpoint.
- **The same model as one worker.** Each global batch is split across the workers (``AutoShardPolicy.DATA``, since
  the training data is a pure function of the seed and epoch and every worker computes the same global batches),
  and BatchNorm layers use the statistics of the global batch (``synchronized``), as one worker would. The result
  then differs from a one-worker run with the same global batch only by floating-point summation order
  (``tests/test_multi_worker.py`` measures it).
- **No hang when a peer dies.** The coordination service's heartbeats notice a peer silent for
  ``distribute_peer_timeout_s`` and abort the survivors' collectives: they exit with an error and the job is
  restarted as a whole (an indexed Job's ``backoffLimit``), resuming from the chief's last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammoflow.errors import ConfigError

log = logging.getLogger(__name__)

TF_CONFIG_ENV = "TF_CONFIG"
WORKERS_ENV = "MAMMOFLOW_TRAIN_WORKERS"
ADDRESS_ENV = "MAMMOFLOW_TRAIN_WORKER_ADDRESS"
INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in every pod of an Indexed Job
TASK_TYPES = ("chief", "worker")


@dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-worker cluster (from ``TF_CONFIG``)."""

    jobs: dict[str, tuple[str, ...]]  # "chief"/"worker" -> addresses
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        return sum(len(addresses) for addresses in self.jobs.values())

    @property
    def is_chief(self) -> bool:
        """TensorFlow's rule: the ``chief`` task, or ``worker`` 0 when the cluster has no chief."""
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0
                                             and "chief" not in self.jobs)

    @property
    def name(self) -> str:
        return f"{self.task_type} {self.task_index}"


def _tf_config_error(problem: str) -> ConfigError:
    return ConfigError(f"{TF_CONFIG_ENV}: {problem}. Fix: set it to JSON like "
                       '{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type": "worker", "index": 0}} '
                       f"(or unset it and set {WORKERS_ENV} and {ADDRESS_ENV} with {INDEX_ENV})")


def parse_tf_config(text: str) -> Cluster:
    """The cluster described by a ``TF_CONFIG`` value; a :class:`ConfigError` naming what is wrong otherwise."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _tf_config_error(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cluster"), dict) or not isinstance(doc.get("task"), dict):
        raise _tf_config_error("needs a 'cluster' mapping and a 'task' mapping")
    jobs: dict[str, tuple[str, ...]] = {}
    for job, addresses in doc["cluster"].items():
        if job not in TASK_TYPES:
            raise _tf_config_error(f"cluster job {job!r} is not used in multi-worker training (only {TASK_TYPES})")
        if not isinstance(addresses, list) or not addresses or not all(_is_address(a) for a in addresses):
            raise _tf_config_error(f"cluster.{job} must be a non-empty list of 'host:port' addresses")
        jobs[job] = tuple(addresses)
    if len(jobs.get("chief", ())) > 1:
        raise _tf_config_error("a cluster has at most one chief")
    if "worker" not in jobs and "chief" not in jobs:
        raise _tf_config_error("cluster has no worker")
    everyone = [a for addresses in jobs.values() for a in addresses]
    if len(set(everyone)) != len(everyone):
        raise _tf_config_error("the same address appears twice in the cluster")
    task_type, task_index = doc["task"].get("type"), doc["task"].get("index", 0)
    if task_type not in jobs:
        raise _tf_config_error(f"task.type {task_type!r} is not a job of the cluster ({sorted(jobs)})")
    if not isinstance(task_index, int) or isinstance(task_index, bool) or not 0 <= task_index < len(jobs[task_type]):
        raise _tf_config_error(f"task.index {task_index!r} is outside cluster.{task_type} "
                               f"(0..{len(jobs[task_type]) - 1})")
    return Cluster(jobs=jobs, task_type=task_type, task_index=task_index)


def _is_address(value: Any) -> bool:
    if not isinstance(value, str) or ":" not in value:
        return False
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def worker_addresses(workers: int, address: str) -> list[str]:
    """``workers`` addresses from a template with ``{index}`` (``train-{index}.train-workers:2222``) or a
    comma-separated list of exactly that many."""
    if "{index}" in address:
        return [address.replace("{index}", str(i)) for i in range(workers)]
    listed = [a.strip() for a in address.split(",") if a.strip()]
    if len(listed) != workers:
        raise ConfigError(f"{ADDRESS_ENV}: lists {len(listed)} address(es) for {WORKERS_ENV}={workers}. Fix: give "
                          "a template with {index} (e.g. mammoflow-train-{index}.mammoflow-train:2222) or "
                          f"{workers} comma-separated host:port addresses")
    return listed


def tf_config_from_index(index: int, workers: int, address: str) -> dict[str, Any]:
    """``TF_CONFIG`` of worker ``index`` of ``workers``: worker 0 is the chief (TensorFlow's default rule)."""
    if workers < 1:
        raise ConfigError(f"{WORKERS_ENV}: {workers} workers; it must be at least 1")
    if not 0 <= index < workers:
        raise ConfigError(f"{INDEX_ENV}: index {index} is outside 0..{workers - 1}. Fix: set parallelism and "
                          f"completions of the Indexed Job to {WORKERS_ENV}")
    return {"cluster": {"worker": worker_addresses(workers, address)}, "task": {"type": "worker", "index": index}}


def resolve_cluster(environ: MutableMapping[str, str] | None = None) -> Cluster | None:
    """This process's cluster: from ``TF_CONFIG``, else built from the pod index (and then exported as
    ``TF_CONFIG``, which TensorFlow reads), else None (one worker)."""
    env = os.environ if environ is None else environ
    text = env.get(TF_CONFIG_ENV, "").strip()
    if not text and env.get(WORKERS_ENV):
        for name in (ADDRESS_ENV, INDEX_ENV):
            if not env.get(name, "").strip():
                raise ConfigError(f"{WORKERS_ENV} is set but {name} is not. Fix: set {ADDRESS_ENV} to the workers' "
                                  f"address template and run in an Indexed Job (Kubernetes sets {INDEX_ENV})")
        try:
            workers, index = int(env[WORKERS_ENV]), int(env[INDEX_ENV])
        except ValueError:
            raise ConfigError(f"{WORKERS_ENV} and {INDEX_ENV} must be integers") from None
        text = json.dumps(tf_config_from_index(index, workers, env[ADDRESS_ENV]))
        env[TF_CONFIG_ENV] = text
        log.info("TF_CONFIG built from %s=%d: %s", INDEX_ENV, index, text)
    if not text:
        return None
    cluster = parse_tf_config(text)
    return cluster


def wants_multiworker(kind: str, cluster: Cluster | None) -> bool:
    """Whether ``distribute`` (auto|none|mirrored|multiworker) means MWMS with this cluster."""
    if kind == "multiworker" and cluster is None:
        raise ConfigError(f"distribute: multiworker needs {TF_CONFIG_ENV} (or {WORKERS_ENV}, {ADDRESS_ENV} and "
                          f"{INDEX_ENV}). Fix: set them, or use distribute: auto to train on one worker")
    return cluster is not None and kind in ("auto", "multiworker")


def make_strategy(kind: str, cluster: Cluster | None, peer_timeout_s: float):
    """The ``tf.distribute`` strategy for ``distribute`` and the cluster. Call it first: MWMS configures the
    TensorFlow runtime, which must not have started yet (no op, no device listing before it)."""
    import tensorflow as tf

    if wants_multiworker(kind, cluster):
        _configure_coordination(cluster, peer_timeout_s)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        log.info("multi-worker training: %s of %d workers (%s), a peer silent for %g s fails the job", cluster.name,
                 cluster.num_workers, "chief: writes the run folder" if cluster.is_chief else "writes to scratch",
                 peer_timeout_s)
        return strategy
    if kind == "mirrored" or (kind == "auto" and len(tf.config.list_logical_devices("GPU")) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _configure_coordination(cluster: Cluster, peer_timeout_s: float) -> None:
    """TensorFlow's coordination service, as MWMS would set it up, with our heartbeat timeout.

    Every task sends heartbeats to the service on the chief; a task silent for ``peer_timeout_s`` (killed, its node
    gone) is reported to every other task, whose pending collectives then fail with ``UnavailableError``: the
    survivors exit instead of waiting forever. Not ``CommunicationOptions(timeout_seconds=...)``: that timer is a
    sleeping thread per collective (about 30 a step with synchronized BatchNorm), so thousands of threads pile up
    and a finished process cannot exit until the last one wakes (measured: 2,520 threads, minutes to exit).
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    leader = "chief" if "chief" in cluster.jobs else "worker"
    timeout_ms = int(peer_timeout_s * 1000)
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{leader}/replica:0/task:0",
        heartbeat_timeout_in_ms=timeout_ms, shutdown_barrier_timeout_in_ms=timeout_ms,
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(addresses))
                          for job, addresses in cluster.jobs.items()])


def shard_by_data(ds, strategy):
    """Each global batch split across the workers (not the files across the workers): every worker computes the
    same batches (the input pipeline is a pure function of seed and epoch), so the steps are those of one worker.
    """
    import tensorflow as tf

    if strategy.extended._in_multi_worker_mode():  # noqa: SLF001  (no public accessor)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        options.autotune.enabled = False  # see _no_autotune_on_devices
        _no_autotune_on_devices()
        return ds.with_options(options)
    return ds


def _no_autotune_on_devices() -> None:
    """Turn tf.data autotuning off in the per-device datasets of MWMS's multi-device iterators (a TF workaround).

    Destroying such an iterator waits for its autotune thread, which does not wake on cancellation but only at
    the end of its sleep (growing to 60 s). Keras keeps the validation iterator until the process ends, so a
    finished worker took one to four minutes to exit (measured here). The input pipeline's own autotuning is off
    too (:func:`shard_by_data`): every worker computes the same small per-step batches.
    """
    import tensorflow as tf
    from tensorflow.python.data.ops import multi_device_iterator_ops as mdi

    if getattr(mdi._create_device_dataset, "_mammoflow_fixed", False):  # noqa: SLF001
        return
    create = mdi._create_device_dataset  # noqa: SLF001

    def create_without_autotune(*args, **kwargs):
        options = tf.data.Options()
        options.autotune.enabled = False
        return create(*args, **kwargs).with_options(options)

    create_without_autotune._mammoflow_fixed = True  # noqa: SLF001
    mdi._create_device_dataset = create_without_autotune  # noqa: SLF001


def prepare_model(model, strategy) -> None:
    """Ready a model for ``fit`` under the strategy (a no-op with one replica); idempotent."""
    sync_batch_norm(model, strategy)
    fix_symbolic_build(model, strategy)


def sync_batch_norm(model, strategy) -> int:
    """Make BatchNorm layers use the statistics of the global batch (all-reduced) when there are several replicas,
    as a single worker computes them over the same batch. Returns how many layers were switched."""
    if strategy.num_replicas_in_sync <= 1:
        return 0
    import keras

    switched = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            switched += 1
    return switched


def fix_symbolic_build(model, strategy) -> None:
    """Work around Keras 3's ``fit`` under MWMS with more than one worker (keras-team/keras#20585), twice.

    1. Before training, Keras takes one batch to build the model symbolically and "reduces" the (x, y) tuple of
       per-replica tensors with ``strategy.reduce``, which accepts no tuple (``ValueError: Attempt to convert a
       value (PerReplica...)``). Only the batch's shapes are needed: this model's build takes the local replica's
       batch instead (no collective; every worker does the same).
    2. Every step's logs (scalars) are reduced with ``strategy.reduce("MEAN", v, axis=0)``, which fails on a
       scalar (``Invalid reduction dimension 0 for input with 0 dimensions``): :func:`_reduce_logs` reduces them
       with ``axis=None`` (the mean over the workers) and leaves every other case to Keras.
    """
    if not strategy.extended._in_multi_worker_mode():  # noqa: SLF001
        return
    import types

    import tensorflow as tf
    from keras import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tree.map_structure(local, next(batches))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)  # noqa: SLF001

    model._maybe_symbolic_build = types.MethodType(build, model)  # noqa: SLF001
    if not getattr(tf_trainer.reduce_per_replica, "_mammoflow_fixed", False):
        tf_trainer.reduce_per_replica = _reduce_logs(tf_trainer.reduce_per_replica)


def _reduce_logs(keras_reduce):
    import tensorflow as tf
    from keras import tree

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and strategy.extended._in_multi_worker_mode():  # noqa: SLF001
            def mean(value):
                if isinstance(value, tf.Tensor) and value.shape.rank == 0 or (
                        isinstance(value, tf.distribute.DistributedValues)
                        and strategy.experimental_local_results(value)[0].shape.rank == 0):
                    return strategy.reduce("MEAN", value, axis=None)
                return keras_reduce(value, strategy, reduction)

            return tree.map_structure(mean, values)
        return keras_reduce(values, strategy, reduction)

    reduce_per_replica._mammoflow_fixed = True  # noqa: SLF001
    return reduce_per_replica


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def scratch_dir(cache_root: Path, run_key: str, cluster: Cluster) -> Path:
    """The empty scratch folder a non-chief worker writes to (the same path on every restart, so a folder left by
    a killed worker is removed when it comes back)."""
    path = cache_root / "worker-scratch" / f"{run_key}-{cluster.task_type}-{cluster.task_index}"
    remove_scratch(path)
    path.mkdir(parents=True)
    return path


def remove_scratch(path: Path | None) -> None:
    if path is not None and path.exists():
        shutil.rmtree(path, ignore_errors=True)


def describe(cluster: Cluster | None) -> Mapping[str, Any]:
    """What ``run.json`` records about the cluster that trained."""
    if cluster is None:
        return {"workers": 1}
    return {"workers": cluster.num_workers, "written_by": cluster.name}
