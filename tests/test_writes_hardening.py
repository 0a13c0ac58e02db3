"""Writes that must fail cleanly or clean up after themselves:

- ``preprocess`` refuses a records folder that an ingest did not finish (no completion marker);
- an ``--out`` that is a file, lies under a file or in a folder that refuses new entries is one usage error naming
  the path and the fix, for every verb that writes (nothing written, no traceback);
- spool folders of a killed shard build are removed by the next build, and only those (a live build's stays);
- an empty or non-mapping YAML ``--config`` is an error naming the file, as an unknown key already was.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mammoflow.cli import cli, os_error_message
from mammoflow.config import resolve_config
from mammoflow.dataset.shards import Example, write_split
from mammoflow.dataset.spool import LOCK_NAME, SPOOL_PREFIX, remove_dead_spools, spool_folder
from mammoflow.errors import ConfigError, InputError
from mammoflow.preprocess.run import preprocess_records

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ unfinished ingest


@pytest.fixture
def records(tmp_path) -> Path:
    from mammoflow.sources import SourceOptions, read_source
    from mammoflow.synth.phantoms import write_mias_dataset

    write_mias_dataset(tmp_path / "raw", n_images=4, seed=2, size=256)
    read_source("mias", SourceOptions(root=tmp_path / "raw")).write(tmp_path / "records")
    return tmp_path / "records"


def _complete_marker(folder: Path) -> Path:
    from mammoflow.records import COMPLETE_FILE

    return folder / COMPLETE_FILE


def test_preprocess_refuses_records_an_ingest_did_not_finish(records, tmp_path):
    marker = _complete_marker(records)
    assert marker.is_file()
    marker.unlink()  # what a kill or a full disk between the records and the marker leaves
    with pytest.raises(InputError, match="incomplete") as err:
        preprocess_records(records, "minimal", tmp_path / "pre")
    assert err.value.code == "incomplete" and str(records) in str(err.value) and "Fix:" in str(err.value)
    assert not (tmp_path / "pre").exists()

    result = CliRunner().invoke(cli, ["preprocess", "--records", str(records), "--config", "minimal",
                                      "--out", str(tmp_path / "pre")])
    assert result.exit_code != 0 and isinstance(result.exception, InputError)
    assert not (tmp_path / "pre").exists()


def test_preprocess_refuses_records_replaced_after_the_ingest(records, tmp_path):
    """New records beside the old meta and marker (the full-disk case of the issue): refused too."""
    table = (records / "records.jsonl").read_text().splitlines()
    (records / "records.jsonl").write_text("\n".join(table[:-1]) + "\n")
    with pytest.raises(InputError, match="incomplete|not the one"):
        preprocess_records(records, "minimal", tmp_path / "pre")
    assert not (tmp_path / "pre").exists()


# ------------------------------------------------------------------------------------------ unwritable outputs


@pytest.fixture
def locked_dir(tmp_path) -> Path:
    """A folder in which nothing can be created, even by root (``chattr +i``), or the test is skipped."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
    elif shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                          capture_output=True).returncode != 0:
        pytest.skip("root without chattr +i (CAP_LINUX_IMMUTABLE): no folder can be made unwritable")
    try:
        try:
            os.rmdir(tempfile.mkdtemp(dir=folder))
        except OSError:
            pass
        else:
            pytest.skip("this filesystem lets everything be written")
        yield folder
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def _verb_args(verb: str, out: Path, tmp_path: Path) -> list[str]:
    image = tmp_path / "image.png"
    image.write_bytes(b"not used")
    return {
        "preprocess": ["preprocess", "--records", str(tmp_path), "--config", "minimal", "--out", str(out)],
        "build-dataset": ["build-dataset", "--records", str(tmp_path), "--config", "yu2020", "--out", str(out)],
        "train": ["train", "--config", "demo", "--data", "no-data", "--out", str(out)],
        "evaluate": ["evaluate", "--model", "no-run", "--data", "no-data", "--out", str(out)],
        "explain": ["explain", "--model", "no-run", "--image", str(image), "--out", str(out)],
        "report": ["report", "--run", "no-run", "--out", str(out)],
        "predict": ["predict", "--model", "no-run", "--images", str(image), "--out", str(out)],
    }[verb]


VERBS = ("preprocess", "build-dataset", "train", "evaluate", "explain", "report", "predict")


def _assert_clean_refusal(args: list[str], named: Path) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a usage error, not a traceback
    assert str(named) in result.output and "Fix:" in result.output, result.output


@pytest.mark.parametrize("verb", VERBS)
def test_an_out_that_is_or_lies_under_a_file_is_a_clean_error(verb, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    outs = [afile / "sub"] if verb == "predict" else [afile, afile / "sub"]
    for out in outs:
        _assert_clean_refusal(_verb_args(verb, out, tmp_path), afile)
    assert afile.read_text() == "keep me"
    if verb == "predict":  # predict --out names a file: a folder there is refused
        folder = tmp_path / "a-folder"
        folder.mkdir()
        _assert_clean_refusal(_verb_args(verb, folder, tmp_path), folder)


@pytest.mark.parametrize("verb", VERBS)
def test_an_out_in_a_folder_that_refuses_new_files_is_a_clean_error(verb, tmp_path, locked_dir):
    out = locked_dir / ("predictions.jsonl" if verb == "predict" else "out")
    _assert_clean_refusal(_verb_args(verb, out, tmp_path), locked_dir)
    assert os.listdir(locked_dir) == []


def test_a_failed_file_operation_is_one_line_naming_the_path_and_the_fix(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OSError) as err:
        (afile / "sub" / "x.txt").parent.mkdir(parents=True)
    message = os_error_message(err.value)
    assert err.value.errno == errno.ENOTDIR
    assert str(afile / "sub") in message and "Fix:" in message and "\n" not in message


# ------------------------------------------------------------------------------------------ spool folders


def _examples(n: int) -> list[Example]:
    rng = np.random.default_rng(0)
    return [Example(example_id=f"train:{i:03d}", record_id=f"r:{i:03d}", patient_id=f"p{i}", breast_id=f"p{i}:L",
                    label=i % 2, label_name=("normal", "tumour")[i % 2], split="train",
                    image=rng.integers(0, 255, (16, 16), dtype=np.uint8)) for i in range(n)]


# A shard build that stops half-way through spooling (waiting for a kill), in its own process.
_SPOOLING_BUILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tests.test_writes_hardening import _examples
    from mammoflow.dataset.shards import write_split

    def examples():
        yield from _examples(3)
        Path(sys.argv[3]).write_text("spooling")
        time.sleep(600)
        yield from _examples(0)

    write_split(examples(), sys.argv[1], "train", work_dir=sys.argv[2])
""")


def _start_spooling_build(tmp_path: Path, name: str, work: Path) -> tuple[subprocess.Popen[bytes], Path]:
    flag = tmp_path / f"{name}.spooling"
    proc = subprocess.Popen([sys.executable, "-c", _SPOOLING_BUILD, str(tmp_path / name), str(work), str(flag)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flag.exists(), f"the build did not start spooling (exit {proc.poll()})"
    return proc, flag


def test_a_rerun_removes_the_spool_folders_of_killed_builds_only(tmp_path):
    work = tmp_path / "work"
    live, _ = _start_spooling_build(tmp_path, "live", work)
    try:
        [live_folder] = list(work.iterdir())
        killed, _ = _start_spooling_build(tmp_path, "killed", work)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        [left] = [p for p in work.iterdir() if p != live_folder]  # nothing could remove it

        write_split(_examples(6), str(tmp_path / "ds"), "train", work_dir=work)  # the re-run
        assert not left.exists()
        assert list(work.iterdir()) == [live_folder]  # a running build's folder stays
        assert (live_folder / LOCK_NAME).is_file() and live.poll() is None
    finally:
        live.kill()
        live.wait()
    assert remove_dead_spools(work) == [live_folder]  # once its owner is gone, it goes too
    assert list(work.iterdir()) == []


def test_spool_folders_are_locked_from_the_moment_they_are_named(tmp_path):
    with spool_folder("train", tmp_path) as folder:
        assert folder.name.startswith(f"{SPOOL_PREFIX}{os.getpid()}-train-")
        assert remove_dead_spools(tmp_path) == [] and folder.is_dir()  # held by this (live) process
    assert not folder.exists()
    fresh = tmp_path / f"{SPOOL_PREFIX}999999-train-new"
    fresh.mkdir()  # named, lock file not there yet: left alone while young
    assert remove_dead_spools(tmp_path) == [] and fresh.is_dir()
    assert remove_dead_spools(tmp_path, now=time.time() + 3600) == [fresh]
    other = tmp_path / "mammoflow-train-abc"  # not a spool folder of this scheme: never touched
    other.mkdir()
    assert remove_dead_spools(tmp_path, now=time.time() + 3600) == [] and other.is_dir()


# ------------------------------------------------------------------------------------------ configs


def test_an_empty_or_non_mapping_yaml_config_is_an_error_naming_the_file(tmp_path):
    from mammoflow.training.config import load_train_config

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    comments = tmp_path / "comments.yaml"
    comments.write_text("# to do\n")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    for path in (empty, comments):
        with pytest.raises(ConfigError, match="empty") as err:
            resolve_config(str(path), "preprocess")
        assert str(path) in str(err.value) and "Fix:" in str(err.value)
        with pytest.raises(ConfigError, match="empty"):
            load_train_config(str(path))
    with pytest.raises(ConfigError, match="mapping") as err:
        resolve_config(str(listing), "dataset")
    assert str(listing) in str(err.value) and "Fix:" in str(err.value)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("no_such_setting: 1\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_train_config(str(unknown))
    assert resolve_config("none", "preprocess")["steps"] == []  # a shipped preset stays fine
