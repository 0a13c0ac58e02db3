"""The same data steps through the CLI and through the Kubeflow components (kfp.local, the very DAG a cluster runs)
give the same outputs, byte for byte: both are thin adapters over :mod:`mammoflow.steps.data`.

On the same tiny phantom inputs (a MIAS-like folder with a truncated image, so the quarantine is not empty; a
DICOM folder with a hidden file and a sidecar, so skipped.jsonl is not empty): demo-data's files, ingest's records
folder, preprocess's images and records, build-dataset's manifest and shards. The pipeline preprocesses and builds
in record partitions (one here; tests/test_partitions.py compares N=3 with N=1): its images are in the storage
root, its records folder points at them. The only files left out are named in :data:`DIFFERS` and
:data:`NOT_COMPARED` with the reason.
"""

# No `from __future__ import annotations`: the test's pipeline is defined here, and KFP reads live annotations.
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from mammoflow.cli import cli

N_IMAGES, SEED = 4, 3
SALT = "cli-vs-kfp"
#: Files that legitimately differ between two runs of the same step, whichever route runs it.
DIFFERS = {
    "preprocess_summary.json": "holds the run's wall-clock seconds",
}
#: Folders that only one route writes.
NOT_COMPARED = {
    ".resume": "the CLI's per-record resume state; a partition keeps its own in parts/<p>-of-<N>/part.json",
    "parts": "the partitions' work (named after their partition of N), not the result",
}


def files_of(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256), the hidden resume state included."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in DIFFERS
            and not NOT_COMPARED.keys() & set(p.relative_to(folder).parts)}


def assert_same_files(cli_out: Path, kfp_out: Path, must_have: tuple[str, ...]) -> None:
    got_cli, got_kfp = files_of(cli_out), files_of(kfp_out)
    for name in must_have:  # the comparison is worth something only if the files are there
        assert name in got_cli, f"{cli_out}: no {name}"
    assert got_cli == got_kfp, {k: (got_cli.get(k), got_kfp.get(k)) for k in {*got_cli, *got_kfp}
                                if got_cli.get(k) != got_kfp.get(k)}


def data_pipeline():
    """Every data component, wired as in the training pipeline (pipelines/data.py), plus a dicom-dir ingest."""
    from kfp import dsl

    from mammoflow.pipelines.data import add_partitioned_steps
    from mammoflow.pipelines.options import PipelineOptions

    options = PipelineOptions(retries=False, gpu=False)
    ops = options.components()

    @dsl.pipeline(name="cli-vs-kfp")
    def data_steps(storage_root: str, mias_root: str, site_root: str):
        ops["demo_data"](storage_root=storage_root, n_images=N_IMAGES, seed=SEED)
        located = ops["locate_data"](source="mias", data_root=mias_root, labels="")
        ingest = ops["ingest"](source=located.outputs["source"], data_root=located.outputs["data_root"], labels="",
                               pseudonymise_paths=False, data_digest=located.outputs["data_digest"])
        add_partitioned_steps(ops, options, records=ingest.outputs["records"], source=located.outputs["source"],
                              preset="yu2020", preprocess_config="auto", dataset_config="auto",
                              storage_root=storage_root, partitions=1)
        site = ops["locate_data"](source="dicom-dir", data_root=site_root, labels="").set_display_name("site")
        ops["ingest"](source=site.outputs["source"], data_root=site.outputs["data_root"], labels="",
                      pseudonymise_paths=False, data_digest=site.outputs["data_digest"])

    return data_steps


def run_kfp(root: Path, mias_root: Path, site_root: Path) -> dict[str, Path]:
    """Run :func:`data_pipeline` with kfp.local; each task's folder of outputs by task name."""
    from kfp import local

    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "kfp"), raise_on_error=True)
    with warnings.catch_warnings():  # kfp.local: cluster settings have no effect here (as in pipelines/local.py)
        warnings.filterwarnings("ignore", message=".*(non-Python base image|no effect in the current local runner)")
        data_pipeline()(storage_root=str(root / "store"), mias_root=str(mias_root), site_root=str(site_root))
    [run] = (root / "kfp").iterdir()
    return {task.name: task for task in run.iterdir()}


def mammoflow(*args: object) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The phantoms both routes read: MIAS-like with one truncated image; a DICOM site with a hidden file and a
    sidecar."""
    from mammoflow.synth.phantoms import write_dicom_dataset

    base = tmp_path_factory.mktemp("cli_vs_kfp")
    mias = base / "mias"
    mammoflow("demo-data", "--out", mias, "--n-images", N_IMAGES, "--seed", SEED)
    damaged = mias / "mdb002.pgm"
    damaged.write_bytes(damaged.read_bytes()[:300])
    download = base / "download"
    truth = write_dicom_dataset(download, n_images=2, seed=SEED, size=(128, 96))
    site = base / "site"
    for i, image in enumerate(truth["images"]):
        (site / f"p{i}").mkdir(parents=True)
        shutil.copyfile(download / image["file"], site / f"p{i}" / "cc.dcm")
    (site / "p0" / "notes.txt").write_text("exported by hand")  # a sidecar: skipped
    (site / ".hidden.dcm").write_bytes(b"x")  # hidden: skipped
    return base


def test_the_data_steps_give_the_same_bytes_through_the_cli_and_kfp(inputs: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMOFLOW_SALT", SALT)  # both routes read the site salt from the environment
    monkeypatch.setenv("MAMMOFLOW_CACHE", str(tmp_path / "cache"))
    cli_dir = tmp_path / "cli"
    cli_dir.mkdir()
    monkeypatch.chdir(cli_dir)  # relative paths on the command line, absolute ones in the pipeline
    mammoflow("demo-data", "--out", "raw", "--n-images", N_IMAGES, "--seed", SEED)
    mammoflow("ingest", "--source", "mias", "--root", os.path.relpath(inputs / "mias"), "--out", "records")
    mammoflow("preprocess", "--records", "records", "--config", "yu2020", "--out", "pre")
    mammoflow("build-dataset", "--records", "pre", "--config", "yu2020", "--out", "data")
    mammoflow("ingest", "--source", "dicom-dir", "--root", os.path.relpath(inputs / "site"),
              "--out", "site-records")

    tasks = run_kfp(tmp_path / "kfp-run", inputs / "mias", inputs / "site")
    assert set(tasks) >= {"demo-data", "locate-data", "ingest", "plan-dataset", "merge-dataset", "ingest-2"}

    # demo-data: the same phantoms (the component keeps their ground truth and Info.txt; the images are in storage)
    store = tmp_path / "kfp-run" / "store"
    assert_same_files(cli_dir / "raw", store / "raw" / f"phantoms-n{N_IMAGES}-s{SEED}",
                      ("ground_truth.json", "Info.txt", "mdb001.pgm"))
    # ingest: records, quarantine (the truncated image), skipped (none for MIAS), meta, summary, completion marks
    assert_same_files(cli_dir / "records", tasks["ingest"] / "records",
                      ("records.jsonl", "quarantine.jsonl", "quarantine.md", "skipped.jsonl", "records_meta.json"))
    assert "truncated" in (cli_dir / "records" / "quarantine.jsonl").read_text()
    assert_same_files(cli_dir / "site-records", tasks["ingest-2"] / "records", ("records.jsonl", "skipped.jsonl"))
    skipped = (cli_dir / "site-records" / "skipped.jsonl").read_text()
    assert "notes.txt" in skipped and ".hidden.dcm" in skipped
    # preprocess: the images, masks and config (in the storage root), and the records (pointing at them)
    pre = Path(json.loads((tasks["plan-dataset"] / "executor_output.json").read_text())["artifacts"]["preprocessed"]
               ["artifacts"][0]["metadata"]["uri"])
    assert pre.parent == store / "preprocessed"
    kfp_pre = tmp_path / "kfp-pre"
    shutil.copytree(pre, kfp_pre)
    shutil.copytree(tasks["plan-dataset"] / "preprocessed", kfp_pre, dirs_exist_ok=True)
    meta = json.loads((kfp_pre / "records_meta.json").read_text())
    assert meta.pop("image_root") == str(pre)  # the CLI's folder holds its images: "."
    (kfp_pre / "records_meta.json").write_text(json.dumps({**meta, "image_root": "."}, indent=2, sort_keys=True)
                                               + "\n")
    assert_same_files(cli_dir / "pre", kfp_pre, ("records.jsonl", "preprocess_config.yaml", "quarantine.jsonl",
                                                 "records_meta.json", "images/mias_mdb001-23526938.png"))
    # build-dataset: the manifest (and the shards it names) at the content-addressed folder under storage_root
    [dataset] = (store / "datasets").iterdir()
    assert_same_files(cli_dir / "data", dataset, ("manifest.json", "split_plan.json", "dataset_config.yaml"))
    assert (tasks["merge-dataset"] / "dataset" / "manifest.json").read_bytes() == (
        cli_dir / "data" / "manifest.json").read_bytes()
