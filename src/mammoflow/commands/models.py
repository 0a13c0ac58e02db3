"""``mammoflow models``: list the model registry, or show one model's layers and parameters."""

from __future__ import annotations

import json
import math
from typing import Any

import click
import yaml

from mammoflow.errors import ConfigError


def _shape(text: str | None) -> tuple[int | None, ...] | None:
    """``72,72,3`` or ``72x72x3`` (``none`` for a free size) -> ``(72, 72, 3)``."""
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    try:
        return tuple(None if p.strip().lower() in ("none", "?") else int(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not HEIGHT,WIDTH,CHANNELS (e.g. 72,72,3)") from None


def _params(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, each value read as YAML (``branches=[4,5]``, ``dropout=0.2``)."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. branches=[4,5])")
        params[key.strip()] = yaml.safe_load(value)
    return params


def _fmt_shape(shape: tuple) -> str:
    return "x".join("?" if s is None else str(s) for s in shape)


def accepted_weights(backbone: str | None) -> list[str]:
    """The ``weights`` values a model with ``backbone`` takes (besides a .weights.h5 file of the model itself)."""
    from mammoflow.models.pretrained import accepted_by

    return ["none", *accepted_by(backbone)]


def registry_table(family: str | None = None) -> str:
    """The registry as an aligned text table: name, family, paper, default input, accepted weights, description."""
    from mammoflow.models import list_models

    rows = [("NAME", "FAMILY", "PAPER", "INPUT", "WEIGHTS", "DESCRIPTION")]
    rows += [(i.name, i.family, i.paper, _fmt_shape(i.default_input_shape), ",".join(accepted_weights(i.backbone)),
              i.description) for i in list_models(family)]
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True)) + "  " + row[5]
                     for row in rows)


def describe(name: str, input_shape: tuple | None, num_classes: int, params: dict[str, Any],
             layers: bool) -> str:
    """One model built with random weights: its metadata, parameter counts and (optionally) Keras summary."""
    from mammoflow.models import create_model, get_model_info, model_meta

    info = get_model_info(name)
    model = create_model(name, input_shape=input_shape, num_classes=num_classes, **params)
    meta = model_meta(model)
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    lines = [
        f"{info.name}  ({info.paper}; family {info.family})",
        info.description,
        f"input shape:       {_fmt_shape(meta.input_shape)}",
        f"backbone:          {meta.backbone or 'none (trained from scratch)'}",
        f"weights accepted:  {', '.join(accepted_weights(meta.backbone))} (`mammoflow weights list`), "
        "or a .weights.h5 file of this model",
        f"parameters:        {model.count_params():,} total, {trainable:,} trainable (trainable_backbone=false)",
        f"builder params:    {json.dumps(meta.to_dict()['params'])}",
        f"taps:              {', '.join(meta.taps)}",
        f"head inputs:       {', '.join(meta.head_inputs) or '(none: not splittable)'}",
        f"CAM layer:         {meta.cam_layer} ({meta.cam_method})",
        f"input scaling:     {meta.preprocessing or 'none (as the input pipeline gives it)'}",
    ]
    if layers:
        summary: list[str] = []
        model.summary(print_fn=lambda text, **_: summary.append(text))
        lines += ["", *summary]
    return "\n".join(lines)


@click.command(name="models")
@click.option("--show", "show", metavar="NAME", help="Build model NAME (random weights) and print its summary.")
@click.option("--family", help="List only one family (yu2020, jaamour2023, xi2018, mammoflow).")
@click.option("--input-shape", "input_shape", metavar="H,W,C", help="With --show: input shape (default: the model's).")
@click.option("--num-classes", default=2, show_default=True, help="With --show: number of classes.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="With --show: a builder parameter, value in YAML (repeatable), e.g. --set branches=[4,5].")
@click.option("--layers/--no-layers", default=True, show_default=True, help="With --show: print every layer.")
@click.option("--json", "as_json", is_flag=True, help="List the registry as JSON.")
def command(show: str | None, family: str | None, input_shape: str | None, num_classes: int,
            sets: tuple[str, ...], layers: bool, as_json: bool) -> None:
    """List the registered models (every model of the three papers, by name), or show one of them.

    \b
    Examples:
      mammoflow models
      mammoflow models --show vgg16_fusion1 --set branches=[4,5]
      mammoflow models --show xi_vgg16 --input-shape none,none,1 --no-layers
    """
    from mammoflow.models import list_models

    if show is not None:
        click.echo(describe(show, _shape(input_shape), num_classes, _params(sets), layers))
        return
    if input_shape or sets:
        raise click.UsageError("--input-shape and --set only apply with --show NAME")
    infos = list_models(family)
    if family and not infos:
        families = sorted({i.family for i in list_models()})
        raise ConfigError(f"no model in family {family!r}. Fix: use one of {', '.join(families)}")
    if as_json:
        click.echo(json.dumps([{"name": i.name, "family": i.family, "paper": i.paper, "description": i.description,
                                "default_input_shape": list(i.default_input_shape), "backbone": i.backbone,
                                "weights": accepted_weights(i.backbone),
                                "params": {k: list(v) if isinstance(v, tuple) else v for k, v in i.params.items()}}
                               for i in infos], indent=2))
        return
    click.echo(registry_table(family))
