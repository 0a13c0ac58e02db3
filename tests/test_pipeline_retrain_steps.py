"""The retraining pipeline's steps as plain functions (mammoflow.steps, no KFP): the config a step loads, the
state shared by successive runs in object storage and its guarded updates, a watched folder in a bucket ingested
incrementally across pods, and how the exit handler names a run's outcome."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.test_retrain_support import deliver_phantoms, phantom_batch

from mammoflow import steps, storage
from mammoflow.errors import ConfigError

pytest_plugins = ["tests.gcs_emulator"]  # the gcs_bucket fixture

CONFIG: dict[str, Any] = {
    "name": "site-b",
    "source": {"name": "mias", "root": "watched"},
    "train": "demo",
    "train_overrides": {"data.patch_size": 32},
    "blessing": {"first_model": "bless", "rules": [{"metric": "roc_auc", "margin": 0.05}]},
}


def write_config(folder: Path, **over: Any) -> Path:
    path = folder / "retrain.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, **over}))
    return path


# ------------------------------------------------------------------------------------------- storage primitives


def test_create_only_and_version_guarded_writes(tmp_path: Path) -> None:
    uri = str(tmp_path / "a" / "claim.json")
    assert storage.put_bytes_if_absent(uri, b"first")
    assert not storage.put_bytes_if_absent(uri, b"second")  # never overwritten
    assert storage.get_bytes(uri) == b"first"
    assert not list((tmp_path / "a").glob("*.partial"))  # no temporary left behind

    seen = storage.stat(uri)
    assert storage.put_bytes_if_version(uri, b"update", seen)
    assert not storage.put_bytes_if_version(uri, b"stale", seen)  # written since it was read
    assert storage.get_bytes(uri) == b"update"
    new = str(tmp_path / "new.json")
    assert not storage.put_bytes_if_version(new, b"x", seen)  # expected to exist, but absent
    assert storage.put_bytes_if_version(new, b"x", None) and storage.get_bytes(new) == b"x"
    assert not storage.put_bytes_if_version(new, b"y", None)  # expected absent, but there


# ------------------------------------------------------------------------------------------- config and state


def test_a_step_loads_the_config_with_overrides_and_the_pipeline_storage_root(tmp_path: Path) -> None:
    path = write_config(tmp_path, storage_root=str(tmp_path / "from-config"))
    # KFP hands dict parameters over as protobuf Structs: integers arrive as floats.
    overrides = {"train_overrides": {"seed": 3.0}, "evaluation": {"n_bootstrap": 300.0}}
    cfg = steps.load_retrain(str(path), overrides, "gs://bucket/mf")
    assert cfg.storage_root == "gs://bucket/mf" and cfg.registry_uri == "gs://bucket/mf/registry"
    assert cfg.train_overrides == {"data.patch_size": 32, "seed": 3}  # merged, not replaced
    assert cfg.evaluation.n_bootstrap == 300 and isinstance(cfg.evaluation.n_bootstrap, int)
    assert cfg.source.root == str(tmp_path / "watched")  # relative to the YAML
    assert steps.load_retrain(str(path)).storage_root == str(tmp_path / "from-config")
    assert steps.retrain_run_uri(cfg, "abc-123", "data") == "gs://bucket/mf/retrain/site-b/abc-123/data"

    with pytest.raises(ConfigError, match="storage_root is empty"):
        steps.load_retrain(str(write_config(tmp_path)))
    with pytest.raises(ConfigError, match="config is empty"):
        steps.load_retrain("", {}, "gs://bucket/mf")
    with pytest.raises(ConfigError, match="unknown key"):
        steps.load_retrain(str(path), {"blessing": {"threshold": 1}}, "gs://bucket/mf")


def test_state_updates_are_guarded_against_a_concurrent_writer(tmp_path: Path) -> None:
    cfg = steps.load_retrain(str(write_config(tmp_path)), {}, str(tmp_path / "store"))
    state, info = steps.load_retrain_state(cfg)
    assert info is None and state.next_id == 1 and len(state.token) == 16

    assert steps.update_retrain_state(cfg, lambda st: setattr(st, "next_id", 5) or "done") == "done"
    uri = steps.retrain_uri(cfg, "state.json")
    calls = []

    def bump(st: Any) -> int:
        calls.append(st.next_id)
        if len(calls) == 1:  # another run writes the state between this one's read and write
            other = {**json.loads(storage.get_bytes(uri)), "next_id": 9}
            storage.put_bytes(uri, json.dumps(other).encode())
            stamp = storage.local_path(uri).stat().st_mtime_ns + 10**9
            os.utime(storage.local_path(uri), ns=(stamp, stamp))
        st.next_id += 1
        return st.next_id

    assert steps.update_retrain_state(cfg, bump) == 10  # re-read and re-applied on top of the other write
    assert calls == [5, 9] and steps.load_retrain_state(cfg)[0].next_id == 10

    def always_overtaken(st: Any) -> None:
        stamp = storage.local_path(uri).stat().st_mtime_ns + 10**9
        os.utime(storage.local_path(uri), ns=(stamp, stamp))

    with pytest.raises(ConfigError, match="another run keeps updating"):
        steps.update_retrain_state(cfg, always_overtaken, attempts=2)


# ------------------------------------------------------------------------------------------- a watched bucket


def test_a_watched_folder_in_a_bucket_is_ingested_incrementally_across_pods(tmp_path: Path, gcs_bucket: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step runs in a fresh pod with nothing but the bucket: the source is fetched into the pod's cache, the
    published records name their images by URI, and the next run's scan and ingest compare like with like."""
    local = tmp_path / "export"
    deliver_phantoms(local, phantom_batch(tmp_path, 4, 21), 1)
    watched = f"{gcs_bucket}/incoming/mias"
    steps.publish_tree(local, watched)
    cfg = steps.load_retrain(str(write_config(tmp_path, source={"name": "mias", "root": watched})), {},
                                f"{gcs_bucket}/mf")

    def pod(name: str) -> None:  # a new pod: an empty local cache
        monkeypatch.setenv(steps.CACHE_ENV, str(tmp_path / "pods" / name))

    pod("scan-1")
    scan = steps.retrain_scan(cfg, "run-1")
    assert scan["changed"] and scan["retrain_id"] == "r0001" and scan["files"]["new"] == 5
    pod("ingest-1")
    delta = steps.retrain_ingest(cfg, "run-1", tmp_path / "artifact-1")
    assert (delta["mode"], delta["new_records"]) == ("first", 4)
    published = steps.fetch_tree(delta["records_uri"], tmp_path / "check")
    assert json.loads((published / "records_meta.json").read_text())["image_root"] == watched
    steps.update_retrain_state(cfg, lambda st: setattr(st, "last_records", delta["records_uri"]))

    # The next delivery: two more images and their Info.txt lines.
    shutil.rmtree(local)
    deliver_phantoms(local, phantom_batch(tmp_path, 4, 21), 1)
    deliver_phantoms(local, phantom_batch(tmp_path, 2, 22), 5)
    steps.publish_tree(local, watched)
    pod("scan-2")
    scan = steps.retrain_scan(cfg, "run-2")
    assert scan["files"]["new"] == 2 and scan["files"]["changed"] == 1  # the images and Info.txt
    assert scan["retrain_id"] == "r0002" and scan["previous_records"] == delta["records_uri"]
    assert steps.retrain_scan(cfg, "run-2")["retrain_id"] == "r0002"  # a retried scan keeps its id
    pod("ingest-2")
    delta2 = steps.retrain_ingest(cfg, "run-2", tmp_path / "artifact-2")
    assert (delta2["mode"], delta2["new_records"], delta2["carried_records"]) == ("incremental", 2, 4)
    assert delta2["total_records"] == 6 and delta2["records_uri"].endswith("/run-2/records")
    recorded = steps.read_steps(cfg, "run-2")
    assert set(recorded) == {"scan", "ingest"} and recorded["ingest"]["previous"] == delta["records_uri"]


# ------------------------------------------------------------------------------------------- outcomes


def test_the_exit_handler_names_each_outcome(tmp_path: Path) -> None:
    cfg = steps.load_retrain(str(write_config(tmp_path)), {}, str(tmp_path / "store"))
    scan = {"started": "2026-01-01T02:00:00.000000Z", "changed": True, "retrain_id": "r0007", "files": {},
            "total_records": 10}
    ingest = {"records_uri": "x/records", "new_records": 3, "changed_records": 0, "removed_records": 0,
              "quarantined_new": 0, "total_records": 13, "nothing_new": False, "mode": "incremental"}
    verdict = {"blessed": True, "reason": "Blessed: fine."}

    def status(recorded: dict[str, Any], failed: bool = False) -> Any:
        return steps.retrain_result(cfg, "run-7", recorded, failed=failed, error="Task exit-handler-1 failed.")

    assert status({"scan": {**scan, "changed": False}}).status == "nothing_new"
    assert status({"scan": scan, "ingest": {**ingest, "nothing_new": True}}).status == "nothing_new"
    judged = {"scan": scan, "ingest": ingest, "train": {"run_uri": "r", "champion": "v0006"},
              "bless": {**verdict, "blessed": False}, "register": {"version": "v0008"}}
    refused = status(judged)
    assert (refused.status, refused.version, refused.champion_before, refused.promoted) == (
        "refused", "v0008", "v0006", False)
    assert status({**judged, "bless": verdict, "promote": {"version": "v0008"}}).status == "blessed"
    never_promoted = status({**judged, "bless": verdict})
    assert never_promoted.status == "failed" and "blessed but never promoted" in never_promoted.error
    failed = status({"scan": scan, "ingest": ingest}, failed=True)
    assert failed.status == "failed" and failed.retrain_id == "r0007"
    assert failed.error == ("Task exit-handler-1 failed. (last step completed: ingest; see the failed step's log)")
    assert failed.seconds > 0 and failed.paths["records"] == "x/records"
