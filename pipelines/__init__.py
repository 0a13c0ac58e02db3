"""KFP pipeline definitions wiring the components (installed as ``mammoflow.pipelines``).

Each pipeline is a module here with a ``build(options)`` factory and a module-level pipeline built with the
environment's options; ``PIPELINES`` maps the public names used by ``mammoflow pipeline`` to them.
"""

from __future__ import annotations

import importlib
from typing import Any

PIPELINES = {
    "training": "mammoflow.pipelines.training:training_pipeline",
    "sweep": "mammoflow.pipelines.sweep:sweep_pipeline",
    "retrain": "mammoflow.pipelines.retrain:retrain_pipeline",
}


def _module(name: str) -> tuple[Any, str]:
    from mammoflow.errors import ConfigError

    if name not in PIPELINES:
        raise ConfigError(f"unknown pipeline {name!r}; valid: {', '.join(PIPELINES)}")
    module, attr = PIPELINES[name].split(":")
    try:
        return importlib.import_module(module), attr
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise ConfigError(f"pipeline {name!r} is not available in this version ({exc.name} missing)") from None


def get_pipeline(name: str) -> Any:
    """The pipeline registered under ``name`` (built with the environment's options); a clear error lists the
    valid names."""
    module, attr = _module(name)
    return getattr(module, attr)


def build_pipeline(name: str, options: Any = None) -> Any:
    """The pipeline ``name`` built for :class:`~mammoflow.pipelines.options.PipelineOptions` ``options``."""
    module, _ = _module(name)
    return module.build(options)


def check_params(pipeline: Any, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` unchanged when every key is a parameter of ``pipeline``; a clear error lists the valid ones."""
    from mammoflow.errors import ConfigError

    known = sorted((pipeline.component_spec.inputs or {}).keys())
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"unknown pipeline parameter(s) {unknown}. Fix: use {', '.join(known)}")
    return params
