"""``mammoflow weights``: the named pretrained weights (list) and their self-checks (check NAME)."""

from __future__ import annotations

import json
from dataclasses import asdict

import click


def _installed(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def catalogue_text() -> str:
    """One block per named weights: architecture, source package and version, licence, sha256, training data,
    and the registered models that accept them."""
    from mammoflow.models import list_models
    from mammoflow.models.pretrained import CATALOGUE

    blocks = []
    for entry in CATALOGUE.values():
        models = [i.name for i in list_models() if i.backbone in entry.backbones]
        source = entry.package if entry.version == "-" else f"{entry.package} {entry.version}"
        if entry.file:
            source += f" (installed: {_installed(entry.package)}), file {entry.file}"
        blocks.append("\n".join([
            entry.name,
            f"  architecture:  {entry.architecture}",
            f"  source:        {source}",
            f"  licence:       {entry.licence}",
            f"  sha256:        {entry.sha256}",
            f"  trained on:    {entry.trained_on}",
            f"  input scaling: {entry.preprocessing}",
            f"  models:        {', '.join(models)}",
        ]))
    return "\n\n".join(blocks)


@click.group(name="weights")
def command() -> None:
    """Named pretrained weights: where each comes from, what it was trained on, and a self-check.

    \b
    Examples:
      mammoflow weights list
      mammoflow weights check torchvision-imagenet
      mammoflow weights check hed-bsds500
    """


@command.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue as JSON.")
def list_weights(as_json: bool) -> None:
    """Print every named weights: architecture, source package and version, licence, sha256, trained on."""
    from mammoflow.models.pretrained import CATALOGUE

    if as_json:
        click.echo(json.dumps([{**asdict(e), "backbones": list(e.backbones)} for e in CATALOGUE.values()], indent=2))
        return
    click.echo(catalogue_text())


@command.command(name="check")
@click.argument("name")
def check(name: str) -> None:
    """Self-check weights NAME (ImageNet classifiers: top-5 classes of scikit-learn's two sample photographs;
    hed-bsds500: sha256 and every VGG16 conv layer assigned). Exit 1 when the check fails."""
    from mammoflow.models import weights_check
    from mammoflow.models.pretrained import CATALOGUE

    if name not in CATALOGUE:
        raise click.BadParameter(f"{name!r} is not one of {', '.join(CATALOGUE)}", param_hint="NAME")
    result = weights_check.check(name)
    click.echo(f"{name}: {'ok' if result.ok else 'FAILED'}")
    for line in result.lines:
        click.echo(f"  {line}")
    if not result.ok:
        raise click.exceptions.Exit(1)
