"""The steps of one scheduled retraining run over URIs (scan -> ingest -> preprocess -> build -> train -> bless ->
register -> promote, then finalize): its state and each step's record live under ``retrain/<name>/`` of the storage
root, so each step can run in its own pod."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mammoflow import storage
from mammoflow.config import plain_numbers
from mammoflow.errors import ConfigError, InputError
from mammoflow.steps.data import localise_records, portable_root, require_root, safe_name
from mammoflow.storage.copies import cache_dir, cached_copy_path, fetch_tree, local_config, publish_tree

log = logging.getLogger(__name__)


RETRAIN_STEPS = ("scan", "ingest", "preprocess", "build", "train", "bless", "register", "promote")
#: state.metrics key naming the last pipeline run whose outcome was counted (a retried exit step counts it once).
_COUNTED_RUN = "last_pipeline_run_id"


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) \
            else value
    return out


def load_retrain(config_ref: str, overrides: Mapping[str, Any] | None = None, storage_root: str = "", *,
                 cache: str | os.PathLike[str] | None = None) -> Any:
    """The :class:`~mammoflow.retrain.config.RetrainConfig` of a pipeline step.

    ``config_ref``: a retrain YAML (local path or ``gs://`` URI); ``overrides``: a nested mapping merged into it
    (``{"train_overrides": {"seed": 3}, "blessing": {"n_bootstrap": 500}}``; numbers arrive as floats from KFP and
    are made plain again); ``storage_root``: the pipeline's, which wins over the config's. A cluster has no shared
    local disk, so the config's ``work_dir`` is not used: everything a run keeps is under the storage root.
    """
    from mammoflow.config import from_dict
    from mammoflow.retrain.config import RetrainConfig, load_retrain_config

    if not config_ref:
        raise ConfigError("config is empty. Fix: pass config=gs://BUCKET/retrain.yaml (or a local YAML path): the "
                          "retrain config naming the watched source, the train preset and the blessing policy")
    cfg = load_retrain_config(local_config(config_ref, cache))
    data = cfg.to_dict()
    if overrides:
        data = _deep_merge(data, plain_numbers(dict(overrides)))
    if storage_root:
        data["storage_root"] = storage_root
    cfg = from_dict(RetrainConfig, data, "retrain config")
    require_root(cfg.storage_root or "")
    return cfg


def retrain_uri(cfg: Any, *parts: str) -> str:
    """``<storage_root>/retrain/<name>/<parts>``: where a retraining keeps its state and its runs."""
    return storage.join(require_root(cfg.storage_root or ""), "retrain", cfg.name, *parts)


def retrain_run_uri(cfg: Any, run_id: str, *parts: str) -> str:
    """The folder of one pipeline run of a retraining (stable across retries of its steps)."""
    if not run_id:
        raise ConfigError("run_id is empty. Fix: the pipeline passes its run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER)")
    return retrain_uri(cfg, safe_name(run_id), *parts)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def load_retrain_state(cfg: Any) -> tuple[Any, storage.ObjectInfo | None]:
    """The retraining's :class:`~mammoflow.retrain.loop.RetrainState` from ``state.json`` in object storage, and
    the version read (None: no state yet, a new one with a fresh token)."""
    import dataclasses
    import secrets

    from mammoflow.retrain.loop import STATE_FILE, RetrainState

    uri = retrain_uri(cfg, STATE_FILE)
    info = storage.stat(uri)
    if info is None:
        return RetrainState(token=secrets.token_hex(8)), None
    data = json.loads(storage.get_bytes(uri))
    names = {f.name for f in dataclasses.fields(RetrainState)}
    return RetrainState(**{k: v for k, v in data.items() if k in names}), info


def update_retrain_state(cfg: Any, change: Any, attempts: int = 5) -> Any:
    """Read ``state.json``, apply ``change(state)`` (which mutates it) and write it back only if nobody wrote it in
    between (:func:`mammoflow.storage.put_bytes_if_version`); on a conflict, read again and re-apply. Returns what
    ``change`` returned."""
    import dataclasses

    from mammoflow.retrain.loop import STATE_FILE

    uri = retrain_uri(cfg, STATE_FILE)
    for attempt in range(attempts):
        with storage.local_lock(uri, ".state.lock"):
            state, info = load_retrain_state(cfg)
            out = change(state)
            if storage.put_bytes_if_version(uri, _json_bytes(dataclasses.asdict(state)), info):
                return out
        log.warning("%s changed while being updated (attempt %d/%d); reading it again", uri, attempt + 1, attempts)
    raise ConfigError(f"{uri}: another run keeps updating the retrain state. Fix: run one retrain of {cfg.name!r} "
                      "at a time (the schedule allows one concurrent run), then re-run this one")


def write_step(cfg: Any, run_id: str, step: str, record: Mapping[str, Any]) -> None:
    """What step ``step`` of run ``run_id`` did, as ``<run>/steps/<step>.json`` (replaced when a step is retried)."""
    storage.put_bytes(retrain_run_uri(cfg, run_id, "steps", f"{step}.json"), _json_bytes(dict(record)))


def read_steps(cfg: Any, run_id: str) -> dict[str, dict[str, Any]]:
    """Step name -> its record, for the steps of run ``run_id`` that finished."""
    out = {}
    for step in RETRAIN_STEPS:
        uri = retrain_run_uri(cfg, run_id, "steps", f"{step}.json")
        if storage.exists(uri):
            out[step] = json.loads(storage.get_bytes(uri))
    return out


def _require_step(steps: Mapping[str, Any], step: str, run_id: str) -> dict[str, Any]:
    if step not in steps:
        raise ConfigError(f"run {run_id}: the {step} step has no record. Fix: run the retrain pipeline's steps in "
                          "order (each reads what the earlier ones recorded)")
    return dict(steps[step])


def _local_source(cfg: Any, cache: str | os.PathLike[str] | None) -> Any:
    """``cfg`` with a watched source in object storage (root, Info.txt, labels, CSVs) fetched to local files: the
    readers take local files. The local copy has the same path in every pod, so incremental ingest compares like
    with like."""
    import dataclasses

    src = cfg.source
    local = {key: str(fetch_tree(getattr(src, key), cache)) for key in ("root", "info", "labels")
             if getattr(src, key) and storage.is_remote(getattr(src, key))}
    csvs = [str(fetch_tree(c, cache)) if storage.is_remote(c) else c for c in src.csvs]
    if not local and csvs == list(src.csvs):
        return cfg
    return dataclasses.replace(cfg, source=dataclasses.replace(src, **local, csvs=csvs))


def _set_image_root(records_dir: Path, image_root: str) -> None:
    """Point a records folder's images somewhere else (``records_meta.json``), e.g. at their URI before publishing
    it, or at a local copy after fetching it."""
    from mammoflow.records import META_FILE, atomic_write_text

    meta_path = records_dir / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta["image_root"] = image_root
    atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _download_tree(uri: str, dest: Path) -> Path:
    """A private local copy of every object under ``uri`` (local or remote) in ``dest``."""
    base = uri.rstrip("/")
    for obj in storage.list(base):
        storage.get_file(obj, dest / obj[len(base) + 1:])
    return dest


def _previous_records(cfg: Any, local_cfg: Any, uri: str | None, dest: Path) -> Path | None:
    """The baseline records folder (the last completed ingest) copied to ``dest``, its images pointed at the local
    copy of the watched source when they are named by URI (see :func:`retrain_ingest`)."""
    if not uri:
        return None
    if not storage.exists(storage.join(uri, "records.jsonl")):
        raise InputError(uri, "the records baseline named by state.json is missing",
                         "restore it, or remove last_records from the retrain's state.json to ingest everything again",
                         code="missing_file")
    local = _download_tree(uri, dest)
    remote_root, local_root = cfg.source.root, local_cfg.source.root
    if remote_root and storage.is_remote(remote_root):
        from mammoflow.records import RecordsTable

        image_root = RecordsTable.read(local).image_root
        if storage.is_remote(image_root):
            rel = image_root[len(remote_root.rstrip("/")):].lstrip("/")
            _set_image_root(local, str(Path(local_root) / rel) if rel else str(local_root))
    return local


def retrain_scan(cfg: Any, run_id: str, *, cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Step 1: compare the watched source with the last completed ingest (no image is decoded).

    A change allocates this run's retrain id (``r0007``, from ``state.next_id``; once per pipeline run, so a
    retried scan keeps it). Returns and records ``changed``, ``retrain_id``, ``previous_records``, ``files`` (the
    scan's counts), ``total_records`` and ``started``.
    """

    from mammoflow.registry import iso, utc_now
    from mammoflow.retrain.ingest import scan_changes
    from mammoflow.retrain.loop import count_records

    started = iso(utc_now())
    state, _ = load_retrain_state(cfg)
    local_cfg = _local_source(cfg, cache)
    with tempfile.TemporaryDirectory(prefix="mammoflow-retrain-") as tmp:
        previous = _previous_records(cfg, local_cfg, state.last_records, Path(tmp) / "previous")
        scan = scan_changes(local_cfg.source.options(), previous)
        total = count_records(previous)
    out: dict[str, Any] = {"started": started, "pipeline_run_id": run_id, "changed": not scan.nothing_changed,
                           "files": scan.summary(), "previous_records": state.last_records,
                           "total_records": total, "retrain_id": None}
    if scan.nothing_changed:
        log.info("nothing new: %d files unchanged since %s", len(scan.unchanged), state.last_records)
    else:
        def allocate(st: Any) -> str:
            current = st.in_progress or {}
            if current.get("pipeline_run_id") == run_id:
                return str(current["id"])
            if current:
                log.warning("retrain %s (pipeline run %s) did not finish: abandoned; this run starts from the last "
                            "completed ingest", current.get("id"), current.get("pipeline_run_id"))
            rid = f"r{st.next_id:04d}"
            st.next_id += 1
            st.in_progress = {"id": rid, "pipeline_run_id": run_id, "config_sha256": cfg.sha256(),
                              "stage": "started", "started": started}
            return rid

        out["retrain_id"] = update_retrain_state(cfg, allocate)
        log.info("retrain %s: %s", out["retrain_id"], scan.summary())
    write_step(cfg, run_id, "scan", out)
    return out


def retrain_ingest(cfg: Any, run_id: str, out_dir: str | os.PathLike[str], *,
                   cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Step 2: incremental ingest into ``out_dir`` (a KFP artifact), published to ``<run>/records`` (the next
    run's baseline once this run ends). Images of a source in object storage are named by their URI in the
    published records, so that they stay valid in other pods. Returns the IngestDelta as a dict (+ ``records_uri``).
    """

    from mammoflow.retrain.loop import ingest_step

    scan = _require_step(read_steps(cfg, run_id), "scan", run_id)
    local_cfg = _local_source(cfg, cache)
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="mammoflow-retrain-") as tmp:
        previous = _previous_records(cfg, local_cfg, scan.get("previous_records"), Path(tmp) / "previous")
        delta = ingest_step(local_cfg, previous, out)
    if cfg.source.root and storage.is_remote(cfg.source.root):
        from mammoflow.records import RecordsTable

        image_root = RecordsTable.read(out).image_root
        _set_image_root(out, portable_root(image_root, Path(local_cfg.source.root), cfg.source.root))
    records_uri = retrain_run_uri(cfg, run_id, "records")
    publish_tree(out, records_uri)
    record = {**delta.to_dict(), "out_dir": records_uri, "previous": scan.get("previous_records"),
              "records_uri": records_uri}
    write_step(cfg, run_id, "ingest", record)
    return record


def retrain_preprocess(cfg: Any, run_id: str, records_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                       *, cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Step 3: preprocess into the folder every run shares, ``retrain/<name>/preprocessed`` (records an earlier run
    did with the same chain and input are reused; only new ones run). ``out_dir`` (a KFP artifact) gets this run's
    records table, whose images are named by the shared folder's URI. Returns the preprocessing counts."""
    import dataclasses
    import shutil
    import time

    from mammoflow.retrain.loop import preprocess_step

    shared = retrain_uri(cfg, "preprocessed")
    records = localise_records(records_dir, cache)
    if storage.is_remote(shared):
        local = fetch_tree(shared, cache) if storage.list(shared) else cached_copy_path(shared, cache)
        started_ns = time.time_ns()
        summary = preprocess_step(cfg, records, local)
        # Publish what this run wrote (new images, resume states, the table), not the whole folder again.
        known = set(storage.list(shared))
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            dest = storage.join(shared, path.relative_to(local).as_posix())
            if dest not in known or path.stat().st_mtime_ns >= started_ns:
                storage.put_file(path, dest)
        image_root = shared
    else:
        local = storage.local_path(shared).absolute()
        summary = preprocess_step(cfg, records, local)
        image_root = str(local)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in local.iterdir():
        if path.is_file() and not path.name.startswith("."):
            shutil.copyfile(path, out / path.name)
    _set_image_root(out, image_root)
    record = {**dataclasses.asdict(summary), "usable": summary.usable, "shared_uri": shared}
    if summary.usable == 0:
        raise InputError(out / "quarantine.md", "no usable record left after preprocessing",
                         "see the quarantine report for each record's problem and fix", code="empty")
    write_step(cfg, run_id, "preprocess", record)
    return record


def retrain_build(cfg: Any, run_id: str, preprocessed_dir: str | os.PathLike[str], *,
                  cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Step 4: shards under ``<run>/data`` with every record in the split the ingest's plan gave it, and the
    evaluation split's fingerprint (both models are judged on exactly these examples). With the diagnostics
    negative control on, the training data is a label-shuffled copy (``train_uri``)."""
    from mammoflow.dataset import shards
    from mammoflow.retrain.loop import build_step, split_fingerprint

    data_uri = retrain_run_uri(cfg, run_id, "data")
    manifest = build_step(cfg, localise_records(preprocessed_dir, cache), data_uri)
    train_uri = data_uri
    if cfg.diagnostics.train_on_shuffled_labels:
        from mammoflow.retrain.diagnostics import shuffled_label_copy

        train_uri = retrain_run_uri(cfg, run_id, "data-shuffled-labels")
        shuffled_label_copy(data_uri, train_uri, seed=cfg.evaluation.seed)
    record = {"data_uri": data_uri, "train_uri": train_uri, "split": cfg.evaluation.split,
              "split_sha256": split_fingerprint(manifest, cfg.evaluation.split),
              "manifest_sha256": storage.sha256_of(shards.manifest_uri(data_uri)),
              "examples": manifest.get("examples"), "counts": manifest.get("counts"),
              "classes": manifest.get("classes")}
    write_step(cfg, run_id, "build", record)
    return record


def retrain_train(cfg: Any, run_id: str, *, metrics_port: int | None = None,
                  cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Step 5: train the challenger under ``<run>/train`` (a retried step resumes it), warm started from the
    champion's weights when the config says so and the models match. Returns the run URI, the champion it was
    compared with and the training metrics."""
    import dataclasses

    from mammoflow.registry import ModelRegistry
    from mammoflow.retrain.loop import train_step, warm_start_weights
    from mammoflow.training.config import load_train_config

    build = _require_step(read_steps(cfg, run_id), "build", run_id)
    champion = ModelRegistry(cfg.registry_uri).champion()
    init = warm_start_weights(cfg, champion, load_train_config(cfg.train, dict(cfg.train_overrides)))
    if metrics_port:
        cfg = dataclasses.replace(cfg, train_overrides={**cfg.train_overrides, "metrics_port": int(metrics_port)})
    run_uri = retrain_run_uri(cfg, run_id, "train")
    result = train_step(cfg, build["train_uri"], run_uri, init_weights=init, cache_dir=cache_dir(cache))
    record = {"run_uri": run_uri, "champion": champion.version if champion else None,
              "champion_uri": champion.uri if champion else None, "warm_start_weights": init,
              "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
              "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}}
    write_step(cfg, run_id, "train", record)
    return record


def retrain_bless(cfg: Any, run_id: str, challenger_eval: str | os.PathLike[str],
                  champion_eval: str | os.PathLike[str] | None, *, force_reason: str | None = None,
                  by: str | None = None) -> Any:
    """Step 7: the blessing verdict from both evaluations (paired bootstrap CIs on the same rows); an empty
    ``force_reason`` means no override."""
    from mammoflow.retrain.loop import bless_step

    steps = read_steps(cfg, run_id)
    build, train = _require_step(steps, "build", run_id), _require_step(steps, "train", run_id)
    ident = {"split": build["split"], "split_sha256": build["split_sha256"], "data_uri": build["data_uri"]}

    def report(folder: str | os.PathLike[str]) -> dict[str, Any]:
        return {**json.loads((Path(folder) / "metrics.json").read_text()), "evaluation_split": ident}

    verdict = bless_step(cfg, challenger_eval, champion_eval, report(challenger_eval),
                         report(champion_eval) if champion_eval is not None else None,
                         challenger=f"challenger {steps['scan']['retrain_id']}", champion=train["champion"],
                         force_reason=force_reason or None, by=by)
    write_step(cfg, run_id, "bless", verdict.to_dict())
    return verdict


def _verdict_recorded(registry: Any, version: str) -> bool:
    return any(e.version == version and e.action in ("bless", "refuse", "force_bless") for e in registry.audit_log())


def retrain_register(cfg: Any, run_id: str, eval_dir: str | os.PathLike[str], verdict: Any, *, pipeline: str,
                     by: str) -> Any:
    """Step 8: hand the challenger to the model registry (blessed or not: a refused version stays for audit, never
    as champion) with its evaluation, verdict and lineage, then record the verdict in the audit log. Idempotent: the
    registration key is the pipeline run id, and a verdict already recorded is not recorded twice."""
    import dataclasses

    from mammoflow.registry import ModelRegistry
    from mammoflow.retrain.loop import record_verdict, register_step

    steps = read_steps(cfg, run_id)
    scan, ingest = _require_step(steps, "scan", run_id), _require_step(steps, "ingest", run_id)
    build, train = _require_step(steps, "build", run_id), _require_step(steps, "train", run_id)
    evaluation = {"split": build["split"], "split_sha256": build["split_sha256"], "data_uri": build["data_uri"],
                  "manifest_sha256": build["manifest_sha256"], "plan_sha256": ingest.get("plan_sha256"),
                  "level": verdict.evaluation.get("level")}
    lineage = {"retrain": cfg.name, "retrain_id": scan["retrain_id"], "pipeline_run_id": run_id,
               "pipeline": pipeline, "parent_version": train["champion"] if train["warm_start_weights"] else None,
               "warm_start_weights": train["warm_start_weights"], "champion_at_judgement": train["champion"],
               "records_dir": ingest["records_uri"], "dataset_uri": build["data_uri"],
               "diagnostics": dataclasses.asdict(cfg.diagnostics),
               "ingest": {k: ingest.get(k) for k in ("new_records", "changed_records", "removed_records",
                                                     "total_records", "new_patients", "new_by_split")}}
    registry = ModelRegistry(cfg.registry_uri)
    version = register_step(registry, train["run_uri"], str(eval_dir), verdict, evaluation=evaluation,
                            lineage=lineage, key=f"kfp:{run_id}", by=by)
    if not _verdict_recorded(registry, version.version):
        record_verdict(registry, version.version, verdict, by=by)
    write_step(cfg, run_id, "register", {"version": version.version, "uri": version.uri,
                                         "blessed": verdict.blessed})
    return version


def retrain_promote(cfg: Any, run_id: str, version: str, verdict: Any, *, by: str) -> Any:
    """Step 9 (blessed challengers only): make ``version`` the champion, with the verdict as the reason."""
    from mammoflow.registry import ModelRegistry

    rid = _require_step(read_steps(cfg, run_id), "scan", run_id)["retrain_id"]
    reason = (f"forced blessing in retrain {rid} (pipeline run {run_id}): {verdict.force_reason}" if verdict.forced
              else f"blessed by retrain {rid} (pipeline run {run_id}): {verdict.reason}")
    change = ModelRegistry(cfg.registry_uri).promote(version, reason=reason,
                                                     by=verdict.forced_by if verdict.forced else by)
    write_step(cfg, run_id, "promote", {"version": version, "from_version": change.from_version,
                                        "changed": change.changed})
    return change


def retrain_result(cfg: Any, run_id: str, steps: Mapping[str, Mapping[str, Any]], *, failed: bool,
                   error: str | None = None) -> Any:
    """The :class:`~mammoflow.retrain.loop.RetrainResult` of a pipeline run, from its steps' records."""
    from mammoflow.registry import ModelRegistry, iso, utc_now
    from mammoflow.retrain.loop import RetrainResult

    scan, ingest = steps.get("scan") or {}, steps.get("ingest")
    registry = ModelRegistry(cfg.registry_uri)
    now = utc_now()
    result = RetrainResult(status="failed", retrain_id=scan.get("retrain_id"), started=scan.get("started", ""),
                           finished=iso(now), paths={"run": retrain_run_uri(cfg, run_id), "registry": registry.root})
    if result.started:
        from datetime import datetime

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


def retrain_finalize(cfg: Any, run_id: str, *, failed: bool, error: str | None = None,
                     push_gateway: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The exit handler's step: whatever happened, record the run's outcome and push the retraining's metrics.

    The outcome (nothing new, blessed, refused, failed) updates the running totals of ``state.json`` once per
    pipeline run; a completed run (anything but failed) makes its ingest the next run's baseline. The complete
    metric set goes to the Pushgateway (``push_gateway``, else the config's; none configured: skipped).
    Returns the result and the state's metrics.
    """
    from mammoflow.registry import ModelRegistry
    from mammoflow.retrain.loop import rule_keys, update_metrics
    from mammoflow.retrain.push import push_metrics, retrain_values

    steps = read_steps(cfg, run_id)
    result = retrain_result(cfg, run_id, steps, failed=failed, error=error)
    registry = ModelRegistry(cfg.registry_uri)
    rules = rule_keys(cfg, registry)  # the loop's own bookkeeping: the pipeline and `mammoflow retrain` count alike

    def record(state: Any) -> dict[str, Any]:
        if state.metrics.get(_COUNTED_RUN) != run_id:  # a retried exit step must not count the run twice
            update_metrics(state, result, None if result.status == "failed" else registry, rules)
            state.metrics[_COUNTED_RUN] = run_id
            if result.status != "failed" and "ingest" in steps:
                state.last_records = steps["ingest"]["records_uri"]
            if (state.in_progress or {}).get("pipeline_run_id") == run_id:
                state.in_progress = None
        return dict(state.metrics)

    metrics = update_retrain_state(cfg, record)
    gateway = push_gateway or cfg.push.gateway
    if gateway:
        try:
            push_metrics(gateway, cfg.push.job, retrain_values(metrics), grouping_key={"retrain": cfg.name},
                         timeout=cfg.push.timeout)
            result.pushed = True
        except OSError as exc:  # an unreachable gateway must not fail a finished retrain; the alerts will notice
            log.error("could not push metrics to %s: %s", gateway, exc)
    else:
        log.info("no Pushgateway configured (push.gateway): metrics kept in %s only", retrain_uri(cfg, "state.json"))
    storage.put_bytes(retrain_run_uri(cfg, run_id, "result.json"), _json_bytes(result.to_dict()))
    log.info("%s", result.summary())
    return result, metrics


def retrain_markdown(cfg: Any, run_id: str, result: Any, gateway: str | None) -> str:
    """The run's summary for people (the KFP UI shows it; a local run writes it as ``report.md``)."""
    title = {"nothing_new": "nothing new", "blessed": "BLESSED", "refused": "NOT BLESSED", "failed": "FAILED"}
    lines = [f"# Retrain {cfg.name}: {title[result.status]}", "", result.summary(), "",
             "| | |", "| --- | --- |", f"| pipeline run | `{run_id}` |",
             f"| retrain id | {result.retrain_id or '(none: nothing changed)'} |"]
    ingest = result.ingest or {}
    if "mode" in ingest:
        lines.append(f"| ingest | {ingest['new_records']} new, {ingest['changed_records']} changed, "
                     f"{ingest['removed_records']} removed records ({ingest['total_records']} in the table); "
                     f"{ingest['quarantined_new']} newly quarantined |")
    elif ingest.get("files"):
        files = ingest["files"]
        lines.append(f"| watched files | {files.get('scanned', 0)} scanned, none new, changed or removed |")
    if result.version:
        lines.append(f"| registered | {result.version} ({'promoted' if result.promoted else 'not promoted'}) |")
    if result.pushed:
        pushed = f"pushed to {gateway}"
    else:
        pushed = "not pushed: " + ("the Pushgateway was unreachable" if gateway else "no push.gateway configured")
    lines += [f"| champion | {result.champion_before or '(none)'} -> {result.champion_after or '(none)'} |",
              f"| metrics | {pushed} |", f"| run folder | `{retrain_run_uri(cfg, run_id)}` |", ""]
    if result.error:
        lines += ["## Error", "", result.error, ""]
    return "\n".join(lines)
