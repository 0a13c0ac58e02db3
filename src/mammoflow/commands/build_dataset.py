"""``mammoflow build-dataset``: cut ROIs / whole images / lesion crops, plan patient-grouped splits, write shards."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mammoflow.config import preset_names


@click.command(name="build-dataset")
@click.option("--records", "records_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Records folder written by `mammoflow ingest` or `mammoflow preprocess`.")
@click.option("--config", "config", required=True, metavar="NAME_OR_YAML",
              help=f"Dataset preset ({', '.join(preset_names('dataset')) or 'none'}) or a YAML file.")
@click.option("--out", "out_uri", required=True, metavar="URI",
              help="Output folder or gs://bucket/prefix: shards, split_plan.json, quarantine.jsonl, manifest.json.")
@click.option("--export-png", "export_png", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write every example as split/class/example_id.png plus contact_sheet.png, to look at.")
def command(records_dir: Path, config: str, out_uri: str, export_png: Path | None) -> None:
    """Build a sharded dataset from a records folder.

    Examples are cut as the config says (Yu et al. 120x120 lesion and normal ROIs, Jaamour et al. whole images,
    Xi et al. lesion crops), splits are planned by patient and checked for leakage before anything is built, and
    the manifest is written last. Re-running with the same inputs resumes and gives the same manifest.
    """
    from mammoflow.dataset.build import build_dataset

    result = build_dataset(records_dir, config, out_uri, export_png=export_png)
    m = result.manifest
    click.echo(json.dumps({"out": out_uri, "counts": m["counts"], "examples": m["examples"],
                           "quarantined": m["inputs"]["records_quarantined"],
                           "moved_patients": m["split_plan"]["moved_patients"]}, sort_keys=True))
