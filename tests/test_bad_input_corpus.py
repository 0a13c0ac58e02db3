"""The bad-input corpus (issue 13, build item 9): every kind of bad input, run through the installed ``mammoflow``.

The corpus is generated at test time from the project's own phantoms (DICOMs, PGMs, CSVs, zips) and is read as a
table: ``tests/corpus/*_kinds.py`` hold one row per kind (name, the run that holds it, how to make it, the
documented outcome). The kinds are grouped into a few runs of the console script (one input folder per source
with many bad files and a few good ones; the DICOM folder's records are also preprocessed and sharded), and each
kind is asserted on the result: no traceback, the documented exit code, the input accounted for with its reason,
read = used + quarantined + skipped, and no planted identifier in any output or log (searched as bytes).

The last test writes the corpus size and its counts (crashes, silent drops, identifiers leaked) to
``<pytest tmp>/bad_input_corpus_summary.json`` (and to ``$MAMMOFLOW_CORPUS_SUMMARY`` when set) and logs them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.corpus import checks
from tests.corpus.model import FATAL, Kind
from tests.corpus.runner import MAMMOFLOW, RunResult, all_kinds, all_runs, run_corpus

log = logging.getLogger(__name__)

KINDS = all_kinds()
RUNS = all_runs()
#: What the issue asks the corpus to cover at least (each must be a kind of the table).
REQUIRED = (
    "dicom_truncated", "dicom_corrupt_pixel_data", "dicom_window_empty", "dicom_window_non_numeric",
    "dicom_window_nan", "dicom_window_inf", "dicom_unknown_transfer_syntax", "dicom_rescale_slope_zero",
    "dicom_rescale_nan", "dicom_rescale_overflow", "dicom_modality_holding_name", "dicom_rgb",
    "dicom_8bit_data_16bit_header", "dicom_monochrome1", "dicom_for_processing",
    "dicom_duplicate_sop_uid_other_patient", "dicom_identical_pixels_other_patient",
    "labels_patient_id_contradicts_header", "labels_laterality_mismatch", "labels_unknown_label",
    "labels_unclosed_quote", "labels_duplicated_path_column", "labels_dot_dotdot_path", "labels_path_outside_root",
    "labels_not_utf8", "dicom_nonutf8_file_name", "fs_hidden_file", "fs_hidden_folder", "fs_sidecar_files",
    "fs_symlinked_folder", "dicom_empty_file", "pgm_zero_byte", "pgm_truncated", "pgm_maxval_zero", "pgm_rgb_ppm",
    "info_missing_fields", "info_unknown_class", "info_negative_radius", "info_huge_radius_near_edge",
    "info_coordinates_outside_image", "info_duplicate_mias_id", "zip_macosx_member", "zip_ds_store",
    "zip_slip_member", "zip_roi_60x60", "zip_corrupt_png", "cbis_row_missing_folder", "cbis_folder_without_row",
    "preprocess_empty_yaml_config",
)


@dataclass
class Corpus:
    base: Path
    kinds: list[Kind]
    runs: dict[str, RunResult]
    outputs: dict[str, checks.Outputs]
    problems: dict[str, list[str]]  # kind name -> broken promises
    seconds: float


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    if not MAMMOFLOW.exists():
        pytest.fail(f"the console script {MAMMOFLOW} is not installed (run `make install`)")
    base = tmp_path_factory.mktemp("bad_input_corpus")
    start = time.monotonic()
    kinds, runs = run_corpus(base)
    outputs = {name: checks.load(result) for name, result in runs.items()}
    problems = {k.name: checks.check_kind(k, runs[k.run], outputs[k.run]) for k in kinds}
    return Corpus(base, kinds, runs, outputs, problems, time.monotonic() - start)


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_bad_input_kind(corpus: Corpus, kind: Kind):
    problems = corpus.problems[kind.name]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("run", [r.name for r in RUNS])
def test_run_leaves_no_identifier_and_no_traceback(corpus: Corpus, run: str):
    """The catch-all over a whole run: every planted identifier (also those of its good inputs, and partial or
    unattributed ones) is absent from every output, and no command of the run printed a traceback."""
    result, outputs = corpus.runs[run], corpus.outputs[run]
    assert result.setup_error is None, result.setup_error
    crashes = [why for cmd in result.commands if (why := checks.crash(cmd))]
    leaked = checks.run_leaks(result, outputs)
    assert not crashes and not leaked, "\n".join(crashes + sorted(set(leaked))[:20])


def test_downstream_of_pseudonymised_records(corpus: Corpus):
    """preprocess and build-dataset on the DICOM folder's records (ingested with --pseudonymise-paths) succeed and
    write shards; the identifier search of the ``dicom`` run covers their images, shards and logs."""
    result = corpus.runs["dicom"]
    names = [c.name for c in result.downstream]
    assert names == ["preprocess", "build-dataset"], f"downstream commands run: {names}"
    for cmd in result.downstream:
        assert checks.crash(cmd) is None and cmd.exit_code == 0, \
            f"{cmd.name} exit {cmd.exit_code}: {cmd.stderr.decode('utf-8', 'replace')[-600:]}"
    shards = [name for name, _, _ in corpus.outputs["dicom"].files if name.endswith(".tfrecord")]
    assert shards, "build-dataset wrote no .tfrecord shard to search"


def summarise(corpus: Corpus) -> dict:
    crashed = {name: why for name, r in corpus.runs.items() for cmd in r.commands if (why := checks.crash(cmd))}
    leaked = {f"{name}: {hit}" for name, result in corpus.runs.items()
              for hit in checks.run_leaks(result, corpus.outputs[name])}
    per_kind = {k.name: {"run": k.run, "expected": k.expect.outcome, "codes": list(k.expect.codes),
                         "ok": not corpus.problems[k.name], "problems": corpus.problems[k.name]} for k in corpus.kinds}
    return {
        "corpus_size": len(corpus.kinds),
        "runs": len(corpus.runs),
        "passed": sum(1 for v in per_kind.values() if v["ok"]),
        "failed": sum(1 for v in per_kind.values() if not v["ok"]),
        "crashes": len(crashed),
        "crashed_commands": crashed,
        "silent_drops": sum(1 for k in corpus.kinds if checks.silently_dropped(corpus.problems[k.name])),
        "identifiers_leaked": len(leaked),
        "leaks": sorted(leaked)[:200],
        "seconds": round(corpus.seconds, 1),
        "command_seconds": {f"{n}/{c.name}": round(c.seconds, 1) for n, r in corpus.runs.items() for c in r.commands},
        "kinds": per_kind,
    }


def test_corpus_summary(corpus: Corpus):
    """The corpus covers every kind the issue lists (at least 40 in all); its counts are written for the record."""
    summary = summarise(corpus)
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    (corpus.base.parent / "bad_input_corpus_summary.json").write_text(text)
    if os.environ.get("MAMMOFLOW_CORPUS_SUMMARY"):
        Path(os.environ["MAMMOFLOW_CORPUS_SUMMARY"]).write_text(text)
    log.warning("bad-input corpus: %d kinds in %d runs (%.0fs): %d passed, %d failed; crashes %d, silent drops %d, "
                "identifiers leaked %d (details: %s)", summary["corpus_size"], summary["runs"], summary["seconds"],
                summary["passed"], summary["failed"], summary["crashes"], summary["silent_drops"],
                summary["identifiers_leaked"], corpus.base.parent / "bad_input_corpus_summary.json")
    names = [k.name for k in corpus.kinds]
    assert len(names) == len(set(names)), "two kinds share a name"
    assert len(names) >= 40
    assert not [n for n in REQUIRED if n not in names], "a kind the issue lists is missing from the table"
    assert sum(1 for k in corpus.kinds if k.expect.outcome == FATAL) <= 5, "most kinds must be per-input outcomes"


def test_checks_catch_every_broken_promise(tmp_path: Path):
    """The checker itself, on a hand-made bad run: a traceback, a wrong exit code, a wrong reason code, a silent
    drop, a broken identity and a leaked identifier are each reported (so a green corpus means something)."""
    from tests.corpus.model import QUARANTINED, Build, Expect, RunSpec, Target
    from tests.corpus.runner import Command

    spec = RunSpec("fake", lambda b: None, lambda b: None, lambda p: [], exit_code=0)
    build = Build(run="fake", root=tmp_path / "site", work=tmp_path)
    build.begin("k", 1)
    build.plant("ZZPLANTNAME^K001")
    result = RunResult(spec, build, {"run": tmp_path, "out": tmp_path / "records"})
    result.ingest = Command("fake", ["ingest"], 1, b"", b"Traceback (most recent call last):\n  ...\nKeyError: 'x'\n", 0.1)
    result.targets["k"] = [Target("a/one.dcm"), Target("a/two.dcm")]
    outputs = checks.Outputs(
        quarantine=[{"path": str(tmp_path / "site/a/one.dcm"), "code": "corrupt", "problem": "p", "fix": "f"}],
        summary={"read": 3, "used": 0, "quarantined": 1, "skipped": 0},
        files=[("records/quarantine.md", b"| ZZPLANTNAME^K001 |", False)])
    kind = Kind("k", "fake", lambda b: [], Expect(QUARANTINED, ("truncated",)))
    text = "\n".join(checks.check_kind(kind, result, outputs))
    for expected in ("traceback", "KeyError", "exit 1, documented 0", "as 'corrupt', expected truncated",
                     "a/two.dcm silently dropped", "read 3 != used 0 + quarantined 1 + skipped 0",
                     "'ZZPLANTNAME^K001' in records/quarantine.md"):
        assert expected in text, f"{expected!r} not reported in:\n{text}"
    assert checks.silently_dropped(text.splitlines())
