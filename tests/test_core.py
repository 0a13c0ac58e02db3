"""The records table, the config loader and the CLI skeleton."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from mammoflow.config import from_dict, resolve_config
from mammoflow.errors import ConfigError, InputError
from mammoflow.records import Lesion, QuarantineEntry, Record, RecordsTable, binary_label, check_label


def _record(rid: str, label: str | None = "benign", patient: str = "p1") -> Record:
    return Record(record_id=rid, source="test", patient_id=patient, image_path=f"{rid}.png", label=label,
                  laterality="L", view="CC", lesions=[Lesion("l1", label="benign", center_row=10.0,
                                                             center_col=20.0, radius=5.0)])


def test_records_round_trip_and_summary(tmp_path):
    table = RecordsTable(records=[_record("a"), _record("b", "normal", "p2")], image_root="imgs", source="test")
    table.quarantine.append(QuarantineEntry(path="c.png", code="truncated", problem="short", fix="re-export"))
    summary = table.write(tmp_path)
    assert summary["read"] == 3 and summary["used"] == 2 and summary["quarantined"] == 1
    assert summary["quarantined_by_code"] == {"truncated": 1}
    back = RecordsTable.read(tmp_path)
    assert back.records == table.records
    assert back.quarantine == table.quarantine
    assert back.image_root == "imgs"
    assert back.image_path(back.records[0], tmp_path) == tmp_path / "imgs" / "a.png"
    md = (tmp_path / "quarantine.md").read_text()
    assert "c.png" in md and "re-export" in md
    first = json.loads((tmp_path / "records.jsonl").read_text().splitlines()[0])
    assert first["binary_label"] == "tumour"


def test_duplicate_ids_are_quarantined_not_dropped():
    table = RecordsTable(records=[_record("a"), _record("a"), _record("b")])
    table.check_unique_ids()
    assert [r.record_id for r in table.records] == ["a", "b"]
    assert [q.code for q in table.quarantine] == ["duplicate_id"]
    assert table.summary()["read"] == 3


def test_labels():
    assert binary_label("malignant") == "tumour" and binary_label("normal") == "normal"
    assert binary_label(None) is None
    with pytest.raises(InputError, match="unknown label 'cancer'.*Fix: use one of"):
        check_label("cancer", "x.csv")


def test_reading_a_folder_without_records_says_what_to_do(tmp_path):
    with pytest.raises(InputError, match="mammoflow ingest"):
        RecordsTable.read(tmp_path)


@dataclass
class _Inner:
    size: int = 3


@dataclass
class _Cfg:
    name: str = "x"
    rate: float = 0.1
    sizes: tuple[int, ...] = (1, 2)
    inner: _Inner = field(default_factory=_Inner)
    maybe: str | None = None


def test_from_dict_builds_nested_and_coerces():
    cfg = from_dict(_Cfg, {"rate": 1, "sizes": [3, 4], "inner": {"size": 7}})
    assert cfg == _Cfg(rate=1.0, sizes=(3, 4), inner=_Inner(7))


@pytest.mark.parametrize("data, message", [
    ({"nmae": "typo"}, r"unknown key\(s\) \['nmae'\]"),
    ({"rate": "fast"}, r"_Cfg.rate: expected float"),
    ({"inner": {"size": "big"}}, r"_Cfg.inner.size: expected int"),
])
def test_from_dict_rejects_bad_values_with_the_path(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(_Cfg, data)


def test_resolve_config_from_yaml_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: 1\nb: [x, y]\n")
    assert resolve_config(str(path), "preprocess") == {"a": 1, "b": ["x", "y"]}
    with pytest.raises(ConfigError, match="neither a preprocess preset nor a YAML file"):
        resolve_config("no-such-preset", "preprocess")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config(str(bad), "preprocess")


def test_every_cli_verb_has_help():
    out = subprocess.run([sys.executable, "-m", "mammoflow.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    verbs = [line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()]
    assert verbs, "no CLI verbs registered"
    for verb in verbs:
        res = subprocess.run([sys.executable, "-m", "mammoflow.cli", verb, "--help"], capture_output=True,
                             text=True)
        assert res.returncode == 0, f"`mammoflow {verb} --help` failed: {res.stderr}"
        assert "Usage:" in res.stdout
