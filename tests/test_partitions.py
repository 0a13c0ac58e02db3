"""Data fan-out: preprocessing and dataset building in N record partitions (``dsl.ParallelFor``) give the very
records, images, shards and manifest of one piece; a failed partition is retried alone; a partition's local disk
stays bounded.

"Byte-identical" here covers, for N=3 against N=1: the merged records folder (``records.jsonl``,
``quarantine.jsonl``, ``records_meta.json``, ``skipped.jsonl``, ``ingest_summary.json``, ``records_complete.json``,
``quarantine.md``, ``preprocess_config.yaml``), every object of the shared preprocessed folder (images, masks,
config), and every object of the dataset folder (split plan, summary, config, quarantine, each shard, and
``manifest.json``). Left out, by design: the ``parts/`` folders (named after their partition of N: they are the
partitions' work, not the result), ``preprocess_summary.json`` (wall-clock seconds), and what names the storage
root (the two runs write under two roots; the records' ``image_root`` is compared with the root cut off).
"""

# No `from __future__ import annotations`: the test's pipeline is defined here, and KFP reads live annotations.
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from mammoflow import storage
from mammoflow.partitions import in_partition, part_name, partition_of
from mammoflow.records import Record
from mammoflow.storage import copies

pytest_plugins = ["tests.gcs_emulator"]  # the gcs_bucket fixture

N_IMAGES, SEED = 12, 5
PARTS = "/parts/"
LEFT_OUT = {"preprocess_summary.json"}


# ------------------------------------------------------------------------------------------- the assignment


def _record(i: int, patient: str) -> Record:
    return Record(record_id=f"mias:mdb{i:03d}", source="mias", image_path=f"mdb{i:03d}.pgm", patient_id=patient,
                  label="normal")


def test_partitions_are_pure_cover_every_record_once_and_keep_a_patient_together() -> None:
    records = [_record(i, f"p{i // 2}") for i in range(40)]  # two images per patient
    for count in (1, 2, 3, 7):
        parts = [in_partition(records, p, count) for p in range(count)]
        ids = [r.record_id for part in parts for r in part]
        assert sorted(ids) == sorted(r.record_id for r in records)  # every record in exactly one partition
        for part in parts:
            patients = {r.patient_id for r in part}
            assert all(r in part for r in records if r.patient_id in patients)  # a patient never spans two
    # pure: the same key gives the same partition, and it is the sha256 rule (not Python's salted hash())
    assert partition_of("p1", 3) == int.from_bytes(hashlib.sha256(b"p1").digest()[:8], "big") % 3
    assert len({partition_of(f"p{i}", 3) for i in range(40)}) == 3
    assert part_name(2, 3) == "00002-of-00003"
    from mammoflow.errors import ConfigError
    with pytest.raises(ConfigError, match="partitions=0"):
        in_partition(records, 0, 0)


# ------------------------------------------------------------------------------------ kfp.local, N=3 vs N=1


def data_pipeline():
    """The data steps of the training pipeline (pipelines/data.py: ingest, then the two ParallelFors and their
    merges), on their own."""
    from kfp import dsl

    from mammoflow.pipelines.data import DataParameters, add_data_steps
    from mammoflow.pipelines.options import PipelineOptions
    from mammoflow.pipelines.signature import takes

    options = PipelineOptions(retries=False, gpu=False)

    @dsl.pipeline(name="data-partitions")
    @takes(DataParameters)
    def data_steps(data: DataParameters):
        add_data_steps(options.components(), options, data)

    return data_steps


def run_kfp(root: Path, **params: Any) -> dict[str, Any]:
    """Run :func:`data_pipeline` with kfp.local under ``root``; each task's folder by task name (a ParallelFor's:
    the list of its iterations' folders)."""
    from kfp import local

    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "kfp"), raise_on_error=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(non-Python base image|no effect in the current local runner)")
        data_pipeline()(**params)
    runs = sorted((root / "kfp").iterdir(), key=lambda p: p.stat().st_mtime)
    tasks: dict[str, Any] = {task.name: task for task in runs[-1].iterdir() if not task.name.startswith("for-loop")}
    for iteration in sorted(runs[-1].glob("for-loop-*-iteration-*")):
        for task in iteration.iterdir():
            tasks.setdefault(task.name, []).append(task)
    return tasks


def artifact(task: Path, name: str) -> dict[str, Any]:
    doc = json.loads((task / "executor_output.json").read_text())
    return doc["artifacts"][name]["artifacts"][0]


def digests(prefix: str) -> dict[str, str]:
    """Every object under ``prefix`` but the partitions' work (relative name -> sha256)."""
    root = prefix.rstrip("/")
    return {uri[len(root) + 1:]: hashlib.sha256(storage.get_bytes(uri)).hexdigest() for uri in storage.list(root)
            if PARTS not in uri[len(root):]}


def folder_digests(folder: Path, root: str) -> dict[str, str]:
    """Every file of a local records folder (the storage root cut out of its text), but :data:`LEFT_OUT`."""
    return {p.name: hashlib.sha256(p.read_bytes().replace(root.encode(), b"ROOT")).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file() and p.name not in LEFT_OUT}


@pytest.mark.slow
def test_three_partitions_give_the_bytes_of_one_on_object_storage(tmp_path: Path, gcs_bucket: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMOFLOW_CACHE", str(tmp_path / "cache"))
    runs = {}
    for n in (1, 3):
        root = f"{gcs_bucket}/n{n}"
        tasks = run_kfp(tmp_path / f"n{n}", storage_root=root, n_demo_images=N_IMAGES, seed=SEED, partitions=n)
        # One preprocess and one build task per partition (kfp.local names the iterations' tasks apart).
        assert len(tasks["preprocess-partition"]) == len(tasks["build-partition"]) == n
        records = artifact(tasks["plan-dataset"], "preprocessed")
        dataset = artifact(tasks["merge-dataset"], "dataset")
        runs[n] = {"root": root, "records": Path(records["uri"]), "pre_uri": records["metadata"]["uri"],
                   "data_uri": dataset["metadata"]["uri"], "meta": dataset["metadata"]}
    one, three = runs[1], runs[3]
    # The same content-addressed folders under each root: their names do not depend on N.
    assert one["pre_uri"][len(one["root"]):] == three["pre_uri"][len(three["root"]):]
    assert one["data_uri"][len(one["root"]):] == three["data_uri"][len(three["root"]):]
    # The merged records folder, byte for byte (the root cut out of records_meta.json's image_root).
    got1, got3 = folder_digests(one["records"], one["root"]), folder_digests(three["records"], three["root"])
    assert {"records.jsonl", "quarantine.jsonl", "records_meta.json"} <= set(got1) and got1 == got3
    assert json.loads((three["records"] / "records_meta.json").read_text())["image_root"] == three["pre_uri"]
    assert len((three["records"] / "records.jsonl").read_text().splitlines()) == N_IMAGES
    # Every preprocessed image and mask, and every object of the dataset: shards, plan, manifest.
    pre1, pre3 = digests(one["pre_uri"]), digests(three["pre_uri"])
    assert sum(k.startswith("images/") for k in pre1) == N_IMAGES and pre1 == pre3
    data1, data3 = digests(one["data_uri"]), digests(three["data_uri"])
    assert "manifest.json" in data1 and any(k.endswith(".tfrecord") for k in data1) and data1 == data3
    assert one["meta"]["manifest_sha256"] == three["meta"]["manifest_sha256"] == data3["manifest.json"]
    # The partitions did write their own work, under parts/ (three of them for N=3).
    parts = {uri.split(PARTS)[1].split("/")[0] for uri in storage.list(three["data_uri"]) if PARTS in uri}
    assert parts == {part_name(p, 3) for p in range(3)}
    print(f"\nmanifest sha256 N=1 {data1['manifest.json']} N=3 {data3['manifest.json']}")


# --------------------------------------------------------------------------- a failed partition, retried alone


@pytest.mark.slow
def test_a_failed_partition_is_retried_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fault is the test's own: the folder of the last preprocess partition's done marker is blocked by a
    file, so that partition fails after doing its work; the run fails. Unblocked, the run is started again: the
    other partitions' markers are untouched (not redone), the failed one is done, and the run finishes."""
    from mammoflow.pipelines.local import LocalRunError  # noqa: F401 - kfp.local raises RuntimeError here

    monkeypatch.setenv("MAMMOFLOW_CACHE", str(tmp_path / "cache"))
    store = tmp_path / "store"
    params = {"storage_root": str(store), "n_demo_images": N_IMAGES, "seed": SEED, "partitions": 3}
    # Where the preprocessed folder will be: the same as a first run would compute, found by a dry run of the
    # steps' own naming (the ingest records of these phantoms).
    blocked = _preprocess_part_folder(tmp_path, store, 2, 3)
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")
    with pytest.raises(RuntimeError, match="preprocess-partition"):
        run_kfp(tmp_path / "first", **params)
    markers = {p: blocked.parent / part_name(p, 3) / "part.json" for p in range(3)}
    assert markers[0].is_file() and markers[1].is_file() and not markers[2].exists()
    before = {p: markers[p].stat().st_mtime_ns for p in (0, 1)}
    images_before = {p.name: p.stat().st_mtime_ns for p in (blocked.parent.parent / "images").iterdir()}

    blocked.unlink()
    tasks = run_kfp(tmp_path / "second", **params)
    assert {p: markers[p].stat().st_mtime_ns for p in (0, 1)} == before  # partitions 0 and 1: reused
    assert markers[2].is_file()
    # No image of the finished partitions was written again.
    after = {p.name: p.stat().st_mtime_ns for p in (blocked.parent.parent / "images").iterdir()}
    assert {k: after[k] for k in images_before} == images_before and len(after) == N_IMAGES
    dataset = artifact(tasks["merge-dataset"], "dataset")
    assert storage.exists(storage.join(dataset["metadata"]["uri"], "manifest.json"))


def _preprocess_part_folder(tmp_path: Path, store: Path, index: int, count: int) -> Path:
    """The folder partition ``index`` of ``count`` writes its done marker in, for the phantoms these runs use:
    the steps' own naming (ingest's records of the same phantoms, the chain's config hash)."""
    from mammoflow import steps
    from mammoflow.preprocess.chain import Chain
    from mammoflow.steps.partitions import preprocessed_uri

    raw = steps.phantoms_uri(str(store), N_IMAGES, SEED)
    steps.demo_data(raw, N_IMAGES, SEED)
    steps.ingest("mias", raw, tmp_path / "dry-records")
    config = Chain.from_config(steps.preprocess_config_for("mias", "yu2020")).config_hash()
    uri = preprocessed_uri(str(store), tmp_path / "dry-records", config)
    return Path(uri) / "parts" / part_name(index, count)


# ------------------------------------------------------------------------------------------ the compiled YAML


def test_the_compiled_training_pipeline_fans_out_with_parallel_for(tmp_path: Path) -> None:
    import yaml
    from kfp import compiler

    from mammoflow.pipelines import get_pipeline

    out = tmp_path / "training.yaml"
    compiler.Compiler().compile(get_pipeline("training"), str(out))
    spec, platform = yaml.safe_load_all(out.read_text())
    loops = {name: task for comp in spec["components"].values() for name, task in
             (comp.get("dag") or {}).get("tasks", {}).items() if "parameterIterator" in task}
    assert set(loops) == {"for-loop-1", "for-loop-2"} or len(loops) == 2, loops
    for task in loops.values():  # both iterate over the partition list
        assert task["parameterIterator"]["items"]["inputParameter"].endswith("partition-list-Output")
    inner = {name for comp in spec["components"].values() if comp.get("dag")
             for name in comp["dag"]["tasks"]}
    assert {"preprocess-partition", "build-partition", "plan-dataset", "merge-dataset"} <= inner
    assert spec["root"]["inputDefinitions"]["parameters"]["partitions"]["defaultValue"] == 1
    # Each data step has its local disk: an emptyDir with a size limit (sized by the stage table).
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    disks = {name.removeprefix("exec-"): e["emptyDirMounts"][0]["sizeLimit"] for name, e in executors.items()
             if e.get("emptyDirMounts")}
    from mammoflow.components.stages import STAGE
    assert disks == {"ingest": STAGE["ingest"].scratch, "preprocess-partition": STAGE["preprocess_partition"].scratch,
                     "plan-dataset": STAGE["plan_dataset"].scratch, "build-partition": STAGE["build_partition"].scratch,
                     "merge-dataset": STAGE["merge_dataset"].scratch}
    assert all(e["emptyDirMounts"][0]["mountPath"] == "/tmp/mammoflow-cache" for e in executors.values()
               if e.get("emptyDirMounts"))


# ------------------------------------------------------------------------- bounded local disk, measured


class DiskHighWater:
    """The most disk blocks (bytes) ever held under a folder, sampled by a thread every few milliseconds while the
    block runs (sparse placeholders count as what they use: nothing)."""

    def __init__(self, folder: Path):
        import threading

        self.folder, self.peak, self._stop = folder, 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def used(self) -> int:
        total = 0
        for p in self.folder.rglob("*"):
            try:
                total += p.lstat().st_blocks * 512 if p.is_file() else 0
            except OSError:  # removed while we looked
                pass
        return total

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.used())
            self._stop.wait(0.005)

    def __enter__(self) -> "DiskHighWater":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.used())


@pytest.mark.slow
def test_ingest_streams_a_bucket_through_a_bounded_local_window(tmp_path: Path, gcs_bucket: str) -> None:
    from mammoflow import steps

    raw = steps.phantoms_uri(f"{gcs_bucket}/store", N_IMAGES, SEED)
    steps.demo_data(raw, N_IMAGES, SEED, cache_dir=tmp_path / "demo-cache")
    sizes = [i.size for i in storage.list_info(raw)]
    images = sum(s for s in sizes if s >= 1 << 20)
    small = sum(s for s in sizes if s < 1 << 20)  # Info.txt, ground truth: fetched whole
    limit = 3 * max(sizes)  # three images at a time
    assert images > 3 * limit  # the window is much smaller than the data

    cache = tmp_path / "cache"
    with DiskHighWater(cache) as disk:
        summary = steps.ingest("mias", raw, tmp_path / "streamed", stream=limit, cache_dir=cache)
    # Block-rounded: each file may take up to one more 4 KiB block than its size.
    assert disk.peak <= limit + small + 4096 * len(sizes), (disk.peak, limit, small)
    assert summary["used"] == N_IMAGES and summary["quarantined"] == 0
    left = DiskHighWater(cache).used()
    assert left <= small + 4096 * len(sizes)  # every image is a placeholder again
    # The same records as an ingest of a full local copy.
    steps.ingest("mias", raw, tmp_path / "copied", stream=0, cache_dir=tmp_path / "cache-full")
    for name in ("records.jsonl", "quarantine.jsonl", "skipped.jsonl", "records_meta.json"):
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "copied" / name).read_bytes(), name
    print(f"\ningest: {images} bytes of images streamed, window {limit} bytes, peak local disk {disk.peak} bytes")


@pytest.mark.slow
def test_a_dicom_folder_is_streamed_too(tmp_path: Path, gcs_bucket: str) -> None:
    """dicom-dir reads every file of the folder (a DICM marker, a header, the pixels): each is fetched when it is
    read and evicted after, so the window bounds the disk here as well; the records equal a full copy's."""
    from mammoflow import steps

    raw = f"{gcs_bucket}/site-dicoms"
    steps.demo_data(raw, 8, SEED, fmt="dicom", size=(1200, 900), cache_dir=tmp_path / "demo-cache")
    infos = storage.list_info(raw)
    dicoms = [i.size for i in infos if i.size >= copies.SMALL_OBJECT]  # the rest is fetched whole, at once
    small = sum(i.size for i in infos if i.size < copies.SMALL_OBJECT)
    limit = 2 * max(dicoms)
    assert sum(dicoms) > 2 * limit
    cache = tmp_path / "cache"
    with DiskHighWater(cache) as disk:
        streamed = steps.ingest("dicom-dir", raw, tmp_path / "streamed", stream=limit, cache_dir=cache)
    assert disk.peak <= limit + small + 4096 * len(infos), (disk.peak, limit, small)
    copied = steps.ingest("dicom-dir", raw, tmp_path / "copied", stream=0, cache_dir=tmp_path / "cache-full")
    assert streamed["used"] == copied["used"] > 0
    for name in ("records.jsonl", "quarantine.jsonl", "skipped.jsonl", "records_meta.json"):
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "copied" / name).read_bytes(), name


@pytest.mark.slow
def test_a_preprocess_partition_holds_one_chunk_on_local_disk(tmp_path: Path, gcs_bucket: str) -> None:
    """A partition fetches only its records' images, a chunk at a time, and removes them: the local disk it used
    (sampled, and the step's own measure) stays under one chunk of raw images and their outputs."""
    from mammoflow import steps
    from mammoflow.records import RecordsTable
    from mammoflow.steps.partitions import preprocess_partition

    store = f"{gcs_bucket}/store"
    raw = steps.phantoms_uri(store, N_IMAGES, SEED)
    steps.demo_data(raw, N_IMAGES, SEED, cache_dir=tmp_path / "demo-cache")
    steps.ingest("mias", raw, tmp_path / "records", cache_dir=tmp_path / "ingest-cache")
    table = RecordsTable.read(tmp_path / "records")
    largest_raw = max(i.size for i in storage.list_info(raw))
    chunk, cache = 2, tmp_path / "cache"
    mine = in_partition(table.records, 0, 2)
    assert len(mine) > 2 * chunk  # several chunks
    with DiskHighWater(cache) as disk:
        done = preprocess_partition(tmp_path / "records", "yu2020", store, 0, 2, chunk=chunk, cache_dir=cache)
    assert done["records_in"] == len(mine) and done["usable"] == len(mine) and not done["reused"]
    outputs = [storage.stat(u).size for u in storage.list(done["uri"]) if "/images/" in u or "/masks/" in u]
    bound = chunk * largest_raw + chunk * max(outputs) * 2 + 64 * 1024  # raw + image and mask, + records files
    assert 0 < done["peak_local_bytes"] <= bound and disk.peak <= bound + 4096 * 4 * chunk, (disk.peak, bound)
    assert disk.peak < len(mine) * largest_raw  # not the partition's images all at once
    assert DiskHighWater(cache).used() == 0  # the partition's scratch is gone
    print(f"\npreprocess partition: {len(mine)} records, peak local disk {disk.peak} bytes "
          f"(step's measure {done['peak_local_bytes']}), bound {bound}")
