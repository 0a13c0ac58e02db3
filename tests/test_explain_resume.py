"""`mammoflow explain` never loses work: a bad image is quarantined (path, problem, fix, code in explain.json) and
the others go on; a re-run reuses the maps made with the same model, settings and input, and redoes the rest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mammoflow.cli import cli
from mammoflow.errors import InputError
from mammoflow.evaluation.explain import EXPLAIN_INDEX, explain
from mammoflow.io.images import encode_png, write_png
from mammoflow.records import Lesion, Record, RecordsTable
from mammoflow.synth.phantoms import make_phantom

SHAPE = (160, 160)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """Xi et al.'s GAP + dense AlexNet, untrained: maps are computed the same way, the weights do not matter."""
    from mammoflow.models import create_model

    path = tmp_path_factory.mktemp("model") / "model.keras"
    create_model("xi_alexnet", input_shape=(96, 96, 1), num_classes=2, weights="none", seed=0).save(path)
    return path


def _phantom(seed: int):
    return make_phantom(seed, shape=SHAPE, lesions=[("circumscribed", "malignant")])


@pytest.fixture()
def records(tmp_path: Path) -> Path:
    """Three records with a lesion each; ``demo:c``'s image is a truncated PNG."""
    folder = tmp_path / "records"
    recs = []
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        ph = _phantom(seed)
        les = ph.lesions[0]
        write_png(folder / "img" / f"{name}.png", ph.image)
        recs.append(Record(record_id=f"demo:{name}", source="demo", patient_id=f"p{name}", image_path=f"{name}.png",
                           label="malignant", lesions=[Lesion(lesion_id="1", center_row=les.center_row,
                                                              center_col=les.center_col, radius=les.radius)]))
    (folder / "img" / "c.png").write_bytes(encode_png(_phantom(3).image)[:300])
    RecordsTable(records=recs, image_root="img").write(folder)
    return folder


def _stamps(out: Path) -> dict[str, tuple[int, int]]:
    """Which file version each map is: an atomic rewrite makes a new inode (and a new mtime)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.glob("*_cam.npy"))}


def test_a_bad_image_is_quarantined_and_the_others_are_indexed(model_file, records, tmp_path):
    out = tmp_path / "cams"
    index = explain(str(model_file), out=out, records=records)
    assert sorted(index["explained_now"]) == ["demo_a", "demo_b"] and index["reused_now"] == []
    on_disk = json.loads((out / EXPLAIN_INDEX).read_text())
    assert [img["record_id"] for img in on_disk["images"]] == ["demo:a", "demo:b"]
    (held,) = on_disk["quarantine"]
    assert held["record_id"] == "demo:c" and held["code"] == "truncated"
    assert held["path"] == str(records / "img" / "c.png") and held["problem"] and held["fix"]
    assert on_disk["summary"]["n_quarantined"] == 1 and on_disk["summary"]["quarantined_by_code"] == {"truncated": 1}
    assert on_disk["summary"]["n_images"] == 2 and len(on_disk["fingerprint"]) == 64
    assert on_disk["last_run"] == {"computed": 2, "reused": 0, "quarantined": 1}
    assert not list(out.glob("demo_c*"))
    for img in on_disk["images"]:
        assert (out / img["overlay"]).is_file() and (out / img["cam_npy"]).is_file()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_rerun_reuses_maps_with_the_same_fingerprint_only(model_file, records, tmp_path):
    out = tmp_path / "cams"
    explain(str(model_file), out=out, records=records)
    stamps = _stamps(out)
    assert len(stamps) == 2

    # An index lost with the process (a kill between two images) costs nothing: the maps are found again.
    (out / EXPLAIN_INDEX).unlink()
    again = explain(str(model_file), out=out, records=records)
    assert sorted(again["reused_now"]) == ["demo_a", "demo_b"] and len(again["quarantined_now"]) == 1
    assert _stamps(out) == stamps
    assert again["last_run"] == {"computed": 0, "reused": 2, "quarantined": 1}
    assert again["summary"]["n_images"] == 2 and again["summary"]["n_scored"] == 2

    # A changed input image is computed again, the unchanged one reused.
    write_png(records / "img" / "b.png", _phantom(12).image)
    changed = explain(str(model_file), out=out, records=records)
    assert changed["reused_now"] == ["demo_a"]
    now = _stamps(out)
    assert now["demo_a_cam.npy"] == stamps["demo_a_cam.npy"] and now["demo_b_cam.npy"] != stamps["demo_b_cam.npy"]

    # The repaired image joins the index and leaves the quarantine.
    write_png(records / "img" / "c.png", _phantom(3).image)
    repaired = explain(str(model_file), out=out, records=records)
    assert sorted(repaired["reused_now"]) == ["demo_a", "demo_b"] and repaired["quarantined_now"] == []
    assert repaired["quarantine"] == [] and repaired["summary"]["n_images"] == 3

    # Other settings change the fingerprint: everything is computed again, in a new index.
    other = explain(str(model_file), out=out, records=records, tolerance=3.0)
    assert other["reused_now"] == [] and other["fingerprint"] != repaired["fingerprint"]
    assert all(v != _stamps(out)[k] for k, v in now.items())


def test_cli_paths_and_unknown_ids_are_quarantined(model_file, records, tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    write_png(good, _phantom(5).image)
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "cams"
    args = ["explain", "--model", str(model_file), "--out", str(out), "--image", str(good), "--image", str(bad)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "explained 1 image(s)" in result.output and "1 quarantined" in result.output
    index = json.loads((out / EXPLAIN_INDEX).read_text())
    assert [img["name"] for img in index["images"]] == ["good"]
    assert [(q["path"], q["code"]) for q in index["quarantine"]] == [(str(bad), "format")]

    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "1 reused" in result.output

    ids = ["explain", "--model", str(model_file), "--out", str(tmp_path / "ids"), "--records", str(records),
           "--image", "demo:a", "--image", "demo:nope"]
    result = CliRunner().invoke(cli, ids)
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "ids" / EXPLAIN_INDEX).read_text())
    assert [img["record_id"] for img in index["images"]] == ["demo:a"]
    (held,) = index["quarantine"]
    assert (held["record_id"], held["code"]) == ("demo:nope", "missing_record") and "records.jsonl" in held["fix"]


def test_nothing_usable_fails_but_still_writes_the_quarantine(model_file, records, tmp_path):
    out = tmp_path / "cams"
    with pytest.raises(InputError, match="none of the 1 image"):
        explain(str(model_file), out=out, records=records, images=["demo:c"])
    index = json.loads((out / EXPLAIN_INDEX).read_text())
    assert index["images"] == [] and [q["record_id"] for q in index["quarantine"]] == ["demo:c"]


def test_inputs_with_the_same_stem_do_not_overwrite_each_other(model_file, tmp_path):
    first, second = tmp_path / "one" / "x.png", tmp_path / "two" / "x.png"
    write_png(first, _phantom(6).image)
    write_png(second, _phantom(7).image)
    index = explain(str(model_file), out=tmp_path / "cams", images=[str(first), str(second)])
    names = index["explained_now"]
    assert len(set(names)) == 2 and names[0] == "x"
    maps = [np.load(tmp_path / "cams" / f"{n}_cam.npy") for n in names]
    assert not np.array_equal(*maps)

    # A later call with another x.png keeps both earlier maps too.
    third = tmp_path / "three" / "x.png"
    write_png(third, _phantom(8).image)
    later = explain(str(model_file), out=tmp_path / "cams", images=[str(third)])
    assert later["explained_now"][0] not in names
    assert sorted(img["source"] for img in later["images"]) == sorted(map(str, (first, second, third)))
    assert np.array_equal(np.load(tmp_path / "cams" / "x_cam.npy"), maps[0])
