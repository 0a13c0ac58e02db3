"""The one config object of a training run: model, data, optimiser, schedule, seed.

Loaded from YAML or a preset name (``mammoflow train --config yu2020``), validated with clear errors, and saved as
``config.yaml`` in the run folder so that a run can be re-run from its own folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mammoflow.config import from_dict, resolve_config, to_dict
from mammoflow.errors import ConfigError


@dataclass
class ModelConfig:
    """Which registered model to build (``mammoflow models`` lists the names) and how."""

    name: str = "compact_fusion"
    weights: str = "none"  # none | imagenet | path or gs:// URI of a .weights.h5 file
    # Whether the backbone trains is decided per phase (schedule.phases[*].trainable_backbone).
    params: dict[str, Any] = field(default_factory=dict)  # builder keyword arguments (branches, fc_units, ...)


@dataclass
class DataConfig:
    """How the shards become model inputs (see mammoflow.dataset.pipeline.InputConfig)."""

    patch_size: int = 72
    channels: int = 3
    patches_per_roi: dict[str, int] = field(default_factory=lambda: {"normal": 500, "tumour": 2000})
    eval_grid: tuple[int, int] = (5, 5)
    batch_size: int = 32
    augment: dict[str, Any] = field(default_factory=dict)  # rotation_deg, zoom, hflip, vflip
    centring: str = "patch_mean"
    mode: Literal["patches", "whole_image"] = "patches"
    image_size: int | None = None  # whole-image mode
    train_split: str = "train"
    val_split: str = "val"
    # True: fresh random patches (and augmentations) every epoch. False: epoch 0's patches every epoch, which is what
    # a feature cache can hold (head_cache needs it).
    resample_each_epoch: bool = True
    # Cross-validation (Xi et al. 2018): with fold k set, train on every fold shard set but k and validate on k.
    fold: int | None = None


@dataclass
class PhaseConfig:
    """One training phase (Jaamour et al. 2023: phase 1 frozen backbone, phase 2 all unfrozen at 1e-5)."""

    epochs: int = 5
    learning_rate: float = 1e-4
    trainable_backbone: bool = False


@dataclass
class OptimizerConfig:
    name: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    # Xi et al. 2018 train the new head at 20x the backbone's rate. Implemented by scaling the head's gradients,
    # which equals a larger learning rate for SGD (with momentum) only, so it is refused with Adam.
    head_lr_multiplier: float = 1.0


@dataclass
class ScheduleConfig:
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig()])
    early_stopping_patience: int | None = None  # epochs without val-loss improvement, per phase
    reduce_lr_on_plateau: dict[str, Any] | None = None  # e.g. {factor: 0.5, patience: 2}
    checkpoint_every_steps: int | None = None  # mid-epoch checkpoints for preemptible nodes
    steps_per_epoch: int | None = None  # cap (tests, fast budgets); None = one pass over the epoch's patches


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    class_weights: str | dict[str, float] = "none"  # none | balanced | {normal: 1.0, tumour: 2.0}
    seed: int = 0
    head_cache: bool = False  # compute frozen-backbone features once, train only the head
    metrics_port: int | None = None  # Prometheus endpoint for this run; off by default
    # auto: MultiWorkerMirroredStrategy when TF_CONFIG (or MAMMOFLOW_TRAIN_WORKERS) describes a cluster, else
    # MirroredStrategy on a multi-GPU node, else one device (mammoflow.training.distribute).
    distribute: Literal["auto", "none", "mirrored", "multiworker"] = "auto"
    # Multi-worker: a worker that sends no heartbeat for this long (killed, node lost) fails the job, so its peers
    # exit with an error instead of waiting in an all-reduce forever; the restarted job resumes from the chief's
    # last checkpoint. Heartbeats come from a thread of their own: a long checkpoint upload does not stop them.
    distribute_peer_timeout_s: float = 60.0
    mixed_precision: Literal["auto", "on", "off"] = "auto"  # auto = on when a GPU is present
    xla: bool = False

    def __post_init__(self) -> None:
        if not self.schedule.phases:
            raise ConfigError("schedule.phases: at least one phase is needed")
        for i, phase in enumerate(self.schedule.phases):
            if phase.epochs < 1 or phase.learning_rate <= 0:
                raise ConfigError(f"schedule.phases[{i}]: epochs must be >= 1 and learning_rate > 0")
        if isinstance(self.class_weights, str) and self.class_weights not in ("none", "balanced"):
            raise ConfigError(f"class_weights: {self.class_weights!r} is not none, balanced or a mapping "
                              "label -> weight")
        if self.optimizer.head_lr_multiplier != 1.0 and self.optimizer.name != "sgd":
            raise ConfigError("optimizer.head_lr_multiplier needs optimizer.name: sgd (gradient scaling equals a "
                              "learning-rate multiplier only for SGD)")
        if self.head_cache and any(p.trainable_backbone for p in self.schedule.phases):
            raise ConfigError("head_cache: needs a frozen backbone in every phase (features would go stale)")
        if self.head_cache and self.data.resample_each_epoch:
            raise ConfigError("head_cache: needs data.resample_each_epoch: false (the cache holds one set of patches)")
        if self.head_cache and self.schedule.checkpoint_every_steps:
            raise ConfigError("head_cache: epochs are cheap, so mid-epoch checkpoints are not supported with it")
        if self.distribute_peer_timeout_s < 1:
            raise ConfigError("distribute_peer_timeout_s must be at least 1 second")
        if self.data.patch_size < 8:
            raise ConfigError("data.patch_size must be at least 8 pixels")

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.schedule.phases)

    def phase_of_epoch(self, epoch: int) -> tuple[int, PhaseConfig]:
        """The phase (index, config) that a zero-based global epoch belongs to."""
        start = 0
        for i, phase in enumerate(self.schedule.phases):
            if epoch < start + phase.epochs:
                return i, phase
            start += phase.epochs
        raise ValueError(f"epoch {epoch} is past the last phase ({self.total_epochs} epochs)")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def load_train_config(name_or_path: str | dict | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A validated TrainConfig from a preset name, a YAML path or a dict, with dotted overrides applied.

    ``overrides`` maps dotted keys to values, e.g. ``{"model.name": "vgg16_fusion1", "seed": 3}`` (used by sweeps
    and ``--set`` on the command line).
    """
    data = resolve_config(name_or_path, "train")
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return from_dict(TrainConfig, data, "train config")


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a mapping")
    node[parts[-1]] = value
