"""The failure hook posts dataset, partition and URL to Slack without masking the error."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from prefect.blocks.notifications import SlackWebhook
from pydantic import SecretStr

from flows.alerts.notify import SLACK_BLOCK_ENV
from flows.flow import IngestFailed, pipeline
from tests.support.slack_receiver import SlackReceiver

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def slack(monkeypatch) -> Iterator[SlackReceiver]:
    receiver = SlackReceiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    url = f"json://127.0.0.1:{receiver.server_address[1]}/slack"
    SlackWebhook(url=SecretStr(url)).save("hook-test-slack", overwrite=True)
    monkeypatch.setenv(SLACK_BLOCK_ENV, "hook-test-slack")
    yield receiver
    receiver.shutdown()


def test_failed_run_posts_dataset_partition_and_url_and_keeps_its_error(emulator, settings, slack):
    emulator.inject("status", dataset="commune", request="lines", status=500, times=None)

    with pytest.raises(IngestFailed):
        pipeline(["commune"], [2023], settings=settings)

    assert slack.arrived.wait(10)
    text = json.dumps(slack.messages)
    assert "commune/annee=2023 failed" in text
    assert "HTTP 500" in text and "/lines?" in text
    assert "Rows quarantined in this load: 0" in text


def test_hook_without_a_slack_block_does_not_mask_the_failure(emulator, settings, monkeypatch):
    monkeypatch.setenv(SLACK_BLOCK_ENV, "no-such-block")
    emulator.inject(
        "status", dataset="nationale_annuelle", request="export", status=503, times=None
    )

    with pytest.raises(IngestFailed) as failure:
        pipeline(["nationale_annuelle"], [2023], settings=settings)

    assert "nationale_annuelle/annee=2023" in str(failure.value)
