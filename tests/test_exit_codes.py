"""The exit codes of README "Exit codes", from the installed console script (``.venv/bin/mammoflow``, what a pipeline
step or a shell script runs), as a subprocess, on tiny phantoms (``mammoflow demo-data``).

0 success; 1 an error (one line naming the file and the fix, never a traceback; an unexpected exception too, its
traceback only at ``--log-level DEBUG``); 2 a usage error; 3 ``ingest --strict`` with anything quarantined; 1 from
``ingest``/``preprocess`` when nothing usable is left and from ``preprocess --strict``; 143 ``train`` stopped by
SIGTERM after checkpointing; 130 interrupted (Ctrl-C); 4 ``retrain --once`` refusing the challenger.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent
MAMMOFLOW = shutil.which("mammoflow", path=str(BIN)) or shutil.which("mammoflow")
pytestmark = pytest.mark.skipif(MAMMOFLOW is None, reason="the mammoflow console script is not installed "
                                                          "(pip install -e .)")

# A tiny model whose one epoch still lasts long enough (seconds, on any machine) to be interrupted inside it:
# many 32x32 patches. Interrupted, it never runs to the end.
TRAIN_SETS = ["data.patch_size=32", "data.patches_per_roi={normal: 480, tumour: 960}", "data.batch_size=16",
              "schedule.checkpoint_every_steps=1000", "class_weights=none",
              "schedule.phases=[{epochs: 1, learning_rate: 0.003, trainable_backbone: true}]"]


def env() -> dict[str, str]:
    return {**os.environ, "MAMMOFLOW_SALT": "exit-code-tests", "CI": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}


def mammoflow(*args: object, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    assert MAMMOFLOW is not None
    return subprocess.run([MAMMOFLOW, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env())


def expect(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The process's stdout + stderr, after checking its exit code and that no traceback was printed."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}:\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    return text


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if " ERROR " in line or line.startswith("Error:")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """Phantoms -> records -> preprocessed -> dataset, every step through the console script (each exits 0)."""
    base = tmp_path_factory.mktemp("exit_codes")
    expect(mammoflow("demo-data", "--out", "raw", "--n-images", 16, "--seed", 1, cwd=base), 0)
    expect(mammoflow("ingest", "--source", "mias", "--root", "raw", "--out", "records", cwd=base), 0)
    expect(mammoflow("preprocess", "--records", "records", "--config", "yu2020", "--out", "pre", cwd=base), 0)
    expect(mammoflow("build-dataset", "--records", "pre", "--config", "yu2020", "--out", "data", cwd=base), 0)
    return base


def _copy_raw(demo: Path, name: str) -> Path:
    dest = demo / name
    shutil.copytree(demo / "raw", dest)
    return dest


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def test_success_is_0(demo):
    expect(mammoflow("--version", cwd=demo), 0)
    expect(mammoflow("preprocess", "--help", cwd=demo), 0)
    assert (demo / "data" / "manifest.json").is_file()
    # a re-run of a finished step resumes and succeeds
    again = expect(mammoflow("preprocess", "--records", "records", "--config", "yu2020", "--out", "pre", cwd=demo), 0)
    assert "reused 16" in again


def test_usage_errors_are_2(demo):
    expect(mammoflow("no-such-verb", cwd=demo), 2)
    missing = expect(mammoflow("ingest", "--source", "mias", cwd=demo), 2)
    assert "--root" in missing or "--out" in missing
    expect(mammoflow("ingest", "--source", "no-such-source", "--root", "raw", "--out", "x", cwd=demo), 2)


def test_an_error_is_1_with_one_line_naming_the_file_and_the_fix(demo):
    text = expect(mammoflow("preprocess", "--records", "records", "--config", "missing.yaml", "--out", "p1",
                            cwd=demo), 1)
    [line] = error_lines(text)
    assert "missing.yaml" in line and "Fix:" in line
    (demo / "empty.yaml").write_text("# nothing set yet\n")
    text = expect(mammoflow("preprocess", "--records", "records", "--config", "empty.yaml", "--out", "p2",
                            cwd=demo), 1)
    [line] = error_lines(text)
    assert "empty.yaml" in line and "empty" in line and "Fix:" in line
    assert not (demo / "p2").exists()


def test_an_unexpected_exception_is_1_and_one_line_its_traceback_at_debug(demo):
    """A records folder whose records_meta.json is not JSON: no verb expects that; still one line and exit 1."""
    broken = demo / "records-broken-meta"
    shutil.copytree(demo / "records", broken)
    (broken / "records_meta.json").write_text("{not json")
    args = ("preprocess", "--records", broken.name, "--config", "minimal", "--out", "p-broken")
    text = expect(mammoflow(*args, cwd=demo), 1)
    assert len(error_lines(text)) == 1, text
    debug = mammoflow("--log-level", "DEBUG", *args, cwd=demo)
    assert debug.returncode == 1 and "Traceback" in debug.stderr, debug.stderr[-3000:]


def test_ingest_strict_is_3_and_nothing_usable_is_1(demo):
    some_bad = _copy_raw(demo, "raw-one-bad")
    _truncate(some_bad / "mdb003.pgm")
    text = expect(mammoflow("ingest", "--source", "mias", "--root", some_bad.name, "--out", "rec-lenient", cwd=demo),
                  0)
    assert "quarantined 1" in text
    expect(mammoflow("ingest", "--source", "mias", "--root", some_bad.name, "--out", "rec-strict", "--strict",
                     cwd=demo), 3)

    all_bad = _copy_raw(demo, "raw-all-bad")
    for pgm in all_bad.glob("*.pgm"):
        _truncate(pgm)
    text = expect(mammoflow("ingest", "--source", "mias", "--root", all_bad.name, "--out", "rec-empty", cwd=demo), 1)
    assert "nothing usable" in text


def test_preprocess_nothing_usable_or_strict_is_1(demo):
    lost = _copy_raw(demo, "raw-lost-later")
    expect(mammoflow("ingest", "--source", "mias", "--root", lost.name, "--out", "rec-lost", cwd=demo), 0)
    (lost / "mdb005.pgm").unlink()  # gone after the ingest: quarantined by preprocess
    text = expect(mammoflow("preprocess", "--records", "rec-lost", "--config", "minimal", "--out", "pre-lenient",
                            cwd=demo), 0)
    assert "quarantined 1 new" in text
    text = expect(mammoflow("preprocess", "--records", "rec-lost", "--config", "minimal", "--out", "pre-strict",
                            "--strict", cwd=demo), 1)
    assert "--strict" in text

    for pgm in lost.glob("*.pgm"):
        pgm.unlink()
    text = expect(mammoflow("preprocess", "--records", "rec-lost", "--config", "minimal", "--out", "pre-none",
                            cwd=demo), 1)
    assert "no usable record" in text


def _start_training(demo: Path, out: str) -> subprocess.Popen[str]:
    """``mammoflow train`` in its own process, returned once it is inside its first epoch."""
    assert MAMMOFLOW is not None
    sets = [a for s in TRAIN_SETS for a in ("--set", s)]
    proc = subprocess.Popen([MAMMOFLOW, "train", "--config", "demo", "--data", "data", "--out", out, *sets],
                            cwd=demo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if list((demo / out).rglob("events.out.tfevents*")):  # TensorBoard's file: the first epoch has begun
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    time.sleep(1.0)
    return proc


@pytest.mark.slow
def test_train_stopped_by_sigterm_checkpoints_and_exits_143(demo):
    proc = _start_training(demo, "run-term")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 143, out[-3000:]
    assert "Traceback" not in out
    state = json.loads((demo / "run-term" / "checkpoints" / "state.json").read_text())
    assert state["epochs_done"] == 0 and state["step_in_epoch"] > 0, state


@pytest.mark.slow
def test_train_interrupted_by_ctrl_c_exits_130(demo):
    proc = _start_training(demo, "run-int")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted" in out and "Traceback" not in out


def _swallowing_ctrl_c() -> None:
    """A verb inside a C extension's Python callback: Ctrl-C arrives, the extension reports another error."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler runs here
    except KeyboardInterrupt:
        raise SystemError("Objects/listobject.c:338: bad argument to internal function") from None
    raise AssertionError("SIGINT did not interrupt")


def test_ctrl_c_turned_into_another_error_still_exits_130(monkeypatch, capsys, caplog):
    from mammoflow import cli

    monkeypatch.setattr(cli.cli, "main", lambda **kw: _swallowing_ctrl_c())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert cli.main(["train"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back

    def plain_error(**kw):
        raise SystemError("bad argument to internal function")

    monkeypatch.setattr(cli.cli, "main", plain_error)
    assert cli.main(["train"]) == 1  # the same error without a Ctrl-C is an unexpected error
    assert "unexpected error: SystemError" in caplog.text


@pytest.mark.slow
def test_retrain_refusing_the_challenger_exits_4(demo):
    """A first model judged by minimums it cannot reach (ROC-AUC above 1) is refused: the whole retraining, one
    short training, from the console script."""
    watched = _copy_raw(demo, "watched")
    config = {
        "name": "exit-codes", "source": {"name": "mias", "root": str(watched)},
        "work_dir": str(demo / "retrain-work"), "storage_root": str(demo / "retrain-store"),
        "preprocess": "yu2020", "dataset": "yu2020", "train": "demo",
        "train_overrides": {"data.patch_size": 32, "data.patches_per_roi": {"normal": 4, "tumour": 8},
                            "schedule.phases": [{"epochs": 1, "learning_rate": 0.003, "trainable_backbone": True}]},
        "evaluation": {"split": "test", "n_bootstrap": 100},
        "blessing": {"first_model": "require_minimums", "minimums": {"roc_auc": 1.5}, "level": "patch",
                     "n_bootstrap": 100, "rules": [{"metric": "roc_auc", "margin": 0.05}]},
    }
    (demo / "retrain.yaml").write_text(yaml.safe_dump(config))
    text = expect(mammoflow("retrain", "--config", "retrain.yaml", "--once", cwd=demo, timeout=900), 4)
    assert "NOT BLESSED" in text and "did not reach" in text
