"""Every pipeline pushes how its run ended (issue 16: failed training and sweep runs alert, silence alerts):
the library push against a real Pushgateway, the compiled pipelines' last task, and kfp.local runs of a pipeline
built with the same decorator whose body succeeds or fails."""

# No `from __future__ import annotations`: KFP reads the test components' types from live annotations.
from pathlib import Path

import pytest
import yaml
from tests.test_retrain_support import PUSHGATEWAY, http_get, start_pushgateway, stop_server

from mammoflow.pushgateway import PIPELINE_JOB, push_pipeline_status

needs_gateway = pytest.mark.skipif(not Path(PUSHGATEWAY).exists(),
                                   reason="prometheus-pushgateway (Debian package) is not installed")


@pytest.fixture
def gateway(tmp_path):
    proc, url = start_pushgateway(tmp_path)
    try:
        yield url
    finally:
        stop_server(proc)


def pushed(url: str, metric: str, pipeline: str) -> float | None:
    """The value the Pushgateway holds for ``metric`` of ``pipeline`` (job mammoflow_pipeline), or None."""
    for line in http_get(f"{url}/metrics").splitlines():
        if line.startswith(metric + "{") and f'pipeline="{pipeline}"' in line and f'job="{PIPELINE_JOB}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


@needs_gateway
def test_a_failed_run_keeps_the_last_success(gateway):
    push_pipeline_status(gateway, "mammoflow-training", succeeded=True, ended_at=1000.0)
    assert pushed(gateway, "mammoflow_pipeline_last_success_timestamp_seconds", "mammoflow-training") == 1000.0
    assert pushed(gateway, "mammoflow_pipeline_last_run_failed", "mammoflow-training") == 0.0
    push_pipeline_status(gateway, "mammoflow-training", succeeded=False, ended_at=2000.0)
    assert pushed(gateway, "mammoflow_pipeline_last_run_failed", "mammoflow-training") == 1.0
    assert pushed(gateway, "mammoflow_pipeline_last_run_timestamp_seconds", "mammoflow-training") == 2000.0
    # The failure replaced only its own metrics: "no success for N days" is still measured from the first run.
    assert pushed(gateway, "mammoflow_pipeline_last_success_timestamp_seconds", "mammoflow-training") == 1000.0


@pytest.mark.parametrize("name", ["training", "sweep"])
def test_the_compiled_pipeline_ends_with_the_status_push(tmp_path, name):
    from kfp import compiler

    from mammoflow.pipelines import build_pipeline
    from mammoflow.pipelines.options import PipelineOptions

    compiler.Compiler().compile(build_pipeline(name, PipelineOptions(push_gateway="http://gw:9091")),
                                str(tmp_path / "p.yaml"))
    spec = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    steps = f"mammoflow-{name}-steps"
    assert set(tasks) == {steps, "push-pipeline-status"}
    push = tasks["push-pipeline-status"]
    assert push["triggerPolicy"] == {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}  # runs when the steps failed too
    assert push["inputs"]["parameters"]["status"] == {"taskFinalStatus": {"producerTask": steps}}
    assert push["inputs"]["parameters"]["pipeline"]["runtimeValue"]["constant"] == f"mammoflow-{name}"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["push_gateway"]["defaultValue"] == "http://gw:9091" and params["push_gateway"]["description"]
    assert set(spec["root"]["outputDefinitions"]["artifacts"]) == {"report", "metrics"}


@needs_gateway
def test_kfp_local_runs_push_success_and_failure(tmp_path, gateway):
    """A pipeline made by the same decorator, run by kfp.local: the push runs after a failed body as well."""
    from kfp import dsl, local

    from mammoflow.pipelines.options import PipelineOptions, pushes_its_status
    from mammoflow.pipelines.signature import pipeline_outputs

    @dsl.component
    def body(fail: bool, report: dsl.Output[dsl.HTML], metrics: dsl.Output[dsl.Metrics]):
        if fail:
            raise RuntimeError("the body failed")
        with open(report.path, "w") as fh:
            fh.write("<p>ok</p>")
        metrics.log_metric("accuracy", 1.0)

    options = PipelineOptions(retries=False, gpu=False)
    Outputs = pipeline_outputs()

    @pushes_its_status("mammoflow-status-test", "status push test", options)
    def status_test(fail: bool = False) -> Outputs:
        """Test pipeline.

        Args:
            fail: Make the body fail.
        """
        task = body(fail=fail)
        return Outputs(report=task.outputs["report"], metrics=task.outputs["metrics"])

    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"), raise_on_error=False)
    task = status_test(fail=False, push_gateway=gateway)
    assert Path(task.outputs["report"].path).read_text() == "<p>ok</p>"
    assert pushed(gateway, "mammoflow_pipeline_last_run_failed", "mammoflow-status-test") == 0.0
    success = pushed(gateway, "mammoflow_pipeline_last_success_timestamp_seconds", "mammoflow-status-test")
    assert success is not None
    status_test(fail=True, push_gateway=gateway)
    assert pushed(gateway, "mammoflow_pipeline_last_run_failed", "mammoflow-status-test") == 1.0
    assert pushed(gateway, "mammoflow_pipeline_last_success_timestamp_seconds", "mammoflow-status-test") == success
