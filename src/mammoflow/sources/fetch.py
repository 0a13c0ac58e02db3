"""Download the public datasets (streamed, resumable, checksummed) or install an archive fetched elsewhere.

- ``mias-rois``: Yu et al.'s ``MIAS_ROIs.zip`` from the paper's repository (github yxchspring/MIAS), checked
  against its SHA-256; installed as ``OUT/MIAS_ROIs.zip`` (ingest it with ``--root OUT/MIAS_ROIs.zip``).
- ``mias``: the mini-MIAS database ``all-mias.tar.gz`` from the Pilot European Image Processing Archive. No
  checksum of the archive is published, so the extracted content is verified instead: the 322 PGMs
  ``mdb001.pgm``..``mdb322.pgm``, each readable, and ``Info.txt`` listing exactly those images.

Machines without internet: download the file elsewhere, then ``mammoflow fetch NAME --from-file PATH --out DIR``
verifies and installs it. URLs can be overridden (``--url`` or ``MAMMOFLOW_<NAME>_URL``) to use a mirror.
TLS certificates are always checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mammoflow import storage
from mammoflow.errors import InputError, MammoflowError
from mammoflow.logs import progress
from mammoflow.storage import atomic_write_text

log = logging.getLogger(__name__)

MIAS_ROIS_SHA256 = "829115da28c50186eb3bfde7169aa28e12f3740221f14cb2e9c801f7e9cead3f"
MIAS_COUNT = 322
MARKER = ".mammoflow_fetch.json"
_CHUNK = 1 << 20


class FetchError(MammoflowError):
    """A dataset could not be downloaded, verified or installed; the message says what to do instead."""


@dataclass(frozen=True)
class RemoteDataset:
    name: str
    urls: tuple[str, ...]  # tried in order
    filename: str  # what the download is called
    sha256: str | None  # of the downloaded file; None when only the content can be verified
    url_env: str  # environment variable that overrides the URL (a mirror, or a test server)
    about: str

    def candidate_urls(self, url: str | None = None) -> tuple[str, ...]:
        override = url or os.environ.get(self.url_env)
        return (override,) if override else self.urls


DATASETS: dict[str, RemoteDataset] = {
    "mias-rois": RemoteDataset(
        name="mias-rois",
        # Pinned to the commit that holds the released zip; the branch head as a fallback (same checksum).
        urls=("https://raw.githubusercontent.com/yxchspring/MIAS/0c370763102103cda9431e9c084360f5c319b351/"
              "MIAS_ROIs.zip",
              "https://github.com/yxchspring/MIAS/raw/master/MIAS_ROIs.zip"),
        filename="MIAS_ROIs.zip", sha256=MIAS_ROIS_SHA256, url_env="MAMMOFLOW_MIAS_ROIS_URL",
        about="Yu et al. 2020 preprocessed 120x120 ROIs (3.9 MB), research use only (MIAS licence)"),
    "mias": RemoteDataset(
        name="mias",
        urls=("http://peipa.essex.ac.uk/pub/mias/all-mias.tar.gz",
              "http://peipa.essex.ac.uk/pix/mias/all-mias.tar.gz"),
        filename="all-mias.tar.gz", sha256=None, url_env="MAMMOFLOW_MIAS_URL",
        about="mini-MIAS, 322 1024x1024 PGMs + Info.txt, research use only (MIAS licence)"),
}


# --------------------------------------------------------------------------------------------- files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise FetchError unless ``path`` has SHA-256 ``expected``."""
    got = sha256_file(path)
    if got != expected.lower():
        raise FetchError(f"{path}: SHA-256 is {got}, expected {expected}. Fix: the file is damaged, incomplete or "
                         "not the published one; download it again from the official source")


# ------------------------------------------------------------------------------------------ download


def _blocks(resp: BinaryIO) -> Iterator[bytes]:
    yield from iter(lambda: resp.read(_CHUNK), b"")


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Stream ``url`` to ``dest`` through ``dest.part``, resuming a previous partial download (HTTP Range).

    The checksum, when given, is checked before ``dest`` appears; a mismatch deletes the partial file.
    Raises FetchError (network errors included).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "mammoflow-fetch"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            if start and resp.status != 206:
                log.info("server ignored the resume request: downloading %s from the start", dest.name)
                start = 0
            length = resp.headers.get("Content-Length")
            total = (int(length) + start) if length and length.isdigit() else None
            if start:
                log.info("resuming %s at %d bytes", dest.name, start)
            with open(part, "ab" if start else "wb") as fh:
                done_blocks = progress(_blocks(resp), desc=dest.name, unit="MiB",
                                       total=None if total is None else -(-(total - start) // _CHUNK))
                for block in done_blocks:
                    fh.write(block)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # nothing left to send: the partial file is complete
            log.info("%s was already fully downloaded", part.name)
        else:
            raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"{url}: cannot download ({reason})") from None
    if sha256 is not None:
        try:
            verify_sha256(part, sha256)
        except FetchError:
            part.unlink(missing_ok=True)
            raise
    os.replace(part, dest)
    return dest


def _download_any(ds: RemoteDataset, dest: Path, url: str | None, timeout: float, out: Path) -> Path:
    errors = []
    for candidate in ds.candidate_urls(url):
        log.info("downloading %s (%s) from %s", ds.name, ds.about, candidate)
        try:
            return download(candidate, dest, sha256=ds.sha256, timeout=timeout)
        except FetchError as exc:
            log.warning("%s", exc)
            errors.append(str(exc))
    raise FetchError(
        f"could not download {ds.name}: {'; '.join(errors)}. Fix: if this machine has no internet, download "
        f"{ds.urls[0]} on one that has, then run `mammoflow fetch {ds.name} --from-file PATH --out {out}` "
        f"(or place the file at {dest} and run this again)")


# ------------------------------------------------------------------------------------------- install


def fetch(name: str, out: Path, from_file: Path | None = None, url: str | None = None,
          timeout: float = 60.0) -> Path:
    """Download (or install ``from_file``) and verify dataset ``name`` into ``out``; returns what to ingest.

    Idempotent: an already installed and verified dataset is not downloaded again.
    """
    if name not in DATASETS:
        raise FetchError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    out = Path(out)
    if name == "mias-rois":
        return _fetch_mias_rois(out, from_file, url, timeout)
    return _fetch_mias(out, from_file, url, timeout)


def _fetch_mias_rois(out: Path, from_file: Path | None, url: str | None, timeout: float) -> Path:
    ds = DATASETS["mias-rois"]
    dest = out / ds.filename
    assert ds.sha256 is not None
    if from_file is not None:
        source = _existing(from_file)
        verify_sha256(source, ds.sha256)
        if source.resolve() != dest.resolve():
            storage.put_file(source, dest)  # atomic: a partial copy is never seen under dest
        log.info("installed %s from %s (SHA-256 verified)", dest, source)
        return dest
    if dest.is_file():
        try:
            verify_sha256(dest, ds.sha256)
            log.info("%s already present and verified", dest)
            return dest
        except FetchError:
            log.warning("%s does not match the published checksum: downloading it again", dest)
            dest.unlink()
    return _download_any(ds, dest, url, timeout, out)


def _existing(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FetchError(f"{path}: file not found. Fix: give the path of the downloaded archive to --from-file")
    return path


def verify_mias_folder(folder: Path, expected: int = MIAS_COUNT) -> None:
    """Raise FetchError unless ``folder`` holds mdb001..mdbNNN.pgm (readable) and an Info.txt listing them."""
    from mammoflow.io.images import read_image
    from mammoflow.sources.mias import read_info

    want = {f"mdb{i:03d}" for i in range(1, expected + 1)}
    have = {p.stem.lower() for p in folder.glob("*.pgm")} | {p.stem.lower() for p in folder.glob("*.PGM")}
    if have != want:
        missing, extra = sorted(want - have), sorted(have - want)
        raise FetchError(f"{folder}: expected the {expected} images mdb001..mdb{expected:03d}.pgm, found "
                         f"{len(have & want)} (missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                         f"{extra[:5]}). Fix: the archive is incomplete; download it again")
    for ref in progress(sorted(want), desc="verify MIAS", unit="image"):
        path = folder / f"{ref}.pgm"
        try:
            read_image(path if path.exists() else folder / f"{ref}.PGM")
        except InputError as exc:
            raise FetchError(f"{exc}. The archive is damaged: download it again") from None
    info = folder / "Info.txt"
    if not info.is_file():
        raise FetchError(f"{folder}: Info.txt (the annotations) is missing. Fix: copy the MIAS Info.txt into "
                         f"{folder}")
    listed = {e.ref for e in read_info(info).entries}
    if listed != want:
        raise FetchError(f"{info}: lists {len(listed)} images, expected the {expected} of the archive. Fix: use "
                         "the Info.txt distributed with mini-MIAS")


def _fetch_mias(out: Path, from_file: Path | None, url: str | None, timeout: float) -> Path:
    ds = DATASETS["mias"]
    marker = out / MARKER
    if from_file is None and marker.is_file():
        try:
            verify_mias_folder(out)
            log.info("%s already holds a verified mini-MIAS", out)
            return out
        except FetchError as exc:
            log.warning("re-installing: %s", exc)
    if from_file is not None:
        install_mias_archive(_existing(from_file), out)
        return out
    archive = out / ".downloads" / ds.filename
    if not archive.is_file():
        _download_any(ds, archive, url, timeout, out)
    try:
        install_mias_archive(archive, out)
    except FetchError:
        archive.unlink()  # no published checksum: a bad download is only seen here; fetch it anew next time
        raise
    return out


def install_mias_archive(archive: Path, out: Path, expected: int = MIAS_COUNT) -> None:
    """Extract ``all-mias.tar.gz`` safely, verify its content, then move the files into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mias-", dir=out) as tmp:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")  # refuses absolute paths, links out, device files
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise FetchError(f"{archive}: not a readable tar archive ({exc}). Fix: download it again") from None
        found = sorted(Path(tmp).rglob("mdb001.pgm")) or sorted(Path(tmp).rglob("mdb001.PGM"))
        if not found:
            raise FetchError(f"{archive}: no mdb001.pgm inside: not the mini-MIAS archive. Fix: download "
                             f"{DATASETS['mias'].urls[0]}")
        folder = found[0].parent
        if not (folder / "Info.txt").exists() and (out / "Info.txt").is_file():
            shutil.copyfile(out / "Info.txt", folder / "Info.txt")  # a user may have placed it there already
        verify_mias_folder(folder, expected)
        for path in sorted(folder.iterdir()):
            if path.is_file():
                os.replace(path, out / path.name)
    atomic_write_text(out / MARKER, json.dumps({"dataset": "mias", "archive": archive.name,
                                                "archive_sha256": sha256_file(archive), "images": expected},
                                               indent=2, sort_keys=True) + "\n")
    log.info("installed mini-MIAS (%d images + Info.txt) in %s", expected, out)
