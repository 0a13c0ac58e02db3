"""Synthetic phantoms: determinism, anatomy, lesions, and the MIAS-like and CBIS-DDSM-like dataset writers."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from mammoflow.cli import cli
from mammoflow.errors import ConfigError
from mammoflow.io.dicom import read_dicom
from mammoflow.io.images import read_image
from mammoflow.synth.layouts import CALC_COLUMNS, MASS_COLUMNS
from mammoflow.synth.mammogram import KINDS, disc_mask, make_phantom
from mammoflow.synth.phantoms import write_dicom_dataset, write_mias_dataset

ALL_LESIONS = [("circumscribed", "benign"), ("spiculated", "malignant"), ("calcification", "malignant")]
# A MIAS record: REFNUM BG CLASS SEVERITY X Y RADIUS, or REFNUM BG NORM followed by a blank.
# (The real file also has abnormal lines without coordinates, some marked "*NOTE 3*".)
MIAS_RECORD = re.compile(r"^(mdb\d{3}) ([FGD]) (?:(NORM) |(CIRC|SPIC|CALC|MISC|ARCH|ASYM) ([BM])"
                         r"(?: (\d+) (\d+) (\d+)| \*NOTE \d\*)?)\s*$")


def _parse_info(text: str) -> list[tuple[str, ...]]:
    """Record lines of an Info.txt, as (refnum, bg, class, severity, x, y, radius) with None for blanks."""
    out = []
    for line in text.splitlines():
        if not line.startswith("mdb"):
            continue
        m = MIAS_RECORD.match(line)
        assert m, f"not a MIAS record line: {line!r}"
        refnum, bg, norm, cls, sev, x, y, r = m.groups()
        out.append((refnum, bg, norm or cls, sev, x, y, r))
    return out


# --------------------------------------------------------------------------- one phantom


def test_same_seed_same_bytes_and_other_seed_differs() -> None:
    a = make_phantom(7, shape=(256, 192), laterality="R", view="MLO", lesions=ALL_LESIONS)
    b = make_phantom(7, shape=(256, 192), laterality="R", view="MLO", lesions=ALL_LESIONS)
    c = make_phantom(8, shape=(256, 192), laterality="R", view="MLO", lesions=ALL_LESIONS)
    assert a.image.tobytes() == b.image.tobytes() and a.lesions == b.lesions
    np.testing.assert_array_equal(a.lesion_mask, b.lesion_mask)
    assert a.image.tobytes() != c.image.tobytes()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_lesions_inside_the_breast_and_brighter_than_around(seed: int, view: str) -> None:
    laterality = "L" if seed % 2 else "R"
    p = make_phantom(seed, shape=(320, 256), laterality=laterality, view=view, lesions=ALL_LESIONS,
                     density="FGD"[seed % 3])
    assert len(p.lesions) == 3 and {les.kind for les in p.lesions} == set(KINDS)
    assert not (p.lesion_mask & ~p.breast_mask).any()
    if view == "MLO":
        assert p.pectoral_mask is not None and p.pectoral_mask.any()
        assert not (p.lesion_mask & p.pectoral_mask).any()
    else:
        assert p.pectoral_mask is None
    img = p.image.astype(np.float64)
    for les in p.lesions:
        assert p.breast_mask[les.center_row, les.center_col] and p.lesion_mask[les.center_row, les.center_col]
        core = disc_mask(img.shape, les.center_row, les.center_col, max(2, les.radius * 0.35))
        ring = disc_mask(img.shape, les.center_row, les.center_col, les.radius * 2.0) & \
            ~disc_mask(img.shape, les.center_row, les.center_col, les.radius * 1.2) & p.breast_mask & ~p.lesion_mask
        if p.pectoral_mask is not None:
            ring &= ~p.pectoral_mask
        if les.kind == "calcification":  # a few tiny dots: the brightest ones stand out
            disc = disc_mask(img.shape, les.center_row, les.center_col, les.radius)
            assert img[disc].max() > np.percentile(img[ring], 99) + 20, les
        else:
            assert img[core].mean() > img[ring].mean() + 10, les


def test_laterality_view_label_and_bit_depth() -> None:
    left = make_phantom(3, shape=(256, 256), laterality="L", view="MLO", bits=12)
    right = make_phantom(3, shape=(256, 256), laterality="R", view="MLO", bits=12)
    assert left.image.dtype == np.uint16 and int(left.image.max()) <= 4095
    # The chest wall is at column 0 for a left breast, at the last column for a right one.
    assert left.breast_mask[:, 0].mean() > 0.5 and not left.breast_mask[:, -1].any()
    assert right.breast_mask[:, -1].mean() > 0.5 and not right.breast_mask[:, 0].any()
    # The pectoral muscle sits in the upper chest-wall corner.
    assert left.pectoral_mask[:20, :20].all() and not left.pectoral_mask[-20:, :].any()
    # The burned-in label is away from the breast, bright, on the side away from the chest wall.
    for p, far_side_right in ((left, True), (right, False)):
        r0, c0, r1, c1 = p.text_box
        assert not p.breast_mask[r0:r1, c0:c1].any()
        assert p.image[r0:r1, c0:c1].max() > 0.9 * 4095
        assert (c0 > 128) == far_side_right
    assert make_phantom(0, shape=(64, 64), bits=8).image.dtype == np.uint8


def test_background_is_dark_and_tissue_is_not() -> None:
    p = make_phantom(11, shape=(256, 256), laterality="L", view="CC", label_text="")
    assert p.text_box is None
    assert np.median(p.image[~p.breast_mask]) < 15
    assert np.median(p.image[p.breast_mask]) > 80


def test_a_1024_phantom_is_fast() -> None:
    make_phantom(0, shape=(128, 128))  # warm up imports
    best = min(_timed(seed) for seed in range(3))
    assert best < 1.0, f"1024x1024 phantom took {best:.2f}s"


def _timed(seed: int) -> float:
    start = time.perf_counter()
    make_phantom(seed, shape=(1024, 1024), view="MLO", lesions=ALL_LESIONS)
    return time.perf_counter() - start


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_phantom(0, laterality="X")
    with pytest.raises(ValueError):
        make_phantom(0, lesions=[("blob", "benign")])
    with pytest.raises(ValueError):
        make_phantom(0, shape=(16, 16))


# --------------------------------------------------------------------------- MIAS-like dataset


@pytest.fixture(scope="module")
def mias(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mias")
    return out, write_mias_dataset(out, n_images=9, seed=5, size=256)


def test_mias_files_pairs_and_lesion_share(mias: tuple[Path, dict]) -> None:
    out, truth = mias
    names = sorted(p.name for p in out.glob("*.pgm"))
    assert names == [f"mdb{k:03d}.pgm" for k in range(1, 10)]
    assert (out / "mdb001.pgm").read_bytes().startswith(b"P5\n256 256\n255\n")
    for entry in truth["images"]:
        k = int(entry["refnum"][3:])
        img = read_image(out / entry["file"])
        assert img.shape == (256, 256) and img.dtype == np.uint8
        # MIAS: even numbers are left breasts (chest wall on the left here), odd numbers right ones.
        assert entry["laterality"] == ("L" if k % 2 == 0 else "R")
        chest, far = (img[:, :8], img[:, -8:]) if entry["laterality"] == "L" else (img[:, -8:], img[:, :8])
        assert chest.mean() > far.mean() + 30
        assert entry["patient_index"] == (k - 1) // 2
    assert sum(1 for e in truth["images"] if e["lesions"]) == 3  # a third of 9


def test_mias_info_txt_format_and_origin(mias: tuple[Path, dict]) -> None:
    out, truth = mias
    text = (out / "Info.txt").read_text()
    first_record = text.index("\nmdb001 ")
    assert "bottom-left" in text[:first_record]  # header text first, with the conventions
    records = _parse_info(text)
    by_ref = {e["refnum"]: e for e in truth["images"]}
    for refnum, entry in by_ref.items():
        lines = [r for r in records if r[0] == refnum]
        assert len(lines) == max(1, len(entry["lesions"]))  # several lines for several lesions
        for line in text.splitlines():
            if line.startswith(refnum) and " NORM" in line:
                assert line.endswith("NORM ")  # the real file's trailing blank
    for refnum, _bg, cls, sev, x, y, r in records:
        if cls == "NORM":
            continue
        lesions = by_ref[refnum]["lesions"]
        row, col = 256 - int(y), int(x)
        # The MIAS coordinate, read with the bottom-left origin, falls inside the lesion's disc.
        inside = [les for les in lesions if disc_mask((256, 256), les["center_row"], les["center_col"],
                                                       les["radius"])[row, col]]
        assert inside, (refnum, x, y)
        assert any(les["radius"] == int(r) and les["label"][0].upper() == sev for les in inside)


@pytest.mark.realdata
def test_mias_info_txt_parses_like_the_real_file(mias: tuple[Path, dict], mias_info: Path) -> None:
    real = _parse_info(mias_info.read_text(errors="replace"))
    ours = _parse_info((mias[0] / "Info.txt").read_text())
    assert len(real) > 300 and ours

    def shape(rec: tuple[str, ...]) -> tuple[bool, ...]:
        return tuple(v is None for v in rec)

    assert {shape(r) for r in ours} <= {shape(r) for r in real}
    real_norm = [line for line in mias_info.read_text(errors="replace").splitlines()
                 if line.startswith("mdb") and " NORM" in line]
    assert real_norm
    assert all(line.endswith(" ") for line in real_norm)


def test_mias_rerun_resumes_and_refuses_a_different_dataset(mias: tuple[Path, dict]) -> None:
    out, truth = mias
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert write_mias_dataset(out, n_images=9, seed=5, size=256) == truth
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(ConfigError, match="different demo dataset"):
        write_mias_dataset(out, n_images=9, seed=6, size=256)


# --------------------------------------------------------------------------- CBIS-DDSM-like dataset


@pytest.fixture(scope="module")
def cbis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cbis")
    return out, write_dicom_dataset(out, n_images=16, seed=3, size=(192, 144))


def _csv_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(), newline="")))


def test_cbis_csv_headers_are_the_real_ones(cbis: tuple[Path, dict]) -> None:
    out, _ = cbis
    for name in ("mass_case_description_train_set.csv", "mass_case_description_test_set.csv"):
        assert (out / name).read_bytes().split(b"\r\n", 1)[0].decode().split(",") == MASS_COLUMNS
    for name in ("calc_case_description_train_set.csv", "calc_case_description_test_set.csv"):
        assert (out / name).read_bytes().split(b"\r\n", 1)[0].decode().split(",") == CALC_COLUMNS
    assert "breast_density" in MASS_COLUMNS and "breast density" in CALC_COLUMNS


@pytest.mark.realdata
def test_cbis_csv_headers_match_the_official_files(cbis: tuple[Path, dict], cbis_csvs: list[Path]) -> None:
    for real in cbis_csvs:
        ours = cbis[0] / real.name
        assert ours.read_bytes().split(b"\n", 1)[0] == real.read_bytes().split(b"\n", 1)[0]


def test_cbis_csv_content_and_quirks(cbis: tuple[Path, dict]) -> None:
    out, truth = cbis
    rows = {name: _csv_rows(out / name) for name in truth["csv_files"]}
    assert all(rows.values()), "every one of the four CSVs has rows"
    on_disk = {p.name for p in (out / "CBIS-DDSM").iterdir()}
    newline_fields = 0
    for name, table in rows.items():
        for row in table:
            assert row["pathology"] in ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK")
            for column in ("image file path", "cropped image file path", "ROI mask file path"):
                value = row[column]
                newline_fields += value.endswith("\n")
                case, uid1, uid2, leaf = value.strip().split("/")
                assert case in on_disk  # the case folder matches the download...
                assert not (out / "CBIS-DDSM" / case / uid1).exists()  # ...the UID folders do not
                assert uid1.startswith("1.3.6.1.4.1.9590.") and leaf in ("000000.dcm", "000001.dcm")
            prefix = f"{name.split('_')[0].capitalize()}-{'Test' if 'test' in name else 'Training'}"
            assert row["image file path"].strip().split("/")[0] == \
                f"{prefix}_{row['patient_id']}_{row['left or right breast']}_{row['image view']}"
    assert newline_fields > 0
    patients = {name: {r["patient_id"] for r in table} for name, table in rows.items()}
    for kind in ("mass", "calc"):  # patient-disjoint within one abnormality type
        train, test = (patients[f"{kind}_case_description_{s}_set.csv"] for s in ("train", "test"))
        assert not train & test
    mass = patients["mass_case_description_train_set.csv"] | patients["mass_case_description_test_set.csv"]
    calc = patients["calc_case_description_train_set.csv"] | patients["calc_case_description_test_set.csv"]
    assert mass & calc  # some patient has both, as in the real data


def test_cbis_dicoms_crops_masks_and_ground_truth(cbis: tuple[Path, dict]) -> None:
    out, truth = cbis
    photometrics, syntaxes = set(), set()
    for entry in truth["images"]:
        full = read_dicom(out / entry["file"], salt="t")
        assert (full.rows, full.cols) == (192, 144) and full.modality == "MG"
        assert (full.laterality, full.view) == (entry["laterality"], entry["view"])
        assert full.bits_stored == entry["bits_stored"] in (12, 14, 16)
        photometrics.add(full.photometric)
        syntaxes.add(full.transfer_syntax)
        # Tissue is bright whatever the photometric: the chest-wall edge beats the far corner.
        chest = full.pixels[:, :6] if entry["laterality"] == "L" else full.pixels[:, -6:]
        far = full.pixels[-20:, -20:] if entry["laterality"] == "L" else full.pixels[-20:, :20]
        assert chest.mean() > far.mean() + 10000
        assert entry["lesions"]
        for les in entry["lesions"]:
            folder = (out / les["crop_file"]).parent
            assert sorted(p.name for p in folder.iterdir()) == ["1-1.dcm", "1-2.dcm"]
            mask_ds = pydicom.dcmread(out / les["mask_file"])
            mask = mask_ds.pixel_array
            assert mask.shape == (192, 144) and set(np.unique(mask)) == {0, 255}
            assert mask[les["center_row"], les["center_col"]] == 255
            crop = read_dicom(out / les["crop_file"])
            r0, c0, r1, c1 = les["crop_box"]
            np.testing.assert_array_equal(crop.pixels, full.pixels[r0:r1, c0:c1])
            assert crop.pixels.shape != mask.shape  # crop and mask are told apart by content
        # The headers carry the fake identifiers; the reader's result shows none of them.
        ds = pydicom.dcmread(out / entry["file"], stop_before_pixels=True)
        ids = entry["header_identifiers"]
        assert str(ds.PatientName) == ids["PatientName"] and ds.PatientID == ids["PatientID"]
        for value in ids.values():
            assert value not in repr(full)
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    assert len(syntaxes) >= 2
    crop_names = {Path(les["crop_file"]).name for e in truth["images"] for les in e["lesions"]}
    assert crop_names == {"1-1.dcm", "1-2.dcm"}  # the file name does not tell crop from mask


def test_cbis_same_seed_same_files(cbis: tuple[Path, dict], tmp_path: Path) -> None:
    out, truth = cbis
    again = write_dicom_dataset(tmp_path, n_images=16, seed=3, size=(192, 144))
    assert json.dumps(again, sort_keys=True) == json.dumps(truth, sort_keys=True)
    for entry in truth["images"][:3]:
        assert (tmp_path / entry["file"]).read_bytes() == (out / entry["file"]).read_bytes()
    for name in truth["csv_files"]:
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


# --------------------------------------------------------------------------- CLI


def test_cli_demo_data(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["demo-data", "--help"])
    assert result.exit_code == 0 and "--n-images" in result.output and "--format" in result.output
    result = runner.invoke(cli, ["demo-data", "--out", str(tmp_path / "m"), "--n-images", "3", "--size", "128"])
    assert result.exit_code == 0, result.output
    assert "3 MIAS-like PGM phantom images" in result.output
    assert (tmp_path / "m" / "Info.txt").exists() and (tmp_path / "m" / "mdb003.pgm").exists()
    result = runner.invoke(cli, ["demo-data", "--out", str(tmp_path / "d"), "--format", "dicom",
                                 "--n-images", "2", "--size", "128x96", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "2 CBIS-DDSM-like DICOM phantom images" in result.output
    assert len(list((tmp_path / "d" / "CBIS-DDSM").rglob("*.dcm"))) >= 2 + 2 * 2
    result = runner.invoke(cli, ["demo-data", "--out", str(tmp_path / "x"), "--size", "128x96"])
    assert result.exit_code != 0 and "square" in result.output


def test_cbis_layout_does_not_depend_on_the_interpreters_hash_seed() -> None:
    # Each Python process salts str hashes at random, so the iteration order of a set of strings changes from one
    # process to the next: a plan drawn while iterating one gave other splits in another process.
    import os
    import subprocess
    import sys

    script = ("import dataclasses, json, numpy as np; from mammoflow.synth.phantoms import _plan_cbis; "
              "print(json.dumps([list({'mass', 'calc'}), [dataclasses.asdict(b) for b in "
              "_plan_cbis(np.random.default_rng(0), 40)]], default=str))")
    outputs = []
    for seed in ("1", "2", "3", "4", "5", "6"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        outputs.append(json.loads(done.stdout))
    assert len({tuple(order) for order, _ in outputs}) == 2  # the seeds do iterate the set in both orders
    assert all(plan == outputs[0][1] for _, plan in outputs)
