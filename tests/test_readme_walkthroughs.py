"""The README's two cluster walkthroughs (standalone KFP, multi-user Kubeflow), command by command: every
`mammoflow` line runs for real against a fake KFP API server on loopback, and what each request carries (namespace,
service account, parameters, schedule, images, Secrets) is checked, as a cluster would receive it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from tests.fake_kfp_server import FakeKfpServer

from mammoflow.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"
RUNNER_SA = "mammoflow-pipeline-runner"


def walkthrough(heading: str) -> list[str]:
    """The commands of the first bash block under ``heading``, continuation lines joined, comments dropped."""
    text = README.read_text()
    section = text[text.index(f"\n{heading}\n"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.replace("\\\n", " ").splitlines()
            if line.strip() and not line.strip().startswith("#")]


#: What `make images` records in images/digests.env (images/pin.py), for the walkthroughs that load it.
PINNED = {"MAMMOFLOW_IMAGE": "europe-west4-docker.pkg.dev/acme/mammoflow/mammoflow@sha256:" + "1" * 64,
          "MAMMOFLOW_GPU_IMAGE": "europe-west4-docker.pkg.dev/acme/mammoflow/mammoflow-gpu@sha256:" + "2" * 64}


def exported(commands: list[str]) -> dict[str, str]:
    env = dict(c.removeprefix("export ").split("=", 1) for c in commands if c.startswith("export "))
    if any(". images/digests.env" in c for c in commands):
        env.update(PINNED)
    return env


def mammoflow_lines(commands: list[str]) -> list[list[str]]:
    return [shlex.split(c)[1:] for c in commands if c.startswith("mammoflow ")]


def params_of(args: list[str]) -> dict[str, Any]:
    return {k: yaml.safe_load(v) for k, _, v in (args[i + 1].partition("=") for i, a in enumerate(args)
                                                  if a == "--param")}


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def run_against(server: FakeKfpServer, args: list[str], env: dict[str, str]) -> None:
    host = option(args, "--host")
    args = [server.url if a == host else a for a in args]
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, f"{shlex.join(args)}\n{result.output}"


def check_package(spec: dict[str, Any], platform: dict[str, Any], env: dict[str, str], args: list[str]) -> None:
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images <= {env["MAMMOFLOW_IMAGE"], env["MAMMOFLOW_GPU_IMAGE"]} and env["MAMMOFLOW_GPU_IMAGE"] in images
    assert all("@sha256:" in image for image in images), "the walkthrough runs pinned images"
    assert spec["root"]["inputDefinitions"]["parameters"]["push_gateway"]["defaultValue"] == \
        env["MAMMOFLOW_PUSH_GATEWAY"]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    if "--sweep-on-ray" in args:
        secrets = {s["secretName"] for s in executors["exec-sweep"]["secretAsEnv"]}
        assert secrets == {"mammoflow-ray-token"}
    for name, executor in executors.items():
        if name in ("exec-ingest", "exec-retrain-ingest"):
            assert {s["secretName"] for s in executor["secretAsEnv"]} == {"mammoflow-salt"}


@pytest.mark.parametrize(("heading", "multi_user", "namespace"), [
    ("### Standalone Kubeflow Pipelines", False, None),
    ("### Multi-user Kubeflow", True, "mammoflow"),
])
def test_every_walkthrough_command_sends_what_the_cluster_needs(heading: str, multi_user: bool,
                                                                namespace: str | None) -> None:
    commands = walkthrough(heading)
    env = exported(commands)
    lines = mammoflow_lines(commands)
    assert len(lines) >= 2 and {a[1] for a in lines} >= {"submit", "schedule"}
    for args in lines:
        assert option(args, "--service-account") == RUNNER_SA, shlex.join(args)
        assert option(args, "--namespace") == namespace, shlex.join(args)
        with FakeKfpServer(multi_user=multi_user) as server:
            run_against(server, args, env)
            (exp,) = server.experiments.values()
            if namespace:
                assert exp.get("namespace") == namespace
            if args[1] == "submit":
                (body,) = server.runs.values()
                assert body["service_account"] == RUNNER_SA
                assert body["runtime_config"]["parameters"] == params_of(args)
                check_package(body["pipeline_spec"]["pipeline_spec"], body["pipeline_spec"]["platform_spec"], env,
                              args)
            else:
                (rr,) = server.recurring_runs.values()
                assert rr["service_account"] == RUNNER_SA and rr["max_concurrency"] == 1 and rr["no_catchup"]
                assert rr["trigger"] == {"cron_schedule": {"cron": option(args, "--cron")}}
                assert rr["runtime_config"]["parameters"] == params_of(args)
                assert params_of(args)["config"], "a retrain schedule without a config fails every night"
                (upload,) = server.calls("POST", "/pipelines/upload")
                spec, platform = yaml.safe_load_all(upload.files["uploadfile"])
                check_package(spec, platform, env, args)


def test_multi_user_commands_without_a_namespace_are_refused_before_anything_is_sent() -> None:
    (submit, *_) = mammoflow_lines(walkthrough("### Multi-user Kubeflow"))
    i = submit.index("--namespace")
    without = submit[:i] + submit[i + 2:]
    env = exported(walkthrough("### Multi-user Kubeflow"))
    with FakeKfpServer(multi_user=True) as server:
        host = option(without, "--host")
        result = CliRunner().invoke(cli, [server.url if a == host else a for a in without], env=env)
        assert result.exit_code != 0 and "--namespace" in str(result.exception or result.output)
        assert not server.runs and not server.calls("POST", "/experiments")
