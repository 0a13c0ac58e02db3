"""``mammoflow ingest``: read one dataset into a records folder (records + quarantine + summary)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from mammoflow.errors import InputError

log = logging.getLogger(__name__)

EXIT_NOTHING_USABLE = 1
EXIT_STRICT = 3
SOURCE_NAMES = ("mias", "mias-rois", "cbis-ddsm", "dicom-dir")

_EPILOG = """\b
Examples:
  mammoflow ingest --source mias --root data/mias --out runs/records/mias
  mammoflow ingest --source mias --info data/mias/Info.txt --metadata-only --out runs/records/mias-meta
  mammoflow ingest --source mias-rois --root data/mias_rois/MIAS_ROIs.zip --out runs/records/yu
  mammoflow ingest --source cbis-ddsm --root /data/CBIS-DDSM --csv calc_case_description_train_set.csv \\
      --csv mass_case_description_train_set.csv --out runs/records/cbis
  mammoflow ingest --source dicom-dir --root /site/dicoms --labels labels.csv --salt "$SITE_SALT" --out runs/site
  mammoflow ingest --source dicom-dir --root /site/dicoms --out runs/site   # reads /site/dicoms/labels.csv
  mammoflow ingest --source dicom-dir --root /export/by-patient --pseudonymise-paths --salt "$SITE_SALT" \\
      --out runs/site

\b
Exit status: 0 when at least one record is usable; 1 when nothing usable is left (or the input
cannot be read at all); 3 with --strict when anything was quarantined. Whenever the input can
be read, the records folder is written, so quarantine.md says what went wrong and how to fix it."""


@click.command(epilog=_EPILOG)
@click.option("--source", "source", required=True, type=click.Choice(SOURCE_NAMES),
              help="Dataset kind: mias (Info.txt + mdbNNN.pgm), mias-rois (Yu et al.'s MIAS_ROIs.zip), "
                   "cbis-ddsm (official CSVs + TCIA DICOM download), dicom-dir (any folder of DICOM files).")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="The images: a folder, or MIAS_ROIs.zip for mias-rois. Optional with --metadata-only "
                   "for mias (--info) and cbis-ddsm (--csv).")
@click.option("--info", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="mias: the Info.txt annotation file (default: ROOT/Info.txt).")
@click.option("--csv", "csvs", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="cbis-ddsm: an official *_case_description_*_set.csv (repeat for several; default: the "
                   "ones found in ROOT).")
@click.option("--labels", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="dicom-dir: CSV with columns path,label[,patient_id,laterality,view]; paths relative to ROOT. "
                   "Images without a row are kept unlabelled. Default: ROOT/labels.csv when it exists (said in "
                   "the log and in records_meta.json). Other sources take no labels CSV.")
@click.option("--metadata-only", is_flag=True,
              help="Read the annotations without the images (split planning; mias and cbis-ddsm need no "
                   "--root then). Every annotation line/row is still accounted for.")
@click.option("--salt", default=None, metavar="S",
              help="Secret salt for pseudonymous patient ids (default: $MAMMOFLOW_SALT). Required for dicom-dir "
                   "(ids from DICOM headers), except on the built-in phantoms (a public demo salt, said in "
                   "records_meta.json); mias, mias-rois and cbis-ddsm ids are public already. Keep it: a new salt "
                   "gives new ids.")
@click.option("--any-modality", is_flag=True,
              help="dicom-dir: accept DICOM files of any modality (default: mammography, MG, only).")
@click.option("--pseudonymise-paths", is_flag=True,
              help="dicom-dir: record ids (which name every output: preprocessed images, predictions, CAMs) are "
                   "salted pseudonyms of the file paths instead of the paths, for exports foldered by patient "
                   "name (DOE^JANE/...). The real paths stay in the records folder only (records.jsonl, "
                   "quarantine), to read and fix the files. Use the same --salt on every run: ids stay stable.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="cbis-ddsm, dicom-dir: processes reading the images (one image per process at a time). Default: "
                   "every CPU this process may use (the container's limit), one per 4 images at most. The "
                   "records are the same for any number.")
@click.option("--strict", is_flag=True, help="Exit with status 3 if anything was quarantined.")
@click.option("--incremental", "previous", type=click.Path(path_type=Path, file_okay=False), default=None,
              metavar="PREVIOUS_DIR",
              help="Read only what changed since records folder PREVIOUS_DIR: unchanged files are not opened, new "
                   "records join its split plan (no patient moves); writes ingest_delta.json and says 'nothing "
                   "new' explicitly.")
@click.option("--freeze-test", is_flag=True, help="With --incremental: new patients go to train/val only.")
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Records folder to write (records.jsonl, quarantine.jsonl/.md, skipped.jsonl, "
                   "ingest_summary.json); built beside as OUT.tmp-<pid> and swapped in when complete. Not inside "
                   "--root; an existing folder must be a records folder.")
def command(source: str, root: Path | None, info: Path | None, csvs: tuple[Path, ...], labels: Path | None,
            metadata_only: bool, salt: str | None, any_modality: bool, pseudonymise_paths: bool, workers: int | None,
            strict: bool, previous: Path | None, freeze_test: bool, out: Path) -> None:
    """Read a dataset into a records folder: one record per usable image, the rest quarantined.

    Every bad input (missing, truncated or corrupt image, RGB, wrong bit depth or modality, annotation
    outside the image, negative radius, duplicate id, unknown label) is quarantined with the problem
    and the fix, and ingestion goes on: read = used + quarantined + skipped (hidden files, sidecars and
    the like are listed in skipped.jsonl with the reason). Patient ids are pseudonymous; no DICOM
    identifier is written anywhere.
    """
    from mammoflow import steps

    if pseudonymise_paths and source != "dicom-dir":  # a usage error: these flags do not go together
        raise click.UsageError(f"--pseudonymise-paths is for --source dicom-dir; {source} ids are the dataset's "
                               "own public ids")
    if previous is not None and metadata_only:
        raise click.UsageError("--incremental cannot be combined with --metadata-only")
    # --labels is taken from the current folder (the step takes a relative one under the data root)
    given = {"labels": str(labels.absolute()) if labels else "", "info": info, "csvs": csvs, "salt": salt, "any_modality": any_modality,
             "pseudonymise_paths": pseudonymise_paths, "workers": workers}
    try:
        if previous is not None:
            d = steps.ingest_incremental(source, root, previous, out, freeze_test=freeze_test, **given)
            click.echo(f"ingest {source}: nothing new -> {out}" if d.nothing_new else
                       f"ingest {source}: {d.new_records} new, {d.changed_records} changed, {d.removed_records} "
                       f"removed, {d.quarantined_new} quarantined -> {out}")
            return
        summary = steps.ingest(source, root, out, metadata_only=metadata_only, **given)
    except steps.NothingUsable as err:
        click.echo(summary_line(source, err.summary, out))
        log.error("%s", err)
        raise click.exceptions.Exit(EXIT_NOTHING_USABLE) from None
    except InputError as err:  # the input cannot be read at all (a missing Info.txt, a malformed CSV, ...)
        raise click.ClickException(str(err)) from None
    click.echo(summary_line(source, summary, out))
    if strict and summary["quarantined"]:
        log.error("--strict: %d input(s) quarantined, see %s", summary["quarantined"], out / "quarantine.md")
        raise click.exceptions.Exit(EXIT_STRICT)


def summary_line(source: str, summary: dict, out: Path) -> str:
    """The one line ingest prints: read = used + quarantined + skipped, with the counts by code and reason."""
    codes = ", ".join(f"{code} {n}" for code, n in summary["quarantined_by_code"].items())
    skipped = ", ".join(f"{reason} {n}" for reason, n in summary.get("skipped_by_reason", {}).items())
    return (f"ingest {source}: read {summary['read']}, used {summary['used']}, quarantined {summary['quarantined']}"
            f"{f' ({codes})' if codes else ''}, skipped {summary.get('skipped', 0)}{f' ({skipped})' if skipped else ''}"
            f" -> {out}")
