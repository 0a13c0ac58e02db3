"""Configs: YAML files or preset names, validated into dataclasses with clear errors.

Every ``--config`` option takes either a preset name (``yu2020``, ``jaamour2023``, ``xi2018``, ...), found under
``mammoflow/presets/<kind>/<name>.yaml``, a path to a YAML file or the ``gs://`` URI of one, resolved in one place
(:func:`resolve_ref`). One resolved config is saved beside every result
so that any result can be re-run from its own folder.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mammoflow.errors import ConfigError

T = TypeVar("T")


def preset_names(kind: str) -> list[str]:
    """Names of the shipped presets of one kind (``preprocess``, ``dataset``, ``train``, ``sweep``)."""
    folder = resources.files("mammoflow") / "presets" / kind
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_yaml(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found. Fix: give an existing YAML path or a preset name") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}). Fix: correct the YAML syntax") from None
    if data is None:  # an empty file (or only comments) would silently mean "all defaults"
        raise ConfigError(f"{path}: the config file is empty. Fix: write the settings as YAML `key: value` lines "
                          "(see the presets in mammoflow/presets/), or give a preset name instead of a file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of `key: value` settings, got "
                          f"{type(data).__name__}. Fix: write the settings as YAML `key: value` lines")
    return data


def resolve_ref(ref: str | os.PathLike[str], kind: str, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """The one place where a config reference of any ``kind`` (``preprocess``, ``dataset``, ``train``, ``sweep``,
    ``retrain``, ...) is resolved, before any work: a shipped preset name of that kind as it is; a ``gs://`` YAML
    fetched into the local copies cache (:mod:`mammoflow.storage.copies`, ``cache_dir`` or ``$MAMMOFLOW_CACHE``) and its
    local path returned (it keeps the file's name, which names datasets and labels runs); a local YAML path as it
    is. Anything else is a :class:`ConfigError` naming the presets. Every loader takes what this returns."""
    from mammoflow import storage

    text = os.fspath(ref)
    if storage.is_remote(text):
        from mammoflow.storage.copies import fetch_tree

        return str(fetch_tree(text, cache_dir))
    if text in preset_names(kind):
        return text
    path = storage.local_path(text)  # file:// URIs too
    text = str(path) if text.startswith("file://") else text
    if path.suffix in (".yaml", ".yml") or path.exists():  # a missing YAML is load_yaml's error: it names the file
        return text
    raise ConfigError(
        f"{text!r} is neither a {kind} preset nor a YAML file. "
        f"Fix: use one of {', '.join(preset_names(kind)) or '(none shipped)'} or a path to a .yaml file"
    )


def resolve_config(name_or_path: str | Path | dict | None, kind: str,
                   cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A config dict from a preset name, a YAML path or ``gs://`` URI (see :func:`resolve_ref`), a dict (returned
    as a copy) or None (empty)."""
    if name_or_path is None:
        return {}
    if isinstance(name_or_path, dict):
        return dict(name_or_path)
    ref = resolve_ref(name_or_path, kind, cache_dir)
    if ref in preset_names(kind):
        preset = resources.files("mammoflow") / "presets" / kind / f"{ref}.yaml"
        return yaml.safe_load(preset.read_text()) or {}
    return load_yaml(ref)


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a dict, refusing unknown keys and wrong types with a clear message.

    Nested dataclass fields are built recursively; tuples and lists are converted.
    """
    data = dict(data or {})
    where = where or cls.__name__
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}. Fix: use only {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        for arg in args:
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is Any or origin is typing.Literal:
        if origin is typing.Literal and value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass config as plain YAML-able data (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(i) for i in v]
        if isinstance(v, dict):
            return {k: plain(i) for k, i in v.items()}
        return v
    return plain(dataclasses.asdict(obj))


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def plain_numbers(value: Any) -> Any:
    """``value`` with integral floats turned back into ints, recursively.

    Dict and list parameters reach a KFP step through a protobuf Struct, where every number is a float, so an
    override ``{"schedule.steps_per_epoch": 10}`` arrives as ``10.0``; config fields typed ``int`` refuse that,
    while ``float`` fields accept ints.
    """
    if isinstance(value, dict):
        return {k: plain_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
