"""``mammoflow fetch``: offline failure, --from-file, and streamed resumable downloads from a loopback server.

No test touches the internet: URLs point at a closed loopback port or at a small HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mammoflow.commands.fetch import command
from mammoflow.io.images import encode_pgm
from mammoflow.sources.fetch import (
    MARKER,
    MIAS_ROIS_SHA256,
    FetchError,
    download,
    fetch,
    install_mias_archive,
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: connecting is refused


class _Server:
    """Serves fixed bytes at any path, honouring ``Range: bytes=N-``; records the requests it saw."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.requests: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                outer.requests.append(dict(self.headers))
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(outer.payload):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.payload) - 1}/{len(outer.payload)}")
                else:
                    self.send_response(200)
                body = outer.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server() -> Iterator[_Server]:
    payload = np.random.default_rng(0).bytes(3 * (1 << 20) + 123)
    with _Server(payload) as srv:
        yield srv


def test_offline_fails_with_what_to_do(tmp_path: Path):
    url = f"http://127.0.0.1:{_closed_port()}/MIAS_ROIs.zip"
    with pytest.raises(FetchError) as err:
        fetch("mias-rois", tmp_path / "out", url=url, timeout=5)
    text = str(err.value)
    assert "cannot download" in text and "--from-file" in text and str(tmp_path / "out" / "MIAS_ROIs.zip") in text
    assert not (tmp_path / "out" / "MIAS_ROIs.zip").exists()

    # The same through the CLI, with the URL overridden by the environment variable.
    result = CliRunner().invoke(command, ["mias", "--out", str(tmp_path / "mias")],
                                env={"MAMMOFLOW_MIAS_URL": f"http://127.0.0.1:{_closed_port()}/all-mias.tar.gz"})
    assert result.exit_code == 1
    assert "--from-file" in result.output and "peipa.essex.ac.uk" in result.output


@pytest.mark.realdata
def test_from_file_checksum_match_and_mismatch(mias_rois_zip: Path, tmp_path: Path):
    out = tmp_path / "rois"
    result = CliRunner().invoke(command, ["mias-rois", "--out", str(out), "--from-file", str(mias_rois_zip)])
    assert result.exit_code == 0, result.output
    installed = out / "MIAS_ROIs.zip"
    assert hashlib.sha256(installed.read_bytes()).hexdigest() == MIAS_ROIS_SHA256
    # Already there and verified: nothing to download (the URL is a closed port and is never tried).
    assert fetch("mias-rois", out, url=f"http://127.0.0.1:{_closed_port()}/x") == installed

    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(mias_rois_zip.read_bytes()[:-10] + b"0123456789")
    result = CliRunner().invoke(command, ["mias-rois", "--out", str(tmp_path / "other"), "--from-file",
                                          str(damaged)])
    assert result.exit_code == 1 and "SHA-256" in result.output
    assert not (tmp_path / "other" / "MIAS_ROIs.zip").exists()


@pytest.mark.realdata
def test_download_from_loopback_mirror(mias_rois_zip: Path, tmp_path: Path):
    with _Server(mias_rois_zip.read_bytes()) as srv:
        path = fetch("mias-rois", tmp_path, url=srv.url)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == MIAS_ROIS_SHA256
        fetch("mias-rois", tmp_path, url=srv.url)
        assert len(srv.requests) == 1  # the second call found the verified file


def test_download_resumes_and_checks(server: _Server, tmp_path: Path):
    digest = hashlib.sha256(server.payload).hexdigest()
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(server.payload[:1_000_000])  # an interrupted earlier download
    download(server.url, dest, sha256=digest)
    assert dest.read_bytes() == server.payload and not (tmp_path / "f.bin.part").exists()
    assert server.requests[-1].get("Range") == "bytes=1000000-"

    # A wrong checksum leaves nothing behind (no half-verified file, no stale partial).
    with pytest.raises(FetchError, match="SHA-256"):
        download(server.url, tmp_path / "g.bin", sha256="0" * 64)
    assert not (tmp_path / "g.bin").exists() and not (tmp_path / "g.bin.part").exists()


def _mias_tar(path: Path, info: str, n: int, extra: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        members = {f"all-mias/mdb{i:03d}.pgm": encode_pgm(np.full((8, 8), i % 250, np.uint8))
                   for i in range(1, n + 1)}
        members["all-mias/Info.txt"] = info.encode()
        members.update(extra or {})
        for name, data in members.items():
            item = tarfile.TarInfo(name)
            item.size = len(data)
            tar.addfile(item, io.BytesIO(data))
    return path


@pytest.mark.realdata
def test_mias_archive_content_is_verified(mias_info: Path, tmp_path: Path):
    info = mias_info.read_text(encoding="latin-1")
    good = _mias_tar(tmp_path / "all-mias.tar.gz", info, 322)
    out = tmp_path / "mias"
    result = CliRunner().invoke(command, ["mias", "--out", str(out), "--from-file", str(good)])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("mdb*.pgm"))) == 322 and (out / "Info.txt").read_text() == info
    assert (out / MARKER).is_file()
    # Installed and verified: a re-run does not download (closed port never tried).
    assert fetch("mias", out, url=f"http://127.0.0.1:{_closed_port()}/x") == out

    with pytest.raises(FetchError, match="found 300"):
        install_mias_archive(_mias_tar(tmp_path / "short.tar.gz", info, 300), tmp_path / "short")
    evil = _mias_tar(tmp_path / "evil.tar.gz", info, 322, extra={"../../escape.txt": b"x"})
    with pytest.raises(FetchError, match="not a readable tar"):
        install_mias_archive(evil, tmp_path / "evil")
    assert not (tmp_path.parent / "escape.txt").exists()
    truncated = tmp_path / "trunc.tar.gz"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(FetchError):
        install_mias_archive(truncated, tmp_path / "trunc")
