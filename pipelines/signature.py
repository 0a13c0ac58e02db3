"""What the pipeline functions' signatures have in common: parameters shared by several pipelines, declared once,
and the outputs every pipeline returns.

KFP reads a pipeline's parameters from its function's signature (names, types, defaults) and their descriptions
from the ``Args:`` of its docstring, so a shared parameter would otherwise be written, and described, again in
every pipeline. Here a group of shared parameters is a frozen dataclass whose fields carry the type, the default
and the description (:func:`parameter`). :func:`takes` lays the group's fields out in the signature of a pipeline
function in place of its parameter annotated with the group, adds their descriptions to its docstring, and calls
it with one instance of the group whose fields hold the run's values (KFP channels). A pipeline then states only
its own parameters, and a shared one reads the same in every pipeline and in the KFP UI.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
_DOC = "doc"


def parameter(default: Any, doc: str) -> Any:
    """A field of a parameter group: its default and its description (shown in the KFP UI)."""
    return dataclasses.field(default=default, metadata={_DOC: doc})


def describe(group: type) -> dict[str, str]:
    """Parameter name -> description, for the fields of ``group``."""
    return {f.name: f.metadata[_DOC] for f in dataclasses.fields(group)}


def _with_args(doc: str | None, described: dict[str, str]) -> str:
    """``doc`` with ``described`` (name -> description) first in its ``Args:`` section (added when missing)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    entries = [f"    {name}: {text}" for name, text in described.items()]
    if "Args:" not in lines:
        return "\n".join([*lines, *([""] if lines else []), "Args:", *entries])
    at = lines.index("Args:") + 1
    return "\n".join(lines[:at] + entries + lines[at:])


def takes(group: type, **defaults: Any) -> Callable[[F], F]:
    """Give a pipeline function the parameters of ``group`` (a dataclass of :func:`parameter` fields).

    The function has one parameter annotated with ``group``; KFP sees the group's fields there instead, typed,
    with their defaults (``defaults`` overrides some, e.g. the storage root a pipeline is compiled with) and
    described in the docstring. Apply it below ``@dsl.pipeline``.
    """
    fields = dataclasses.fields(group)
    types = typing.get_type_hints(group)
    unknown = set(defaults) - {f.name for f in fields}
    if unknown:
        raise TypeError(f"{group.__name__} has no parameter(s) {sorted(unknown)}")

    def decorate(fn: F) -> F:
        own = inspect.signature(fn)
        slots = [p for p in own.parameters.values() if p.annotation is group]
        if len(slots) != 1:
            raise TypeError(f"{fn.__name__} needs exactly one parameter annotated {group.__name__} (live annotations, "
                            "as KFP needs: no `from __future__ import annotations` in a pipeline's module)")
        slot = slots[0]
        clash = {f.name for f in fields} & set(own.parameters)
        if clash:
            raise TypeError(f"{fn.__name__}: parameter(s) {sorted(clash)} are already in {group.__name__}")
        shared = [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=types[f.name],
                                    default=defaults.get(f.name, f.default)) for f in fields]
        signature = own.replace(parameters=shared + [p for p in own.parameters.values() if p is not slot])

        @functools.wraps(fn)
        def pipeline(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)  # KFP passes the parameters positionally, in signature order
            bound.apply_defaults()
            values = dict(bound.arguments)
            values[slot.name] = group(**{f.name: values.pop(f.name) for f in fields})
            return fn(**values)

        pipeline.__signature__ = signature  # type: ignore[attr-defined]
        pipeline.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        if signature.return_annotation is not inspect.Signature.empty:
            pipeline.__annotations__["return"] = signature.return_annotation
        pipeline.__doc__ = _with_args(fn.__doc__, describe(group))
        return typing.cast(F, pipeline)

    return decorate


def pipeline_outputs(report: str = "report", kind: str = "HTML") -> type:
    """The outputs of a pipeline: its report (a KFP ``HTML`` artifact, or ``Markdown``) named ``report``, and its
    headline ``metrics``; ``mammoflow pipeline run --local`` prints both."""
    from typing import NamedTuple

    from kfp import dsl

    return NamedTuple("Outputs", [(report, getattr(dsl, kind)), ("metrics", dsl.Metrics)])
