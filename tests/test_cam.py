"""Class activation maps: the pure map functions, CAM / Grad-CAM against the model, pointing game on phantoms,
``mammoflow explain`` from paths and record ids, and the memory bound on a full-size 16-bit mammogram."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mammoflow.cli import cli
from mammoflow.evaluation import cam as C
from mammoflow.evaluation import cam_model as M
from mammoflow.evaluation.explain import explain

# ------------------------------------------------------------------------------------------- pure functions


def test_pointing_game_iou_and_chance():
    shape = (40, 50)
    lesion = C.lesion_mask_from_circles(shape, [(10, 12, 4)])
    breast = np.zeros(shape, bool)
    breast[:, :40] = True
    cam = np.zeros(shape, np.float32)
    cam[10, 12] = 1.0
    assert C.pointing_game(cam, lesion, breast)["hit"] is True
    cam[30, 45] = 5.0  # a stronger peak outside the breast is ignored
    assert C.pointing_game(cam, lesion, breast)["peak_row"] == 10
    assert C.pointing_game(cam, lesion)["hit"] is False  # ... unless the breast is not given
    far = np.zeros(shape, np.float32)
    far[10, 20] = 1.0  # 8 px from the centre, 4 px from the lesion's edge
    assert not C.pointing_game(far, lesion, breast)["hit"]
    assert C.pointing_game(far, lesion, breast, tolerance=4.5)["hit"]
    assert C.threshold_iou(lesion.astype(np.float32), lesion, 0.5, breast) == pytest.approx(1.0)
    assert C.threshold_iou(1 - lesion.astype(np.float32), lesion, 0.5, breast) == 0.0
    assert C.chance_hit_rate(lesion, breast) == pytest.approx(lesion.sum() / breast.sum())
    assert C.chance_hit_rate(lesion, None) == pytest.approx(lesion.mean())


def test_windows_cover_the_image():
    assert C.window_starts(100, 32, 16) == [0, 16, 32, 48, 64, 68]
    assert C.window_starts(20, 32, 16) == [0]
    assert C.tile_starts(10, 4) == [0, 4, 8]
    cam = np.array([[0.0, 2.0], [1.0, 4.0]], np.float32)
    assert C.normalise_map(cam).max() == 1.0 and C.normalise_map(cam).min() == 0.0
    assert not C.normalise_map(np.ones((3, 3), np.float32)).any()
    prior = C.window_prior(9)
    assert prior[4, 4] == 1.0 and np.allclose(prior, prior.T) and np.allclose(prior, prior[::-1, ::-1])
    assert prior[0, 4] == pytest.approx(np.exp(-0.5 * (4 / 4.5) ** 2))


def test_overlay_marks_lesion_and_peak(tmp_path):
    image = (np.arange(64 * 80).reshape(64, 80) % 251).astype(np.uint8)
    cam = np.zeros((64, 80), np.float32)
    cam[20:30, 30:40] = 1.0
    lesion = C.lesion_mask_from_circles((64, 80), [(25, 35, 6)])
    rgb = C.overlay_heatmap(image, cam, lesion_mask=lesion, peak_at=(25, 35))
    assert rgb.shape == (64, 80, 3) and rgb.dtype == np.uint8
    green = (rgb[..., 1] == 255) & (rgb[..., 0] == 0) & (rgb[..., 2] == 0)
    assert green.any()  # the lesion outline
    small = C.overlay_heatmap(np.zeros((4000, 3000), np.uint16), np.zeros((4000, 3000), np.float32), max_side=800)
    assert small.shape == (800, 600, 3)
    path = C.write_rgb_png(tmp_path / "o.png", rgb)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_finish_matches_the_input_pipeline():
    """The numpy twin of the pipeline's last step gives the same model inputs for every centring."""
    import tensorflow as tf

    from mammoflow.dataset.pipeline import InputConfig, _finish

    x = np.random.default_rng(0).uniform(0, 255, (3, 9, 9)).astype(np.float32)
    for centring in C.CENTRINGS:
        for channels in (1, 3):
            cfg = InputConfig(centring=centring, channels=channels)
            want = _finish(cfg, tf.constant(x[..., None])).numpy()
            np.testing.assert_allclose(C.finish(x, centring, channels), want, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------------- against the model


@pytest.fixture(scope="module")
def xi_model():
    from mammoflow.models import create_model

    return create_model("xi_alexnet", input_shape=(96, 96, 1), num_classes=2, weights="none", seed=0)


def test_cam_is_the_log_odds_decomposition(xi_model):
    """Xi et al.'s head: the spatial mean of CAM = sum_k (w_k,tumour - w_k,normal) f_k, plus the bias difference,
    is exactly the model's log-odds log(P(tumour) / P(normal))."""
    target = M.cam_target(xi_model, centring="none")
    assert (target.method, target.layer, target.dense) == ("cam", "last_conv", "predictions")
    proj = M.cam_projection(xi_model, target)
    assert proj.stride == 16
    x = np.random.default_rng(1).uniform(0, 255, (1, 96, 96, 1)).astype(np.float32)
    probs = xi_model(x).numpy()[0]
    assert proj.feature_map(x).mean() + proj.bias == pytest.approx(np.log(probs[1] / probs[0]), abs=1e-4)


def test_tiled_cam_equals_one_pass(xi_model):
    target = M.cam_target(xi_model, centring="patch_mean")
    image = np.random.default_rng(2).uniform(0, 255, (300, 220)).astype(np.float32)
    whole = M.fully_convolutional_cam(xi_model, image, target, tile=4096)
    tiled = M.fully_convolutional_cam(xi_model, image, target, tile=64, margin=192)
    np.testing.assert_allclose(tiled, whole, atol=1e-4 * np.ptp(whole))


def test_variable_input_model_keeps_the_weights(xi_model):
    flexible = M.variable_input_model(xi_model)
    assert flexible.input_shape[1:3] == (None, None)
    x = np.random.default_rng(3).uniform(0, 255, (2, 96, 96, 1)).astype(np.float32)
    np.testing.assert_allclose(flexible(x).numpy(), xi_model(x).numpy(), atol=1e-6)
    assert flexible(np.zeros((1, 200, 150, 1), np.float32)).shape == (1, 2)


def test_gradcam_target_for_fusion_models():
    from mammoflow.models import create_model

    model = create_model("compact_fusion", input_shape=(24, 24, 1), widths=[4, 8], fc_units=[8], seed=0)
    target = M.cam_target(model)
    assert target.method == "gradcam" and target.layer == "block2_conv2" and target.patch_size == 24
    with pytest.raises(Exception, match="no GAP -> dense head"):
        M.cam_target(model, method="cam")
    image = np.random.default_rng(4).uniform(0, 255, (60, 50)).astype(np.float32)
    valid = np.zeros((60, 50), bool)
    valid[10:50, 10:40] = True
    cam = M.sliding_gradcam(model, image, target, stride=6, valid=valid)
    assert cam.shape == (60, 50) and cam.min() >= 0 and cam.max() <= 1
    assert not cam[:, 50:].any()  # windows are only run where their centre is valid: none reaches past col 49


# ------------------------------------------------------------------------------------------- pointing game


PHANTOM = 256
WINDOW = 32


def _phantoms(seed: int, n: int):
    from mammoflow.synth.phantoms import make_phantom

    kinds = ("circumscribed", "spiculated")
    return [make_phantom([seed, i], shape=(PHANTOM, PHANTOM), laterality="LR"[i % 2], view="CC",
                         lesions=[(kinds[i % 2], "malignant")], bits=8) for i in range(n)]


def _training_patches(phantoms, rng: np.random.Generator, per_image: int = 12):
    """Windows centred near each lesion (tumour) and anywhere else in the breast (normal)."""
    x, y = [], []
    half, top = WINDOW // 2, PHANTOM - WINDOW
    for ph in phantoms:
        img = C.model_range(ph.image)
        les = ph.lesions[0]
        for _ in range(per_image):
            jitter = rng.integers(-(les.radius // 2), les.radius // 2 + 1, 2)
            r = int(np.clip(les.center_row + jitter[0] - half, 0, top))
            c = int(np.clip(les.center_col + jitter[1] - half, 0, top))
            x.append(img[r:r + WINDOW, c:c + WINDOW])
            y.append(1)
        away = ph.breast_mask & ~C.lesion_mask_from_circles(img.shape, [(les.center_row, les.center_col,
                                                                          les.radius + 0.75 * WINDOW)])
        centres = np.argwhere(away[half:top + half, half:top + half])
        for k in rng.choice(len(centres), per_image, replace=False):
            r, c = centres[k]
            x.append(img[r:r + WINDOW, c:c + WINDOW])
            y.append(0)
    return C.finish(np.stack(x), "patch_mean", 1), np.array(y)


@pytest.mark.slow
def test_pointing_game_on_held_out_phantoms(tmp_path, capsys):
    """A patch classifier trained on phantom patches points at the lesion of phantoms it never saw, through the
    `mammoflow explain` command (lesions read from a ground_truth.json beside the images)."""
    import keras

    from mammoflow.io.images import write_png
    from mammoflow.models import create_model

    x, y = _training_patches(_phantoms(1, 60), np.random.default_rng(0))
    keras.utils.set_random_seed(0)
    model = create_model("compact_fusion", input_shape=(WINDOW, WINDOW, 1), widths=[16, 32, 32, 64],
                         fc_units=[32], dropout=0.0, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=12, batch_size=16, verbose=0, shuffle=True)
    model.save(tmp_path / "model.keras")

    held_out = _phantoms(2, 12)
    images, truth = tmp_path / "images", {"images": []}
    images.mkdir()
    for i, ph in enumerate(held_out):
        write_png(images / f"ph{i:02d}.png", ph.image)
        truth["images"].append({"file": f"ph{i:02d}.png", "lesions": [
            {"center_row": les.center_row, "center_col": les.center_col, "radius": les.radius} for les in ph.lesions]})
    (images / "ground_truth.json").write_text(json.dumps(truth))
    out = tmp_path / "explain"
    args = ["explain", "--model", str(tmp_path / "model.keras"), "--out", str(out), "--stride", "8"]
    for i in range(len(held_out)):
        args += ["--image", str(images / f"ph{i:02d}.png")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    index = json.loads((out / "explain.json").read_text())
    summary = index["summary"]
    assert index["method"] == "gradcam" and summary["n_scored"] == 12
    rate, chance = summary["pointing_game_rate"], summary["chance_rate_mean"]
    with capsys.disabled():
        print(f"\n[pointing game] {summary['pointing_game_hits']}/12 held-out phantoms = {rate:.2f}; "
              f"chance (lesion area / breast area) = {chance:.3f}; mean IoU {summary['iou_mean']:.3f}")
    assert rate >= 0.5 and rate >= 10 * chance
    for img in index["images"]:
        assert (out / img["overlay"]).read_bytes()[:4] == b"\x89PNG"
        assert np.load(out / img["cam_npy"]).shape == (PHANTOM, PHANTOM)


# ------------------------------------------------------------------------------------------- records and CLI


@pytest.fixture(scope="module")
def xi_run(tmp_path_factory, xi_model) -> Path:
    path = tmp_path_factory.mktemp("xi") / "model.keras"
    xi_model.save(path)
    return path


def test_explain_record_id_with_preprocess(tmp_path, xi_run):
    from mammoflow.io.images import write_png
    from mammoflow.records import Lesion, Record, RecordsTable
    from mammoflow.synth.phantoms import make_phantom

    ph = make_phantom(7, shape=(300, 240), lesions=[("circumscribed", "malignant")], bits=16)
    (tmp_path / "img").mkdir()
    write_png(tmp_path / "img" / "a.png", ph.image)
    les = ph.lesions[0]
    table = RecordsTable(records=[Record(
        record_id="demo:a", source="demo", patient_id="p1", image_path="a.png", label="malignant",
        lesions=[Lesion(lesion_id="1", center_row=les.center_row, center_col=les.center_col, radius=les.radius)])],
        image_root="img")
    table.write(tmp_path)
    out = tmp_path / "explain"
    result = CliRunner().invoke(cli, ["explain", "--model", str(xi_run), "--records", str(tmp_path), "--image",
                                      "demo:a", "--preprocess", "xi2018", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (img,) = json.loads((out / "explain.json").read_text())["images"]
    assert img["record_id"] == "demo:a" and img["method"] == "cam" and img["pointing_hit"] is not None
    cam = np.load(out / img["cam_npy"])
    # xi2018 crops to the breast: the map has the preprocessed image's shape, smaller than the input.
    assert cam.shape == tuple(img["shape"]) and cam.shape[0] * cam.shape[1] < 300 * 240
    assert 0 < img["chance_hit_rate"] < 1

    result = CliRunner().invoke(cli, ["explain", "--model", str(xi_run), "--records", str(tmp_path), "--image",
                                      "demo:nope", "--out", str(out)])
    assert result.exit_code != 0 and "demo:nope" in str(result.exception)


def test_explain_chance_follows_the_tolerance(tmp_path, xi_run):
    """Issue 13: with --tolerance the chance level is the lesion dilated by the tolerance over the breast (the
    same rule as a hit), not the bare lesion area; the index says so, and a tolerance-0 run keeps the old value."""
    from mammoflow.io.images import write_png

    rows, cols = np.ogrid[:200, :200]
    image = np.where((rows - 100) ** 2 + cols ** 2 <= 170 ** 2, 120, 0).astype(np.uint8)
    image[(rows - 100) ** 2 + (cols - 80) ** 2 <= 6 ** 2] = 240
    write_png(tmp_path / "c.png", image)
    runs = {}
    for tol in (0.0, 30.0):
        out = tmp_path / f"e{int(tol)}"
        index = explain(str(xi_run), out=out, images=[str(tmp_path / "c.png")], circles=[(100, 80, 6)],
                          preprocess="none", tolerance=tol)
        (img,) = index["images"]
        runs[tol] = (index, img)
    bare, tolerant = runs[0.0][1]["chance_hit_rate"], runs[30.0][1]["chance_hit_rate"]
    assert bare == pytest.approx(runs[0.0][1]["lesion_area_fraction"] * 200 * 200 / (image > 0).sum(), rel=0.05)
    assert tolerant == pytest.approx(bare * (36 / 6) ** 2, rel=0.1)  # a 36 px disc instead of a 6 px one
    assert "dilated" in runs[30.0][0]["pointing_game_chance"] and "pointing_game_chance" not in runs[0.0][0]


def test_explain_lesion_option_and_errors(tmp_path, xi_run):
    from mammoflow.io.images import write_png
    from mammoflow.synth.phantoms import make_phantom

    ph = make_phantom(8, shape=(200, 200), lesions=[("spiculated", "malignant")])
    write_png(tmp_path / "b.png", ph.image)
    les = ph.lesions[0]
    out = tmp_path / "e"
    result = CliRunner().invoke(cli, ["explain", "--model", str(xi_run), "--image", str(tmp_path / "b.png"),
                                      "--lesion", f"{les.center_row},{les.center_col},{les.radius}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "pointing game" in result.output
    bad = CliRunner().invoke(cli, ["explain", "--model", str(xi_run), "--image", str(tmp_path / "b.png"),
                                   "--lesion", "1,2", "--out", str(out)])
    assert bad.exit_code != 0 and "ROW,COL,RADIUS" in bad.output
    none = CliRunner().invoke(cli, ["explain", "--model", str(xi_run), "--out", str(out)])
    assert none.exit_code != 0 and "--image" in none.output


# ------------------------------------------------------------------------------------------- memory bound


# Linux keeps ru_maxrss across fork + exec, so a child would report the pytest process's own peak: read the peak of
# this process's address space (VmHWM, reset by exec) instead, falling back to getrusage elsewhere.
_MEASURE = textwrap.dedent("""
    import json, resource, sys

    def peak_kb():
        try:
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    import tensorflow  # noqa: F401  (the baseline includes TensorFlow itself)
    from mammoflow.evaluation.explain import explain
    base = peak_kb()
    index = explain(sys.argv[1], out=sys.argv[3], images=[sys.argv[2]], preprocess="minimal",
                    circles=[tuple(map(float, sys.argv[4].split(",")))])
    print(json.dumps({"baseline_kb": base, "peak_kb": peak_kb(), "shape": index["images"][0]["shape"],
                      "seconds": index["images"][0]["seconds"], "hit": index["images"][0]["pointing_hit"]}))
""")


@pytest.mark.slow
def test_full_size_16_bit_mammogram_stays_within_memory(tmp_path, xi_run, capsys):
    """A 4000x3000 16-bit mammogram is explained in tiles: peak RSS grows by well under 3 GB."""
    from mammoflow.io.images import write_png
    from mammoflow.synth.phantoms import make_phantom

    ph = make_phantom(11, shape=(4000, 3000), bits=16, lesions=[("circumscribed", "malignant")])
    path = tmp_path / "big.png"
    write_png(path, ph.image)
    les = ph.lesions[0]
    del ph
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(xi_run), str(path), str(tmp_path / "out"),
                           f"{les.center_row},{les.center_col},{les.radius}"],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    growth_gb = (stats["peak_kb"] - stats["baseline_kb"]) / 2**20
    with capsys.disabled():
        print(f"\n[explain 4000x3000 uint16] peak RSS {stats['peak_kb'] / 2**20:.2f} GB, growth over the TensorFlow "
              f"baseline {growth_gb:.2f} GB, {stats['seconds']:.1f} s")
    assert stats["shape"] == [4000, 3000]
    assert growth_gb < 3.0
    assert (tmp_path / "out" / "big_overlay.png").exists() and (tmp_path / "out" / "big_cam.npy").exists()
