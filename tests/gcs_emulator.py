"""A real GCS emulator for tests: gcp-storage-emulator on 127.0.0.1, in this process, on a free port.

Usage in a test module::

    from tests.gcs_emulator import gcs_bucket, gcs_emulator  # noqa: F401  (pytest fixtures)

    def test_upload(gcs_bucket):                 # "gs://test-<random>" in a fresh bucket
        storage.put_bytes(gcs_bucket + "/a.txt", b"x")

``gcs_emulator`` yields the endpoint (``http://127.0.0.1:PORT``) and sets ``STORAGE_EMULATOR_HOST`` for the test
only, so :mod:`mammoflow.storage`, google-cloud-storage and subprocesses started by the test reach it. One
in-memory server is started lazily per pytest process and shared by the tests (each takes its own bucket); it
stops when the process exits. Loopback only: nothing leaves the machine. With ``STORAGE_EMULATOR_HOST`` set,
:mod:`mammoflow.storage` builds its client with anonymous credentials and never asks google-auth for default ones
(tests/test_network_guard.py checks it); tests/conftest.py keeps google-auth away from any metadata server anyway.
"""

from __future__ import annotations

import atexit
import logging
import threading
import uuid
from collections.abc import Iterator

import pytest

_lock = threading.Lock()
_server: object | None = None
_endpoint: str | None = None


def emulator_endpoint() -> str:
    """Start the shared emulator if needed; its ``http://127.0.0.1:PORT`` endpoint."""
    global _server, _endpoint
    with _lock:
        if _endpoint is None:
            try:
                from gcp_storage_emulator.server import create_server
            except ImportError:  # pragma: no cover - dev extra not installed
                pytest.skip("gcp-storage-emulator is not installed (pip install -e .[dev])")
            logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
            # Port 0: the OS picks a free port at bind time, so parallel test processes never collide.
            server = create_server("127.0.0.1", 0, in_memory=True)
            # Daemon thread: Python joins non-daemon threads *before* atexit handlers run, so a
            # non-daemon server thread would keep the test process alive forever.
            server._api.daemon = True
            server.start()
            port = server._api._httpd.server_address[1]  # the bound port; the package has no public accessor
            atexit.register(server.stop)
            _server, _endpoint = server, f"http://127.0.0.1:{port}"
        return _endpoint


@pytest.fixture
def gcs_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The emulator endpoint, with ``STORAGE_EMULATOR_HOST`` set for this test."""
    endpoint = emulator_endpoint()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "mammoflow-test")
    yield endpoint


@pytest.fixture
def gcs_bucket(gcs_emulator: str) -> Iterator[str]:
    """``gs://<fresh bucket>`` in the emulator, created for this test."""
    from mammoflow import storage

    uri = f"gs://test-{uuid.uuid4().hex[:16]}"
    storage.create_bucket(uri)
    yield uri
