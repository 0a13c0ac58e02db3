"""Submitting and scheduling against a real HTTP server that speaks the KFP v2beta1 API (tests/fake_kfp_server.py),
and cron validation before any request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from tests.fake_kfp_server import FakeKfpServer

from mammoflow.cli import cli
from mammoflow.errors import ConfigError
from mammoflow.kfp_client import SERVICE_ACCOUNT, make_client, schedule, submit, upload, validate_cron


@pytest.fixture
def server() -> Any:
    with FakeKfpServer() as fake:
        yield fake


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kfp import compiler

    from mammoflow.pipelines import get_pipeline

    out = tmp_path_factory.mktemp("pkg") / "training.yaml"
    compiler.Compiler().compile(get_pipeline("training"), str(out))
    return out


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# ----------------------------------------------------------------------------------------------- cron


@pytest.mark.parametrize("expr", ["0 0 2 * * *", "0 */15 * * * *", "30 0 9 ? * MON-FRI", "0 0 0 1,15 * *",
                                  "0 0 6 * JAN-MAR,OCT 1", "59 59 23 31 12 6", "0 0 8-18/2 * * *"])
def test_valid_crons(expr: str) -> None:
    assert validate_cron(expr) == expr


def test_five_field_crontab_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"5 fields.*Fix: use '0 0 2 \* \* \*'"):
        validate_cron("0 2 * * *")


@pytest.mark.parametrize(("expr", "field"), [
    ("60 0 2 * * *", "second"), ("0 60 2 * * *", "minute"), ("0 0 24 * * *", "hour"),
    ("0 0 2 0 * *", "day of month"), ("0 0 2 32 * *", "day of month"), ("0 0 2 * 13 *", "month"),
    ("0 0 2 * * 7", "day of week"), ("0 0 2 * * FOO", "day of week"), ("0 0 */0 * * *", "hour"),
    ("0 0 5-2 * * *", "hour"), ("0 0 2,x * * *", "hour"),
])
def test_out_of_range_fields_are_named(expr: str, field: str) -> None:
    with pytest.raises(ConfigError, match=f"{field} field"):
        validate_cron(expr)


@pytest.mark.parametrize("expr", ["@daily", "@hourly", "@weekly", "@monthly", "@yearly", "@annually", "@midnight",
                                  "@every 24h", "@every 1h30m", "@every 90s", "@every 1.5h"])
def test_kfp_descriptor_schedules_are_accepted(expr: str) -> None:
    assert validate_cron(expr) == expr


@pytest.mark.parametrize(("expr", "message"), [
    ("@nightly", "not a schedule KFP accepts"), ("@every", "not a schedule KFP accepts"),
    ("@every 24", "not a schedule KFP accepts"), ("@every 1d", "not a schedule KFP accepts"),
    ("@every 500ms", "shorter than one second"), ("@every 0s", "shorter than one second"),
    ("@daily 2", "not a schedule KFP accepts"),
])
def test_bad_descriptor_schedules_are_refused(expr: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_cron(expr)


def test_wrong_field_count() -> None:
    with pytest.raises(ConfigError, match="has 7 fields; KFP needs 6"):
        validate_cron("0 0 2 * * * 2027")


# ----------------------------------------------------------------------------------------------- submit


def test_submit_sends_the_compiled_pipeline_with_parameters(server: FakeKfpServer, package: Path) -> None:
    run_id = submit(package, server.url, params={"storage_root": "gs://b/m", "n_demo_images": 12},
                    run_name="nightly", token="t0k3n")
    (run,) = server.calls("POST", "/runs")
    assert server.runs[run_id]["display_name"] == "nightly"
    assert run.headers["authorization"] == "Bearer t0k3n"
    body = run.body
    # The whole compiled package travels in the run: the IR and its Kubernetes platform spec.
    docs = list(yaml.safe_load_all(package.read_text()))
    assert body["pipeline_spec"] == {"pipeline_spec": docs[0], "platform_spec": docs[1]}
    assert body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        "exec-train"]["podMetadata"]["labels"]["app.kubernetes.io/component"] == "training"
    assert body["runtime_config"]["parameters"] == {"storage_root": "gs://b/m", "n_demo_images": 12}
    assert body["service_account"] == SERVICE_ACCOUNT
    (exp,) = server.experiments.values()
    assert body["experiment_id"] == exp["experiment_id"] and exp["display_name"] == "mammoflow"
    # A second run reuses the experiment.
    submit(package, server.url, params={"storage_root": "gs://b/m"})
    assert len(server.experiments) == 1 and len(server.runs) == 2


def test_submit_command_checks_parameters_before_any_request(server: FakeKfpServer) -> None:
    result = CliRunner().invoke(cli, ["pipeline", "submit", "--host", server.url, "--param", "n_images=3"])
    assert result.exit_code != 0 and "n_images" in str(result.exception or result.output)
    result = CliRunner().invoke(cli, ["pipeline", "submit", "--host", server.url])
    assert result.exit_code != 0 and "no storage root" in result.output
    # A local folder is not shared by the pods of a cluster run: refused, with the fix.
    result = CliRunner().invoke(cli, ["pipeline", "submit", "--host", server.url, "--param", "storage_root=/data/mf"])
    assert result.exit_code != 0 and "not a gs:// prefix" in result.output and "--local" in result.output
    assert server.requests == []


def test_submit_command(server: FakeKfpServer) -> None:
    result = invoke("pipeline", "submit", "--host", server.url, "--pipeline", "sweep", "--param",
                    "storage_root=gs://b/m", "--param", "spec=yu2020_branches", "--no-gpu", "--image", "r/mf:1",
                    "--service-account", "")
    assert result.exit_code == 0, result.output
    (run_id,) = server.runs
    assert result.stdout.strip() == f"run {run_id}"
    body = server.runs[run_id]
    spec = body["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "mammoflow-sweep"
    assert body["runtime_config"]["parameters"]["spec"] == "yu2020_branches"
    assert "service_account" not in body or not body["service_account"]
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"r/mf:1"}


def test_unreachable_server_and_multi_user_need_a_clear_fix() -> None:
    with FakeKfpServer() as fake:
        url = fake.url
    with pytest.raises(ConfigError, match="cannot reach the KFP API"):
        make_client(url)
    with FakeKfpServer(multi_user=True) as fake:
        with pytest.raises(ConfigError, match="--namespace"):
            make_client(fake.url)
        assert make_client(fake.url, namespace="mammoflow") is not None
    with pytest.raises(ConfigError, match="with its scheme"):
        make_client("kfp.example.com")


# ----------------------------------------------------------------------------------------------- schedule


def test_schedule_uploads_a_version_and_creates_a_safe_recurring_run(server: FakeKfpServer, package: Path) -> None:
    rr_id = schedule(package, server.url, "0 0 2 * * *", job_name="nightly-training",
                     pipeline_name="mammoflow-training", params={"storage_root": "gs://b/m"})
    (upload,) = server.calls("POST", "/pipelines/upload")
    assert upload.query["name"] == "mammoflow-training"
    uploaded = list(yaml.safe_load_all(upload.files["uploadfile"]))
    assert uploaded == list(yaml.safe_load_all(package.read_text()))
    assert uploaded[0]["pipelineInfo"]["name"] == "mammoflow-training"
    rr = server.recurring_runs[rr_id]
    assert rr["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert rr["max_concurrency"] == 1 and rr["no_catchup"] is True and rr["mode"] == "ENABLE"
    (pipeline,) = server.pipelines.values()
    (version,) = server.versions[pipeline["pipeline_id"]]
    assert rr["pipeline_version_reference"] == {"pipeline_id": pipeline["pipeline_id"],
                                                "pipeline_version_id": version["pipeline_version_id"]}
    assert rr["runtime_config"]["parameters"] == {"storage_root": "gs://b/m"}
    assert rr["service_account"] == SERVICE_ACCOUNT and rr["display_name"] == "nightly-training"

    # Scheduling again adds a version of the same pipeline instead of failing on the existing name.
    schedule(package, server.url, "0 30 3 * * SUN", job_name="weekly", pipeline_name="mammoflow-training",
             params={"storage_root": "gs://b/m"})
    assert len(server.pipelines) == 1 and len(server.versions[pipeline["pipeline_id"]]) == 2
    (version_upload,) = server.calls("POST", "/pipelines/upload_version")
    assert version_upload.query["pipelineid"] == pipeline["pipeline_id"]
    assert version_upload.query["name"].startswith("0.1.0-")


def test_a_second_schedule_with_the_same_name_is_refused(server: FakeKfpServer, package: Path) -> None:
    """Two recurring runs of one job would both fire each night: max_concurrency=1 bounds each one, not the pair."""
    first = schedule(package, server.url, "0 0 2 * * *", job_name="nightly", params={"storage_root": "gs://b/m"})
    with pytest.raises(ConfigError, match=rf"recurring run named 'nightly' \({first}\).*Fix: pass --replace"):
        schedule(package, server.url, "0 0 3 * * *", job_name="nightly", params={"storage_root": "gs://b/m"})
    assert list(server.recurring_runs) == [first]
    assert server.recurring_runs[first]["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    # Refused before uploading: no stray pipeline version, nothing disabled or deleted.
    assert sum(len(v) for v in server.versions.values()) == 1
    assert not server.calls("POST", "/recurringruns/.*") and not server.calls("DELETE", "/recurringruns/.*")
    # The name is per experiment: the same job name elsewhere is another schedule.
    other = schedule(package, server.url, "0 0 3 * * *", job_name="nightly", experiment="staging",
                     params={"storage_root": "gs://b/m"})
    assert server.recurring_runs[other]["experiment_id"] != server.recurring_runs[first]["experiment_id"]


def test_replace_disables_and_deletes_the_old_schedule(server: FakeKfpServer, package: Path) -> None:
    old = schedule(package, server.url, "0 0 2 * * *", job_name="nightly", params={"storage_root": "gs://b/m"})
    new = schedule(package, server.url, "0 30 1 * * *", job_name="nightly", params={"storage_root": "gs://b/m2"},
                   replace=True)
    assert new != old and list(server.recurring_runs) == [new]
    rr = server.recurring_runs[new]
    assert rr["trigger"] == {"cron_schedule": {"cron": "0 30 1 * * *"}}
    assert rr["runtime_config"]["parameters"] == {"storage_root": "gs://b/m2"}
    assert server.deleted_recurring_runs[old]["status"] == "DISABLED"
    order = [(r.method, r.path.rsplit("/", 1)[-1]) for r in server.requests if "/recurringruns" in r.path]
    assert order == [("GET", "recurringruns"), ("POST", "recurringruns"), ("GET", "recurringruns"),
                     ("POST", f"{old}:disable"), ("DELETE", old), ("POST", "recurringruns")]
    # replace with nothing to replace simply creates.
    other = schedule(package, server.url, "0 0 4 * * *", job_name="weekly", params={"storage_root": "gs://b/m"},
                     replace=True)
    assert set(server.recurring_runs) == {new, other} and len(server.deleted_recurring_runs) == 1


def test_replace_removes_every_duplicate_across_pages(server: FakeKfpServer, package: Path) -> None:
    """Duplicates left by earlier deployments (before the name check) are all found, however many pages they span."""
    client = make_client(server.url)
    exp = client.create_experiment(name="mammoflow")
    pipeline_id, version_id = upload(client, package, "mammoflow-training")
    for _ in range(3):
        client.create_recurring_run(experiment_id=exp.experiment_id, job_name="nightly",
                                    cron_expression="0 0 2 * * *", pipeline_id=pipeline_id, version_id=version_id)
    unrelated = client.create_recurring_run(experiment_id=exp.experiment_id, job_name="weekly",
                                            cron_expression="0 0 2 * * SUN", pipeline_id=pipeline_id,
                                            version_id=version_id).recurring_run_id
    duplicates = set(server.recurring_runs) - {unrelated}
    server.page_size_cap = 1
    new = schedule(package, server.url, "0 0 2 * * *", job_name="nightly", pipeline_name="mammoflow-training",
                   params={"storage_root": "gs://b/m"}, replace=True)
    assert set(server.recurring_runs) == {unrelated, new}
    assert set(server.deleted_recurring_runs) == duplicates
    assert all(rr["status"] == "DISABLED" for rr in server.deleted_recurring_runs.values())
    assert len(server.calls("GET", "/recurringruns")) == 3  # one page per duplicate


def test_schedule_command_refuses_a_bad_cron_before_any_request(server: FakeKfpServer) -> None:
    result = CliRunner().invoke(cli, ["pipeline", "schedule", "--host", server.url, "--cron", "0 2 * * *",
                                      "--param", "storage_root=gs://b/m"])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError) and "5 fields" in str(result.exception)
    assert server.requests == []


def test_schedule_command(server: FakeKfpServer) -> None:
    result = invoke("pipeline", "schedule", "--host", server.url, "--cron", "0 0 2 * * *", "--param",
                    "storage_root=gs://b/m", "--token", "abc")
    assert result.exit_code == 0, result.output
    (rr_id,) = server.recurring_runs
    assert result.stdout.strip() == f"recurring run {rr_id}"
    rr = server.recurring_runs[rr_id]
    assert rr["display_name"] == "mammoflow-training" and rr["max_concurrency"] == 1 and rr["no_catchup"] is True
    assert all(r.headers.get("authorization") == "Bearer abc" for r in server.requests)


def test_schedule_command_again_needs_replace(server: FakeKfpServer) -> None:
    args = ["pipeline", "schedule", "--host", server.url, "--cron", "0 0 2 * * *", "--param", "storage_root=gs://b/m"]
    assert invoke(*args).exit_code == 0
    (old,) = server.recurring_runs
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)
    assert "'mammoflow-training'" in str(result.exception) and "--replace" in str(result.exception)
    assert list(server.recurring_runs) == [old]
    result = invoke(*args, "--replace")
    assert result.exit_code == 0, result.output
    (new,) = server.recurring_runs
    assert new != old and result.stdout.strip() == f"recurring run {new}"
    assert server.deleted_recurring_runs[old]["status"] == "DISABLED"


def test_retrain_schedule_without_a_config_is_refused_before_any_request(server: FakeKfpServer) -> None:
    """Every nightly run would fail on "config is empty", exit handler included, so nothing would be pushed."""
    result = CliRunner().invoke(cli, ["pipeline", "schedule", "--host", server.url, "--pipeline", "retrain",
                                      "--cron", "@daily", "--param", "storage_root=gs://b/m", "--no-gpu"])
    assert result.exit_code == 2, result.output
    assert "--param config=gs://BUCKET/retrain.yaml" in result.output
    assert server.requests == [] and server.recurring_runs == {}


def test_schedule_command_with_every(server: FakeKfpServer) -> None:
    result = invoke("pipeline", "schedule", "--host", server.url, "--cron", "@every 24h", "--param",
                    "storage_root=gs://b/m")
    assert result.exit_code == 0, result.output
    (rr,) = server.recurring_runs.values()
    assert rr["trigger"] == {"cron_schedule": {"cron": "@every 24h"}}


def test_schedule_command_for_the_retraining_pipeline(server: FakeKfpServer) -> None:
    """The nightly retraining of the README: one recurring run of mammoflow-retrain, 6-field cron, one run at a time,
    no catch-up of the nights the cluster was down."""
    result = invoke("pipeline", "schedule", "--host", server.url, "--pipeline", "retrain", "--cron", "0 0 2 * * *",
                    "--param", "storage_root=gs://b/m", "--param", "config=gs://b/retrain.yaml",
                    "--param", "push_gateway=http://prometheus-pushgateway.monitoring:9091", "--no-gpu")
    assert result.exit_code == 0, result.output
    (rr_id,) = server.recurring_runs
    rr = server.recurring_runs[rr_id]
    assert rr["display_name"] == "mammoflow-retrain"
    assert rr["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert rr["max_concurrency"] == 1 and rr["no_catchup"] is True and rr["mode"] == "ENABLE"
    assert rr["runtime_config"]["parameters"] == {"storage_root": "gs://b/m", "config": "gs://b/retrain.yaml",
                                                  "push_gateway": "http://prometheus-pushgateway.monitoring:9091"}
    (upload,) = server.calls("POST", "/pipelines/upload")
    assert upload.query["name"] == "mammoflow-retrain"
    spec = next(yaml.safe_load_all(upload.files["uploadfile"]))
    assert spec["pipelineInfo"]["name"] == "mammoflow-retrain"
    assert "exec-push-retrain-metrics" in spec["deploymentSpec"]["executors"]


def test_schedule_command_refuses_an_unknown_retrain_parameter(server: FakeKfpServer) -> None:
    result = CliRunner().invoke(cli, ["pipeline", "schedule", "--host", server.url, "--pipeline", "retrain",
                                      "--cron", "0 0 2 * * *", "--param", "storage_root=gs://b/m",
                                      "--param", "train_config=demo"])
    assert result.exit_code != 0 and "train_config" in str(result.exception)
    assert server.requests == []
