"""The retraining config: one YAML file saying what to watch, how to train, how to judge and where to report.

Example (``mammoflow retrain --config retrain.yaml --once``)::

    name: site-a                     # names this retraining in metrics and registry lineage
    source: {name: mias, root: /data/incoming/mias}
    work_dir: /var/lib/mammoflow/retrain      # local: records, preprocessed images, evaluations, state
    storage_root: gs://bucket/mammoflow       # datasets and training runs (default: work_dir)
    registry: gs://bucket/mammoflow/registry  # default: <storage_root>/registry
    preprocess: yu2020
    dataset: yu2020                  # its splits section plans the first split; later ingests extend it
    train: yu2020
    train_overrides: {seed: 3}
    warm_start: true                 # start from the champion's weights (false: from scratch)
    evaluation: {split: test, freeze: true, n_bootstrap: 2000}
    blessing:
      first_model: require_minimums
      minimums: {roc_auc: 0.75}
      rules:
        - {metric: tumour_recall, margin: 0.02}
        - {metric: roc_auc, margin: 0.02}
    push: {gateway: http://prometheus-pushgateway.monitoring:9091}

The pseudonymisation salt is never written in a config: set ``MAMMOFLOW_SALT`` (a Secret on a cluster).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mammoflow import storage
from mammoflow.config import from_dict, resolve_config, to_dict
from mammoflow.errors import ConfigError
from mammoflow.retrain.blessing import BlessingPolicy
from mammoflow.sources import SOURCES, SourceOptions


@dataclass
class SourceConfig:
    """The watched source (the arguments of ``mammoflow ingest``)."""

    name: str = "mias"  # mias, mias-rois, cbis-ddsm, dicom-dir
    root: str | None = None
    info: str | None = None
    labels: str | None = None
    csvs: list[str] = field(default_factory=list)
    any_modality: bool = False
    pseudonymise_paths: bool = False  # dicom-dir: record ids are salted pseudonyms of the file paths

    def options(self) -> SourceOptions:
        return SourceOptions(root=Path(self.root) if self.root else None, info=Path(self.info) if self.info else None,
                             labels=Path(self.labels) if self.labels else None,
                             csvs=tuple(Path(c) for c in self.csvs), any_modality=self.any_modality,
                             pseudonymise_paths=self.pseudonymise_paths)


@dataclass
class EvaluationConfig:
    """How challenger and champion are evaluated: the same split of the same dataset, every time."""

    split: str = "test"
    freeze: bool = True  # new patients never join the evaluation split (it stays the one first judged on)
    method: Literal["majority", "soft"] = "majority"
    n_bootstrap: int = 2000
    seed: int = 0


@dataclass
class PushConfig:
    gateway: str | None = None  # Pushgateway URL; None: metrics are only kept in the work folder's state.json
    job: str = "mammoflow_retrain"
    timeout: float = 10.0


@dataclass
class DiagnosticsConfig:
    """Test and diagnostic knobs: never for a model anyone will use (see :mod:`mammoflow.retrain.diagnostics`)."""

    train_on_shuffled_labels: bool = False  # negative control: the challenger must be refused


@dataclass
class RetrainConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    name: str = "mammoflow"
    work_dir: str = "retrain"
    storage_root: str | None = None
    registry: str | None = None
    preprocess: str = "yu2020"
    dataset: str = "yu2020"
    train: str = "demo"
    train_overrides: dict[str, Any] = field(default_factory=dict)
    warm_start: bool = True
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    blessing: BlessingPolicy = field(default_factory=BlessingPolicy)
    push: PushConfig = field(default_factory=PushConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)

    def __post_init__(self) -> None:
        if self.source.name not in SOURCES:
            raise ConfigError(f"source.name: {self.source.name!r} is not one of {', '.join(SOURCES)}")
        if self.source.root is None and self.source.name != "cbis-ddsm":
            raise ConfigError("source.root: the folder to watch is required")
        from mammoflow.sources import check_labels, check_pseudonymise_paths

        check_labels(self.source.name, self.source.labels)  # a labels CSV another source would ignore is an error
        check_pseudonymise_paths(self.source.name, self.source.pseudonymise_paths)
        if storage.is_remote(self.work_dir):
            raise ConfigError("work_dir must be a local folder (records and preprocessed images are read from local "
                              "disk). Fix: put datasets and runs in object storage with storage_root")
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"name: {self.name!r}: use letters, digits, - and _")
        self.blessing.validate()

    @property
    def storage(self) -> str:
        return self.storage_root or str(Path(self.work_dir).resolve())

    @property
    def registry_uri(self) -> str:
        return self.registry or storage.join(self.storage, "registry")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def sha256(self) -> str:
        """Identity of the config: an interrupted retrain resumes only under the same config."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


def load_retrain_config(ref: str | Path | dict[str, Any]) -> RetrainConfig:
    """A validated RetrainConfig from a YAML path or a dict. Relative paths in a YAML file are relative to it."""
    data = resolve_config(ref, kind="retrain")
    if isinstance(ref, (str, Path)) and Path(ref).is_file():
        base = Path(ref).resolve().parent
        for section, keys in (("", ("work_dir", "storage_root", "registry")), ("source", ("root", "info", "labels"))):
            node = data.get(section, {}) if section else data
            for key in keys:
                value = node.get(key) if isinstance(node, dict) else None
                if isinstance(value, str) and not storage.is_remote(value) and not Path(value).is_absolute():
                    node[key] = str(base / value)
    return from_dict(RetrainConfig, data, "retrain config")
