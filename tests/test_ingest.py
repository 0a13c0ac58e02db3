"""``mammoflow ingest``: records folders written, summary line, exit codes, no identifier anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mammoflow.commands.ingest import EXIT_NOTHING_USABLE, EXIT_STRICT, command
from mammoflow.io.dicom import pseudonym
from mammoflow.io.images import write_pgm
from mammoflow.records import RecordsTable
from test_sources_dicom_dir import IDENTIFIERS, make_site  # tests/ is on sys.path (pytest prepend mode)


def _run(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(command, args, env=env or {}, catch_exceptions=False)


def test_help_lists_sources_and_exit_codes():
    result = _run(["--help"])
    assert result.exit_code == 0
    for text in ("mias-rois", "cbis-ddsm", "dicom-dir", "--metadata-only", "--strict", "Exit status"):
        assert text in result.output


@pytest.mark.realdata
def test_ingest_real_metadata(mias_info: Path, mias_rois_zip: Path, cbis_csvs: list[Path], tmp_path: Path):
    result = _run(["--source", "mias", "--info", str(mias_info), "--metadata-only", "--out", str(tmp_path / "m")])
    assert result.exit_code == 0
    assert "read 322, used 322, quarantined 0" in result.output
    summary = json.loads((tmp_path / "m" / "ingest_summary.json").read_text())
    assert summary["read"] == summary["used"] + summary["quarantined"] == 322

    result = _run(["--source", "mias-rois", "--root", str(mias_rois_zip), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0 and "used 326" in result.output
    table = RecordsTable.read(tmp_path / "r")
    assert Path(table.image_root) == mias_rois_zip.resolve() and table.source == "mias-rois"

    args = ["--source", "cbis-ddsm", "--metadata-only", "--salt", "s", "--out", str(tmp_path / "c")]
    for csv_path in cbis_csvs:
        args += ["--csv", str(csv_path)]
    result = _run(args)
    assert result.exit_code == 0
    table = RecordsTable.read(tmp_path / "c")
    assert sum(len(r.lesions) for r in table.records) == table.meta["row_accounting"]["rows"] == 3568
    assert table.meta["ingest"]["salt"] == "site salt"


def test_nothing_usable_exits_non_zero_but_writes_the_report(tmp_path: Path):
    root = tmp_path / "mias"
    root.mkdir()
    (root / "Info.txt").write_text("mdb001 G CIRC B 535 425 197\nmdb002 G NORM\n")
    result = _run(["--source", "mias", "--root", str(root), "--out", str(tmp_path / "out")])
    assert result.exit_code == EXIT_NOTHING_USABLE
    assert "read 2, used 0, quarantined 2 (missing_file 2)" in result.output
    report = (tmp_path / "out" / "quarantine.md").read_text()
    assert report.count("missing_file") == 2 and "fetch mias" in report

    write_pgm(root / "mdb002.pgm", np.zeros((1024, 1024), np.uint8))
    result = _run(["--source", "mias", "--root", str(root), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0 and "used 1, quarantined 1" in result.output
    result = _run(["--source", "mias", "--root", str(root), "--strict", "--out", str(tmp_path / "out")])
    assert result.exit_code == EXIT_STRICT
    # Re-running rewrote the folder: no duplicated records.
    assert len(RecordsTable.read(tmp_path / "out").records) == 1


def test_unreadable_input_is_a_clear_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(command, ["--source", "mias", "--root", str(tmp_path / "empty"), "--out",
                                          str(tmp_path / "o")])
    assert result.exit_code == 1 and "Info.txt not found" in result.output and "--info" in result.output
    result = CliRunner().invoke(command, ["--source", "cbis-ddsm", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "--csv" in result.output


def test_dicom_dir_cli_no_identifier_and_site_salt(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    root = tmp_path / "site"
    labels = make_site(root)
    out = tmp_path / "records"
    with caplog.at_level("INFO"):
        result = _run(["--source", "dicom-dir", "--root", str(root), "--labels", str(labels), "--out", str(out)],
                      env={"MAMMOFLOW_SALT": "from-env"})
    assert result.exit_code == 0 and "read 13, used 4, quarantined 8" in result.output
    assert "skipped 1 (sidecar 1)" in result.output
    table = RecordsTable.read(out)
    assert {r.patient_id for r in table.records} == {pseudonym("PAT-0001", "from-env"),
                                                     pseudonym("PAT-0002", "from-env")}
    # Each quarantined item was logged with its problem and fix ...
    assert caplog.text.count("quarantined ") >= 8 and "Fix:" in caplog.text
    blob = b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())
    # ... and no identifier from any header reached a file or the log.
    for ident in IDENTIFIERS:
        assert ident.encode() not in blob and ident not in caplog.text and ident not in result.output, ident

    result = _run(["--source", "dicom-dir", "--root", str(root), "--labels", str(labels), "--strict",
                   "--out", str(out)], env={"MAMMOFLOW_SALT": "from-env"})
    assert result.exit_code == EXIT_STRICT


def test_a_missing_salt_is_an_error_naming_how_to_set_it(tmp_path: Path, monkeypatch):
    """No silent fall-back to the public salt for ids derived from DICOM headers (tests/test_ingest_hardening.py
    has the demo-phantom exception)."""
    from mammoflow.errors import ConfigError

    monkeypatch.delenv("MAMMOFLOW_SALT", raising=False)
    root = tmp_path / "site"
    make_site(root)
    result = CliRunner().invoke(command, ["--source", "dicom-dir", "--root", str(root), "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, ConfigError), result.output
    for how in ("--salt", "MAMMOFLOW_SALT", "mammoflow-salt"):
        assert how in str(result.exception)
    assert not (tmp_path / "o").exists()  # nothing written


def test_pseudonymise_paths_keeps_folder_names_out_of_record_ids(tmp_path: Path):
    from test_sources_dicom_dir import _write

    root = tmp_path / "export"
    _write(root / "DOE^JANE" / "cc.dcm", 1)
    _write(root / "DOE^JANE" / "mlo.dcm", 2, view="MLO")
    out = tmp_path / "records"
    args = ["--source", "dicom-dir", "--root", str(root), "--salt", "site", "--out", str(out)]
    result = _run([*args, "--pseudonymise-paths"])
    assert result.exit_code == 0 and "read 2, used 2" in result.output
    table = RecordsTable.read(out)
    assert sorted(r.record_id for r in table.records) == sorted(
        f"dicom-dir:{pseudonym(f'DOE^JANE/{name}', 'site', prefix='img-')}" for name in ("cc.dcm", "mlo.dcm"))
    # The path to read the image stays in the records table, and nowhere else in the ids.
    assert sorted(r.image_path for r in table.records) == ["DOE^JANE/cc.dcm", "DOE^JANE/mlo.dcm"]
    assert table.meta["paths_pseudonymised"] is True and "DOE" not in result.output

    plain = _run(args)
    assert plain.exit_code == 0
    assert {r.record_id for r in RecordsTable.read(out).records} == {"dicom-dir:DOE^JANE/cc.dcm",
                                                                     "dicom-dir:DOE^JANE/mlo.dcm"}
    refused = CliRunner().invoke(command, ["--source", "mias", "--root", str(root), "--pseudonymise-paths",
                                           "--out", str(tmp_path / "m")])
    assert refused.exit_code == 2 and "--pseudonymise-paths is for --source dicom-dir" in refused.output


def test_a_rerun_on_the_same_inputs_reads_nothing_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Re-running an ingest into its own folder resumes: unchanged inputs are not decoded again; a touched file, a
    new file or another salt reads everything again."""
    import logging
    import os

    from mammoflow.io import images
    from mammoflow.synth.phantoms import write_mias_dataset

    write_mias_dataset(tmp_path / "raw", n_images=6, seed=4)
    args = ["--source", "mias", "--root", str(tmp_path / "raw"), "--salt", "s1", "--out", str(tmp_path / "rec")]
    reads: list[str] = []
    real_read = images.read_image
    monkeypatch.setattr(images, "read_image", lambda path, *a, **k: reads.append(str(path)) or real_read(path, *a, **k))
    first = _run(args)
    assert first.exit_code == 0 and reads, "the first ingest decodes the images"
    records = (tmp_path / "rec" / "records.jsonl").read_bytes()
    stamp = (tmp_path / "rec" / "records.jsonl").stat().st_mtime_ns

    reads.clear()
    with caplog.at_level(logging.INFO, logger="mammoflow"):
        again = _run(args)
    assert again.exit_code == 0 and reads == [] and "nothing read again" in caplog.text
    assert again.output.splitlines()[-1] == first.output.splitlines()[-1]  # the same summary line
    assert (tmp_path / "rec" / "records.jsonl").stat().st_mtime_ns == stamp

    pgm = sorted((tmp_path / "raw").glob("*.pgm"))[0]
    os.utime(pgm, ns=(pgm.stat().st_atime_ns, pgm.stat().st_mtime_ns + 10**9))  # touched: read again
    assert _run(args).exit_code == 0 and reads
    assert (tmp_path / "rec" / "records.jsonl").read_bytes() == records  # same content, nothing duplicated
    reads.clear()
    assert _run(args[:-4] + ["--salt", "s2", "--out", str(tmp_path / "rec")]).exit_code == 0 and reads  # another salt
