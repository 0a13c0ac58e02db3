"""Every pipeline compiles, and the compiled IR says what the cluster must do: images, GPUs, retries, caching,
resources, node selectors, tolerations, pod labels and secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mammoflow.cli import cli
from mammoflow.errors import ConfigError
from mammoflow.pipelines import PIPELINES, build_pipeline, get_pipeline
from mammoflow.pipelines.options import PipelineOptions

GPU_STAGES = {"train", "sweep", "explain", "retrain-train"}
DATA_STAGES = {"demo-data", "locate-data", "ingest", "partition-list", "preprocess-partition", "plan-dataset",
               "build-partition", "merge-dataset"}
TRAINING_STAGES = {*DATA_STAGES, "train", "evaluate",
                   "explain", "report", "push-pipeline-status"}
SWEEP_STAGES = {*DATA_STAGES, "sweep", "sweep-report",
                "push-pipeline-status"}


def compile_to_dict(name: str, tmp_path: Path, options: PipelineOptions | None = None) -> dict[str, Any]:
    from kfp import compiler

    out = tmp_path / f"{name}.yaml"
    pipeline = get_pipeline(name) if options is None else build_pipeline(name, options)
    compiler.Compiler().compile(pipeline, str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    spec = docs[0]
    spec["_platform"] = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return spec


def executors(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Stage name (dashes) -> its container spec."""
    return {name.removeprefix("exec-"): e["container"] for name, e in spec["deploymentSpec"]["executors"].items()}


def tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of the pipeline, nested DAGs (the dsl.If branches) included."""
    found: dict[str, dict[str, Any]] = {}
    for comp in [spec["root"], *spec["components"].values()]:
        found.update((comp.get("dag") or {}).get("tasks", {}))
    # The sub-DAG of a pipeline's steps (before its status push) is a group, not a stage.
    # A ParallelFor (the data partitions) is a group too.
    return {name: t for name, t in found.items()
            if not name.startswith(("condition", "for-loop")) and not name.endswith("-steps")}


@pytest.fixture(scope="module")
def training(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compile_to_dict("training", tmp_path_factory.mktemp("ir"))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compile_to_dict("sweep", tmp_path_factory.mktemp("ir"))


@pytest.fixture(scope="module")
def retrain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compile_to_dict("retrain", tmp_path_factory.mktemp("ir"))


def test_training_pipeline_has_every_stage_and_the_data_branch(training: dict[str, Any]) -> None:
    assert set(executors(training)) == TRAINING_STAGES
    assert set(tasks(training)) == TRAINING_STAGES
    conditions = {t["triggerPolicy"]["condition"] for c in training["components"].values()
                  for t in (c.get("dag") or {}).get("tasks", {}).values() if "triggerPolicy" in t}
    # dsl.If / dsl.Else on the source parameter: phantoms vs a real dataset.
    assert conditions == {"inputs.parameter_values['pipelinechannel--source'] == 'phantoms'",
                          "!(inputs.parameter_values['pipelinechannel--source'] == 'phantoms')"}
    params = training["root"]["inputDefinitions"]["parameters"]
    assert params["source"]["defaultValue"] == "phantoms"
    assert params["preset"]["defaultValue"] == "yu2020"
    assert params["train_config"]["defaultValue"] == "demo"
    assert params["metrics_port"]["defaultValue"] == 9400
    outputs = training["root"]["outputDefinitions"]["artifacts"]
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"


def test_artifact_types_are_the_kfp_ones(training: dict[str, Any]) -> None:
    comps = training["components"]

    def outputs(stage: str) -> dict[str, str]:
        arts = comps[f"comp-{stage}"]["outputDefinitions"]["artifacts"]
        return {k: v["artifactType"]["schemaTitle"] for k, v in arts.items()}

    assert outputs("ingest") == {"records": "system.Dataset"}
    assert outputs("plan-dataset") == {"preprocessed": "system.Dataset"}
    assert outputs("merge-dataset") == {"dataset": "system.Dataset"}
    assert outputs("train") == {"model": "system.Model", "metrics": "system.Metrics"}
    assert outputs("evaluate") == {"evaluation": "system.Artifact", "metrics": "system.Metrics",
                                   "classification": "system.ClassificationMetrics"}
    assert outputs("report") == {"html": "system.HTML", "markdown": "system.Markdown"}


def test_gpu_only_on_train_sweep_explain(training: dict[str, Any], sweep: dict[str, Any],
                                        retrain: dict[str, Any]) -> None:
    for spec in (training, sweep, retrain):
        platform = spec["_platform"]
        for stage, container in executors(spec).items():
            resources = container.get("resources", {})
            accelerator = resources.get("accelerator")
            if stage in GPU_STAGES:
                assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", "1"), stage
                assert container["image"] == "mammoflow/mammoflow-gpu:0.1.0"
                assert platform[f"exec-{stage}"]["nodeSelector"]["labels"] == {
                    "cloud.google.com/gke-accelerator": "nvidia-l4"}
                assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
                    platform[f"exec-{stage}"]["tolerations"]
            else:
                assert accelerator is None, stage
                assert container["image"] == "mammoflow/mammoflow:0.1.0"
                assert "nodeSelector" not in platform.get(f"exec-{stage}", {}), stage
                assert "tolerations" not in platform.get(f"exec-{stage}", {}), stage


def test_every_step_has_requests_limits_and_labels(training: dict[str, Any], sweep: dict[str, Any],
                                                    retrain: dict[str, Any]) -> None:
    for spec in (training, sweep, retrain):
        for stage, container in executors(spec).items():
            res = container["resources"]
            assert res["resourceCpuRequest"] and res["resourceCpuLimit"], stage
            assert res["resourceMemoryRequest"] and res["resourceMemoryLimit"], stage
            labels = spec["_platform"][f"exec-{stage}"]["podMetadata"]["labels"]
            assert labels["app.kubernetes.io/part-of"] == "mammoflow"
            component = "training" if stage in ("train", "retrain-train") else stage.removesuffix("-2")
            assert labels["app.kubernetes.io/component"] == component, stage
            # The image holds kfp and mammoflow: a step starts without pip or network.
            assert "pip install" not in " ".join(container["command"]), stage
    train = executors(training)["train"]["resources"]
    assert float(train["resourceCpuLimit"]) >= 4 and train["resourceMemoryLimit"].endswith(("G", "Gi"))


def test_retries_only_on_preemptible_steps_and_caching_where_safe(training: dict[str, Any],
                                                                   sweep: dict[str, Any]) -> None:
    for spec in (training, sweep):
        for name, task in tasks(spec).items():
            retry = task.get("retryPolicy")
            caching = task.get("cachingOptions", {}).get("enableCache", False)
            if name in ("train", "sweep"):
                assert retry["maxRetryCount"] == 3 and retry["backoffFactor"] == 2.0, name
                assert retry["backoffDuration"] == "60s" and retry["backoffMaxDuration"] == "3600s"
                assert caching is False, name
            elif name in ("preprocess-partition", "build-partition"):  # resumable: a failed partition is retried
                assert retry["maxRetryCount"] == 2 and caching is True, name
            else:
                assert retry is None, name
        cached = {n for n, t in tasks(spec).items() if t.get("cachingOptions", {}).get("enableCache")}
        assert {"ingest", "preprocess-partition", "plan-dataset", "build-partition", "merge-dataset"} <= cached
        assert not cached & {"train", "sweep", "demo-data", "locate-data"}
    platform = training["_platform"]
    assert int(platform["exec-train"]["activeDeadlineSeconds"]) == 48 * 3600


def test_train_gets_run_id_and_metrics_port(training: dict[str, Any]) -> None:
    inputs = tasks(training)["train"]["inputs"]["parameters"]
    assert inputs["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert inputs["metrics_port"]["componentInputParameter"] == "metrics_port"


def test_ingest_requires_the_salt_secret(training: dict[str, Any]) -> None:
    (secret,) = training["_platform"]["exec-ingest"]["secretAsEnv"]
    assert secret["secretName"] == "mammoflow-salt" and not secret.get("optional")  # the pod needs it
    assert secret["keyToEnv"] == [{"secretKey": "MAMMOFLOW_SALT", "envVar": "MAMMOFLOW_SALT"}]
    assert all("secretAsEnv" not in v for k, v in training["_platform"].items() if k != "exec-ingest")


def test_options_no_gpu_images_secret_spot_and_no_cache(tmp_path: Path) -> None:
    options = PipelineOptions(image="reg.example/mf:1", gpu_image="reg.example/mf-gpu:1", gpu=False,
                              gcs_secret="gcs-key", storage_root="gs://bucket/mf", caching=False)
    spec = compile_to_dict("training", tmp_path, options)
    for stage, container in executors(spec).items():
        assert container["image"] == "reg.example/mf:1", stage  # no GPU: the CPU image everywhere
        assert "accelerator" not in container.get("resources", {}), stage
        assert {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/secrets/google/key.json"} in container["env"]
        assert spec["_platform"][f"exec-{stage}"]["secretAsVolume"][0]["secretName"] == "gcs-key"
    assert spec["root"]["inputDefinitions"]["parameters"]["storage_root"]["defaultValue"] == "gs://bucket/mf"
    assert not any(t.get("cachingOptions", {}).get("enableCache") for t in tasks(spec).values())

    spot = compile_to_dict("training", tmp_path, PipelineOptions(spot=True, gpu_node_selector={"pool": "gpu"}))
    assert spot["_platform"]["exec-train"]["nodeSelector"]["labels"] == {"pool": "gpu",
                                                                         "cloud.google.com/gke-spot": "true"}
    assert spot["_platform"]["exec-explain"]["nodeSelector"]["labels"] == {"pool": "gpu"}  # not preemptible


def test_options_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMOFLOW_IMAGE", "r/cpu:2")
    monkeypatch.setenv("MAMMOFLOW_GPU_NODE_SELECTOR", "a=b,c=d")
    monkeypatch.setenv("MAMMOFLOW_GPU", "0")
    options = PipelineOptions.from_env(spot=None)
    assert options.images() == ("r/cpu:2", "r/cpu:2")
    assert options.gpu_node_selector == {"a": "b", "c": "d"} and options.gpu is False
    monkeypatch.setenv("MAMMOFLOW_GPU_NODE_SELECTOR", "nonsense")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        PipelineOptions.from_env()


def test_sweep_pipeline(sweep: dict[str, Any]) -> None:
    assert set(executors(sweep)) == SWEEP_STAGES
    params = sweep["root"]["inputDefinitions"]["parameters"]
    assert params["spec"]["defaultValue"] == "demo" and params["ray_address"]["defaultValue"] == ""
    assert int(sweep["_platform"]["exec-sweep"]["activeDeadlineSeconds"]) == 72 * 3600


def test_training_and_sweep_share_the_data_parameters_each_described(training: dict[str, Any],
                                                                       sweep: dict[str, Any],
                                                                       retrain: dict[str, Any]) -> None:
    from dataclasses import fields

    from mammoflow.pipelines.data import DataParameters

    shared = {f.name for f in fields(DataParameters)}
    train_params = training["root"]["inputDefinitions"]["parameters"]
    sweep_params = sweep["root"]["inputDefinitions"]["parameters"]
    assert shared <= set(train_params) and shared <= set(sweep_params)
    assert set(sweep_params) - shared == {"spec", "datasets", "ray_address", "max_concurrent", "push_gateway"}
    for name in shared:  # declared once: the same type, default and words in both pipelines
        assert train_params[name] == sweep_params[name], name
    # Every parameter of every pipeline is described in the KFP UI (the shared ones and each pipeline's own).
    for spec in (training, sweep, retrain):
        params = spec["root"]["inputDefinitions"]["parameters"]
        assert all(p.get("description") for p in params.values()), [k for k, p in params.items()
                                                                     if not p.get("description")]
    assert train_params["labels"]["defaultValue"] == "" and "relative to data_root" in \
        train_params["labels"]["description"]


def test_the_labels_parameter_reaches_locate_data_and_ingest(training: dict[str, Any],
                                                             sweep: dict[str, Any]) -> None:
    for spec in (training, sweep):
        steps = tasks(spec)
        # locate-data sits in the real-data branch (a nested DAG, fed through a channel); ingest in the root DAG.
        for step, channel in (("locate-data", "pipelinechannel--labels"), ("ingest", "labels")):
            assert steps[step]["inputs"]["parameters"]["labels"] == {"componentInputParameter": channel}, step
        assert "labels" not in steps["demo-data"]["inputs"]["parameters"]


def test_registry_names() -> None:
    assert set(PIPELINES) == {"training", "sweep", "retrain"}
    assert get_pipeline("retrain").name == "mammoflow-retrain"
    with pytest.raises(ConfigError, match="valid: training, sweep, retrain"):
        get_pipeline("nope")


def test_compile_command_writes_the_yaml(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "training.yaml"
    result = CliRunner().invoke(cli, ["pipeline", "compile", "--out", str(out), "--no-gpu", "--image", "r/x:1",
                                      "--gpu-node-selector", "none"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    spec = yaml.safe_load_all(out.read_text()).__next__()
    assert spec["pipelineInfo"]["name"] == "mammoflow-training"
    assert {c["image"] for c in executors(spec).values()} == {"r/x:1"}


# ----------------------------------------------------------------------------------------------- retrain

RETRAIN_STAGES = {"retrain-scan", "retrain-ingest", "retrain-preprocess", "retrain-build-dataset", "retrain-train",
                  "retrain-evaluate", "retrain-evaluate-2", "bless", "register", "promote", "push-retrain-metrics"}


def dags(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Component name -> its DAG's tasks (root included as "root")."""
    out = {"root": spec["root"]["dag"]["tasks"]}
    out.update({name: c["dag"]["tasks"] for name, c in spec["components"].items() if "dag" in c})
    return out


def test_retrain_pipeline_steps_conditions_and_exit_handler(retrain: dict[str, Any]) -> None:
    assert retrain["pipelineInfo"]["name"] == "mammoflow-retrain"
    assert set(executors(retrain)) == RETRAIN_STAGES
    graph = dags(retrain)

    # The exit handler: the push step runs after the handler's body whatever happened, and gets its final status.
    push = graph["root"]["push-retrain-metrics"]
    assert push["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert push["inputs"]["parameters"]["status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}
    assert set(graph["root"]) == {"exit-handler-1", "push-retrain-metrics"}
    assert graph["root"]["exit-handler-1"]["taskInfo"]["name"] == "record-and-push"

    # Nested conditions: files changed -> new records -> (judged) blessed; each names the step that decides it.
    def condition(task: dict[str, Any]) -> str:
        return task["triggerPolicy"]["condition"]

    body = graph["comp-exit-handler-1"]
    assert set(body) == {"retrain-scan", "condition-2"}
    assert condition(body["condition-2"]) == "inputs.parameter_values['pipelinechannel--retrain-scan-Output'] == true"
    changed = graph["comp-condition-2"]
    assert set(changed) == {"retrain-ingest", "condition-3"}
    assert condition(changed["condition-3"]) == \
        "inputs.parameter_values['pipelinechannel--retrain-ingest-Output'] == false"
    new_records = graph["comp-condition-3"]
    assert set(new_records) == {"retrain-preprocess", "retrain-build-dataset", "retrain-train", "retrain-evaluate",
                                "retrain-evaluate-2", "bless", "register", "condition-4"}
    assert condition(new_records["condition-4"]) == "inputs.parameter_values['pipelinechannel--bless-Output'] == true"
    assert set(graph["comp-condition-4"]) == {"promote"}
    assert {new_records[t]["taskInfo"]["name"] for t in ("retrain-evaluate", "retrain-evaluate-2")} == {
        "evaluate-challenger", "evaluate-champion"}

    # Both evaluations read the same shards; the champion's is the registry version train found.
    for task in ("retrain-evaluate", "retrain-evaluate-2"):
        inputs = new_records[task]["inputs"]
        assert inputs["artifacts"]["dataset"]["taskOutputArtifact"]["producerTask"] == "retrain-build-dataset"
    uris = {new_records[t]["inputs"]["parameters"]["model_uri"]["taskOutputParameter"]["outputParameterKey"]
            for t in ("retrain-evaluate", "retrain-evaluate-2")}
    assert uris == {"run_uri", "champion_uri"}
    # register hands the train step's model to the registry with the verdict; promote takes its version.
    register = new_records["register"]["inputs"]
    assert register["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == "retrain-train"
    assert register["artifacts"]["verdict"]["taskOutputArtifact"] == {"outputArtifactKey": "verdict_json",
                                                                      "producerTask": "bless"}
    assert register["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    promote = graph["comp-condition-4"]["promote"]["inputs"]["parameters"]["version"]
    assert promote["componentInputParameter"] == "pipelinechannel--register-Output"


def test_retrain_outputs_parameters_and_cluster_settings(retrain: dict[str, Any]) -> None:
    comps = retrain["components"]

    def outputs(comp: str) -> dict[str, str]:
        arts = comps[f"comp-{comp}"]["outputDefinitions"]["artifacts"]
        return {k: v["artifactType"]["schemaTitle"] for k, v in arts.items()}

    # The verdict is Markdown (the KFP UI renders it), blessed a metric; the run's outcome is the pipeline's output.
    assert outputs("bless") == {"verdict": "system.Markdown", "verdict_json": "system.Artifact",
                                "metrics": "system.Metrics"}
    assert comps["comp-bless"]["outputDefinitions"]["parameters"] == {"Output": {"parameterType": "BOOLEAN"}}
    assert outputs("retrain-ingest") == {"records": "system.Dataset", "summary": "system.Markdown",
                                         "metrics": "system.Metrics"}
    assert outputs("push-retrain-metrics") == {"summary": "system.Markdown", "metrics": "system.Metrics"}
    root_out = retrain["root"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in root_out.items()} == {"summary": "system.Markdown",
                                                                                "metrics": "system.Metrics"}
    params = retrain["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"config", "config_overrides", "storage_root", "force_bless_reason", "requested_by",
                           "push_gateway", "metrics_port"}
    assert params["force_bless_reason"]["defaultValue"] == "" and params["metrics_port"]["defaultValue"] == 9400
    # Only the training step is retried (it resumes from its checkpoints) and nothing is cached: every step reads
    # or writes the retraining's shared state.
    for name, task in tasks(retrain).items():
        assert task.get("cachingOptions", {}).get("enableCache", False) is False, name
        if name == "retrain-train":
            assert task["retryPolicy"]["maxRetryCount"] == 3
            train_inputs = task["inputs"]["parameters"]
            assert train_inputs["metrics_port"]["componentInputParameter"] == "pipelinechannel--metrics_port"
        else:
            assert "retryPolicy" not in task, name
    assert int(retrain["_platform"]["exec-retrain-train"]["activeDeadlineSeconds"]) == 48 * 3600
    # Incremental ingest pseudonymises patient ids with the site's salt, like ingest.
    (secret,) = retrain["_platform"]["exec-retrain-ingest"]["secretAsEnv"]
    assert (secret["secretName"], bool(secret.get("optional"))) == ("mammoflow-salt", False)
    assert [k for k, v in retrain["_platform"].items() if "secretAsEnv" in v] == ["exec-retrain-ingest"]
    assert executors(retrain)["retrain-train"]["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"


def test_local_build_has_no_retries(tmp_path: Path) -> None:
    spec = compile_to_dict("retrain", tmp_path, PipelineOptions(retries=False))
    assert not any("retryPolicy" in t for t in tasks(spec).values())


def test_a_sweep_driving_a_ray_cluster_holds_no_gpu(tmp_path: Path, sweep: dict[str, Any]) -> None:
    """With its trials on a Ray cluster the sweep step only drives Tune: no GPU, a small CPU request."""
    on_ray_spec = compile_to_dict("sweep", tmp_path, PipelineOptions(sweep_on_ray=True))
    on_ray = executors(on_ray_spec)["sweep"]
    in_pod = executors(sweep)["sweep"]
    # Ray's token authentication: the driver presents the cluster's token (k8s/base/raycluster.yaml).
    assert {"name": "RAY_AUTH_MODE", "value": "token"} in on_ray["env"]
    (token,) = on_ray_spec["_platform"]["exec-sweep"]["secretAsEnv"]
    assert token["secretName"] == "mammoflow-ray-token" and not token.get("optional")
    assert token["keyToEnv"] == [{"secretKey": "auth_token", "envVar": "RAY_AUTH_TOKEN"}]
    assert "secretAsEnv" not in sweep["_platform"]["exec-sweep"]  # a Ray inside the pod needs no token
    assert "accelerator" not in on_ray["resources"] and in_pod["resources"]["accelerator"]
    assert (on_ray["resources"]["resourceCpuRequest"], on_ray["resources"]["resourceMemoryRequest"]) == ("1", "2Gi")
    assert in_pod["resources"]["resourceCpuRequest"] == "4"


def test_the_compile_command_takes_sweep_on_ray(tmp_path: Path) -> None:
    out = tmp_path / "sweep.yaml"
    result = CliRunner().invoke(cli, ["pipeline", "compile", "--pipeline", "sweep", "--sweep-on-ray", "--out", str(out)])
    assert result.exit_code == 0, result.output
    spec = next(iter(yaml.safe_load_all(out.read_text())))
    assert "accelerator" not in executors(spec)["sweep"]["resources"]


# ----------------------------------------------------------------------------------------------- the stage table


def test_the_stage_table_is_what_the_compiled_pipelines_run(training: dict[str, Any], sweep: dict[str, Any],
                                                            retrain: dict[str, Any]) -> None:
    """Every step of every pipeline has one entry in the stage table, every entry is a step of some pipeline, and
    what the IR asks of the cluster (image, GPU, requests and limits, caching, retries, timeout, label, salt) is
    the entry's."""
    from mammoflow.components.stages import STAGE, STAGES

    assert len(STAGE) == len(STAGES)  # one entry per name
    seen = set()
    for spec in (training, sweep, retrain):
        steps = tasks(spec)
        for executor, container in executors(spec).items():
            stage = STAGE[executor.removesuffix("-2").replace("-", "_")]  # KeyError: a step with no entry
            seen.add(stage.name)
            platform = spec["_platform"][f"exec-{executor}"]
            res = container["resources"]
            assert (res["resourceCpuRequest"], res["resourceCpuLimit"], res["resourceMemoryRequest"],
                    res["resourceMemoryLimit"]) == (stage.resources.cpu, stage.resources.cpu_limit,
                                                    stage.resources.memory, stage.resources.memory_limit), executor
            assert ("accelerator" in res) is stage.gpu, executor
            assert container["image"].startswith("mammoflow/mammoflow-gpu:" if stage.gpu else "mammoflow/mammoflow:")
            assert platform["podMetadata"]["labels"]["app.kubernetes.io/component"] == stage.label
            assert int(platform.get("activeDeadlineSeconds", 0)) == stage.timeout_s, executor
            assert ("secretAsEnv" in platform) is stage.salted, executor
            task = steps[executor]
            assert task.get("cachingOptions", {}).get("enableCache", False) is stage.caching, executor
            assert task.get("retryPolicy", {}).get("maxRetryCount", 0) == stage.retries, executor
    assert seen == set(STAGE)  # no entry that no pipeline runs


def test_a_stage_entry_names_its_component_function() -> None:
    from mammoflow.components import build_components
    from mammoflow.components.stages import STAGES

    components = build_components("r/cpu:1", "r/gpu:1")
    assert list(components) == [stage.name for stage in STAGES]
    for stage in STAGES:
        fn = stage.load()
        assert fn.__name__ == stage.name and fn.__doc__, stage.name  # the component is named after its stage
        image = components[stage.name].component_spec.implementation.container.image
        assert image == ("r/gpu:1" if stage.gpu else "r/cpu:1"), stage.name
