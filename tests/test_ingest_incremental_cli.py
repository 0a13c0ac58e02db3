"""`mammoflow ingest --incremental`: the CLI path of the retraining issue's incremental ingest."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mammoflow.commands.ingest import command as ingest
from mammoflow.synth.phantoms import write_mias_dataset


def test_incremental_ingest_says_nothing_new_and_keeps_the_records(tmp_path):
    write_mias_dataset(tmp_path / "raw", n_images=6, seed=4)
    runner = CliRunner()
    first = runner.invoke(ingest, ["--source", "mias", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "r1")])
    assert first.exit_code == 0, first.output
    again = runner.invoke(ingest, ["--source", "mias", "--root", str(tmp_path / "raw"), "--incremental",
                                   str(tmp_path / "r1"), "--out", str(tmp_path / "r2")])
    assert again.exit_code == 0, again.output
    assert "nothing new" in again.output
    delta = json.loads((tmp_path / "r2" / "ingest_delta.json").read_text())
    assert delta["nothing_new"] is True
    ids1 = [json.loads(line)["record_id"] for line in (tmp_path / "r1" / "records.jsonl").read_text().splitlines()]
    ids2 = [json.loads(line)["record_id"] for line in (tmp_path / "r2" / "records.jsonl").read_text().splitlines()]
    assert sorted(ids1) == sorted(ids2)


def test_incremental_refuses_metadata_only(tmp_path):
    write_mias_dataset(tmp_path / "raw", n_images=2, seed=4)
    result = CliRunner().invoke(ingest, ["--source", "mias", "--root", str(tmp_path / "raw"), "--metadata-only",
                                         "--incremental", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "--incremental cannot be combined" in result.output
