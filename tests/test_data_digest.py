# No `from __future__ import annotations`: KFP reads the test pipeline's types from live annotations.
"""KFP's cache key follows the data, not only its path (issue 16): the listing digest of a dataset changes when a
file is added, removed or rewritten (locally and on GCS, without reading content), and a kfp.local run with caching
on ingests rewritten data at the same path again instead of returning the cached records."""

import os
import time
from pathlib import Path

from tests.gcs_emulator import gcs_bucket, gcs_emulator  # noqa: F401  (fixtures)

from mammoflow import storage


def _rewrite(path: Path, data: bytes) -> None:
    before = path.stat().st_mtime_ns
    path.write_bytes(data)
    if path.stat().st_mtime_ns == before:  # coarse file-system clocks: make the rewrite visible
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def test_local_listing_digest_changes_with_the_files_not_otherwise(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.pgm").write_bytes(b"1234")
    (root / "y.pgm").write_bytes(b"abcd")
    first = storage.listing_digest(str(root))
    assert storage.listing_digest(str(root)) == first and storage.listing_digest(f"{root}/") == first
    _rewrite(root / "y.pgm", b"abce")  # same size, new content
    rewritten = storage.listing_digest(str(root))
    assert rewritten != first
    (root / "a" / "z.pgm").write_bytes(b"new")
    added = storage.listing_digest(str(root))
    assert added not in (first, rewritten)
    (root / "a" / "z.pgm").unlink()
    assert storage.listing_digest(str(root)) == rewritten
    assert [i.size for i in storage.list_info(str(root))] == [4, 4]


def test_gcs_listing_digest_follows_generations(gcs_bucket):  # noqa: F811
    prefix = f"{gcs_bucket}/raw"
    storage.put_bytes(f"{prefix}/a.dcm", b"one")
    storage.put_bytes(f"{prefix}/b/c.dcm", b"two")
    storage.put_bytes(f"{gcs_bucket}/raw-old/d.dcm", b"not under raw/")
    infos = storage.list_info(prefix)
    assert [i.uri for i in infos] == [f"{prefix}/a.dcm", f"{prefix}/b/c.dcm"] and all(i.version for i in infos)
    first = storage.listing_digest(prefix)
    assert storage.listing_digest(prefix) == first
    time.sleep(0.01)
    storage.put_bytes(f"{prefix}/a.dcm", b"one")  # the same bytes rewritten: a new generation
    assert storage.listing_digest(prefix) != first


def test_the_compiled_pipeline_feeds_the_digest_into_ingest(tmp_path):
    import yaml
    from kfp import compiler

    from mammoflow.pipelines import build_pipeline
    from mammoflow.pipelines.options import PipelineOptions

    compiler.Compiler().compile(build_pipeline("training", PipelineOptions()), str(tmp_path / "p.yaml"))
    spec = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    tasks = {}
    for comp in [spec["root"], *spec["components"].values()]:
        tasks.update((comp.get("dag") or {}).get("tasks", {}))
    digest = tasks["ingest"]["inputs"]["parameters"]["data_digest"]
    producer = digest["taskOutputParameter"]["producerTask"]  # the OneOf of the phantom and real-data branches
    outputs = spec["components"][f"comp-{producer}"]["dag"]["outputs"]["parameters"]
    selectors = outputs[digest["taskOutputParameter"]["outputParameterKey"]]["valueFromOneof"]["parameterSelectors"]
    # One per branch (condition sub-DAGs), each the data_digest output of its branch's step.
    assert {s["outputParameterKey"] for s in selectors} == {"pipelinechannel--demo-data-data_digest",
                                                            "pipelinechannel--locate-data-data_digest"}
    assert tasks["locate-data"].get("cachingOptions", {}).get("enableCache") is not True  # always looked at


def test_kfp_local_ingests_rewritten_data_again(tmp_path, monkeypatch):
    from kfp import dsl, local

    from mammoflow.pipelines.options import PipelineOptions
    from mammoflow.synth.phantoms import write_mias_dataset

    data = tmp_path / "mias"
    write_mias_dataset(data, n_images=4, seed=5)
    ops = PipelineOptions(retries=False, gpu=False).components()

    @dsl.pipeline(name="digest-test")
    def ingest_only(data_root: str) -> dsl.Dataset:
        located = ops["locate_data"](source="mias", data_root=data_root, labels="")
        located.set_caching_options(False)
        ingest = ops["ingest"](source=located.outputs["source"], data_root=located.outputs["data_root"], labels="",
                               pseudonymise_paths=False, data_digest=located.outputs["data_digest"])
        ingest.set_caching_options(True)
        return ingest.outputs["records"]

    monkeypatch.setenv("MAMMOFLOW_CACHE", str(tmp_path / "cache"))
    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"), enable_caching=True)
    first = ingest_only(data_root=str(data)).output
    again = ingest_only(data_root=str(data)).output
    assert again.uri == first.uri, "unchanged data: ingest comes from the cache"
    image = sorted(data.glob("*.pgm"))[0]
    raw = bytearray(image.read_bytes())
    raw[-1] ^= 0xFF  # one pixel changed, same size and name
    _rewrite(image, bytes(raw))
    changed = ingest_only(data_root=str(data)).output
    assert changed.uri != first.uri, "rewritten data at the same path was taken from the cache"
    assert changed.metadata["data_digest"] != first.metadata["data_digest"]
