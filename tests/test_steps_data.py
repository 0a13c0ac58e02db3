"""The data steps (mammoflow.steps.data) as the CLI verbs and the components both use them: config references
resolved in one place (preset, local YAML, gs:// YAML; a gs:// preprocess config used to be read as a local path),
demo data of either format written to object storage, and a step that leaves nothing usable carrying its counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mammoflow import steps, storage
from mammoflow.cli import cli
from mammoflow.config import dump_yaml, preset_names, resolve_config, resolve_ref
from mammoflow.errors import ConfigError, InputError
from mammoflow.records import RecordsTable

pytest_plugins = ["tests.gcs_emulator"]  # the gcs_bucket fixture

#: A preprocess chain that no preset is: the minimal preset with another output type.
SITE_CHAIN = {**resolve_config("minimal", "preprocess"), "output_dtype": "uint16"}


def test_resolve_ref_keeps_presets_and_local_paths_and_refuses_the_rest(tmp_path: Path) -> None:
    for kind in ("preprocess", "dataset", "train", "sweep"):
        name = preset_names(kind)[0]
        assert resolve_ref(name, kind) == name
    local = tmp_path / "mine.yaml"
    local.write_text("a: 1\n")
    assert resolve_ref(str(local), "dataset") == str(local)
    assert resolve_ref(f"file://{local}", "dataset") == str(local)
    assert resolve_ref(str(tmp_path / "later.yml"), "train") == str(tmp_path / "later.yml")  # load_yaml names it
    with pytest.raises(ConfigError, match="neither a dataset preset nor a YAML file") as err:
        resolve_ref("yu2021", "dataset")
    assert "yu2020" in str(err.value)  # the presets are named


def test_a_config_in_a_bucket_resolves_for_every_kind(gcs_bucket: str, tmp_path: Path) -> None:
    uri = f"{gcs_bucket}/configs/site-chain.yaml"
    storage.put_bytes(uri, dump_yaml(SITE_CHAIN).encode())
    local = Path(resolve_ref(uri, "preprocess", tmp_path / "cache"))
    assert local.name == "site-chain.yaml" and tmp_path / "cache" in local.parents
    assert yaml.safe_load(local.read_text()) == SITE_CHAIN
    assert resolve_config(uri, "preprocess", tmp_path / "cache") == SITE_CHAIN
    train = f"{gcs_bucket}/configs/train.yaml"
    storage.put_bytes(train, b"epochs_hint: 1\n")
    assert resolve_config(train, "train", tmp_path / "cache") == {"epochs_hint": 1}
    with pytest.raises(InputError, match="no object"):
        resolve_ref(f"{gcs_bucket}/configs/absent.yaml", "dataset", tmp_path / "cache")


@pytest.fixture()
def records(tmp_path: Path) -> Path:
    from mammoflow.synth.phantoms import write_mias_dataset

    write_mias_dataset(tmp_path / "raw", n_images=2, seed=7)
    steps.ingest("mias", str(tmp_path / "raw"), tmp_path / "records", salt="s")
    return tmp_path / "records"


def test_a_preprocess_config_in_a_bucket_is_fetched_by_the_step_and_the_cli(records: Path, gcs_bucket: str,
                                                                              tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"{gcs_bucket}/configs/site-chain.yaml"
    storage.put_bytes(uri, dump_yaml(SITE_CHAIN).encode())
    counts = steps.preprocess(records, uri, tmp_path / "pre", cache_dir=tmp_path / "cache")
    assert counts["usable"] == 2 and counts["quarantined_new"] == 0
    written = yaml.safe_load((tmp_path / "pre" / "preprocess_config.yaml").read_text())
    assert written["output_dtype"] == "uint16"
    assert [step["name"] for step in written["steps"]] == [step["name"] for step in SITE_CHAIN["steps"]]
    meta = json.loads((tmp_path / "pre" / "records_meta.json").read_text())
    assert meta["preprocess"]["config"] == "site-chain.yaml"  # named by the file, not by the cache's copy

    monkeypatch.setenv("MAMMOFLOW_CACHE", str(tmp_path / "cli-cache"))
    result = CliRunner().invoke(cli, ["preprocess", "--records", str(records), "--config", uri, "--out",
                                      str(tmp_path / "pre-cli")], catch_exceptions=False)
    assert result.exit_code == 0 and "preprocessed 2" in result.output, result.output
    assert (tmp_path / "pre-cli" / "preprocess_config.yaml").read_bytes() == (
        tmp_path / "pre" / "preprocess_config.yaml").read_bytes()


def test_dicom_demo_data_goes_to_a_bucket_with_its_folders(gcs_bucket: str, tmp_path: Path) -> None:
    uri = f"{gcs_bucket}/raw/demo-cbis"
    summary = steps.demo_data(uri, 2, 5, fmt="dicom", size=(128, 96), cache_dir=tmp_path / "cache")
    assert summary["source"] == "cbis-ddsm" and summary["data_root"] == uri and summary["images"] == 2
    names = [u[len(uri) + 1:] for u in storage.list(uri)]
    assert "ground_truth.json" in names and sum(n.endswith(".dcm") for n in names) >= 2
    assert any(n.count("/") >= 2 and n.endswith(".dcm") for n in names)  # the CBIS-DDSM folder tree kept
    records = steps.ingest(summary["source"], uri, tmp_path / "records", cache_dir=tmp_path / "cache-ingest")
    assert records["used"] >= 2
    assert RecordsTable.read(tmp_path / "records").image_root.startswith(uri)
    with pytest.raises(ConfigError, match="not one of mias, dicom"):
        steps.demo_data(str(tmp_path / "x"), 1, 0, fmt="png")


def test_nothing_usable_carries_the_counts_for_the_verbs_to_show(tmp_path: Path) -> None:
    from mammoflow.synth.phantoms import write_mias_dataset

    write_mias_dataset(tmp_path / "mias", n_images=2, seed=0)
    for pgm in (tmp_path / "mias").glob("*.pgm"):
        pgm.write_bytes(b"P5\n")
    with pytest.raises(steps.NothingUsable) as err:
        steps.ingest("mias", str(tmp_path / "mias"), tmp_path / "records")
    assert err.value.code == "empty" and err.value.path == str(tmp_path / "records" / "quarantine.md")
    assert (err.value.summary["read"], err.value.summary["used"], err.value.summary["quarantined"]) == (2, 0, 2)
    assert err.value.summary["quarantined_by_code"] == {"truncated": 2}


def test_build_dataset_writes_where_told_or_content_addressed(phantom_dataset: Path, tmp_path: Path) -> None:
    pre = phantom_dataset.parent / "pre"
    told = steps.build_dataset(pre, "yu2020", out=str(tmp_path / "here"))
    assert told.out_uri == str(tmp_path / "here") and (tmp_path / "here" / "manifest.json").is_file()
    addressed = steps.build_dataset(pre, "yu2020", storage_root=str(tmp_path / "store"))
    assert addressed.out_uri == steps.dataset_uri(str(tmp_path / "store"), pre, "yu2020")
    assert (Path(addressed.out_uri) / "manifest.json").read_bytes() == (tmp_path / "here" / "manifest.json"
                                                                        ).read_bytes()
