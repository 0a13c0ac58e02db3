"""Shared fixtures: the real data folder (skipped with a reason when absent) and small helpers; and the guard that
keeps every test off the network (tests/network_guard.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Real data lives beside the checkout in ../shared/data; MAMMOFLOW_DATA overrides the location.
SHARED_DATA = Path(os.environ.get("MAMMOFLOW_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# ------------------------------------------------------------------------------ tests never reach the network
# Environment first (inherited by every subprocess a test starts: CLI runs, Ray workers, KFP local runners), set
# here, before anything imports google-auth (it reads these at import): no credentials file, an empty gcloud config,
# and the metadata server (which google-auth and google-cloud-cpp probe for credentials) on a closed loopback port.
# Then, in this process, a socket guard (tests/network_guard.py) fails any test whose code opens a TCP connection
# to an address that is not this machine's.
from tests import network_guard  # noqa: E402

network_guard.protect_environment()
network_guard.install()


@pytest.fixture(autouse=True)
def _no_network() -> Iterator[None]:
    """Fail the test (with the addresses) if it, or a fixture set up for it, connected beyond this machine."""
    network_guard.fail_on_violations("before the test (in a fixture)")
    yield
    network_guard.fail_on_violations("during the test")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set MAMMOFLOW_DATA to the shared/data folder to run this)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def mias_info(shared_data: Path) -> Path:
    return _need(shared_data / "mias" / "Info.txt")


@pytest.fixture(scope="session")
def mias_rois_zip(shared_data: Path) -> Path:
    return _need(shared_data / "mias_rois" / "MIAS_ROIs.zip")


@pytest.fixture(scope="session")
def cbis_csvs(shared_data: Path) -> list[Path]:
    folder = _need(shared_data / "cbis_ddsm")
    files = sorted(folder.glob("*_case_description_*_set.csv"))
    if len(files) != 4:
        pytest.skip(f"expected the 4 official CBIS-DDSM CSVs in {folder}, found {len(files)}")
    return files


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory) -> Path:
    """A small ROI dataset (Yu's preset) built from 48 MIAS-like phantoms through the real stages:
    demo data -> ingest -> preprocess -> build-dataset. Returns the dataset folder (holds manifest.json)."""
    from mammoflow.dataset.build import build_dataset
    from mammoflow.preprocess.run import preprocess_records
    from mammoflow.sources import SourceOptions, read_source
    from mammoflow.synth.phantoms import write_mias_dataset

    base = tmp_path_factory.mktemp("phantom_dataset")
    write_mias_dataset(base / "raw", n_images=48, seed=11)
    read_source("mias", SourceOptions(root=base / "raw")).write(base / "records")
    preprocess_records(base / "records", "yu2020", base / "pre")
    build_dataset(base / "pre", "yu2020", str(base / "data"))
    return base / "data"
