"""What runs is what was built (issue 16): `make images` records the pushed images' digests and pins the overlays
to them (images/pin.py), compiled pipelines carry the pinned references, and submitting unpinned images warns."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from tests.fake_kfp_server import FakeKfpServer

from mammoflow.cli import cli

REPO = Path(__file__).resolve().parents[1]
PIN = REPO / "images" / "pin.py"
CPU = "europe-west4-docker.pkg.dev/acme/mammoflow/mammoflow@sha256:" + "a" * 64
GPU = "europe-west4-docker.pkg.dev/acme/mammoflow/mammoflow-gpu@sha256:" + "b" * 64


def pin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PIN), *args], capture_output=True, text=True, check=False)


@pytest.fixture
def digests(tmp_path: Path) -> Path:
    path = tmp_path / "digests.env"
    path.write_text(f"# recorded\nMAMMOFLOW_IMAGE={CPU}\nMAMMOFLOW_GPU_IMAGE={GPU}\n")
    return path


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) is not installed")
@pytest.mark.parametrize("overlay", ["standalone", "multi-user"])
def test_pinned_overlays_render_every_project_image_by_digest(tmp_path: Path, digests: Path, overlay: str) -> None:
    tree = tmp_path / "k8s"
    shutil.copytree(REPO / "k8s", tree)
    before = (tree / "overlays" / overlay / "kustomization.yaml").read_text()
    result = pin("apply", str(digests), str(tree / "overlays" / overlay))
    assert result.returncode == 0, result.stderr
    after = (tree / "overlays" / overlay / "kustomization.yaml").read_text()
    assert "newTag" not in after and after.count("digest: sha256:") == 2
    # Only the image entries changed: every other line (comments included) is as written.
    kept = [line for line in before.splitlines() if "newName" not in line and "newTag" not in line]
    assert kept == [line for line in after.splitlines() if "newName" not in line and "digest:" not in line]
    rendered = subprocess.run(["kubectl", "kustomize", str(tree / "overlays" / overlay)], capture_output=True,
                              text=True, check=True).stdout
    images = set()
    for doc in yaml.safe_load_all(rendered):
        text = yaml.safe_dump(doc)
        images |= {line.split("image:", 1)[1].strip().strip("'\"") for line in text.splitlines()
                   if line.strip().startswith("image:") and "mammoflow" in line}
    assert images and images <= {CPU, GPU}, images


def test_pin_refuses_tags_and_missing_images(tmp_path: Path) -> None:
    tagged = tmp_path / "tagged.env"
    tagged.write_text(f"MAMMOFLOW_IMAGE=reg/mammoflow:0.1.0\nMAMMOFLOW_GPU_IMAGE={GPU}\n")
    result = pin("apply", str(tagged), str(tmp_path))
    assert result.returncode == 1 and "not pinned by digest" in result.stderr and "make images" in result.stderr
    missing = tmp_path / "missing.env"
    missing.write_text(f"MAMMOFLOW_IMAGE={CPU}\n")
    result = pin("apply", str(missing), str(tmp_path))
    assert result.returncode == 1 and "no MAMMOFLOW_GPU_IMAGE" in result.stderr
    assert pin().returncode == 2


def test_submitting_pinned_images_sends_them_and_unpinned_ones_warn(caplog: pytest.LogCaptureFixture) -> None:
    args = ["pipeline", "submit", "--host", "", "--param", "storage_root=gs://b/m"]
    with FakeKfpServer() as server, caplog.at_level(logging.WARNING):
        args[3] = server.url
        result = CliRunner().invoke(cli, args, env={"MAMMOFLOW_IMAGE": CPU, "MAMMOFLOW_GPU_IMAGE": GPU},
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "not pinned by digest" not in caplog.text
        (run,) = server.runs.values()
        executors = run["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"].values()
        assert {e["container"]["image"] for e in executors} == {CPU, GPU}
        result = CliRunner().invoke(cli, args, env={"MAMMOFLOW_IMAGE": "reg/mammoflow:0.1.0",
                                                    "MAMMOFLOW_GPU_IMAGE": GPU}, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "reg/mammoflow:0.1.0 are not pinned by digest" in caplog.text
