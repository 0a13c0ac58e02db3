"""A retraining's bookkeeping, the same for ``mammoflow retrain`` and the KFP pipeline: what it remembers between
runs (``state.json``: the next retrain id, the records baseline, the retrain in progress, the metric totals), what
one run did (:class:`RetrainResult`, built from its steps' records), and the Prometheus values it pushes."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from mammoflow import storage
from mammoflow.errors import ConfigError
from mammoflow.registry import ModelRegistry, iso, utc_now, version_number
from mammoflow.storage import atomic_write_text

log = logging.getLogger(__name__)

Status = Literal["nothing_new", "blessed", "refused", "failed"]
STATE_FILE = "state.json"
HISTORY_FILE = "history.jsonl"
#: The steps of one run, in order; each leaves a record (``steps/<step>.json`` in the run folder).
RETRAIN_STEPS = ("scan", "ingest", "preprocess", "build", "train", "bless", "register", "promote")
#: state.metrics key naming the last run whose outcome was counted (a retried exit step counts it once).
COUNTED_RUN = "last_pipeline_run_id"


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


# ------------------------------------------------------------------------------------------------- state


@dataclass
class RetrainState:
    """What a retraining remembers between runs (``state.json``)."""

    token: str = ""  # random, per retraining: makes registry idempotency keys unique across retrainings
    next_id: int = 1
    last_records: str | None = None  # the last completed ingest (local work folders: relative to the folder)
    in_progress: dict[str, Any] | None = None  # {"id", "pipeline_run_id", "config_sha256", "stage", "started"}
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_bytes(cls, data: bytes | None) -> RetrainState:
        """The state in ``data`` (None: no state yet, a new one with a fresh token)."""
        if data is None:
            return cls(token=secrets.token_hex(8))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(data).items() if k in names})

    @classmethod
    def load(cls, work: str | Path) -> RetrainState:
        """The state of a local work folder."""
        path = Path(work) / STATE_FILE
        return cls.from_bytes(path.read_bytes() if path.exists() else None)

    def save(self, work: str | Path) -> None:
        atomic_write_text(Path(work) / STATE_FILE, json_bytes(dataclasses.asdict(self)).decode())


def read_state(uri: str) -> tuple[RetrainState, storage.ObjectInfo | None]:
    """The state at ``uri`` (local or remote) and the version read (None: no state yet)."""
    info = storage.stat(uri)
    return RetrainState.from_bytes(storage.get_bytes(uri) if info is not None else None), info


def update_state(uri: str, change: Callable[[RetrainState], Any], *, name: str, attempts: int = 5) -> Any:
    """Read the state, apply ``change(state)`` (which mutates it) and write it back only if nobody wrote it in
    between (:func:`mammoflow.storage.put_bytes_if_version`); on a conflict, read again and re-apply. Returns what
    ``change`` returned."""
    for attempt in range(attempts):
        with storage.local_lock(uri, ".state.lock"):
            state, info = read_state(uri)
            out = change(state)
            if storage.put_bytes_if_version(uri, json_bytes(dataclasses.asdict(state)), info):
                return out
        log.warning("%s changed while being updated (attempt %d/%d); reading it again", uri, attempt + 1, attempts)
    raise ConfigError(f"{uri}: another run keeps updating the retrain state. Fix: run one retrain of {name!r} "
                      "at a time (the schedule allows one concurrent run), then re-run this one")


# ------------------------------------------------------------------------------------------------- result


@dataclass
class RetrainResult:
    """What one retraining run did (``result.json`` in its run folder; a line of ``history.jsonl`` locally)."""

    status: Status
    retrain_id: str | None = None
    ingest: dict[str, Any] | None = None  # IngestDelta.to_dict()
    version: str | None = None  # the registered challenger
    promoted: bool = False
    champion_before: str | None = None
    champion_after: str | None = None
    verdict: dict[str, Any] | None = None  # Verdict.to_dict()
    paths: dict[str, str] = field(default_factory=dict)
    started: str = ""
    finished: str = ""
    seconds: float = 0.0
    pushed: bool = False
    error: str | None = None

    @property
    def nothing_new(self) -> bool:
        return self.status == "nothing_new"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line for people (the CLI prints it)."""
        if self.status == "nothing_new":
            return "nothing new: no new or changed data since the last retrain; no model trained"
        if self.status == "failed":
            return f"retrain {self.retrain_id or ''} failed: {self.error}"
        head = (f"retrain {self.retrain_id}: {self.version} {'BLESSED' if self.status == 'blessed' else 'NOT BLESSED'}"
                f"; champion {self.champion_before or '(none)'} -> {self.champion_after or '(none)'}")
        return head + (f". {self.verdict['reason']}" if self.verdict else "")


def result_from_steps(steps: Mapping[str, Mapping[str, Any]], registry: ModelRegistry, paths: Mapping[str, str], *,
                      failed: bool, error: str | None = None) -> RetrainResult:
    """The :class:`RetrainResult` of a run, from its steps' records (``paths``: where its outputs are)."""
    scan, ingest = steps.get("scan") or {}, steps.get("ingest")
    now = utc_now()
    result = RetrainResult(status="failed", retrain_id=scan.get("retrain_id"), started=scan.get("started", ""),
                           finished=iso(now), paths={**paths, "registry": registry.root})
    if result.started:
        started = datetime.strptime(result.started, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=now.tzinfo)
        result.seconds = round((now - started).total_seconds(), 2)
    if ingest is not None:
        result.ingest = dict(ingest)
        if "preprocess" in steps:
            result.ingest["preprocess_quarantined"] = steps["preprocess"].get("quarantined_new", 0)
        result.paths.update(records=ingest["records_uri"])
    elif scan:
        result.ingest = {"nothing_new": not scan.get("changed"), "new_records": 0, "changed_records": 0,
                         "removed_records": 0, "quarantined_new": 0, "files": scan.get("files"),
                         "total_records": scan.get("total_records", 0)}
    if "build" in steps:
        result.paths.update(data=steps["build"]["data_uri"])
    if "train" in steps:
        result.paths.update(train=steps["train"]["run_uri"])
        result.champion_before = steps["train"].get("champion")
    result.verdict = dict(steps["bless"]) if "bless" in steps else None
    result.version = (steps.get("register") or {}).get("version")
    result.promoted = "promote" in steps
    champion = registry.champion()
    result.champion_after = champion.version if champion else None
    if "train" not in steps:  # no challenger: the champion did not change in this run
        result.champion_before = result.champion_after
    if failed:
        done = [step for step in RETRAIN_STEPS if step in steps]
        result.error = (f"{error or 'a step failed'} (last step completed: {done[-1] if done else 'none'}; see the "
                        "failed step's log)")
    elif (scan and not scan.get("changed")) or (ingest is not None and ingest.get("nothing_new")):
        result.status = "nothing_new"
    elif result.version is not None and result.verdict is not None:
        result.status = "blessed" if result.verdict.get("blessed") else "refused"
        if result.status == "blessed" and not result.promoted:
            result.status, result.error = "failed", f"{result.version} was blessed but never promoted"
    else:
        result.error = error or "the run ended before a verdict (incomplete)"
    return result


def history_line(result: RetrainResult) -> str:
    """One line of ``history.jsonl``: the result without the verdict's details and the ingest's lists."""
    line = {k: v for k, v in result.to_dict().items() if k not in ("verdict", "ingest")}
    line["reason"] = (result.verdict or {}).get("reason")
    if result.ingest:
        line["ingest"] = {k: result.ingest.get(k) for k in ("new_records", "changed_records", "removed_records",
                                                            "quarantined_new", "nothing_new")}
    return json.dumps(line, sort_keys=True, default=str) + "\n"


# ------------------------------------------------------------------------------------------------- metrics


def update_metrics(state: RetrainState, result: RetrainResult, registry: ModelRegistry | None,
                   rules: list[str]) -> None:
    """Fold one run's outcome into the state's Prometheus values; ``rules``: the judged metrics
    (:func:`rule_keys`) whose champion values are exported."""
    m = state.metrics
    now = time.time()
    m.setdefault("mammoflow_retrain_first_run_timestamp_seconds", now)
    m["mammoflow_retrain_last_run_timestamp_seconds"] = now
    m["mammoflow_retrain_last_duration_seconds"] = result.seconds
    m["mammoflow_retrain_last_run_nothing_new"] = 1.0 if result.status == "nothing_new" else 0.0
    m["mammoflow_retrain_last_run_failed"] = 1.0 if result.status == "failed" else 0.0
    runs = m.setdefault("runs_by_status", {})
    runs[result.status] = runs.get(result.status, 0) + 1
    if result.status == "nothing_new":
        m["mammoflow_retrain_nothing_new_runs_total"] = m.get("mammoflow_retrain_nothing_new_runs_total", 0) + 1
    if result.ingest and "mode" in result.ingest:  # gauges of the last ingest; a run stopped by the scan keeps them
        ingested = result.ingest["new_records"] + result.ingest["changed_records"]
        quarantined = result.ingest["quarantined_new"] + result.ingest.get("preprocess_quarantined", 0)
        m["mammoflow_retrain_last_ingest_records"] = ingested
        m["mammoflow_retrain_last_ingest_quarantined"] = quarantined
        m["mammoflow_retrain_table_records"] = result.ingest["total_records"]
        m["mammoflow_retrain_records_ingested_total"] = m.get("mammoflow_retrain_records_ingested_total", 0) + ingested
        m["mammoflow_retrain_records_quarantined_total"] = \
            m.get("mammoflow_retrain_records_quarantined_total", 0) + quarantined
    if result.status in ("blessed", "refused"):
        m["mammoflow_retrain_last_success_timestamp_seconds"] = now
        m["mammoflow_retrain_last_verdict_blessed"] = 1.0 if result.status == "blessed" else 0.0
        m["mammoflow_retrain_last_verdict_forced"] = 1.0 if (result.verdict or {}).get("forced") else 0.0
        m["challenger_metrics"] = {k: d.get("challenger") for k, d in (result.verdict or {}).get("deltas", {}).items()}
    champion = registry.champion() if registry is not None else None
    if champion is not None:
        m["mammoflow_retrain_champion_version"] = version_number(champion.version)
        metrics = champion.info.get("metrics") or {}
        m["champion_metrics"] = {k: (metrics.get(k) or {}).get("value") for k in rules if k in metrics}


def rule_keys(cfg: Any, registry: ModelRegistry) -> list[str]:
    """The judged metrics as "level.metric" (the level the champion was judged at, when the policy says primary)."""
    champion = registry.champion()
    judged = (champion.evaluation.get("level") if champion else None) or "roi"
    level = judged if cfg.blessing.level == "primary" else cfg.blessing.level
    keys = [f"{r.level or level}.{r.metric}" for r in cfg.blessing.rules]
    keys += [k if "." in k else f"{level}.{k}" for k in cfg.blessing.minimums]
    return sorted(set(keys))


def push_state(cfg: Any, metrics: Mapping[str, Any], gateway: str | None) -> bool:
    """Push the retraining's complete metric set to ``gateway`` (None: not pushed). An unreachable gateway does not
    fail a finished retrain (logged; the alerts notice the silence)."""
    from mammoflow.retrain.push import push_metrics, retrain_values

    if not gateway:
        return False
    try:
        push_metrics(gateway, cfg.push.job, retrain_values(dict(metrics)), grouping_key={"retrain": cfg.name},
                     timeout=cfg.push.timeout)
        return True
    except OSError as exc:
        log.error("could not push metrics to %s: %s", gateway, exc)
        return False


def count_records(records_dir: Path | None) -> int:
    """Records in a records folder (0 when there is none yet)."""
    if records_dir is None or not (records_dir / "records.jsonl").exists():
        return 0
    with open(records_dir / "records.jsonl", encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())
