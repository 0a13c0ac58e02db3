"""Registry of trained model versions in object storage (a local folder or ``gs://``), with a champion alias
and an append-only audit log.

Not the architecture registry (:mod:`mammoflow.models.registry`, models by name): this one holds *trained* models,
each an immutable numbered version, and says which of them is the ``champion`` (the model that is served and that
every retrained challenger is compared with). Layout under the root URI::

    claims/v0007.json                   create-only claim of a version number (who, when, idempotency key)
    versions/v0007/model.keras          the model, copied from its training run (never referenced in place)
    versions/v0007/config.yaml          its TrainConfig; metrics.json, run.json, model_meta.json, history.csv
    versions/v0007/model.weights.h5     whole-model weights when the run had them (warm starts load these)
    versions/v0007/evaluation/          metrics.json with 95% CIs, predictions.parquet: the judged evaluation
    versions/v0007/verdict.json, .md    the blessing verdict it received (if any)
    versions/v0007/version.json         written LAST: a version without it is incomplete and invisible
    aliases/champion.json               {"version", "history", "by", "reason", "audit_event", ...}
    audit/<UTC time>-<token>.json       one immutable object per event: register, promote, rollback, verdicts

**Version numbers are never reused.** A number is taken by creating ``claims/vNNNN.json`` *create-only*: locally by
``os.link`` of a finished temporary file (fails with EEXIST if the name exists, atomically, with full content); on
GCS by an upload with the precondition ``ifGenerationMatch=0`` (the object must not exist; a second writer gets
HTTP 412). The claim holds a random token and is read back after the write: a claimant proceeds only if the stored
token is its own. The read-back covers a create that is retried after its response was lost (412 on an object that
is in fact ours) and storage that ignores the precondition. The gcp-storage-emulator used in tests is such a
storage, so the tests check the read-back by interleaving two claims on it, and the create-only race with
concurrent registrations on local disk, where ``link`` enforces it.

**The alias is updated last and atomically**: a version is fully written (``version.json`` last) before it can be
promoted, and ``aliases/champion.json`` is replaced in one write, guarded against concurrent promotions (a file
lock locally, ``ifGenerationMatch=<generation read>`` on GCS). The audit event is written *before* the alias and
the alias names it (``audit_event``), so every champion change has a record.

**The audit log is append-only by construction**: each event is its own object, never rewritten, named by its UTC
time, so listing the folder gives the log in order and concurrent writers cannot lose each other's events. Each
event says who (``--by`` or ``$USER``), when, why (a reason is required for every human action), the action and the
versions from -> to.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mammoflow import storage
from mammoflow.errors import InputError, MammoflowError

log = logging.getLogger(__name__)

CHAMPION = "champion"
VERSION_FILE = "version.json"
VERDICT_FILE = "verdict.json"
VERDICT_MD = "verdict.md"
EVALUATION_DIR = "evaluation"
#: Files copied from a training run folder (the first two are required).
RUN_FILES = ("model.keras", "config.yaml", "metrics.json", "run.json", "model_meta.json", "history.csv",
             "model.weights.h5")
#: Files copied from an evaluation folder (``mammoflow evaluate --out``).
EVALUATION_FILES = ("metrics.json", "classification_metrics.json", "predictions.parquet")
ACTIONS = ("register", "promote", "rollback", "bless", "refuse", "force_bless")
_VERSION = re.compile(r"^v(\d{4,})$")
_MAX_CLAIM_ATTEMPTS = 1000


class RegistryError(MammoflowError):
    """A registry operation was refused (unknown version, missing reason, refused verdict, ...)."""


class RegistryConflict(RegistryError):
    """Someone else changed the registry at the same moment (a concurrent promotion): re-run."""


def who(by: str | None = None) -> str:
    """The person (or service account) acting: ``by``, else ``$USER``, else the login name, else ``unknown``."""
    if by and by.strip():
        return by.strip()
    if os.environ.get("USER"):
        return os.environ["USER"]
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # containers without a passwd entry for the uid
        return "unknown"


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a ``Z``: sorts as text in time order."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def version_name(number: int) -> str:
    return f"v{number:04d}"


def version_number(name: str) -> int:
    m = _VERSION.match(name)
    if not m:
        raise RegistryError(f"{name!r} is not a version name. Fix: use the form v0001 (see `mammoflow registry list`)")
    return int(m.group(1))


# --------------------------------------------------------------------------------- create-only and guarded writes


def put_if_absent(uri: str, data: bytes) -> bool:
    """Create ``uri`` holding ``data`` only if nothing exists there; True if this call created it
    (:func:`mammoflow.storage.put_bytes_if_absent`: ``link`` locally, ``if_generation_match=0`` on GCS)."""
    return storage.put_bytes_if_absent(uri, data)


def put_if_unchanged(uri: str, data: bytes, expected: storage.ObjectInfo | None) -> None:
    """Replace ``uri`` with ``data`` only if it is still the object ``expected`` (None: still absent), else raise
    :class:`RegistryConflict` (:func:`mammoflow.storage.put_bytes_if_version`). Local registries: the caller holds
    :func:`mammoflow.storage.local_lock`, since there the check and the write are two operations."""
    if not storage.put_bytes_if_version(uri, data, expected):
        raise RegistryConflict(f"{uri} changed while this update was being made. Fix: re-run the command")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode()


def _read_json(uri: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.get_bytes(uri))
    except InputError as err:
        if err.code == "missing_file":
            return None
        raise


def copy_object(src: str, dest: str) -> None:
    """Copy one object between any two URIs (through a local temporary file, so large models stream)."""
    with tempfile.TemporaryDirectory(prefix="mammoflow-registry-") as tmp:
        local = storage.get_file(src, Path(tmp) / "object")
        storage.put_file(local, dest, move=True)


# --------------------------------------------------------------------------------------------- data classes


@dataclass
class AuditEvent:
    """One line of the audit log."""

    action: str  # one of ACTIONS
    by: str
    reason: str
    time: str = ""
    version: str | None = None  # the version acted on
    from_version: str | None = None  # champion before (promote / rollback)
    to_version: str | None = None  # champion after
    details: dict[str, Any] = field(default_factory=dict)
    event_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        """The event as one JSON line (``mammoflow registry audit`` prints these)."""
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)


@dataclass
class ModelVersion:
    """A complete registered version: its ``version.json`` and where it lives."""

    version: str
    uri: str  # the version folder: a run folder that `mammoflow evaluate --model` accepts
    info: dict[str, Any]

    @property
    def created(self) -> str:
        return self.info.get("created", "")

    @property
    def model_uri(self) -> str:
        return storage.join(self.uri, "model.keras")

    @property
    def weights_uri(self) -> str | None:
        """Whole-model weights (``model.weights.h5``) for warm starts, when registered with them."""
        return storage.join(self.uri, "model.weights.h5") if "model.weights.h5" in self.info.get("files", {}) \
            else None

    @property
    def evaluation(self) -> dict[str, Any]:
        return self.info.get("evaluation") or {}

    @property
    def verdict(self) -> dict[str, Any] | None:
        return self.info.get("verdict")

    @property
    def blessed(self) -> bool | None:
        v = self.verdict
        return None if v is None else bool(v.get("blessed"))

    @property
    def lineage(self) -> dict[str, Any]:
        return self.info.get("lineage") or {}

    def evaluation_metrics(self) -> dict[str, Any] | None:
        """The registered evaluation report (metrics.json with CIs), or None."""
        return _read_json(storage.join(self.uri, EVALUATION_DIR, "metrics.json"))


@dataclass
class AliasChange:
    """What a promotion or rollback did."""

    alias: str
    from_version: str | None
    to_version: str
    changed: bool
    event: AuditEvent | None = None


# --------------------------------------------------------------------------------------------- the registry


class ModelRegistry:
    """Versions, the champion alias and the audit log under ``root_uri`` (see the module docstring)."""

    def __init__(self, root_uri: str | os.PathLike[str]):
        self.root = str(root_uri).rstrip("/")
        if not self.root:
            raise RegistryError("the registry root is empty. Fix: give a folder or gs://bucket/prefix")

    def __repr__(self) -> str:
        return f"ModelRegistry({self.root!r})"

    # ---------------------------------------------------------------------------------------------- paths
    def version_uri(self, version: str) -> str:
        version_number(version)
        return storage.join(self.root, "versions", version)

    def _claim_uri(self, version: str) -> str:
        return storage.join(self.root, "claims", f"{version}.json")

    def _alias_uri(self, alias: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", alias):
            raise RegistryError(f"alias {alias!r}: use lower-case letters, digits, - and _")
        return storage.join(self.root, "aliases", f"{alias}.json")

    # -------------------------------------------------------------------------------------------- reading
    def _claims(self) -> dict[str, str]:
        """Claimed version name -> claim URI (complete or not)."""
        out = {}
        for uri in storage.list(storage.join(self.root, "claims")):
            name = uri.rsplit("/", 1)[-1].removesuffix(".json")
            if _VERSION.match(name):
                out[name] = uri
        return dict(sorted(out.items(), key=lambda kv: version_number(kv[0])))

    def versions(self) -> list[ModelVersion]:
        """Every complete version, oldest first."""
        out = []
        for name in self._claims():
            info = _read_json(storage.join(self.version_uri(name), VERSION_FILE))
            if info is not None:
                out.append(ModelVersion(name, self.version_uri(name), info))
        return out

    def get(self, version: str) -> ModelVersion:
        """A complete version; RegistryError naming the known versions otherwise."""
        info = _read_json(storage.join(self.version_uri(version), VERSION_FILE))
        if info is None:
            known = ", ".join(v.version for v in self.versions()) or "none yet"
            raise RegistryError(f"{self.root}: no version {version} (known: {known})")
        return ModelVersion(version, self.version_uri(version), info)

    def alias(self, alias: str = CHAMPION) -> dict[str, Any] | None:
        """The alias object (``version``, ``history``, ``by``, ``reason``, ...), or None when unset."""
        return _read_json(self._alias_uri(alias))

    def champion(self) -> ModelVersion | None:
        current = self.alias(CHAMPION)
        return None if current is None else self.get(current["version"])

    def audit_log(self, limit: int | None = None) -> list[AuditEvent]:
        """The audit events in time order (the last ``limit`` when given)."""
        uris = storage.list(storage.join(self.root, "audit"))
        uris = [u for u in uris if u.endswith(".json")]
        if limit is not None:
            uris = uris[-limit:] if limit > 0 else []
        names = {f.name for f in dataclasses.fields(AuditEvent)}
        events = []
        for uri in uris:
            data = _read_json(uri) or {}
            events.append(AuditEvent(**{k: v for k, v in data.items() if k in names}))
        return events

    def find(self, key: str) -> ModelVersion | None:
        """The complete version registered with idempotency ``key`` (e.g. a retrain id), if any."""
        for name, uri in reversed(list(self._claims().items())):
            claim = _read_json(uri) or {}
            if claim.get("key") == key:
                info = _read_json(storage.join(self.version_uri(name), VERSION_FILE))
                return None if info is None else ModelVersion(name, self.version_uri(name), info)
        return None

    # -------------------------------------------------------------------------------------------- writing
    def _audit(self, event: AuditEvent) -> AuditEvent:
        if event.action not in ACTIONS:
            raise ValueError(f"unknown audit action {event.action!r}")
        now = utc_now()
        event.time = event.time or iso(now)
        token = secrets.token_hex(6)
        event.event_id = event.event_id or f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{token}"
        uri = storage.join(self.root, "audit", f"{event.event_id}.json")
        if not put_if_absent(uri, _json_bytes(event.to_dict())):
            raise RegistryConflict(f"{uri}: audit event id collision. Fix: re-run")
        log.info("audit: %s %s by %s: %s", event.action, event.version or event.to_version or "", event.by,
                 event.reason)
        return event

    def record(self, action: str, *, reason: str, by: str | None = None, version: str | None = None,
               details: Mapping[str, Any] | None = None) -> AuditEvent:
        """Append one event to the audit log (e.g. a blessing decision) and return it."""
        return self._audit(AuditEvent(action=action, by=who(by), reason=reason, version=version,
                                      details=dict(details or {})))

    def claim(self, key: str | None = None) -> str:
        """Take the next free version number (create-only, see the module docstring) and return its name.

        With ``key``, an earlier claim holding the same key that never completed is taken over instead (a
        registration that crashed half-way resumes into the same number).
        """
        claims = self._claims()
        if key is not None:
            for name, uri in claims.items():
                data = _read_json(uri) or {}
                if data.get("key") == key and not storage.exists(storage.join(self.version_uri(name), VERSION_FILE)):
                    log.info("resuming the incomplete registration %s (key %s)", name, key)
                    return name
        token = secrets.token_hex(16)
        number = max((version_number(n) for n in claims), default=0) + 1
        for _ in range(_MAX_CLAIM_ATTEMPTS):
            name = version_name(number)
            if self.try_claim(name, token, key):
                return name
            number += 1
        raise RegistryConflict(f"{self.root}: no free version number after {_MAX_CLAIM_ATTEMPTS} attempts")

    def try_claim(self, version: str, token: str, key: str | None = None) -> bool:
        """One attempt to take ``version``: create-only write, then read back (True only if our token is there)."""
        uri = self._claim_uri(version)
        if storage.exists(uri):
            return False
        body = {"version": version, "token": token, "key": key, "time": iso(utc_now()), "by": who(),
                "host": socket.gethostname(), "pid": os.getpid()}
        put_if_absent(uri, _json_bytes(body))
        return self.holds_claim(version, token)

    def holds_claim(self, version: str, token: str) -> bool:
        """Whether the stored claim of ``version`` carries ``token`` (the read-back of :meth:`try_claim`)."""
        data = _read_json(self._claim_uri(version)) or {}
        return data.get("token") == token

    def register(self, run_uri: str, *, evaluation_uri: str | None = None,
                 evaluation: Mapping[str, Any] | None = None, lineage: Mapping[str, Any] | None = None,
                 verdict: Mapping[str, Any] | None = None, verdict_markdown: str | None = None,
                 by: str | None = None, reason: str = "", key: str | None = None) -> ModelVersion:
        """Copy a finished training run (and its evaluation) into a new version; returns it.

        ``evaluation_uri``: a ``mammoflow evaluate --out`` folder, copied to ``evaluation/``. ``evaluation``:
        which split the version was judged on (``split``, ``split_sha256``, ``data_uri``, ``manifest_sha256``).
        ``lineage``: where it comes from (``retrain_id``, ``pipeline_run_id``, ``sweep``, ``parent_version``,
        ...; ``source_run_uri`` is added). ``verdict``: the blessing verdict (``Verdict.to_dict()``).
        ``key``: an idempotency key; registering again with the same key returns the existing version.
        """
        run_uri = str(run_uri).rstrip("/")
        if key is not None:
            existing = self.find(key)
            if existing is not None:
                log.info("%s is already registered as %s", key, existing.version)
                return existing
        for required in RUN_FILES[:2]:
            if not storage.exists(storage.join(run_uri, required)):
                raise InputError(storage.join(run_uri, required), "not a finished training run (file missing)",
                                 "register the --out folder of a finished `mammoflow train` run",
                                 code="missing_file")
        name = self.claim(key)
        dest = self.version_uri(name)
        files: dict[str, str] = {}
        for fname in RUN_FILES:
            src = storage.join(run_uri, fname)
            if storage.exists(src):
                copy_object(src, storage.join(dest, fname))
                files[fname] = storage.sha256_of(storage.join(dest, fname))
        if evaluation_uri is not None:
            for fname in EVALUATION_FILES:
                src = storage.join(str(evaluation_uri), fname)
                if storage.exists(src):
                    copy_object(src, storage.join(dest, EVALUATION_DIR, fname))
                    files[f"{EVALUATION_DIR}/{fname}"] = storage.sha256_of(storage.join(dest, EVALUATION_DIR, fname))
        if verdict is not None:
            storage.put_bytes(storage.join(dest, VERDICT_FILE), _json_bytes(dict(verdict)))
            files[VERDICT_FILE] = _sha256(_json_bytes(dict(verdict)))
            if verdict_markdown:
                storage.put_bytes(storage.join(dest, VERDICT_MD), verdict_markdown.encode())
        run_info = _read_json(storage.join(run_uri, "run.json")) or {}
        train_metrics = _read_json(storage.join(run_uri, "metrics.json")) or {}
        headline = {}
        if evaluation_uri is not None:
            report = _read_json(storage.join(str(evaluation_uri), "metrics.json")) or {}
            headline = headline_metrics(report)
        info = {
            "version": name,
            "created": iso(utc_now()),
            "created_by": who(by),
            "reason": reason,
            "model": {"name": run_info.get("model"), "sha256": files["model.keras"],
                      "label_names": train_metrics.get("label_names")},
            "files": files,
            "data": {"uri": run_info.get("data_uri"), "manifest_sha256": run_info.get("data_manifest_sha256")},
            "evaluation": dict(evaluation or {}),
            "metrics": headline,
            "lineage": {**dict(lineage or {}), "source_run_uri": run_uri},
            "verdict": None if verdict is None else {
                "blessed": bool(verdict.get("blessed")), "kind": verdict.get("kind"),
                "forced": bool(verdict.get("forced")), "reason": verdict.get("reason")},
            "code_version": run_info.get("code_version"),
        }
        if not put_if_absent(storage.join(dest, VERSION_FILE), _json_bytes(info)):
            raise RegistryConflict(f"{dest} was completed by someone else while being registered (key {key})")
        self._audit(AuditEvent(action="register", by=who(by), reason=reason or "registered", version=name,
                               details={"source_run_uri": run_uri, "key": key,
                                        "blessed": info["verdict"]["blessed"] if info["verdict"] else None}))
        log.info("registered %s from %s", name, run_uri)
        return ModelVersion(name, dest, info)

    # ------------------------------------------------------------------------------------------- aliases
    def _set_alias(self, alias: str, to_version: str, *, action: str, reason: str, by: str | None,
                   pop_history: bool, details: Mapping[str, Any] | None = None) -> AliasChange:
        uri = self._alias_uri(alias)
        with storage.local_lock(uri):
            before = storage.stat(uri)
            current = _read_json(uri) if before is not None else None
            from_version = current["version"] if current else None
            if from_version == to_version:
                log.info("%s is already the %s: nothing to do", to_version, alias)
                return AliasChange(alias, from_version, to_version, changed=False)
            history = list(current.get("history", [])) if current else []
            if pop_history:
                history = history[:-1]
            elif from_version is not None:
                history.append(from_version)
            event = self._audit(AuditEvent(action=action, by=who(by), reason=reason, version=to_version,
                                           from_version=from_version, to_version=to_version,
                                           details={"alias": alias, **dict(details or {})}))
            body = {"alias": alias, "version": to_version, "history": history, "updated": event.time,
                    "by": event.by, "reason": reason, "action": action, "audit_event": event.event_id}
            put_if_unchanged(uri, _json_bytes(body), before)
        log.info("%s: %s -> %s (%s by %s)", alias, from_version, to_version, action, event.by)
        return AliasChange(alias, from_version, to_version, changed=True, event=event)

    def promote(self, version: str, *, reason: str, by: str | None = None, force: bool = False,
                alias: str = CHAMPION) -> AliasChange:
        """Make ``version`` the champion. A reason is required; a version whose blessing verdict refused it needs
        ``force=True`` (the override is audited with the verdict's reason)."""
        reason = _require_reason(reason, "promote")
        target = self.get(version)
        details: dict[str, Any] = {}
        if target.blessed is False:
            if not force:
                raise RegistryError(
                    f"{version} was refused by its blessing verdict: {target.verdict.get('reason')} "  # type: ignore[union-attr]
                    "Fix: promote a blessed version, or pass --force to override the verdict (audited)")
            details = {"override": True, "verdict_reason": target.verdict.get("reason")}  # type: ignore[union-attr]
        return self._set_alias(alias, version, action="promote", reason=reason, by=by, pop_history=False,
                               details=details)

    def rollback(self, *, reason: str, by: str | None = None, alias: str = CHAMPION) -> AliasChange:
        """Return the champion to the version it replaced (the alias keeps a history of earlier champions)."""
        reason = _require_reason(reason, "rollback")
        current = self.alias(alias)
        if current is None:
            raise RegistryError(f"{self.root}: there is no {alias} to roll back")
        history = current.get("history") or []
        if not history:
            raise RegistryError(f"{self.root}: {current['version']} has been the only {alias}; there is nothing "
                                "to roll back to. Fix: promote another version instead")
        target = history[-1]
        self.get(target)  # still complete and readable
        return self._set_alias(alias, target, action="rollback", reason=reason, by=by, pop_history=True)


def _require_reason(reason: str | None, action: str) -> str:
    if not reason or not reason.strip():
        raise RegistryError(f"{action} needs a reason (it is written to the audit log). Fix: pass --reason \"...\"")
    return reason.strip()


def headline_metrics(report: Mapping[str, Any], levels: Sequence[str] | None = None) -> dict[str, Any]:
    """``{"roi.roc_auc": {"value", "ci_low", "ci_high"}, ...}`` from an evaluation report (metrics.json)."""
    out: dict[str, Any] = {}
    all_levels = report.get("levels") or {}
    wanted = levels or [lvl for lvl in (report.get("primary_level"), "patch") if lvl]
    for level in wanted:
        for name, m in (all_levels.get(level, {}).get("metrics") or {}).items():
            if isinstance(m, Mapping):
                out[f"{level}.{name}"] = {k: m.get(k) for k in ("value", "ci_low", "ci_high")}
    return out
