"""A hostile portal, and hostile text, against every output the pipeline writes.

A portal's answer is trusted no further than needed: its Data Fair `next` links and its
redirects are followed on its own origin only (checked here against real servers that count
every connection they get), and what it says - error bodies, names, addresses - reaches the
error messages, Slack, the Prefect markdown summary and the dashboard as literal text.

The hostile portal is a small HTTP proxy in front of the emulator that speaks its Data Fair
API and alters only what a test asks it to (the `next` link, a redirect, an error).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import threading
import unicodedata
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from prefect.blocks.notifications import SlackWebhook
from pydantic import SecretStr

from emulator import PortalEmulator
from flows.alerts.notify import MESSAGE_LIMIT, SLACK_BLOCK_ENV, failure_message, notify_failure
from flows.errors import PermanentError, is_transient
from flows.flow import IngestFailed, ingest, pipeline
from flows.lake.fs import Lake
from flows.lake.layout import new_load_id
from flows.lake.publish import PublishedTable, PublishManifest
from flows.outputs.dashboard import build_dashboard
from flows.outputs.report import RunSummary
from flows.settings import Settings
from flows.sources.catalog import get_dataset
from flows.sources.http import EXCERPT_CHARS, excerpt, one_line
from flows.sources.ingest import IngestReport, PartitionResult, load_partition, plan_dataset
from flows.sources.portals import client_for
from tests.conftest import fast_settings
from tests.support.slack_receiver import SlackReceiver

pytestmark = pytest.mark.usefixtures("prefect_server")

DATASET = "departement"  # Agence ORE, Data Fair: 8218 rows in 2023, three pages of 3000
YEAR = 2023
PAGE = 3000
PARTITION = f"{DATASET}/annee={YEAR}"
# Unicode categories no output may carry: controls, format (bidi overrides, zero widths),
# line and paragraph separators.
UNPRINTABLE = {"Cc", "Cf", "Zl", "Zp"}
MENTIONS = ("<!channel>", "<!here>", "<@U123>", "<https://evil.example|x>")
HOSTILE_BODY_HEAD = (
    "Erreur interne\r\n\x1b[31m\x1b]8;;https://evil.example\x07lien\x1b]8;;\x07 "
    "<!channel> <!here> <@U123> <https://evil.example|x> | a | b | `rm -rf /` "
    "\u202etxt.exe\u202c \u2028ligne\u2029 \x00\x7f\x85 & fin\n"
)


# ------------------------------------------------------------------- servers


class Trap(ThreadingHTTPServer):
    """A server no request may reach: counts every connection, whatever it carries."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.connections = 0
        self.lines: list[bytes] = []
        trap = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5

            def handle_one_request(self) -> None:
                super().handle_one_request()
                if self.raw_requestline:
                    trap.lines.append(self.raw_requestline[:200])

            def do_GET(self) -> None:
                body = b'{"total":0,"results":[]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        super().__init__((host, port), Handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.connections += 1
        return True

    @property
    def origin(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class HostilePortal(ThreadingHTTPServer):
    """The emulator's Data Fair API behind a proxy a test can turn hostile.

    Requests are forwarded with their Host header, so the emulator builds its `next` links
    on this server's origin, as Data Fair builds them on its public URL. `/alt/...` serves
    the same API under another path. A test may set:
      - `next_link`: what a lines page's `next` becomes, given the honest one;
      - `redirect`: the Location a 302 answers to each lines page after the first;
      - `error`: (status, body) answered to every lines request.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.next_link: Callable[[str], Any] | None = None
        self.redirect: str | None = None
        self.error: tuple[int, bytes] | None = None
        self.requests: list[str] = []  # path and query of every request received
        self.garbage: list[bytes] = []  # request lines that were not HTTP (a TLS hello)
        self.client = httpx.Client(timeout=30)
        portal = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5

            def parse_request(self) -> bool:
                ok = super().parse_request()
                if not ok:
                    portal.garbage.append(self.raw_requestline[:200])
                return ok

            def do_GET(self) -> None:
                # the client may read what it wants of a long body, then hang up
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    portal.answer(self)

            def log_message(self, *args: object) -> None:
                return

        super().__init__(("127.0.0.1", 0), Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        return

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        self.requests.append(handler.path)
        path = handler.path.removeprefix("/alt")
        lines = "/lines" in urlsplit(path).path
        if lines and self.error is not None:
            status, body = self.error
            self._send(handler, status, body, "text/plain; charset=utf-8")
            return
        if lines and self.redirect is not None and "after=" in path:
            handler.send_response(302)
            handler.send_header("Location", self.redirect)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        upstream = self.client.get(
            self.upstream + path, headers={"Host": handler.headers["Host"] or ""}
        )
        body = upstream.content
        if lines and upstream.status_code == 200 and self.next_link is not None:
            doc = orjson.loads(body)
            if "next" in doc:
                doc["next"] = self.next_link(doc["next"])
                body = orjson.dumps(doc)
        content_type = upstream.headers.get("content-type", "application/json")
        self._send(handler, upstream.status_code, body, content_type)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, kind: str) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def lines_requests(self) -> list[str]:
        return [r for r in self.requests if "/lines" in r]


def serve(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return thread


def stop(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture
def portal(emulator: PortalEmulator) -> Iterator[HostilePortal]:
    hostile = HostilePortal(emulator.base_url)
    serve(hostile)
    yield hostile
    stop(hostile)
    hostile.client.close()


@pytest.fixture
def traps(portal: HostilePortal) -> Iterator[SimpleNamespace]:
    """`host`: another host (127.0.0.2) on the portal's very port; `port`: another port."""
    other_host = Trap("127.0.0.2", portal.port)
    other_port = Trap("127.0.0.1")
    for trap in (other_host, other_port):
        serve(trap)
    yield SimpleNamespace(host=other_host, port=other_port)
    for trap in (other_host, other_port):
        stop(trap)


def portal_settings(portal: HostilePortal, lake: Path, **overrides: Any) -> Settings:
    """Fast test settings; Agence ORE is the hostile portal, the others the emulator."""
    upstream: Any = SimpleNamespace(
        urls={name: f"{portal.upstream}/{name}" for name in ("odre", "ore", "enedis")}
    )
    return fast_settings(
        upstream, str(lake), ore_url=f"{portal.origin}/ore", datafair_page_size=PAGE, **overrides
    )


def load_year(settings: Settings) -> PartitionResult:
    """Plan, then load, the test partition as a flow task would (no Prefect)."""
    dataset = get_dataset(DATASET)
    lake = Lake(settings.lake)
    client = client_for(dataset, settings)
    try:
        plans = plan_dataset(dataset, [YEAR], True, client, lake)
    finally:
        client.close()
    return load_partition(plans[0], settings, lake, new_load_id())


def with_path(url: str, prefix: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=prefix + parts.path))


def assert_untouched(portal: HostilePortal, traps: SimpleNamespace) -> None:
    assert traps.host.connections == 0, traps.host.lines
    assert traps.port.connections == 0, traps.port.lines
    assert portal.garbage == []


# ------------------------------------------------------- 1. next links, redirects

NEXT_LINKS: dict[str, Callable[[str, HostilePortal, SimpleNamespace], Any]] = {
    "other-host": lambda link, p, t: link.replace(p.origin, t.host.origin),
    "other-port": lambda link, p, t: link.replace(p.origin, t.port.origin),
    "https-downgrade-of-origin": lambda link, p, t: link.replace("http://", "https://", 1),
    "userinfo-then-other-host": lambda link, p, t: link.replace(
        p.origin, f"http://127.0.0.1:{p.port}@127.0.0.2:{p.port}"
    ),
    "fragment-then-our-host": lambda link, p, t: link.replace(
        p.origin, f"{t.host.origin}#@127.0.0.1:{p.port}"
    ),
    "numeric-alias-of-other-host": lambda link, p, t: link.replace(
        p.origin, f"http://0x7f.0.0.2:{p.port}"
    ),
    "scheme-relative": lambda link, p, t: link.replace("http:", "", 1).replace(
        p.origin.removeprefix("http:"), t.host.origin.removeprefix("http:")
    ),
    "number": lambda link, p, t: 42,
    "list": lambda link, p, t: [link.replace(p.origin, t.port.origin)],
    "object": lambda link, p, t: {"href": link.replace(p.origin, t.port.origin)},
}


@pytest.mark.parametrize("case", list(NEXT_LINKS))
def test_next_link_off_the_origin_fails_the_partition_before_any_request(
    portal, traps, tmp_path, case
):
    honest: list[str] = []

    def hostile(link: str) -> Any:
        honest.append(link)
        return NEXT_LINKS[case](link, portal, traps)

    portal.next_link = hostile

    with pytest.raises(PermanentError) as failure:
        load_year(portal_settings(portal, tmp_path / "lake"))

    error = failure.value
    message = str(error)
    refused = NEXT_LINKS[case](honest[0], portal, traps)
    assert not is_transient(error)
    assert f"dataset {DATASET}" in message and f"partition {PARTITION}" in message
    assert error.url and error.url.startswith(f"{portal.origin}/ore/") and "/lines?" in error.url
    if isinstance(refused, str):
        assert "origin" in message
        shown = {o for o in (traps.host.origin, traps.port.origin) if o in refused}
        assert all(origin in message for origin in shown), message
        assert json.dumps(refused)[1:-1][:150] in message  # the link itself, quoted
    else:
        assert "not a URL" in message and type(refused).__name__ in message
    assert "\n" not in message
    assert_untouched(portal, traps)
    after = [r for r in portal.lines_requests() if "after=" in r]
    assert after == []  # not even the honest page 2: nothing past the refused link


@pytest.mark.parametrize("target", ["other-host", "other-port", "https"])
def test_redirect_off_the_origin_is_refused_before_it_is_followed(portal, traps, tmp_path, target):
    location = {
        "other-host": f"{traps.host.origin}/ore/data-fair/api/v1/datasets/x/lines",
        "other-port": f"{traps.port.origin}/ore/data-fair/api/v1/datasets/x/lines",
        "https": f"https://127.0.0.1:{portal.port}/ore/data-fair/api/v1/datasets/x/lines",
    }[target]
    portal.redirect = location

    with pytest.raises(PermanentError) as failure:
        load_year(portal_settings(portal, tmp_path / "lake"))

    message = str(failure.value)
    assert "origin" in message
    assert f"dataset {DATASET}" in message and f"partition {PARTITION}" in message
    assert location.rsplit("/ore/", 1)[0] in message  # where it was sent
    assert_untouched(portal, traps)
    assert len([r for r in portal.lines_requests() if "after=" in r]) == 1  # one 302, no retry


@pytest.mark.parametrize("how", ["next-link", "redirect"])
def test_same_origin_under_another_path_is_followed_to_the_last_row(
    portal, traps, emulator, tmp_path, how
):
    if how == "next-link":
        portal.next_link = lambda link: with_path(link, "/alt")
    else:
        original = portal.answer

        def answer(handler: BaseHTTPRequestHandler) -> None:
            if "after=" in handler.path and not handler.path.startswith("/alt"):
                portal.requests.append(handler.path)
                handler.send_response(302)
                handler.send_header("Location", f"{portal.origin}/alt{handler.path}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            original(handler)

        portal.answer = answer  # type: ignore[method-assign]

    result = load_year(portal_settings(portal, tmp_path / "lake"))

    expected = emulator.count(DATASET, YEAR)
    assert result.status == "loaded"
    assert result.rows_expected == result.rows_received == expected
    assert result.rows_written + result.exact_duplicates_dropped + result.rows_quarantined == (
        expected
    )
    followed = [r for r in portal.requests if r.startswith("/alt/") and "/lines" in r]
    assert len(followed) >= expected // PAGE
    assert_untouched(portal, traps)


def test_a_refused_link_fails_the_run_once_without_partition_retries(portal, traps, tmp_path):
    portal.next_link = lambda link: link.replace(portal.origin, traps.host.origin)
    settings = portal_settings(portal, tmp_path / "lake", partition_retries=2)

    with pytest.raises(IngestFailed) as failure:
        ingest([DATASET], [YEAR], settings=settings)

    report = failure.value.report
    assert report is not None
    [failed] = report.failed
    assert failed.partition == PARTITION and failed.status == "failed"
    assert "origin" in failed.reason and traps.host.origin in failed.reason
    assert f"partition {PARTITION}" in failed.reason
    first_pages = [r for r in portal.lines_requests() if "after=" not in r and "size=0" not in r]
    assert len(first_pages) == 1  # permanent: the task was not run again
    assert_untouched(portal, traps)


# ------------------------------------------------------------- 2. error bodies

DANGEROUS = st.sampled_from(
    list("\n\r\t\x0b\x0c\x1b\x00\x7f\x85\xa0\u2028\u2029\u202e\u2066\u200b\u200d\ufeff")
    + list('<>|`"\\&[]() ')
    + ["\U000e0041", "\ud800", "\U0010fffe", "a", "é", "\u0301", "\U0001f600"]
)
HOSTILE_TEXT = st.text(st.one_of(DANGEROUS, st.characters()), max_size=1500)
TRUNCATED = re.compile(r" \(truncated: (\d+) of (\d+)\+? characters\)")


def printable(text: str) -> bool:
    return all(unicodedata.category(char) not in UNPRINTABLE for char in text)


@hypothesis_settings(max_examples=30, deadline=None, database=None)
@given(HOSTILE_TEXT)
def test_one_line_leaves_one_printable_line(text):
    flat = one_line(text)

    assert "\n" not in flat and "\r" not in flat
    assert printable(flat)
    assert flat == flat.strip() and "  " not in flat
    assert len(flat) <= len(text)
    assert one_line(flat) == flat


@hypothesis_settings(max_examples=30, deadline=None, database=None)
@given(HOSTILE_TEXT, st.integers(min_value=1, max_value=300), st.booleans())
def test_excerpt_is_one_bounded_quoted_line(text, limit, more):
    quoted = excerpt(text, limit, more=more)

    assert "\n" not in quoted and printable(quoted)
    shown, end = json.JSONDecoder().raw_decode(quoted)
    assert shown == one_line(text)[:limit]
    rest = quoted[end:]
    cut = len(one_line(text)) > limit or more
    assert (TRUNCATED.fullmatch(rest) is not None) if cut else rest == ""
    # JSON quoting at most doubles a character (\" and \\), plus the quotes and the mark
    assert len(quoted) <= 2 * limit + 2 + len(" (truncated: 300 of 1500+ characters)")
    plain = excerpt(text, limit, quote=False, more=more)
    assert "\n" not in plain and printable(plain) and len(plain) <= limit + 45


def hostile_body(size: int = 1_000_000) -> bytes:
    """A megabyte of error page, its first line (the part quoted) as hostile as can be."""
    head = HOSTILE_BODY_HEAD.encode()
    filler = ("\x1b[2J<!channel> ligne | `x` \u202e\n" * (size // 30)).encode()
    return (head + filler)[:size]


@pytest.fixture(scope="module")
def hostile_run(emulator_session: PortalEmulator, tmp_path_factory) -> Iterator[SimpleNamespace]:
    """The whole pipeline against a portal answering every lines request with a 1 MB hostile
    500, alerts to a local Slack stand-in: the failure and what Slack was sent."""
    emulator_session.reset()
    portal = HostilePortal(emulator_session.base_url)
    portal.error = (500, hostile_body())
    receiver = SlackReceiver()
    for server in (portal, receiver):
        serve(server)
    url = f"json://127.0.0.1:{receiver.server_address[1]}/slack"
    SlackWebhook(url=SecretStr(url)).save("hostile-test-slack", overwrite=True)
    lake = tmp_path_factory.mktemp("hostile") / "lake"
    settings = portal_settings(portal, lake, partition_retries=0)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(SLACK_BLOCK_ENV, "hostile-test-slack")
            with pytest.raises(IngestFailed) as failure:
                pipeline([DATASET], [YEAR], settings=settings)
            assert receiver.arrived.wait(10)
        yield SimpleNamespace(
            error=failure.value, slack=receiver.messages, portal=portal, lake=lake
        )
    finally:
        for server in (portal, receiver):
            stop(server)
        portal.client.close()
        emulator_session.reset()


def test_a_megabyte_hostile_error_body_becomes_one_short_clean_line(hostile_run):
    report = hostile_run.error.report
    [failed] = report.failed
    reason = failed.reason

    assert failed.partition == PARTITION
    assert "HTTP 500" in reason and "truncated" in reason
    assert f"dataset {DATASET}" in reason and f"partition {PARTITION}" in reason
    assert "\n" not in reason and "\r" not in reason and printable(reason), repr(reason)
    assert len(reason) <= 500, len(reason)
    quoted = re.search(r'body (".*?(?<!\\)")', reason)
    assert quoted is not None
    assert len(json.loads(quoted.group(1))) == EXCERPT_CHARS
    assert "Erreur interne" in reason and "\u202e" not in reason and "\x1b" not in reason
    summary = str(hostile_run.error)
    assert "\n" not in summary and printable(summary) and len(summary) <= 600
    # the load manifest records the same short clean reason, nothing more of the body
    manifest = json.loads(
        (hostile_run.lake / "_manifests" / "loads" / f"{report.load_id}.json").read_text()
    )
    [recorded] = [p for p in manifest["partitions"] if p["status"] == "failed"]
    assert recorded["reason"] == reason
    text = json.dumps(manifest, ensure_ascii=False)
    assert "\u202e" not in text and "\x1b" not in text  # (markup is inert in JSON)


# ---------------------------------------------------------------------- 3. Slack


def strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON document."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def assert_inert_for_slack(text: str) -> None:
    """Nothing Slack would read as a mention or a link: `<`, `>` only as entities."""
    for mention in MENTIONS:
        assert mention not in text
    assert "<" not in text and ">" not in text
    assert re.search(r"&(?!(amp|lt|gt);)", text) is None  # every & starts an entity
    assert "&amp;lt;" not in text and "&amp;gt;" not in text  # escaped once, not twice


def test_the_failure_posted_to_slack_quotes_the_hostile_body_inertly(hostile_run):
    [message] = hostile_run.slack
    body = message["message"]

    assert f"{PARTITION} failed" in body and "HTTP 500" in body
    assert "&lt;!channel&gt;" in body and "&lt;@U123&gt;" in body
    assert "&lt;https://evil.example|x&gt;" in body
    assert_inert_for_slack(body)
    assert "\u202e" not in body and "\x1b" not in body
    assert len(body) <= MESSAGE_LIMIT <= 3000
    assert "\n" not in message["title"] and "<!" not in message["title"]


def failed_state(partitions: int, reason: str, message: str = "") -> Any:
    """A Failed flow-run state as the hook gets it, its result an IngestFailed with a report."""
    report = IngestReport(load_id="20240101T000000000000Z", lake="/lake <!here>")
    report.results = [
        PartitionResult(
            dataset=f"<!channel>{n}",
            partition=f"commune/annee={n} <@U123>",
            year=n,
            status="failed",
            reason=f"{reason} #{n}",
            rows_quarantined=n,
        )
        for n in range(partitions)
    ]
    error = IngestFailed(f"{partitions} partition(s) failed")
    error.report = report
    return SimpleNamespace(
        name="Failed", message=message, result=lambda raise_on_failure=True: error
    )


HOSTILE_REASON = (
    "HTTP 500 from ore, body "
    + excerpt(HOSTILE_BODY_HEAD * 20)
    + " <!channel> <!here> <@U123> <https://evil.example|x> & *bold* `code`"
)


@pytest.mark.parametrize("partitions", [1, 3, 500])
def test_failure_message_stays_inert_and_under_slacks_limit(partitions):
    text = failure_message(
        "energy-pipeline <!here>", "run <@U123>", failed_state(partitions, HOSTILE_REASON * 3)
    )

    assert_inert_for_slack(text)
    assert len(text) <= MESSAGE_LIMIT <= 3000
    assert all(printable(line) for line in text.split("\n"))
    lines = text.split("\n")
    assert lines[-1].startswith("Rows quarantined in this load:")
    if partitions == 500:
        assert re.search(r"… and \d+ more: see the load manifest", text)
        shown = [line for line in lines if line.startswith("- ")]
        more = int(re.search(r"… and (\d+) more", text).group(1))
        assert len(shown) + more == 500 and shown
    else:
        assert "more: see" not in text


def test_a_failure_without_report_is_bounded_and_inert_too():
    state = failed_state(0, "")
    state.result = lambda raise_on_failure=True: RuntimeError("boom")
    state.message = HOSTILE_REASON * 50

    text = failure_message("energy-pipeline", "run", state)

    assert_inert_for_slack(text)
    assert len(text) <= MESSAGE_LIMIT


class SlackApi:
    """What Apprise's own Slack plugin sends to hooks.slack.com, caught before the network."""

    def __init__(self) -> None:
        self.posted: list[dict[str, Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        assert url.startswith("https://hooks.slack.com/")
        self.posted.append(json.loads(kwargs["data"]))
        return SimpleNamespace(status_code=200, content=b"ok", text="ok", headers={})


def test_slacks_own_plugin_gets_the_message_escaped_exactly_once(monkeypatch):
    import apprise.plugins.slack

    api = SlackApi()
    monkeypatch.setattr(apprise.plugins.slack.requests, "request", api.request)
    # A made-up webhook in Slack's URL shape (no such workspace; the request never leaves).
    hook = "https://hooks.slack.com/services/" + "/".join(["TFAKE", "BFAKE", "fake" * 6])
    SlackWebhook(url=SecretStr(hook)).save("hostile-test-slack-api", overwrite=True)
    monkeypatch.setenv(SLACK_BLOCK_ENV, "hostile-test-slack-api")
    state = failed_state(3, HOSTILE_REASON)
    flow = SimpleNamespace(name="energy-pipeline")
    run = SimpleNamespace(name="run <!here> & <@U123> " * 20)

    notify_failure(flow, run, state)

    [payload] = api.posted
    texts = list(strings(payload))
    sent = failure_message(flow.name, run.name, state)
    assert sent in texts  # the body as escaped here, not escaped again
    for text in texts:
        for mention in MENTIONS:
            assert mention not in text, text
        assert "&amp;lt;" not in text and "&amp;gt;" not in text, text
    [section] = [b for b in payload["attachments"][0]["blocks"] if b["type"] == "section"]
    assert section["text"] == {"type": "mrkdwn", "text": sent}
    [header] = [b for b in payload["attachments"][0]["blocks"] if b["type"] == "header"]
    assert header["text"]["text"].startswith("energy-pipeline run &lt;!here&gt; &amp; ")
    assert len(header["text"]["text"]) <= 150  # Slack's cap on a header


# ------------------------------------------------------------ 4. report markdown

HOSTILE_MD = (
    "evil|name \\| \n<script>window.__pwned=1</script> [x](http://evil.example) "
    "![i](http://evil.example/i.png) <http://evil.example> `code` &amp; <!-- # -->"
)


class Rendered(HTMLParser):
    """Tags, table rows (as their cells' text) and text of rendered HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.rows: list[list[str]] = []
        self.code: list[str] = []
        self._cell: list[str] | None = None
        self._code: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "code":
            self._code = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "code" and self._code is not None:
            self.code.append("".join(self._code))
            self._code = None
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        for part in (self._cell, self._code):
            if part is not None:
                part.append(data)


def unescaped(text: str, special: str = "|") -> int:
    """How many of `text`'s characters in `special` are not backslash-escaped (a `|` that is
    ends a table cell)."""
    count, escaped = 0, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in special:
            count += 1
    return count


def test_run_summary_markdown_keeps_hostile_text_literal():
    summary = RunSummary(
        lake=f"/lake/{HOSTILE_MD}",
        load_id=HOSTILE_MD,
        partitions=[
            PartitionResult(dataset=HOSTILE_MD, partition="", status="failed", year=YEAR),
            PartitionResult(
                dataset=HOSTILE_MD, partition="", status="loaded", year=YEAR - 1, rows_written=5
            ),
            PartitionResult(
                dataset="commune", partition="", status="loaded", year=YEAR, rows_written=7
            ),
        ],
        publish=PublishManifest(
            run_id="",
            lake="",
            published_at="",
            years=None,
            tables={HOSTILE_MD: PublishedTable(rows=3, files=1)},
        ),
        dashboard=f"s3://bucket/{HOSTILE_MD}/index.html",
        hyper_message=HOSTILE_MD,
        timings={HOSTILE_MD: 1.5},
    )

    markdown = summary.markdown()

    tables: list[list[str]] = []
    block: list[str] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            tables.append(block)
            block = []
    assert len(tables) == 3  # ingestion, gold tables, timings
    for table in tables:
        assert len({unescaped(row) for row in table}) == 1, table
        assert all(unescaped(row, "<>[]`&") == 0 for row in table), table
    [hyper] = [line for line in markdown.splitlines() if "Tableau extracts" in line]
    assert unescaped(hyper, "|<>[]`&") == 0
    rendered = Rendered()
    rendered.feed(MarkdownIt("commonmark").enable("table").render(markdown))
    assert not {"script", "a", "img"} & set(rendered.tags), rendered.tags
    literal = one_line(HOSTILE_MD)
    widths = {len(row) for row in rendered.rows}
    assert widths == {8, 2}, rendered.rows  # ingestion rows, and the two-column tables
    cells = [cell.strip() for row in rendered.rows for cell in row]
    assert cells.count(literal) == 3  # dataset, gold table, timing step: shown as typed
    assert literal in rendered.code and f"/lake/{literal}" in rendered.code  # load id, lake
    items = [line for line in markdown.splitlines() if line.startswith("- **")]
    assert len(items) == 5 and all(printable(item) for item in items)


# ------------------------------------------------------------------ 5. dashboard

IMG = '<img src=x onerror="window.__pwned=1">'
SCRIPT = "</script><script>window.__pwned=1</script><!--"
ATTR = "\" onmouseover=\"window.__pwned=1\" x='' onfocus='window.__pwned=1' autofocus"
SVG = "<svg onload=window.__pwned=1>${window.__pwned=1}\u2028javascript:window.__pwned=1"
REGION, DEPARTEMENT, COMMUNE = "11", "75", "75056"
BAD_REGION = '"><img src=x onerror=window.__pwned=1>'  # a code no file name is built from
NAMES = {
    "region": f"Île-de-France {IMG}",
    "bad_region": f"{SCRIPT} {IMG}",
    "departement": f"Paris {SCRIPT}",
    "commune": f"Paris {ATTR} {IMG}",
    "naf": IMG,
    "secteur": SVG,
    "addresses": [f"1 rue {IMG}", f"2 rue {SCRIPT}", f"3 rue {ATTR}", f"4 rue {SVG}"],
    "iris": SVG,
    "check_name": IMG,
    "check_summary": SCRIPT,
    "run_id": SCRIPT,
    "source_signal": IMG,
}
ORE = {"filiere": "Electricité", "nb_sites": 10, "conso_totale_mwh": 100.5, "nb_lignes_masquees": 1}


def write_gold(lake: Path, table: str, rows: list[dict[str, Any]]) -> None:
    folder = lake / "gold" / table / f"annee={YEAR}"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "part-0.parquet")


def hostile_lake(lake: Path) -> Lake:
    """A small gold lake whose every text a portal could have supplied is hostile."""
    sector = {"code_grand_secteur": "RESIDENTIEL", **ORE}
    odd = {**sector, "code_grand_secteur": NAMES["secteur"]}
    write_gold(lake, "conso_region", [
        {"code_region": REGION, "nom_region": NAMES["region"], **sector},
        {"code_region": BAD_REGION, "nom_region": NAMES["bad_region"], **odd},
    ])  # fmt: skip
    write_gold(lake, "conso_departement", [
        {"code_departement": DEPARTEMENT, "nom_departement": NAMES["departement"],
         "code_region": REGION, **sector},
    ])  # fmt: skip
    write_gold(lake, "conso_secteur", [
        {"code_secteur_naf2": NAMES["naf"], **sector},
        {"code_secteur_naf2": "01", **odd},
    ])  # fmt: skip
    write_gold(lake, "conso_commune", [
        {"code_departement": DEPARTEMENT, "code_region": REGION, "code_commune": COMMUNE,
         "nom_commune": NAMES["commune"], **sector},
    ])  # fmt: skip
    write_gold(lake, "conso_adresse", [
        {"code_commune": COMMUNE, "nom_commune": NAMES["commune"],
         "code_departement": DEPARTEMENT, "code_region": REGION, "adresse": address,
         "code_iris": NAMES["iris"], "nombre_de_logements": 2, "conso_totale_mwh": 3.5}
        for address in NAMES["addresses"]
    ])  # fmt: skip
    energy = {"electricite_mwh": 1000.0, "gaz_mwh": 500.0, "total_mwh": 1500.0}
    write_gold(lake, "conso_nationale", [energy])
    write_gold(lake, "conso_regionale_brute", [
        {"code_region": REGION, "nom_region": NAMES["region"], **energy},
        {"code_region": BAD_REGION, "nom_region": NAMES["bad_region"], **energy},
    ])  # fmt: skip
    days = [date(YEAR, 1, 1) + timedelta(days=n) for n in range(40)]
    write_gold(lake, "conso_journaliere", [
        {"date": day, "code_region": region, "electricite_mwh": 10.0 + n, "gaz_mwh": 5.0}
        for n, day in enumerate(days) for region in ("FR", REGION)
    ])  # fmt: skip
    manifests = lake / "_manifests" / "publish"
    manifests.mkdir(parents=True)
    (manifests / "20240101T000000Z.json").write_text(json.dumps({
        "run_id": NAMES["run_id"], "published_at": IMG, "tables": {"conso_region": {"rows": 2}},
        "skipped": [], "checks": [{"name": NAMES["check_name"], "status": ATTR,
                                   "summary": NAMES["check_summary"], "problems": 1}],
    }))  # fmt: skip
    pointer = lake / "raw" / DATASET / f"annee={YEAR}" / "_current.json"
    pointer.parent.mkdir(parents=True)
    pointer.write_text(json.dumps({
        "dataset": DATASET, "year": YEAR, "source_signal": NAMES["source_signal"], "rows": 3,
        "files": [], "load": {"rows_quarantined": 2}, "committed_at": SCRIPT,
    }))  # fmt: skip
    return Lake(str(lake))


SETTLED = (
    "document.documentElement.dataset.ready === '1'"
    " && document.documentElement.dataset.pending === '0'"
)
INJECTED = """() => {
  const handlers = [];
  for (const el of document.querySelectorAll('*')) {
    for (const a of el.attributes) {
      if (a.name.startsWith('on') && !(el.id === 'filtres' && a.name === 'onsubmit')) {
        handlers.push(el.tagName + ' ' + a.name);
      }
    }
  }
  return {
    pwned: typeof window.__pwned,
    elements: document.querySelectorAll('img, iframe, object, embed, frame').length,
    scripts: [...document.scripts].map(s => s.getAttribute('src')),
    handlers,
  };
}"""
TEXTS = """selector => [...document.querySelectorAll(selector)].map(el => el.textContent)"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    assert executable, "chromium is not on PATH: run scripts/chromium-setup.sh"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield browser
        browser.close()


def test_dashboard_shows_hostile_text_literally_and_runs_none_of_it(chromium, tmp_path):
    page_path = Path(build_dashboard(hostile_lake(tmp_path / "lake")))
    html_text = page_path.read_text(encoding="utf-8")
    inline = html_text.split("window.__dashboard__ = ", 1)[1].split(";\n</script>", 1)[0]
    assert "<" not in inline and "\u2028" not in inline  # the data cannot end its <script>
    context = chromium.new_context(viewport={"width": 1400, "height": 1000}, locale="fr-FR")
    page = context.new_page()
    dialogs: list[str] = []
    errors: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    settle = lambda: page.wait_for_function(SETTLED, timeout=20_000)  # noqa: E731
    try:
        page.goto(page_path.as_uri())
        settle()
        shown: dict[str, list[str]] = {}

        def read(name: str, selector: str) -> None:
            shown[name] = shown.get(name, []) + page.evaluate(TEXTS, selector)

        read("regions", "#f-region option")
        read("regions", "#table-regions td[data-col=nom_region]")
        read("regions", "#table-regionale-brute td[data-col=nom_region]")
        read("naf", "#table-naf td[data-col=code_secteur_naf2]")
        read("secteurs", "#f-secteur option")
        read("secteurs", "#chart-secteurs text")
        read("checks", "#table-checks td")
        read("datasets", "#table-datasets td")
        read("publication", "#publication")
        page.hover("#table-regions tbody tr")
        page.hover("#table-checks tbody tr")
        page.select_option("#f-secteur", NAMES["secteur"])
        settle()
        page.select_option("#f-secteur", "")
        settle()
        page.click(f"#table-regions tbody tr[data-key={json.dumps(BAD_REGION)}]")
        settle()
        read("journaliere", "#journaliere-region-title")
        page.select_option("#f-region", REGION)
        settle()
        page.select_option("#f-departement", DEPARTEMENT)
        settle()
        read("departements", "#f-departement option")
        read("departements", "#table-departements td[data-col=nom_departement]")
        read("departements", "#kpi-scope")
        page.select_option("#f-commune", COMMUNE)
        settle()
        read("communes", "#f-commune option")
        read("communes", "#table-communes td[data-col=nom_commune]")
        read("communes", "#adresses-commune")
        read("addresses", "#table-adresses tbody td[data-col=adresse]")
        read("iris", "#table-adresses tbody td[data-col=code_iris]")
        page.hover("#table-adresses tbody tr")
        page.fill("#adresses-recherche", IMG)
        settle()
        read("search", "#table-adresses tbody td[data-col=adresse]")
        page.screenshot(path=str(tmp_path / "hostile.png"), full_page=True)
        injected = page.evaluate(INJECTED)
    finally:
        context.close()

    assert dialogs == [] and errors == [], (dialogs, errors)
    assert injected["pwned"] == "undefined", injected
    assert injected["elements"] == 0 and injected["handlers"] == [], injected
    own = [src for src in injected["scripts"] if src is None]
    lazy = [src for src in injected["scripts"] if src is not None]
    assert len(own) == 2  # the page's data and script, inline
    safe = re.compile(r"data/\d{8}T\d+Z/(journaliere|communes|adresses)/[0-9A-Za-z/]+\.js")
    assert len(lazy) == 4 and all(safe.fullmatch(src) for src in lazy), lazy

    def has(name: str, text: str) -> bool:
        return any(text in value for value in shown[name])

    assert has("regions", NAMES["region"]) and has("regions", NAMES["bad_region"])
    assert has("naf", NAMES["naf"])
    assert has("secteurs", NAMES["secteur"])
    assert has("checks", NAMES["check_name"]) and has("checks", NAMES["check_summary"])
    assert has("checks", ATTR)
    assert has("datasets", NAMES["source_signal"]) and has("datasets", SCRIPT)
    assert has("publication", NAMES["run_id"]) and has("publication", IMG)
    assert has("journaliere", NAMES["bad_region"])
    assert has("departements", NAMES["departement"])
    assert has("communes", NAMES["commune"])
    assert sorted(shown["addresses"]) == sorted(NAMES["addresses"])
    assert set(shown["iris"]) == {NAMES["iris"]}
    assert shown["search"] == [f"1 rue {IMG}"]
