"""``mammoflow train``: one training run from one config."""

from __future__ import annotations

import click
import yaml

from mammoflow.commands._outputs import check_out

EXIT_PREEMPTED = 143  # 128 + SIGTERM: what a job scheduler expects of a process it asked to stop


def parse_overrides(items: tuple[str, ...]) -> dict[str, object]:
    """``--set model.name=vgg16_fusion1 --set seed=3`` -> dotted overrides (values parsed as YAML scalars)."""
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE, e.g. model.name=vgg16_fusion1", param_hint="--set")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


_EPILOG = """\b
Examples:
  mammoflow train --config demo --data data --out run   # re-run the same command to resume
  mammoflow train --config demo --data data --out run-quick --set schedule.steps_per_epoch=5   # a smoke test
  mammoflow train --config yu2020 --data runs/datasets/yu --out runs/yu/vgg19-fusion2 \\
      --set model.name=vgg19_fusion2 --set 'model.params.branches=[3,4,5]'
  mammoflow train --config run/config.yaml --data data --out run-again   # the config a run saved
  mammoflow train --config xi2018 --data runs/datasets/xi --out runs/xi/fold0 --set data.fold=0
  mammoflow train --config demo --data gs://BUCKET/mammoflow/datasets/demo --out gs://BUCKET/mammoflow/runs/demo

\b
The run folder holds config.yaml (the resolved config), checkpoints, history, metrics.json and
model.keras; evaluate, explain, predict and report take it as --model / --run."""


@click.command("train", epilog=_EPILOG)
@click.option("--config", "config_ref", required=True,
              help="Preset name (yu2020, jaamour2023, xi2018, demo, ...) or a YAML path.")
@click.option("--data", "data_uri", required=True, help="Dataset folder or gs:// prefix holding manifest.json.")
@click.option("--out", "out_uri", required=True, help="Run folder (local path or gs://). Re-running resumes it.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (repeatable).")
@click.option("--cache-dir", default=None, help="Local cache for shards and remote run folders.")
def command(config_ref: str, data_uri: str, out_uri: str, overrides: tuple[str, ...], cache_dir: str | None) -> None:
    """Train a registered model on a dataset's shards; checkpoints every epoch and resumes when re-run."""
    from mammoflow import steps
    from mammoflow.training.loop import Preempted

    check_out(out_uri)
    try:
        result = steps.train(config_ref, data_uri, out_uri, overrides=parse_overrides(overrides), cache_dir=cache_dir)
    except Preempted as exc:
        click.echo(str(exc), err=True)
        raise click.exceptions.Exit(EXIT_PREEMPTED) from None
    click.echo(f"trained {result.model}: best epoch {result.best_epoch}, val loss {result.best_val_loss:.4f} "
               f"-> {out_uri}")
