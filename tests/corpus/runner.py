"""Write every run's input folder from the kinds table, then run the installed ``mammoflow`` console script on it."""

from __future__ import annotations

import logging
import os
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tests.corpus import cbis_kinds, dicom_kinds, mias_kinds, rois_kinds
from tests.corpus.model import FATAL, SALT, Build, Expect, Kind, RunSpec, Target

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
MAMMOFLOW = Path(os.environ.get("MAMMOFLOW_BIN", REPO / ".venv" / "bin" / "mammoflow"))
TIMEOUT = 300
#: The dataset config of the downstream build: the ``site`` preset at 64x64, so the shards stay small.
DATASET_YAML = """\
description: corpus - whole images 64, benign vs malignant, 60/20/20 split by patient
mode: whole_image
label_scheme: benign_malignant
image_size: 64
pad: true
remove_background: true
seed: 0
splits: {ratios: [0.6, 0.2, 0.2], seed: 0, group_by: patient, stratify_by: label}
"""


# ----------------------------------------------------------------------------------------- the table


def _empty_yaml(b: Build) -> list[Target]:
    (b.root / "empty.yaml").write_text("# nothing but a comment\n")
    return [Target("empty.yaml")]


def _preprocess_argv(paths: dict[str, Path]) -> list[str]:
    return ["preprocess", "--records", str(paths["records_of:dicom"]), "--config", str(paths["root"] / "empty.yaml"),
            "--out", str(paths["out"])]


def _usage(b: Build) -> list[Target]:
    return [Target("--pseudonymise-paths")]


def _usage_argv(paths: dict[str, Path]) -> list[str]:
    return ["ingest", "--source", "mias", "--root", str(paths["root"]), "--pseudonymise-paths", "--out",
            str(paths["out"])]


def all_runs() -> list[RunSpec]:
    """Every run, in the order they execute (the preprocess run reads the ``dicom`` run's records)."""
    return [*dicom_kinds.runs(), *mias_kinds.runs(), *rois_kinds.runs(), *cbis_kinds.runs(),
            RunSpec("preprocess-empty-config", lambda b: b.root.mkdir(parents=True, exist_ok=True),
                    lambda b: None, _preprocess_argv, exit_code=1,
                    notes="an empty YAML --config: exit 1 with a clear message, not silent defaults"),
            RunSpec("usage-error", lambda b: b.root.mkdir(parents=True, exist_ok=True), lambda b: None, _usage_argv,
                    exit_code=2, notes="a usage error (an option of another source): exit 2, the option named")]


def all_kinds() -> list[Kind]:
    """The corpus: every kind of bad input, one row each."""
    return [*dicom_kinds.kinds(), *mias_kinds.kinds(), *rois_kinds.kinds(), *cbis_kinds.kinds(),
            Kind("preprocess_empty_yaml_config", "preprocess-empty-config", _empty_yaml, Expect(FATAL)),
            Kind("usage_dicom_option_for_mias", "usage-error", _usage, Expect(FATAL, why="README: 2 for usage errors"))]


# ----------------------------------------------------------------------------------------- running


@dataclass
class Command:
    name: str
    argv: list[str]
    exit_code: int
    stdout: bytes
    stderr: bytes
    seconds: float


@dataclass
class RunResult:
    spec: RunSpec
    build: Build
    paths: dict[str, Path]
    ingest: Command | None = None
    downstream: list[Command] = field(default_factory=list)
    targets: dict[str, list[Target]] = field(default_factory=dict)  # kind name -> what it must account for
    make_errors: dict[str, str] = field(default_factory=dict)  # kind name -> why the corpus could not write it
    setup_error: str | None = None

    @property
    def commands(self) -> list[Command]:
        return [c for c in (self.ingest, *self.downstream) if c is not None]

    def scan_folders(self) -> list[Path]:
        """Every output of the run: the records folder, downstream outputs, and the saved stdout/stderr."""
        names = ("out", "pre", "data", "pre_png", "data_png", "logs")
        return [self.paths[n] for n in names if n in self.paths and self.paths[n].exists()]


def run_cli(name: str, argv: list[str], logs: Path) -> Command:
    """Run the console script (a site's salt in the environment); stdout and stderr are saved under ``logs``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMOFLOW_")}
    env.update({"MAMMOFLOW_SALT": SALT, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"})
    start = time.monotonic()
    try:
        proc = subprocess.run([str(MAMMOFLOW), *argv], capture_output=True, env=env, timeout=TIMEOUT, check=False)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = -999, exc.stdout or b"", (exc.stderr or b"") + f"\n[timed out after {TIMEOUT}s]".encode()
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{name}.stdout").write_bytes(out)
    (logs / f"{name}.stderr").write_bytes(err)
    seconds = time.monotonic() - start
    log.info("corpus: mammoflow %s -> exit %d in %.1fs", " ".join(argv[:3]), code, seconds)
    return Command(name, argv, code, out, err, seconds)


def build_run(spec: RunSpec, kinds: list[Kind], base: Path, index: dict[str, int], done: dict[str, RunResult]
              ) -> RunResult:
    """Write the run's input folder (good inputs + one entry per kind), then run it."""
    run_dir = base / spec.name
    root_name = {"mias": "mias", "rois": "rois", "cbis": "cbis"}.get(spec.name, "site")
    paths = {"run": run_dir, "root": run_dir / root_name, "out": run_dir / "records", "logs": run_dir / "logs"}
    for name, other in done.items():
        paths[f"records_of:{name}"] = other.paths["out"]
    b = Build(run=spec.name, root=paths["root"], work=run_dir)
    result = RunResult(spec, b, paths)
    paths["root"].mkdir(parents=True, exist_ok=True)
    try:
        spec.setup(b)
        for kind in kinds:
            b.begin(kind.name, index[kind.name])
            try:
                result.targets[kind.name] = kind.make(b)
            except Exception as exc:  # a bug of the corpus, reported against the kind, never a skipped kind
                result.make_errors[kind.name] = f"{type(exc).__name__}: {exc}"
                log.error("corpus: cannot make %s:\n%s", kind.name, traceback.format_exc())
        spec.finish(b)
    except Exception as exc:
        result.setup_error = f"{type(exc).__name__}: {exc}"
        log.error("corpus: cannot set up run %s:\n%s", spec.name, traceback.format_exc())
        return result
    result.ingest = run_cli(spec.name, spec.argv(paths), paths["logs"])
    if spec.downstream:
        run_downstream(result)
    return result


def run_downstream(result: RunResult) -> None:
    """``preprocess`` then ``build-dataset`` on the run's records (shards and PNG exports searched later)."""
    p = result.paths
    p.update({"pre": p["run"] / "pre", "data": p["run"] / "data", "pre_png": p["run"] / "pre_png",
              "data_png": p["run"] / "data_png"})
    config = p["run"] / "dataset.yaml"
    config.write_text(DATASET_YAML)
    for change in result.build.state.get("before_downstream", []):  # inputs that change after the ingest
        change()
    pre = run_cli("preprocess", ["preprocess", "--records", str(p["out"]), "--config", "minimal", "--out",
                                 str(p["pre"]), "--export-png", str(p["pre_png"])], p["logs"])
    result.downstream.append(pre)
    if pre.exit_code == 0:
        result.downstream.append(run_cli("build-dataset", [
            "build-dataset", "--records", str(p["pre"]), "--config", str(config), "--out", str(p["data"]),
            "--export-png", str(p["data_png"])], p["logs"]))


def run_corpus(base: Path) -> tuple[list[Kind], dict[str, RunResult]]:
    """Write and run the whole corpus under ``base``; returns the kinds and the result of every run."""
    kinds = all_kinds()
    index = {k.name: i for i, k in enumerate(kinds, start=1)}
    specs = all_runs()
    unknown = {k.run for k in kinds} - {s.name for s in specs}
    if unknown:
        raise ValueError(f"kinds name runs that do not exist: {sorted(unknown)}")
    results: dict[str, RunResult] = {}
    for spec in specs:
        results[spec.name] = build_run(spec, [k for k in kinds if k.run == spec.name], base, index, results)
    return kinds, results
