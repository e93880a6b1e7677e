"""Failure messages with what only the flow knows, sent through the Slack block."""

from __future__ import annotations

import logging
import os
from typing import Any

from prefect.blocks.notifications import SlackWebhook

log = logging.getLogger(__name__)

SLACK_BLOCK_ENV = "ENERGY_PIPELINE_SLACK_BLOCK"
DEFAULT_SLACK_BLOCK = "energy-pipeline-slack"


def failure_message(flow_name: str, run_name: str, state: Any) -> str:
    """Flow, run, state, and each failed partition with its URL and the quarantine count."""
    lines = [f"energy-pipeline: flow run {flow_name}/{run_name} ended {state.name}."]
    error = state.result(raise_on_failure=False)
    report = getattr(error, "report", None)
    if report is not None:
        for failed in report.failed:
            lines.append(f"- {failed.partition} failed: {failed.reason}")
        quarantined = sum(r.rows_quarantined for r in report.results)
        lines.append(f"Rows quarantined in this load: {quarantined} (load {report.load_id}).")
    else:
        lines.append(f"Reason: {state.message}")
    return "\n".join(lines)


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow on_failure hook: never raises, so the original failure stays what the run shows."""
    name = os.environ.get(SLACK_BLOCK_ENV, DEFAULT_SLACK_BLOCK)
    try:
        block: Any = SlackWebhook.load(name)
        body = failure_message(flow.name, flow_run.name, state)
        with block.raise_on_failure():
            block.notify(body=body, subject=f"energy-pipeline {flow_run.name} {state.name}")
    except Exception as exc:  # the alert must not mask the failure it reports
        log.warning("could not send the failure to Slack block %r: %s", name, exc)
