"""KFP pipeline definitions wiring the components (installed as ``mammoflow.pipelines``).

Each pipeline is a module here; ``PIPELINES`` maps the public names used by ``mammoflow pipeline`` to them.
"""

from __future__ import annotations

import importlib

PIPELINES = {
    "training": "mammoflow.pipelines.training:training_pipeline",
    "sweep": "mammoflow.pipelines.sweep:sweep_pipeline",
    "retrain": "mammoflow.pipelines.retrain:retrain_pipeline",
}


def get_pipeline(name: str):
    """The pipeline function registered under ``name``; a clear error lists the valid names."""
    from mammoflow.errors import ConfigError

    if name not in PIPELINES:
        raise ConfigError(f"unknown pipeline {name!r}; valid: {', '.join(PIPELINES)}")
    module, attr = PIPELINES[name].split(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"pipeline {name!r} is not available in this version ({exc.name} missing)") from None
