"""The pipeline steps as plain functions (mammoflow.steps): remote inputs, portable records, content-addressed
datasets, the choice of images to explain, and the checks that fail before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mammoflow import steps, storage
from mammoflow.errors import ConfigError, InputError
from mammoflow.records import Lesion, Record, RecordsTable

pytest_plugins = ["tests.gcs_emulator"]  # the gcs_bucket fixture


def write_tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 40)


def test_publish_and_fetch_a_folder_and_a_file(gcs_bucket: str, tmp_path: Path) -> None:
    write_tree(tmp_path / "src")
    written = steps.publish_tree(tmp_path / "src", f"{gcs_bucket}/data")
    assert written == [f"{gcs_bucket}/data/a.txt", f"{gcs_bucket}/data/sub/b.bin"]
    local = steps.fetch_tree(f"{gcs_bucket}/data", tmp_path / "cache")
    assert local.name == "data" and (local / "a.txt").read_text() == "alpha"
    assert (local / "sub" / "b.bin").read_bytes() == (tmp_path / "src" / "sub" / "b.bin").read_bytes()
    # A second fetch (a retried step) keeps what is already there.
    stamp = (local / "sub" / "b.bin").stat().st_mtime_ns
    assert steps.fetch_tree(f"{gcs_bucket}/data", tmp_path / "cache") == local
    assert (local / "sub" / "b.bin").stat().st_mtime_ns == stamp
    single = steps.fetch_tree(f"{gcs_bucket}/data/a.txt", tmp_path / "cache")
    assert single.is_file() and single.name == "a.txt" and single.read_text() == "alpha"
    with pytest.raises(InputError, match="no object"):
        steps.fetch_tree(f"{gcs_bucket}/nothing", tmp_path / "cache")


def test_local_inputs_are_used_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    assert steps.fetch_tree("src") == tmp_path / "src"
    with pytest.raises(InputError, match="not found"):
        steps.fetch_tree("absent")


def test_remote_phantoms_ingest_to_portable_records(gcs_bucket: str, tmp_path: Path) -> None:
    uri = steps.phantoms_uri(f"{gcs_bucket}/mf", 4, seed=5)
    assert uri == f"{gcs_bucket}/mf/raw/phantoms-n4-s5"
    summary = steps.demo_data(uri, 4, 5, cache_dir=tmp_path / "cache")
    assert summary["source"] == "mias" and summary["data_root"] == uri and summary["images"] == 4
    assert storage.exists(f"{uri}/ground_truth.json") and storage.exists(f"{uri}/mdb004.pgm")

    records = tmp_path / "records"
    ingest = steps.ingest("mias", uri, records, cache_dir=tmp_path / "cache-ingest")
    assert ingest["used"] == 4
    # What the next pod sees: records whose images are named by their URI, not by this pod's cache.
    meta = json.loads((records / "records_meta.json").read_text())
    assert meta["image_root"] == uri and meta["ingest"]["data_root"] == uri
    local = steps.localise_records(records, tmp_path / "cache-preprocess")
    table = RecordsTable.read(local)
    assert Path(table.image_root).is_dir() and len(table.records) == 4
    assert all(table.image_path(r, local).is_file() for r in table.records)
    out = steps.preprocess(records, "minimal", tmp_path / "pre", cache_dir=tmp_path / "cache-preprocess")
    assert out["usable"] == 4 and len(list((tmp_path / "pre" / "images").iterdir())) == 4
    # Local records are left alone.
    assert steps.localise_records(tmp_path / "pre") == tmp_path / "pre"


def test_dataset_uri_is_content_addressed(tmp_path: Path) -> None:
    for name, label in (("a", "normal"), ("b", "tumour")):
        rec = Record(record_id=f"x:{name}", source="x", patient_id="p", image_path="i.png", label=label)
        RecordsTable(records=[rec]).write(tmp_path / name)
    a1 = steps.dataset_uri("gs://b/root", tmp_path / "a", "yu2020")
    assert a1.startswith("gs://b/root/datasets/yu2020-") and len(a1.rsplit("-", 1)[1]) == 16
    assert steps.dataset_uri("gs://b/root", tmp_path / "a", "yu2020") == a1
    assert steps.dataset_uri("gs://b/root", tmp_path / "b", "yu2020") != a1
    assert steps.dataset_uri("gs://b/root", tmp_path / "a", "xi2018").startswith("gs://b/root/datasets/xi2018-")
    with pytest.raises(ConfigError, match="storage_root is empty"):
        steps.dataset_uri("", tmp_path / "a", "yu2020")


def test_run_folders_are_stable_per_pipeline_run() -> None:
    assert steps.run_uri("gs://b/r", "6f1c-22") == "gs://b/r/runs/6f1c-22/train"
    assert steps.sweep_uri("/data/r", "6f1c-22") == "/data/r/sweeps/6f1c-22"


def test_available_cpus_follows_the_container_limit(tmp_path: Path) -> None:
    import os

    here = len(os.sched_getaffinity(0))
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs -> 2 slots
    assert steps.available_cpus(tmp_path / "v2") == min(here, 2)
    (tmp_path / "v2" / "cpu.max").write_text("max 100000\n")
    assert steps.available_cpus(tmp_path / "v2") == here
    (tmp_path / "v1" / "cpu").mkdir(parents=True)
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "v1" / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert steps.available_cpus(tmp_path / "v1") == 1
    assert steps.available_cpus(tmp_path / "none") == here


def test_preprocessing_choice() -> None:
    assert steps.preprocess_config_for("mias-rois", "yu2020") == "none"  # released already processed
    assert steps.preprocess_config_for("mias", "yu2020") == "yu2020"
    assert steps.preprocess_config_for("cbis-ddsm", "jaamour2023", "auto") == "jaamour2023"
    assert steps.preprocess_config_for("mias-rois", "yu2020", "minimal") == "minimal"


def test_kfp_numbers_become_ints_again() -> None:
    got = steps.plain_numbers({"schedule.steps_per_epoch": 10.0, "lr": 0.5,
                                  "schedule.phases": [{"epochs": 2.0, "learning_rate": 1.0}], "flag": True})
    assert got == {"schedule.steps_per_epoch": 10, "lr": 0.5, "schedule.phases": [{"epochs": 2, "learning_rate": 1}],
                   "flag": True}
    assert isinstance(got["schedule.steps_per_epoch"], int) and got["flag"] is True


def test_records_to_explain_prefers_held_out_lesions(tmp_path: Path) -> None:
    def rec(rid: str, label: str, lesion: bool) -> Record:
        lesions = [Lesion("l0", center_row=10.0, center_col=10.0, radius=4.0)] if lesion else []
        return Record(record_id=rid, source="x", patient_id=rid, image_path=f"{rid}.png", label=label,
                      lesions=lesions)

    records = [rec("train-lesion", "malignant", True), rec("test-normal", "normal", False),
               rec("test-tumour", "tumour", False), rec("test-lesion", "benign", True)]
    RecordsTable(records=records).write(tmp_path / "records")
    data = tmp_path / "dataset"
    data.mkdir()
    split = {"train-lesion": "train", "test-normal": "test", "test-tumour": "test", "test-lesion": "test"}
    (data / "split_plan.json").write_text(json.dumps({"assignments": split}))
    assert steps.records_to_explain(tmp_path / "records", str(data), 3) == [
        "test-lesion", "test-tumour", "test-normal"]
    # Without a split plan: lesions first, in table order.
    assert steps.records_to_explain(tmp_path / "records", None, 2) == ["train-lesion", "test-lesion"]


def test_locate_data_checks_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="source 'miass' is not one of phantoms, mias"):
        steps.locate_data("miass", str(tmp_path))
    with pytest.raises(ConfigError, match="needs data_root"):
        steps.locate_data("mias", "")
    with pytest.raises(InputError, match="not found"):
        steps.locate_data("mias", str(tmp_path / "nope"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mias").mkdir()
    assert steps.locate_data("mias", "mias") == str(tmp_path / "mias")


def test_ingest_of_nothing_usable_names_the_quarantine(tmp_path: Path) -> None:
    from mammoflow.synth.phantoms import write_mias_dataset

    write_mias_dataset(tmp_path / "mias", n_images=2, seed=0)
    for pgm in (tmp_path / "mias").glob("*.pgm"):
        pgm.write_bytes(b"P5\n")  # truncated
    with pytest.raises(InputError, match="quarantine.md.*nothing usable"):
        steps.ingest("mias", str(tmp_path / "mias"), tmp_path / "records")
    lines = (tmp_path / "records" / "quarantine.jsonl").read_text().splitlines()
    assert [json.loads(line)["code"] for line in lines] == ["truncated", "truncated"]


@pytest.mark.realdata
def test_yu_rois_are_ingested_and_kept_as_released(mias_rois_zip: Path, tmp_path: Path) -> None:
    shutil.copy(mias_rois_zip, tmp_path / "MIAS_ROIs.zip")
    summary = steps.ingest("mias-rois", str(tmp_path / "MIAS_ROIs.zip"), tmp_path / "records")
    assert summary["used"] > 300
    config = steps.preprocess_config_for("mias-rois", "yu2020")
    out = steps.preprocess(tmp_path / "records", config, tmp_path / "pre", workers=2)
    assert config == "none" and out["usable"] == summary["used"] and out["quarantined_new"] == 0


def test_an_edited_small_object_is_fetched_again(gcs_bucket: str, tmp_path: Path) -> None:
    """A config edited in the bucket keeps its size ("0.6" -> "0.7"): the cached copy must not be reused."""
    uri = f"{gcs_bucket}/cfg/site.yaml"
    storage.put_bytes(uri, b"ratio: 0.6\n")
    assert steps.fetch_tree(uri, tmp_path / "cache").read_text() == "ratio: 0.6\n"
    storage.put_bytes(uri, b"ratio: 0.7\n")
    assert steps.fetch_tree(uri, tmp_path / "cache").read_text() == "ratio: 0.7\n"


def test_build_dataset_takes_a_dataset_config_by_uri(phantom_dataset: Path, gcs_bucket: str, tmp_path: Path) -> None:
    from mammoflow.config import dump_yaml, resolve_config

    config = resolve_config("yu2020", "dataset")
    config["description"] = "Yu's ROIs, from a dataset YAML in a bucket"
    uri = f"{gcs_bucket}/configs/rois.yaml"
    storage.put_bytes(uri, dump_yaml(config).encode())
    result = steps.build_dataset(phantom_dataset.parent / "pre", uri, storage_root=str(tmp_path / "store"))
    datasets = sorted((tmp_path / "store" / "datasets").iterdir())
    assert [d.name.split("-")[0] for d in datasets] == ["rois"]
    assert (datasets[0] / "manifest.json").exists()
    assert result is not None


def test_a_retried_ingest_step_reads_nothing_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mammoflow import sources
    from mammoflow.synth.phantoms import write_mias_dataset

    write_mias_dataset(tmp_path / "raw", n_images=4, seed=2)
    first = steps.ingest("mias", str(tmp_path / "raw"), tmp_path / "records", salt="s")
    calls: list[str] = []
    real = sources.read_source
    monkeypatch.setattr(sources, "read_source", lambda name, opts: calls.append(name) or real(name, opts))
    again = steps.ingest("mias", str(tmp_path / "raw"), tmp_path / "records", salt="s")
    assert calls == [] and again == first
    steps.ingest("mias", str(tmp_path / "raw"), tmp_path / "records", salt="other")
    assert calls == ["mias"]


def test_a_dataset_ablation_needs_every_dataset_named() -> None:
    """The pipeline builds one dataset; a spec that ablates datasets must not train them all on it."""
    from mammoflow.sweep.spec import load_spec

    assert steps.sweep_datasets(["default"], "gs://b/d") == {"default": "gs://b/d"}
    assert steps.sweep_datasets(["rois"], "gs://b/d") == {"rois": "gs://b/d"}
    names = load_spec("jaamour2023_divide_conquer").datasets
    assert len(names) > 1
    with pytest.raises(ConfigError, match="ablates datasets"):
        steps.sweep_datasets(names, "gs://b/d")
    others = {n: f"gs://b/{n}" for n in names if n != "default"}
    assert steps.sweep_datasets(names, "gs://b/d", others) == {"default": "gs://b/d", **others}
    with pytest.raises(ConfigError, match="not in the sweep spec"):
        steps.sweep_datasets(names, "gs://b/d", {**others, "typo": "gs://b/t"})
