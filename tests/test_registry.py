"""Model registry: immutable numbered versions, create-only claims, champion alias, append-only audit log;
locally, on the GCS emulator and through `mammoflow registry`."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.gcs_emulator import gcs_bucket, gcs_emulator  # noqa: F401  (fixtures)

from mammoflow import storage
from mammoflow.cli import cli
from mammoflow.errors import InputError
from mammoflow.registry import (
    ModelRegistry,
    RegistryConflict,
    RegistryError,
    put_if_absent,
    put_if_unchanged,
    who,
)


def fake_run(folder: Path, tag: str) -> str:
    """A finished run folder as `mammoflow train` leaves it (the registry copies files; it never loads them)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.keras").write_bytes(f"model {tag}".encode() * 100)
    (folder / "config.yaml").write_text(f"seed: 1\n# {tag}\n")
    (folder / "metrics.json").write_text(json.dumps({"label_names": {"0": "normal", "1": "tumour"}}))
    (folder / "run.json").write_text(json.dumps({"model": "compact_fusion", "data_uri": "/data/x",
                                                 "data_manifest_sha256": "ab" * 32, "code_version": "0.1.0"}))
    return str(folder)


def fake_evaluation(folder: Path, auc: float) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"primary_level": "roi", "levels": {"roi": {"metrics": {
        "roc_auc": {"value": auc, "ci_low": auc - 0.1, "ci_high": auc + 0.05}}}}}))
    return str(folder)


def register(reg: ModelRegistry, tmp: Path, tag: str, *, blessed: bool | None = True, key: str | None = None):
    verdict = None if blessed is None else {"blessed": blessed, "kind": "comparison",
                                            "reason": f"{'Blessed' if blessed else 'Not blessed'}: because {tag}"}
    return reg.register(fake_run(tmp / f"run-{tag}", tag), evaluation_uri=fake_evaluation(tmp / f"eval-{tag}", 0.8),
                        evaluation={"split": "test", "split_sha256": "cd" * 32}, lineage={"retrain_id": tag},
                        verdict=verdict, by="ci-bot", reason=f"register {tag}", key=key)


# ------------------------------------------------------------------------------------------------ versions


def test_register_copies_the_run_and_describes_it(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    v1 = register(reg, tmp_path, "a")
    v2 = register(reg, tmp_path, "b")
    assert (v1.version, v2.version) == ("v0001", "v0002")
    assert [v.version for v in reg.versions()] == ["v0001", "v0002"]
    copied = Path(v1.uri) / "model.keras"
    assert copied.read_bytes() == (tmp_path / "run-a" / "model.keras").read_bytes()
    (tmp_path / "run-a" / "model.keras").write_bytes(b"changed later")  # the version holds its own copy
    assert copied.read_bytes().startswith(b"model a")
    info = reg.get("v0001").info
    assert info["model"]["sha256"] == storage.file_sha256(copied)
    assert info["evaluation"] == {"split": "test", "split_sha256": "cd" * 32}
    assert info["data"]["manifest_sha256"] == "ab" * 32
    assert info["lineage"] == {"retrain_id": "a", "source_run_uri": str(tmp_path / "run-a")}
    assert info["metrics"]["roi.roc_auc"]["value"] == 0.8
    assert info["created_by"] == "ci-bot" and info["created"].endswith("Z")
    assert reg.get("v0001").evaluation_metrics()["levels"]["roi"]["metrics"]["roc_auc"]["value"] == 0.8
    with pytest.raises(RegistryError, match=r"no version v0009 \(known: v0001, v0002\)"):
        reg.get("v0009")
    with pytest.raises(InputError, match="not a finished training run"):
        reg.register(str(tmp_path / "nothing-here"))


def test_same_key_returns_the_same_version_and_numbers_are_never_reused(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    assert register(reg, tmp_path, "a", key="retrain:r1").version == "v0001"
    assert register(reg, tmp_path, "a", key="retrain:r1").version == "v0001"
    # A registration that died after claiming v0002 (no version.json): invisible, and resumed by its key only.
    assert reg.claim(key="retrain:r2") == "v0002"
    assert [v.version for v in reg.versions()] == ["v0001"]
    assert register(reg, tmp_path, "c", key="retrain:r3").version == "v0003"
    assert register(reg, tmp_path, "b", key="retrain:r2").version == "v0002"
    assert [v.version for v in reg.versions()] == ["v0001", "v0002", "v0003"]
    assert not put_if_absent(str(Path(reg.version_uri("v0002")) / "version.json"), b"{}")  # never overwritten


def test_concurrent_registrations_get_distinct_numbers(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    runs = [fake_run(tmp_path / f"run{i}", str(i)) for i in range(8)]
    start = threading.Barrier(8)

    def one(run: str) -> str:
        start.wait()
        return ModelRegistry(tmp_path / "registry").register(run).version  # each its own client, as separate jobs

    with ThreadPoolExecutor(8) as pool:
        names = list(pool.map(one, runs))
    assert sorted(names) == [f"v{i:04d}" for i in range(1, 9)]
    sources = {v.info["lineage"]["source_run_uri"] for v in reg.versions()}
    assert sources == set(runs)


def test_claim_read_back_catches_storage_that_ignores_the_precondition(gcs_bucket):  # noqa: F811
    """The emulator accepts a second create-only write (real GCS answers 412): the read-back decides."""
    reg = ModelRegistry(gcs_bucket + "/registry")
    uri = gcs_bucket + "/registry/claims/v0001.json"
    assert put_if_absent(uri, json.dumps({"token": "A"}).encode())
    put_if_absent(uri, json.dumps({"token": "B"}).encode())  # a racing writer lands on the same name
    assert not reg.holds_claim("v0001", "A") and reg.holds_claim("v0001", "B")
    assert not reg.try_claim("v0001", "C")  # taken: never written over
    assert reg.claim() == "v0002"


def test_registry_on_gcs(gcs_bucket, tmp_path):  # noqa: F811
    reg = ModelRegistry(gcs_bucket + "/registry")
    v1, v2 = register(reg, tmp_path, "a"), register(reg, tmp_path, "b")
    assert storage.get_bytes(v1.model_uri).startswith(b"model a")
    reg.promote(v1.version, reason="first", by="alice")
    reg.promote(v2.version, reason="better", by="bob")
    reg.rollback(reason="site B complaint", by="carol")
    assert reg.champion().version == "v0001"
    assert [(e.action, e.by) for e in reg.audit_log()][-3:] == [("promote", "alice"), ("promote", "bob"),
                                                                 ("rollback", "carol")]
    assert [v.version for v in ModelRegistry(gcs_bucket + "/registry").versions()] == ["v0001", "v0002"]


# ------------------------------------------------------------------------------------------------ champion


def test_promote_rollback_are_audited_who_when_why(tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "dana")
    reg = ModelRegistry(tmp_path / "registry")
    for tag in "abc":
        register(reg, tmp_path, tag)
    with pytest.raises(RegistryError, match="needs a reason"):
        reg.promote("v0001", reason="  ")
    assert reg.promote("v0001", reason="first model", by="alice").changed
    assert not reg.promote("v0001", reason="again", by="alice").changed  # no-op, no event
    reg.promote("v0002", reason="better recall")  # who: $USER
    reg.promote("v0003", reason="newer data", by="bob")
    change = reg.rollback(reason="false positives at site B", by="carol")
    assert (change.from_version, change.to_version) == ("v0003", "v0002")
    assert reg.rollback(reason="still bad", by="carol").to_version == "v0001"
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback(reason="more", by="carol")
    alias = reg.alias()
    assert alias["version"] == "v0001" and alias["history"] == [] and alias["by"] == "carol"
    events = [e for e in reg.audit_log() if e.action in ("promote", "rollback")]
    assert [(e.action, e.by, e.from_version, e.to_version, e.reason) for e in events] == [
        ("promote", "alice", None, "v0001", "first model"),
        ("promote", "dana", "v0001", "v0002", "better recall"),
        ("promote", "bob", "v0002", "v0003", "newer data"),
        ("rollback", "carol", "v0003", "v0002", "false positives at site B"),
        ("rollback", "carol", "v0002", "v0001", "still bad")]
    times = [e.time for e in events]
    assert times == sorted(times) and all(t.endswith("Z") for t in times)
    assert alias["audit_event"] == events[-1].event_id
    assert len(reg.audit_log(limit=2)) == 2


def test_a_refused_version_is_promoted_only_by_an_audited_override(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    register(reg, tmp_path, "a")
    register(reg, tmp_path, "b", blessed=False)
    reg.promote("v0001", reason="first", by="alice")
    with pytest.raises(RegistryError, match="refused by its blessing verdict: Not blessed: because b.*--force"):
        reg.promote("v0002", reason="I know better", by="bob")
    reg.promote("v0002", reason="intended label change", by="bob", force=True)
    event = reg.audit_log()[-1]
    assert event.details["override"] is True and event.details["verdict_reason"] == "Not blessed: because b"


def test_guarded_alias_write_detects_a_concurrent_change(tmp_path):
    uri = str(tmp_path / "alias.json")
    storage.put_bytes(uri, b"one")
    seen = storage.stat(uri)
    storage.put_bytes(uri, b"two")  # someone else, in between
    with pytest.raises(RegistryConflict, match="changed while"):
        put_if_unchanged(uri, b"three", seen)
    put_if_unchanged(uri, b"three", storage.stat(uri))
    assert storage.get_bytes(uri) == b"three"
    with pytest.raises(RegistryConflict):
        put_if_unchanged(str(tmp_path / "new.json"), b"x", seen)  # expected to exist, but absent


def test_who_prefers_by_then_user(monkeypatch):
    monkeypatch.setenv("USER", "erin")
    assert who("  frank ") == "frank" and who(None) == "erin"


# ------------------------------------------------------------------------------------------------ the CLI


def test_registry_command(tmp_path, monkeypatch):
    root = tmp_path / "registry"
    reg = ModelRegistry(root)
    register(reg, tmp_path, "a")
    register(reg, tmp_path, "b", blessed=False)
    runner = CliRunner()
    monkeypatch.setenv("MAMMOFLOW_REGISTRY", str(root))

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(cli, ["registry", *args])
        assert result.exit_code == code, result.output + str(result.exception)
        return result.output

    out = run("promote", "v0001", "--reason", "first model", "--by", "alice")
    assert "champion: (none) -> v0001" in out
    listing = run("list", "--metric", "roi.roc_auc")
    assert "*  v0001" in listing and "refused" in listing and "0.800 [0.70, 0.85]" in listing
    assert json.loads(run("show", "v0002"))["verdict"]["blessed"] is False
    assert "Missing option '--reason'" in run("promote", "v0002", code=2)
    run("promote", "v0002", "--reason", "override", code=1)
    run("promote", "v0002", "--reason", "intended change", "--force", "--by", "bob")
    assert "v0002 -> v0001" in run("rollback", "--reason", "bad at site B", "--by", "carol")
    lines = [json.loads(line) for line in run("audit").splitlines()]
    assert [(e["action"], e["by"]) for e in lines][-3:] == [("promote", "alice"), ("promote", "bob"),
                                                            ("rollback", "carol")]
    assert all(e["reason"] and e["time"] for e in lines)
