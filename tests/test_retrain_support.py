"""Helpers for the retraining tests (no tests here): a watched MIAS-like folder that receives new images."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from mammoflow.synth.phantoms import write_mias_dataset

_REF = re.compile(r"^mdb(\d{3})\b")


def deliver_phantoms(watched: Path, source: Path, first_number: int) -> list[str]:
    """Add the phantoms of ``source`` (a ``write_mias_dataset`` folder) to ``watched`` as mdb<first_number>...,
    appending their Info.txt lines, as a site's nightly export would. Returns the new reference numbers."""
    watched.mkdir(parents=True, exist_ok=True)
    lines, added = [], []
    for line in (source / "Info.txt").read_text().splitlines():
        m = _REF.match(line)
        if not m:
            continue
        ref = f"mdb{int(m.group(1)) - 1 + first_number:03d}"
        lines.append(ref + line[m.end():])
        if ref not in added:
            added.append(ref)
            shutil.copyfile(source / f"mdb{m.group(1)}.pgm", watched / f"{ref}.pgm")
    info = watched / "Info.txt"
    existing = info.read_text() if info.exists() else "mammoflow test site export\n"
    info.write_text(existing.rstrip("\n") + "\n" + "\n".join(lines) + "\n")
    return added


def phantom_batch(root: Path, n_images: int, seed: int) -> Path:
    """A folder of ``n_images`` phantoms made with ``seed`` (generated once per folder)."""
    out = root / f"phantoms-n{n_images}-s{seed}"
    write_mias_dataset(out, n_images=n_images, seed=seed)
    return out


def retrain_config(tmp: Path, watched: Path, gateway: str | None = None, **over: Any) -> dict[str, Any]:
    """A small, fast retrain config (tiny compact CNN, few patches) as a dict."""
    cfg: dict[str, Any] = {
        "name": "test-site",
        "source": {"name": "mias", "root": str(watched)},
        "work_dir": str(tmp / "work"),
        "storage_root": str(tmp / "store"),
        "preprocess": "yu2020",
        "dataset": "yu2020",
        "train": "demo",
        "train_overrides": {"data.patch_size": 48, "data.patches_per_roi": {"normal": 24, "tumour": 48},
                            "schedule.phases": [{"epochs": 5, "learning_rate": 0.001, "trainable_backbone": True}]},
        "warm_start": True,
        "evaluation": {"split": "test", "freeze": True, "n_bootstrap": 300},
        "blessing": {"first_model": "bless", "level": "patch", "n_bootstrap": 300,
                     "rules": [{"metric": "roc_auc", "margin": 0.05}, {"metric": "tumour_recall", "margin": 0.15}]},
        "push": {"gateway": gateway},
    }
    for key, value in over.items():
        cfg[key] = value
    return cfg


def fast_config(name: str) -> dict[str, Any]:
    """A retrain config training for seconds (one epoch of three steps on 32 px patches), blessing with a lax rule;
    its watched source is ``watched`` next to the YAML it is written to."""
    return {
        "name": name,
        "source": {"name": "mias", "root": "watched"},
        "preprocess": "yu2020", "dataset": "yu2020", "train": "demo",
        "train_overrides": {"data.patch_size": 32, "data.patches_per_roi": {"normal": 4, "tumour": 8},
                            "schedule.phases": [{"epochs": 1, "learning_rate": 0.001, "trainable_backbone": True}],
                            "schedule.steps_per_epoch": 3},
        "evaluation": {"split": "test", "n_bootstrap": 100},
        "blessing": {"first_model": "bless", "level": "patch", "n_bootstrap": 100,
                     "rules": [{"metric": "roc_auc", "margin": 0.5}]},
    }


# --------------------------------------------------------------------------------------- real Prometheus servers

PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback test servers only
        return resp.read().decode()


def start_server(cmd: list[str], ready_url: str, log_path: Path, timeout: float = 30.0):
    """Start a server process (its output to ``log_path``) and wait until ``ready_url`` answers 200."""
    import subprocess
    import time
    import urllib.error

    log = open(log_path, "wb")  # noqa: SIM115 - closed by stop_server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited: {log_path.read_text()[-2000:]}")
        try:
            http_get(ready_url, timeout=1.0)
            proc._mammoflow_log = log  # type: ignore[attr-defined]
            return proc
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"{cmd[0]} not ready after {timeout}s: {log_path.read_text()[-2000:]}")


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except Exception:  # noqa: BLE001 - a server that ignores SIGTERM is killed
        proc.kill()
    getattr(proc, "_mammoflow_log", None) and proc._mammoflow_log.close()


def start_pushgateway(tmp: Path):
    """A real Pushgateway on a free loopback port: (process, http://127.0.0.1:PORT)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server([PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}"], f"{url}/-/ready",
                        tmp / "pushgateway.log")
    return proc, url
