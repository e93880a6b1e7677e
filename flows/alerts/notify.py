"""Failure messages with what only the flow knows, sent through Prefect notification blocks.

Channels are blocks by name: the Slack block (`slack_block`) and any other notification block
listed in `alert_blocks` as `<block-type-slug>/<block-name>` (`ms-teams-webhook/ops`,
`email/oncall`, ...). A channel's markup rules live in CHANNELS, by block type; a block type
without an entry gets the plain text. Adding a channel is a block and a setting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import Flow, State
from prefect.blocks.core import Block
from prefect.blocks.notifications import SlackWebhook
from prefect.client.schemas.objects import FlowRun

from flows.lake import layout
from flows.settings import Settings, env_name
from flows.sources.http import one_line

log = logging.getLogger(__name__)

SLACK_BLOCK_ENV = env_name("slack_block")
# The Slack block posts the body as the mrkdwn text of one section block, which Slack caps at
# 3000 characters: the whole message, escaped, stays below that.
MESSAGE_LIMIT = 2900
LINE_LIMIT = 600  # one failed partition's line, escaped
HEADER_LIMIT = 150  # the plain_text header the title goes to, as Apprise escapes it


def slack_escape(text: str) -> str:
    """Text that Slack shows as typed: `&`, `<` and `>` as entities, so that no `<!channel>`,
    `<@user>` or `<https://...|label>` in it becomes a mention or a disguised link
    (https://api.slack.com/reference/surfaces/formatting#escaping). The block sends the body
    as is, in a section block (`_post_as_section`)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _no_markup(text: str) -> str:
    return text


def _as_is(block: Any) -> None:
    return None


@dataclass(frozen=True)
class Channel:
    """How one kind of notification block is written to: its escaping and set-up."""

    block_type: str  # the Prefect block type slug
    escape: Callable[[str], str] = _no_markup
    prepare: Callable[[Any], None] = _as_is

    def line(self, text: str, limit: int = LINE_LIMIT) -> str:
        """One line of untrusted text, escaped for this channel (see `escaped_line`)."""
        return escaped_line(text, limit, self.escape)


def slack_line(text: str, limit: int = LINE_LIMIT) -> str:
    """One line of untrusted text, escaped for Slack (see `escaped_line`)."""
    return escaped_line(text, limit, slack_escape)


def escaped_line(text: str, limit: int, escape: Callable[[str], str]) -> str:
    """One line of untrusted text, escaped, at most `limit` characters escaped (cut between
    characters, never inside an entity, and then marked with `…`)."""
    escaped = [escape(char) for char in one_line(text)]
    if sum(len(e) for e in escaped) <= limit:
        return "".join(escaped)
    kept, used = [], 1  # room for the mark
    for piece in escaped:
        if used + len(piece) > limit:
            break
        kept.append(piece)
        used += len(piece)
    return "".join(kept) + "…"


def failure_message(
    flow_name: str, run_name: str, state: State[Any], channel: Channel | None = None
) -> str:
    """Flow, run, state, and each failed partition with its URL and the quarantine count.

    Every piece of text is escaped for Slack and the whole is bounded (MESSAGE_LIMIT): a
    failure reason quotes what a portal answered, which must not ping a channel or hide a link.
    """
    line = (channel or SLACK).line
    head = line(f"energy-pipeline: flow run {flow_name}/{run_name} ended {state.name}.")
    error = state.result(raise_on_failure=False)
    report = getattr(error, "report", None)
    lines: list[str] = []
    tail: list[str] = []
    if report is not None:
        lines = [line(f"- {failed.partition} failed: {failed.reason}") for failed in report.failed]
        quarantined = sum(r.rows_quarantined for r in report.results)
        tail.append(line(f"Rows quarantined in this load: {quarantined} (load {report.load_id})."))
        where = f"the load manifest {layout.load_manifest(report.load_id)}"
    else:
        lines = [line(f"Reason: {state.message}")]
        where = "the flow run's logs"
    return _bounded(head, lines, tail, where, line)


def _bounded(
    head: str, lines: list[str], tail: list[str], where: str, note: Callable[[str, int], str]
) -> str:
    """head, as many lines as fit, a note of those left out, then the tail."""
    room = MESSAGE_LIMIT - sum(len(t) + 1 for t in [head, *tail]) - 100  # 100: the note
    shown: list[str] = []
    for line in lines:
        if room - (len(line) + 1) < 0:
            break
        shown.append(line)
        room -= len(line) + 1
    if len(shown) < len(lines):
        shown.append(note(f"… and {len(lines) - len(shown)} more: see {where}.", 100))
    return "\n".join([head, *shown, *tail])[:MESSAGE_LIMIT]


def notify_failure(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Flow on_failure hook: never raises, so the original failure stays what the run shows;
    a channel that cannot be reached does not keep the others from being told."""
    for block_type, name in _channels():
        channel = CHANNELS.get(block_type, Channel(block_type))
        try:
            block: Any = Block.load(f"{block_type}/{name}")
            channel.prepare(block)
            body = failure_message(flow.name, flow_run.name, state, channel)
            # the title goes to a plain-text header (Apprise escapes it itself; max 150 chars)
            subject = one_line(f"energy-pipeline {flow_run.name} {state.name}")
            while len(channel.escape(subject)) > HEADER_LIMIT:
                subject = subject[:-1]
            with block.raise_on_failure():
                block.notify(body=body, subject=subject)
        except Exception as exc:  # the alert must not mask the failure it reports
            log.warning("could not send the failure to %s block %r: %s", block_type, name, exc)


def _channels() -> list[tuple[str, str]]:
    """(block type, block name) of every channel, from the settings; their defaults if another
    setting is bad (the run has already failed on it: the alert must still go out)."""
    try:
        settings = Settings()
    except Exception:
        settings = Settings.model_construct()
    channels = [(SLACK.block_type, settings.slack_block)]
    for reference in settings.alert_blocks:
        block_type, _, name = reference.partition("/")
        channels.append((block_type, name))
    return channels


def _post_as_section(block: Any) -> None:
    """Have Apprise's Slack plugin post the body unchanged, as the mrkdwn text of a section.

    Its default for webhooks (legacy attachments) escapes `&`, `<` and `>` of a body given
    without a format once more - Slack would show the `&lt;` escaped here and a URL's `&` as
    `&amp;` - then turns back into markup whatever then reads as `<!channel>`, `<@user>` or
    `<url|label>`, so an unescaped body would ping. Its Block Kit mode sends the body as is.
    """
    from apprise.plugins.slack import NotifySlack

    for server in getattr(block, "_apprise_client", None) or ():
        if isinstance(server, NotifySlack):
            server.use_blocks = True


SLACK = Channel(SlackWebhook.get_block_type_slug(), slack_escape, _post_as_section)
CHANNELS: dict[str, Channel] = {channel.block_type: channel for channel in (SLACK,)}
