"""A hospital's labelled DICOM folder through the pipelines' data steps: the labels CSV given by the ``labels``
parameter (relative to data_root, a full path or a gs:// URI) or found as ``data_root/labels.csv``, carried into the
records by a real kfp.local run of the ingest path; the retraining's incremental ingest reads it too; a labels CSV
for a source that takes none is refused."""

# No `from __future__ import annotations`: the test's pipeline is defined here, and KFP reads live annotations.
import csv
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mammoflow import steps, storage
from mammoflow.cli import cli
from mammoflow.errors import ConfigError, InputError
from mammoflow.pipelines.local import LocalRunError, run_local
from mammoflow.records import RecordsTable

pytest_plugins = ["tests.gcs_emulator"]  # the gcs_bucket fixture

SALT = "hospital-secret"


def hospital_folder(root: Path, n_images: int = 6, seed: int = 0) -> dict[str, str]:
    """A site's DICOM folder as a hospital exports it: the full mammograms of the project's CBIS-like DICOM
    phantoms (tiny) as ``<patient>/<side>_<view>.dcm``, and nothing else. Returns path -> the phantom's true label
    (malignant when any lesion is, else benign)."""
    from mammoflow.synth.phantoms import write_dicom_dataset

    download = root.parent / f"{root.name}-download"
    truth = write_dicom_dataset(download, n_images=n_images, seed=seed, size=(128, 96))
    labels = {}
    for image in truth["images"]:
        rel = f"{image['patient_id']}/{image['laterality']}_{image['view']}_{image['split']}.dcm"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(download / image["file"], root / rel)
        pathologies = {lesion["pathology"] for lesion in image["lesions"]}
        labels[rel] = "malignant" if "MALIGNANT" in pathologies else "benign"
    return labels


def write_labels(path: Path, labels: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(sorted(labels.items()))
    return path


def labels_of(records_dir: Path) -> dict[str, str | None]:
    return {r.image_path: r.label for r in RecordsTable.read(records_dir).records}


def ingest_pipeline() -> Any:
    """The pipelines' own ingest path (data source ``dsl.If`` -> ingest, :func:`add_ingest_steps`) with the shared
    data parameters, as a pipeline of its own that returns the records."""
    from kfp import dsl

    from mammoflow.pipelines.data import DataParameters, add_ingest_steps
    from mammoflow.pipelines.options import PipelineOptions
    from mammoflow.pipelines.signature import takes

    options = PipelineOptions.from_env(retries=False)
    ops = options.components()

    @dsl.pipeline(name="ingest-path")
    @takes(DataParameters)
    def ingest_path(data: DataParameters) -> dsl.Dataset:
        _, ingest = add_ingest_steps(ops, options, data)
        return ingest.outputs["records"]

    return ingest_path


def run_ingest_path(root: Path, **params: Any) -> Path:
    """Run :func:`ingest_pipeline` with kfp.local under ``root``; the records folder."""
    from kfp import local

    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "kfp"), raise_on_error=True)
    with warnings.catch_warnings():  # kfp.local: cluster settings have no effect here (as in pipelines/local.py)
        warnings.filterwarnings("ignore", message=".*(non-Python base image|no effect in the current local runner)")
        task = ingest_pipeline()(storage_root=str(root / "store"), **params)
    return Path(task.output.path)


def test_the_ingest_path_of_the_pipelines_carries_a_hospitals_labels(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMOFLOW_SALT", SALT)
    site = tmp_path / "site"
    truth = hospital_folder(site)
    # Labels given as a path relative to data_root; one image left out stays unlabelled.
    unlabelled = sorted(truth)[0]
    write_labels(site / "meta" / "site-labels.csv", {k: v for k, v in truth.items() if k != unlabelled})
    records = run_ingest_path(tmp_path / "given", source="dicom-dir", data_root=str(site),
                              labels="meta/site-labels.csv")
    assert labels_of(records) == {**truth, unlabelled: None}
    meta = json.loads((records / "records_meta.json").read_text())
    assert meta["ingest"]["labels_csv"] == str(site / "meta" / "site-labels.csv")
    assert meta["labels_file"] == "site-labels.csv" and meta["labels_found_in_root"] is False
    steps = {p.name for p in next((tmp_path / "given" / "kfp").iterdir()).iterdir()}
    assert steps == {"locate-data", "ingest"}

    # No labels parameter: the folder's own labels.csv is read, and the records say so.
    write_labels(site / "labels.csv", truth)
    records = run_ingest_path(tmp_path / "found", source="dicom-dir", data_root=str(site))
    assert labels_of(records) == truth
    meta = json.loads((records / "records_meta.json").read_text())
    assert meta["labels_found_in_root"] is True and meta["ingest"]["labels_csv"] == str(site / "labels.csv")


def test_labels_in_a_bucket_are_fetched_and_named_by_their_uri(tmp_path: Path, gcs_bucket: str) -> None:
    site = tmp_path / "site"
    truth = hospital_folder(site, n_images=4, seed=1)
    data_root = f"{gcs_bucket}/raw/site"
    steps.publish_tree(site, data_root)
    csv_uri = f"{gcs_bucket}/labels/site.csv"
    rows = {**truth, "gone/x.dcm": "benign"}  # a row naming no image: quarantined, named by the URI
    storage.put_file(write_labels(tmp_path / "site.csv", rows), csv_uri)

    out = tmp_path / "records"
    summary = steps.ingest("dicom-dir", data_root, out, labels=csv_uri, salt=SALT, cache_dir=tmp_path / "cache")
    assert summary["used"] == len(truth) and summary["labels_csv"] == csv_uri
    assert labels_of(out) == truth
    table = RecordsTable.read(out)
    assert table.image_root == data_root and table.meta["ingest"]["labels_csv"] == csv_uri
    (missing,) = table.quarantine
    assert (missing.code, missing.path, missing.record_id) == ("missing_file", csv_uri, "dicom-dir:gone/x.dcm")

    # A CSV inside a remote data_root, given relative to it, is read from the copy already fetched.
    storage.put_file(tmp_path / "site.csv", f"{data_root}/meta/labels.csv")
    again = steps.ingest("dicom-dir", data_root, tmp_path / "again", labels="meta/labels.csv", salt=SALT,
                            cache_dir=tmp_path / "cache")
    assert again["labels_csv"] == f"{data_root}/meta/labels.csv" and labels_of(tmp_path / "again") == truth


def test_where_a_labels_csv_is() -> None:
    assert steps.labels_uri("gs://b/site", "") == ""
    assert steps.labels_uri("gs://b/site", "labels.csv") == "gs://b/site/labels.csv"
    assert steps.labels_uri("/data/site", "meta/l.csv") == "/data/site/meta/l.csv"
    assert steps.labels_uri("gs://b/site", "/data/l.csv") == "/data/l.csv"
    assert steps.labels_uri("/data/site", "gs://b/l.csv") == "gs://b/l.csv"


def test_a_missing_labels_csv_is_named_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    with pytest.raises(InputError, match=r"site/lbl\.csv: labels CSV not found\. Fix: pass labels as a path "
                       r"relative to data_root"):
        steps.locate_labels("dicom-dir", str(tmp_path / "site"), "lbl.csv")
    assert steps.locate_labels("dicom-dir", str(tmp_path / "site"), "") == ""


def test_labels_for_a_source_that_takes_none_are_refused(tmp_path: Path) -> None:
    from mammoflow.synth.phantoms import write_mias_dataset

    write_mias_dataset(tmp_path / "mias", n_images=2, seed=0, size=256)
    write_labels(tmp_path / "labels.csv", {"mdb001.pgm": "benign"})
    refused = r"a labels CSV \(.*labels\.csv\) was given for source 'mias'.*only dicom-dir reads labels"
    with pytest.raises(ConfigError, match=refused):
        steps.ingest("mias", str(tmp_path / "mias"), tmp_path / "records", labels=str(tmp_path / "labels.csv"))
    assert not (tmp_path / "records").exists()
    with pytest.raises(ConfigError, match=refused):
        steps.locate_labels("mias", str(tmp_path / "mias"), str(tmp_path / "labels.csv"))

    # The CLI says the same, before reading anything.
    result = CliRunner().invoke(cli, ["ingest", "--source", "mias", "--root", str(tmp_path / "mias"), "--labels",
                                      str(tmp_path / "labels.csv"), "--out", str(tmp_path / "cli")])
    assert isinstance(result.exception, ConfigError) and not (tmp_path / "cli").exists()

    # A pipeline run stops at its first step, naming the cause.
    root = tmp_path / "run"
    with pytest.raises(LocalRunError, match=r"'locate-data'.*Cause: ConfigError: a labels CSV"):
        run_local("training", root, {"source": "mias", "data_root": str(tmp_path / "mias"),
                                     "labels": str(tmp_path / "labels.csv")})
    assert not list(root.glob("kfp/*/ingest"))


def test_the_retraining_reads_the_folders_labels_incrementally(tmp_path: Path) -> None:
    """The retrain pipeline's ingest (incremental, on a view of the folder) with the labels.csv convention: new
    images are read with their labels, carried ones keep theirs, and nothing is quarantined for the images the
    view leaves out."""
    from mammoflow.retrain.ingest import incremental_ingest
    from mammoflow.sources import SourceOptions

    site = tmp_path / "site"
    truth = hospital_folder(site, n_images=6, seed=2)
    later = sorted(truth)[-2:]
    for rel in later:  # these arrive the next night
        (site / rel).rename(tmp_path / Path(rel).name)
    write_labels(site / "labels.csv", {k: v for k, v in truth.items() if k not in later})
    opts = SourceOptions(root=site, salt=SALT)
    first = incremental_ingest("dicom-dir", opts, None, tmp_path / "r1")
    assert first.new_records == len(truth) - 2 and first.quarantined_total == 0
    assert labels_of(tmp_path / "r1") == {k: v for k, v in truth.items() if k not in later}

    for rel in later:
        (tmp_path / Path(rel).name).rename(site / rel)
    write_labels(site / "labels.csv", truth)
    second = incremental_ingest("dicom-dir", opts, tmp_path / "r1", tmp_path / "r2")
    assert (second.new_records, second.carried_records, second.quarantined_total) == (2, len(truth) - 2, 0)
    assert labels_of(tmp_path / "r2") == truth


def test_the_site_dataset_preset_plans_a_patient_grouped_split(tmp_path: Path) -> None:
    """A site folder has no official split: the ``site`` dataset preset plans 60/20/20 by patient, so evaluation
    finds a test split and no patient's images sit in two splits."""
    from mammoflow.dataset.build import build_dataset
    from mammoflow.preprocess.run import preprocess_records

    site = tmp_path / "site"
    truth = hospital_folder(site, n_images=24, seed=3)
    write_labels(site / "labels.csv", truth)
    steps.ingest("dicom-dir", str(site), tmp_path / "records", salt=SALT)
    preprocess_records(tmp_path / "records", "jaamour2023", tmp_path / "pre")
    build_dataset(tmp_path / "pre", "site", str(tmp_path / "data"))
    plan = json.loads((tmp_path / "data" / "split_plan.json").read_text())
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert {"train", "val", "test"} <= set(manifest["splits"])
    patients = {}
    for record in RecordsTable.read(tmp_path / "pre").records:
        patients.setdefault(record.patient_id, set()).add(plan["assignments"][record.record_id])
    assert len(patients) > 3 and all(len(splits) == 1 for splits in patients.values()), patients
    assert set().union(*patients.values()) == {"train", "val", "test"}


def test_pseudonymised_paths_keep_a_patients_folder_name_out_of_record_ids(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A site export foldered by patient name: with pseudonymise_paths the pipelines' ingest path gives record ids
    that are salted pseudonyms, stable between runs; other sources refuse the option."""
    monkeypatch.setenv("MAMMOFLOW_SALT", SALT)
    export = tmp_path / "export"
    truth = hospital_folder(tmp_path / "plain", n_images=4, seed=2)
    for rel in truth:  # P_00001/L_CC.dcm -> DOE^JANE_P_00001/L_CC.dcm, as a PACS export names folders
        dest = export / f"DOE^JANE_{rel}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "plain" / rel, dest)
    write_labels(export / "labels.csv", {f"DOE^JANE_{rel}": label for rel, label in truth.items()})
    first = run_ingest_path(tmp_path / "a", source="dicom-dir", data_root=str(export), pseudonymise_paths=True)
    ids = [r.record_id for r in RecordsTable.read(first).records]
    assert len(ids) == len(truth) and all(i.startswith("dicom-dir:img-") and "DOE" not in i for i in ids)
    assert sorted(labels_of(first).values(), key=str) == sorted(truth.values())
    again = run_ingest_path(tmp_path / "b", source="dicom-dir", data_root=str(export), pseudonymise_paths=True)
    assert sorted(r.record_id for r in RecordsTable.read(again).records) == sorted(ids)
    with pytest.raises(ConfigError, match="pseudonymise_paths"):
        steps.ingest("mias", str(export), tmp_path / "c", pseudonymise_paths=True)
