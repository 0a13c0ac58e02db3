"""A training run folder and its checkpoint I/O: a local working folder mirrored to the run URI (local path or
``gs://``), the resume state, the checkpoints and the history (layout in :mod:`mammoflow.training.loop`)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammoflow import storage
from mammoflow.storage.copies import cache_dir as cache_root

log = logging.getLogger(__name__)

STATE_FILE = "checkpoints/state.json"
LAST_CKPT = "checkpoints/last.keras"
LAST_HEAD = "checkpoints/last_head.keras"  # head_cache: the head with its optimizer state
BEST_CKPT = "checkpoints/best.keras"
META_FILE = "model_meta.json"  # layer names (taps, CAM layer, backbone) that a saved .keras file does not keep
WATCH_FILES = ("history.csv", "history.json", "tensorboard")  # published after every epoch, for watching a run


@dataclass
class TrainResult:
    run_uri: str
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed_from_epoch: int | None = None
    model: str = ""  # the registered model trained


# ----------------------------------------------------------------------------------------------- run folder
class RunFolder:
    """A local working folder mirrored to the run URI (local runs write in place).

    ``scratch``: a reader only (a multi-worker run's non-chief workers, :mod:`mammoflow.training.distribute`): files
    are pulled from the run URI into ``scratch``, everything is written there, and nothing is ever published.
    """

    def __init__(self, out_uri: str, cache_dir: str | Path | None = None, *, scratch: Path | None = None):
        self.uri = out_uri.rstrip("/")
        self.reader_only = scratch is not None
        if scratch is not None:
            self.local = Path(scratch)
        elif storage.is_remote(self.uri):
            base = cache_root(cache_dir) / "runs"
            self.local = base / hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        else:
            self.local = Path(self.uri)
        self.local.mkdir(parents=True, exist_ok=True)
        # relative path -> sha256 of the content the run URI holds (as far as this object knows): what push skips
        self._published: dict[str, str] = {}

    def path(self, rel: str) -> Path:
        p = self.local / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def pull(self, rel: str) -> bool:
        """Bring one file of a remote run folder into the local folder (for resume). True when it exists."""
        if self.reader_only and not storage.is_remote(self.uri):
            src = Path(self.uri) / rel
            if src.is_file():
                shutil.copyfile(src, self.path(rel))
            return src.is_file()
        if not storage.is_remote(self.uri):
            return (self.local / rel).exists()
        remote = storage.join(self.uri, rel)
        info = storage.stat(remote)
        if info is None:
            return False
        storage.get_file(remote, self.path(rel))
        if info.sha256:  # recorded at upload: a pulled file is not pushed back unchanged
            self._published[rel] = info.sha256
        return True

    def push(self, *rels: str, best_effort: bool = False) -> list[str]:
        """Publish local files and folders to the run URI; return the files uploaded. No-op for local runs.

        Only files whose content differs from what this folder last published are uploaded, each as one atomic
        object write (readers see the old or the new object). ``best_effort``: an upload that still fails after
        storage's retries is logged and the push stops there; what was not published stays pending and goes with
        the next push. For the pushes that only let people watch a run, so an object-store outage does not end a
        long training; the final push of a run is not best-effort, so a run never ends unpublished in silence.
        """
        if self.reader_only or not storage.is_remote(self.uri):
            return []
        uploaded: list[str] = []
        for rel in self._files(rels):
            src = self.local / rel
            sha = storage.file_sha256(src)
            if self._published.get(rel) == sha:
                continue
            try:
                storage.put_file(src, storage.join(self.uri, rel))
            except Exception as exc:  # any error: the run's final push meets it again and raises it
                if not best_effort:
                    raise
                log.warning("could not publish %s to %s (%s); retried at the next push", rel, self.uri, exc)
                break
            self._published[rel] = sha
            uploaded.append(rel)
        return uploaded

    def _files(self, rels: tuple[str, ...]) -> list[str]:
        """The existing files among ``rels``, folders expanded (sorted), as paths relative to the local folder."""
        files: list[str] = []
        for rel in rels:
            src = self.local / rel
            if src.is_dir():
                files += [f.relative_to(self.local).as_posix() for f in sorted(src.rglob("*")) if f.is_file()]
            elif src.is_file():
                files.append(rel)
        return files

    def save_model(self, model, rel: str) -> None:
        """Save a Keras model atomically: a kill mid-save must not leave a truncated checkpoint to resume from."""
        with storage.atomic_file(self.path(rel), suffix=".keras") as tmp:
            model.save(tmp)

    def write_text(self, rel: str, text: str) -> None:
        storage.atomic_write_text(self.path(rel), text)


def finished_result(run: RunFolder, out_uri: str, manifest_sha: str) -> TrainResult | None:
    """The result of a run folder that already finished on the same data (its config was checked equal); None
    when there is anything left to do (or the data changed: then it is trained again, as a resume would)."""
    if not (run.pull("run.json") and run.pull(STATE_FILE) and run.pull("metrics.json") and run.pull("model.keras")):
        return None
    info = json.loads(run.path("run.json").read_text())
    if info.get("status") != "finished" or info.get("data_manifest_sha256") != manifest_sha:
        return None
    state = json.loads(run.path(STATE_FILE).read_text())
    return TrainResult(run_uri=out_uri, best_epoch=state["best_epoch"] or 0,
                       best_val_loss=float(state["best_val_loss"] or float("nan")),
                       epochs_run=len(state["history"]), history=state["history"],
                       metrics=json.loads(run.path("metrics.json").read_text()),
                       resumed_from_epoch=state["epochs_done"])


def load_checkpoint(run: RunFolder, rel: str):
    """A checkpoint with its mammoflow metadata re-attached (phase changes and CAMs need the layer names)."""
    from mammoflow.models import attach_meta, load_model

    model = load_model(run.path(rel))
    if run.pull(META_FILE):
        attach_meta(model, json.loads(run.path(META_FILE).read_text()))
    return model


def write_history(run: RunFolder, history: list[dict[str, float]]) -> None:
    run.write_text("history.json", json.dumps(history, indent=2) + "\n")
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    run.write_text("history.csv", buf.getvalue())
