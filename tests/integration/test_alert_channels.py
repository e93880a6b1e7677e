"""Alert channels are notification blocks by name: Slack, plus any listed in alert_blocks.

The second channel is Prefect's own CustomWebhookNotificationBlock posting to a local
receiver (a real block, a real HTTP POST): it gets the same failure in plain text, and a
listed block that does not exist keeps no channel from being told.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook
from pydantic import SecretStr

from flows.alerts.notify import SLACK_BLOCK_ENV
from flows.flow import IngestFailed, pipeline
from flows.settings import env_name
from tests.support.slack_receiver import SlackReceiver

pytestmark = pytest.mark.usefixtures("prefect_server")


def _receiver() -> SlackReceiver:
    receiver = SlackReceiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    return receiver


@pytest.fixture
def channels(monkeypatch) -> Iterator[tuple[SlackReceiver, SlackReceiver]]:
    slack, webhook = _receiver(), _receiver()
    url = f"json://127.0.0.1:{slack.server_address[1]}/slack"
    SlackWebhook(url=SecretStr(url)).save("channels-test-slack", overwrite=True)
    CustomWebhookNotificationBlock(
        name="ops",
        url=f"http://127.0.0.1:{webhook.server_address[1]}/ops",
        json_data={"title": "{{subject}}", "text": "{{body}}"},
    ).save("channels-test-ops", overwrite=True)
    monkeypatch.setenv(SLACK_BLOCK_ENV, "channels-test-slack")
    monkeypatch.setenv(
        env_name("alert_blocks"),
        json.dumps(["custom-webhook/no-such-block", "custom-webhook/channels-test-ops"]),
    )
    yield slack, webhook
    slack.shutdown()
    webhook.shutdown()


def test_every_channel_gets_the_failure_in_its_own_markup(emulator, settings, channels):
    slack, webhook = channels
    emulator.inject("status", dataset="commune", request="lines", status=500, times=None)

    with pytest.raises(IngestFailed):
        pipeline(["commune"], [2023], settings=settings)

    assert slack.arrived.wait(10) and webhook.arrived.wait(10)
    slack_text = json.dumps(slack.messages)
    assert "commune/annee=2023 failed" in slack_text and "HTTP 500" in slack_text
    [message] = webhook.messages
    assert message["title"].startswith("energy-pipeline ")
    assert "commune/annee=2023 failed" in message["text"] and "HTTP 500" in message["text"]
    assert "Rows quarantined in this load: 0" in message["text"]
    # plain text for the webhook, Slack's entities only for Slack
    assert "&amp;" not in message["text"] and "&" in message["text"]
    assert "&amp;" in slack_text
