"""``mammoflow build-dataset``: cut ROIs / whole images / lesion crops, plan patient-grouped splits, write shards."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mammoflow.commands._outputs import check_out
from mammoflow.config import preset_names

_EPILOG = """\b
Examples:
  mammoflow demo-data --out raw --n-images 48 --seed 1 --format mias
  mammoflow ingest --source mias --root raw --out records
  mammoflow preprocess --records records --config yu2020 --out pre
  mammoflow build-dataset --records pre --config yu2020 --out data --export-png rois
  mammoflow build-dataset --records pre --config yu2020 --out data   # again: same plan, shards unchanged
  mammoflow build-dataset --records pre --config yu2020 --out gs://BUCKET/mammoflow/datasets/demo
  mammoflow ingest --source mias-rois --root data/mias_rois/MIAS_ROIs.zip --out runs/records/yu
  mammoflow build-dataset --records runs/records/yu --config yu2020 --out runs/datasets/yu   # released split kept

\b
OUT gets split_plan.json, split_summary.md, dataset_config.yaml, the shards, quarantine.jsonl and
manifest.json (written last). An OUT holding a dataset built from other records or another split config is refused."""


@click.command(name="build-dataset", epilog=_EPILOG)
@click.option("--records", "records_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Records folder written by `mammoflow ingest` or `mammoflow preprocess`.")
@click.option("--config", "config", required=True, metavar="NAME_OR_YAML",
              help=f"Dataset preset ({', '.join(preset_names('dataset')) or 'none'}), a YAML file or its gs:// URI.")
@click.option("--out", "out_uri", required=True, metavar="URI",
              help="Output folder or gs://bucket/prefix: shards, split_plan.json, quarantine.jsonl, manifest.json.")
@click.option("--export-png", "export_png", type=click.Path(path_type=Path), default=None,
              help="Also write every example as split/class/example_id.png plus contact_sheet.png, to look at.")
def command(records_dir: Path, config: str, out_uri: str, export_png: Path | None) -> None:
    """Build a sharded dataset from a records folder.

    Examples are cut as the config says (Yu et al. 120x120 lesion and normal ROIs, Jaamour et al. whole images,
    Xi et al. lesion crops), splits are planned by patient and checked for leakage before anything is built, and
    the manifest is written last. Re-running with the same inputs resumes and gives the same manifest.
    """
    from mammoflow import steps

    check_out(out_uri)  # a local folder, new or existing, that can be written (gs:// is not probed)
    check_out(export_png, "--export-png")
    result = steps.build_dataset(records_dir, config, out=out_uri, export_png=export_png)
    m = result.manifest
    click.echo(json.dumps({"out": out_uri, "counts": m["counts"], "examples": m["examples"],
                           "quarantined": m["inputs"]["records_quarantined"],
                           "moved_patients": m["split_plan"]["moved_patients"]}, sort_keys=True))
