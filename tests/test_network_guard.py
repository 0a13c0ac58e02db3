"""Tests never reach the network: the guard of tests/conftest.py refuses (and reports) connections beyond this
machine, google-auth finds no credentials and no metadata server, subprocesses inherit that, and the GCS client
on the emulator uses anonymous credentials without ever asking google-auth for default ones."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from tests import network_guard
from tests.network_guard import NO_NETWORK_ENV

pytest_plugins = ["tests.gcs_emulator"]  # the gcs_emulator / gcs_bucket fixtures

METADATA_SERVER = ("169.254.169.254", 80)  # GCE's metadata server: where google-auth looks for credentials
DOCUMENTATION_ADDRESS = ("192.0.2.1", 443)  # TEST-NET-1: never routed


@pytest.mark.parametrize("address", [METADATA_SERVER, DOCUMENTATION_ADDRESS])
def test_a_connection_beyond_this_machine_is_refused_and_reported(address):
    started = time.monotonic()
    with socket.socket() as sock, pytest.raises(network_guard.NetworkBlocked, match="must not reach the network"):
        sock.connect(address)
    with socket.socket() as sock:
        with pytest.raises(network_guard.NetworkBlocked):
            sock.connect_ex(address)
    assert time.monotonic() - started < 1  # refused before any packet, not after a timeout
    taken = network_guard.take_violations()  # taken here, or the autouse fixture would fail this test
    assert len(taken) == 2 and all(address[0] in v for v in taken)


def test_a_swallowed_violation_still_fails_the_test():
    with socket.socket() as sock:
        try:
            sock.connect(DOCUMENTATION_ADDRESS)
        except OSError:
            pass  # code under test that treats a failed connection as "offline"
    with pytest.raises(pytest.fail.Exception, match="192.0.2.1"):
        network_guard.fail_on_violations("during the test")
    assert network_guard.take_violations() == []


def test_loopback_and_unix_sockets_still_work(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
        with socket.create_connection(("localhost", server.getsockname()[1]), timeout=5):
            pass
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:  # sends nothing: how Ray finds its own address
        udp.connect(DOCUMENTATION_ADDRESS)
    assert network_guard.take_violations() == []


def test_google_auth_finds_no_credentials_and_probes_no_metadata_server():
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    assert "GOOGLE_APPLICATION_CREDENTIALS" not in os.environ
    started = time.monotonic()
    with pytest.raises(DefaultCredentialsError):
        google.auth.default()
    assert time.monotonic() - started < 5
    assert network_guard.take_violations() == []


def test_subprocesses_inherit_the_protections():
    probe = textwrap.dedent(f"""
        import json, os, time, google.auth
        t = time.monotonic()
        try:
            google.auth.default(); found = True
        except google.auth.exceptions.DefaultCredentialsError:
            found = False
        env = {{k: os.environ.get(k) for k in {sorted(NO_NETWORK_ENV)!r}}}
        print(json.dumps({{"env": env, "found": found, "seconds": time.monotonic() - t}}))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["env"] == NO_NETWORK_ENV and not result["found"] and result["seconds"] < 5


def test_the_gcs_client_on_the_emulator_is_anonymous_and_never_asks_google_auth(gcs_bucket, monkeypatch):
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    from mammoflow import storage

    def no_default(*args, **kwargs):
        raise AssertionError("google.auth.default() called while STORAGE_EMULATOR_HOST is set")

    monkeypatch.setattr(google.auth, "default", no_default)
    monkeypatch.setattr("google.auth._default.default", no_default)
    monkeypatch.setattr(storage._GcsBackend, "_clients", {})  # a client made now, under the guard above
    storage.put_bytes(f"{gcs_bucket}/a.txt", b"hello")
    assert storage.get_bytes(f"{gcs_bucket}/a.txt") == b"hello"
    client = storage._GcsBackend.client()
    assert isinstance(client._credentials, AnonymousCredentials)
    assert client._connection.API_BASE_URL.startswith("http://127.0.0.1:")
