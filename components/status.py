"""The exit handler of the training and sweep pipelines: how the run ended, pushed for the alerts.

No ``from __future__ import annotations`` here: KFP reads the parameter types from the live annotations.
"""

from kfp import dsl


def push_pipeline_status(pipeline: str, push_gateway: str, status: dsl.PipelineTaskFinalStatus) -> str:
    """Whatever happened in the run, push whether it failed and, when it succeeded, when (``mammoflow_pipeline_*``,
    grouping key ``pipeline``); ``k8s/base/alerts-runs.yaml`` alerts on failed runs and ``alerts-absent.yaml`` on
    silence.

    Args:
        pipeline: The pipeline's name (the ``pipeline`` label).
        push_gateway: Pushgateway URL; empty: nothing is pushed (said in the log).
        status: The final status of the steps inside the exit handler.

    Returns:
        The run's outcome: SUCCEEDED, FAILED, ... as KFP reports it.
    """
    import logging

    from mammoflow import steps

    steps.setup_step_logging()
    log = logging.getLogger("mammoflow.components.status")
    state = str(status.state)
    if not push_gateway:
        log.info("pipeline %s ended %s; no push_gateway: status not pushed", pipeline, state)
        return state
    from mammoflow.pushgateway import push_pipeline_status

    push_pipeline_status(push_gateway, pipeline, state == "SUCCEEDED")
    return state
