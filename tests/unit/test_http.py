"""The HTTP layer's waiting rules, on real httpx responses."""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest

from flows.errors import PermanentError, QuotaExhausted, TransientError, is_transient
from flows.sources.http import (
    PortalHttp,
    RetryPolicy,
    _error_text,
    _server_hint,
    join_url,
    parse_instant,
    plan_rate_limit_wait,
)


def response(headers: dict[str, str]) -> httpx.Response:
    return httpx.Response(429, headers=headers)


def test_retry_after_seconds_is_honoured():
    assert _server_hint(response({"Retry-After": "7"})) == 7.0
    assert RetryPolicy(max_delay=60).delay(1, 7.0) == 7.0


def test_retry_after_http_date_is_honoured():
    header = email.utils.formatdate(time.time() + 30, usegmt=True)
    hint = _server_hint(response({"Retry-After": header}))
    assert hint is not None and 25 < hint <= 31


def test_rate_limit_reset_epoch_is_honoured():
    hint = _server_hint(response({"X-RateLimit-Reset": str(int(time.time()) + 20)}))
    assert hint is not None and 18 < hint <= 21


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    policy = RetryPolicy(base_delay=1.0, max_delay=10.0)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 10.0)):
        waits = {policy.backoff(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(waits) > 1


def test_server_hint_is_capped_by_the_policy():
    assert RetryPolicy(max_delay=5).delay(1, 3600.0) == 5


def test_base_url_path_prefix_is_kept():
    assert join_url("http://127.0.0.1:8000/odre", "api/explore/v2.1/x") == (
        "http://127.0.0.1:8000/odre/api/explore/v2.1/x"
    )
    assert join_url("https://host/prefix/", "/data-fair/api") == "https://host/prefix/data-fair/api"
    assert join_url("https://a/b", "https://c/d?after=1") == "https://c/d?after=1"


# ------------------------------------------------------------------ 429 as the portals send it
# A small real HTTP server on 127.0.0.1 answers a script of responses, then 200s.

OK_BODY = b'{"total": 3, "results": [{"a": 1}, {"a": 2}, {"a": 3}]}'
DATAFAIR_429 = "Trop de requêtes dans un interval restreint. Veuillez réessayer plus tard."
Answer = tuple[int, dict[str, str], bytes]


class ScriptedPortal:
    """A local HTTP server answering `answers` in order, then `OK_BODY`; logs request times."""

    def __init__(self) -> None:
        self.answers: deque[Answer] = deque()
        self.requests: list[tuple[float, str]] = []
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                script.requests.append((time.monotonic(), self.path))
                if script.answers:
                    status, headers, body = script.answers.popleft()
                else:
                    status, headers, body = 200, {"Content-Type": "application/json"}, OK_BODY
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/portal"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def portal() -> Iterator[ScriptedPortal]:
    server = ScriptedPortal()
    yield server
    server.close()


def make_http(server: ScriptedPortal, name: str, **options: Any) -> PortalHttp:
    options.setdefault("policy", RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05))
    return PortalHttp(
        name,
        server.url,
        connect_timeout=5,
        read_timeout=5,
        concurrency=4,
        user_agent="energy-pipeline tests",
        **options,
    )


def ods_429(reset_time: object, unit: str = "minute", headers: dict[str, str] | None = None):
    body = {
        "errorcode": 10002,
        "error": "Too many requests on the domain. Please contact the domain administrator.",
        "reset_time": reset_time,
        "limit_time_unit": unit,
        "call_limit": 1000,
    }
    return 429, {"Content-Type": "application/json", **(headers or {})}, orjson.dumps(body)


def datafair_429() -> Answer:
    return 429, {"Content-Type": "text/plain; charset=utf-8"}, DATAFAIR_429.encode()


class RecordingSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def in_seconds(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def test_ods_429_waits_until_reset_time_then_succeeds(portal, caplog):
    portal.answers.append(ods_429(in_seconds(0.8).isoformat()))
    http = make_http(portal, "odre", rate_limit_margin_s=0.1)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flows.sources.http"):
        doc = http.get_json("api/explore/v2.1/catalog/datasets/x/records", {"limit": 0})
    elapsed = time.monotonic() - started
    assert doc["total"] == 3
    assert len(portal.requests) == 2
    gap = portal.requests[1][0] - portal.requests[0][0]
    assert gap >= 0.7 and elapsed < 3.0, (gap, elapsed)
    [record] = [r for r in caplog.records if "429" in r.getMessage()]
    message = record.getMessage()
    assert "odre rate limit (call_limit 1000 per minute) resets at" in message
    assert "/portal/api/explore/v2.1/catalog/datasets/x/records?limit=0" in message
    assert "waiting 0.9 s" in message or "waiting 0.8 s" in message


def test_datafair_text_429_waits_one_window_each_time(portal, caplog):
    portal.answers.extend([datafair_429(), datafair_429()])
    http = make_http(portal, "ore", rate_limit_window_s=0.3)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flows.sources.http"):
        doc = http.get_json("data-fair/api/v1/datasets/commune/lines", {"size": 10})
    assert doc["total"] == 3
    assert time.monotonic() - started >= 0.6
    waits = [r.getMessage() for r in caplog.records if "429" in r.getMessage()]
    assert len(waits) == 2
    for number, message in enumerate(waits, start=1):
        assert "HTTP 429 from ore at http://127.0.0.1" in message
        assert "/data-fair/api/v1/datasets/commune/lines?size=10" in message
        assert "no reset time given: one 0.3 s window: waiting 0.3 s" in message
        assert f"rate-limit wait {number}," in message
        assert DATAFAIR_429 in message  # the French text/plain body, readable


def test_ods_daily_quota_beyond_patience_fails_at_once(portal):
    reset = in_seconds(6 * 3600).replace(microsecond=0)
    portal.answers.append(ods_429(reset.isoformat(), unit="day"))
    sleep = RecordingSleep()
    http = make_http(portal, "odre", rate_limit_patience_s=900, sleep=sleep)
    started = time.monotonic()
    with pytest.raises(QuotaExhausted) as caught:
        http.get_json("api/explore/v2.1/catalog/datasets/x/exports/csv")
    assert time.monotonic() - started < 2
    assert all(wait <= 1 for wait in sleep.waits) and not sleep.waits
    assert len(portal.requests) == 1
    message = str(caught.value)
    iso = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert message.startswith(f"daily quota of odre spent until {iso}")
    assert f"url {portal.url}/api/explore/v2.1/catalog/datasets/x/exports/csv" in message
    assert "patience of 900 s" in message
    error = caught.value
    assert not is_transient(error) and isinstance(error, PermanentError)
    assert (error.portal, error.reset_at, error.unit) == ("odre", iso, "day")


def test_quota_unit_other_than_day_is_named(portal):
    portal.answers.append(ods_429(int(time.time()) + 7200, unit="hour"))  # an epoch number
    http = make_http(portal, "odre", rate_limit_patience_s=900, sleep=RecordingSleep())
    with pytest.raises(QuotaExhausted, match=r"^hourly quota of odre spent until 20"):
        http.get_json("api/x")


def test_rate_limit_waits_do_not_use_the_attempt_budget(portal):
    portal.answers.extend([datafair_429(), datafair_429(), datafair_429()])
    sleep = RecordingSleep()
    http = make_http(portal, "enedis", policy=RetryPolicy(max_attempts=2), sleep=sleep)
    assert http.get_json("data-fair/api/v1/datasets/adresse/lines")["total"] == 3
    assert sleep.waits == [60.0, 60.0, 60.0]  # the default window, one per 429
    assert len(portal.requests) == 4


def test_rate_limit_and_server_errors_are_counted_apart(portal):
    error_503 = (503, {"Content-Type": "text/plain"}, b"Service Unavailable")
    portal.answers.extend([error_503, datafair_429(), datafair_429(), error_503])
    sleep = RecordingSleep()
    policy = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)
    http = make_http(portal, "ore", policy=policy, sleep=sleep, rate_limit_window_s=30)
    assert http.get_json("lines")["total"] == 3
    assert [w for w in sleep.waits if w == 30] == [30, 30]
    portal.answers.extend([error_503] * 3)
    with pytest.raises(TransientError, match="gave up after 3 attempts"):
        http.get_json("lines")


def test_rate_limit_waits_are_bounded_by_the_patience(portal):
    portal.answers.extend([datafair_429()] * 10)
    sleep = RecordingSleep()
    http = make_http(portal, "ore", sleep=sleep, rate_limit_window_s=60, rate_limit_patience_s=150)
    with pytest.raises(QuotaExhausted) as caught:
        http.get_json("data-fair/api/v1/datasets/commune/lines")
    assert sleep.waits == [60.0, 60.0]
    assert len(portal.requests) == 3
    message = str(caught.value)
    assert message.startswith("rate-limit quota of ore spent until 20")
    assert "after 120 s already waited in 2 wait(s)" in message and "patience of 150 s" in message
    assert "/data-fair/api/v1/datasets/commune/lines" in message and DATAFAIR_429 in message
    assert not is_transient(caught.value)


def test_retry_after_header_wins_over_the_body(portal):
    far = in_seconds(6 * 3600).isoformat()
    portal.answers.append(ods_429(far, unit="day", headers={"Retry-After": "2"}))
    reset = str(int(time.time()) + 40)
    portal.answers.append(ods_429(far, unit="day", headers={"X-RateLimit-Reset": reset}))
    sleep = RecordingSleep()
    http = make_http(portal, "odre", sleep=sleep)
    assert http.get_json("api/x")["total"] == 3
    assert sleep.waits[0] == 2.0
    assert 37 < sleep.waits[1] <= 41
    portal.answers.append((429, {"Retry-After": "3"}, DATAFAIR_429.encode()))
    sleep.waits.clear()
    ore = make_http(portal, "ore", sleep=sleep, rate_limit_window_s=60)
    assert ore.get_json("lines")["total"] == 3 and sleep.waits == [3.0]


def test_retry_after_beyond_the_patience_fails_clearly(portal):
    portal.answers.append((429, {"Retry-After": "7200"}, DATAFAIR_429.encode()))
    http = make_http(portal, "enedis", sleep=RecordingSleep(), rate_limit_patience_s=900)
    with pytest.raises(QuotaExhausted, match=r"quota of enedis spent until .*Retry-After: 7200"):
        http.get_json("lines")


def test_stream_waits_out_429_before_the_body_opens(portal):
    portal.answers.append(ods_429(in_seconds(0.5).isoformat()))
    portal.answers.append(datafair_429())
    http = make_http(portal, "odre", rate_limit_margin_s=0.05, rate_limit_window_s=0.2)
    started = time.monotonic()
    with http.stream("api/explore/v2.1/catalog/datasets/x/exports/csv") as response:
        assert response.status_code == 200
        assert response.read() == OK_BODY
    assert time.monotonic() - started >= 0.6
    assert len(portal.requests) == 3


def test_stream_fails_on_a_spent_quota_before_the_body_opens(portal):
    portal.answers.append(ods_429(in_seconds(86_000).isoformat(), unit="day"))
    sleep = RecordingSleep()
    http = make_http(portal, "odre", sleep=sleep)
    with (
        pytest.raises(QuotaExhausted, match="daily quota of odre spent until"),
        http.stream("api/x/exports/csv"),
    ):
        pytest.fail("the body must not open")
    assert not sleep.waits


def test_reset_time_is_parsed_leniently():
    expected = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    for value in (
        "2026-12-01T10:00:00+00:00",
        "2026-12-01T10:00:00Z",
        "2026-12-01T10:00:00",
        "2026-12-01T11:00:00+01:00",
        "2026-12-01T10:00:00.000Z",
        expected.timestamp(),
        int(expected.timestamp()),
        str(int(expected.timestamp())),
        int(expected.timestamp() * 1000),
    ):
        assert parse_instant(value) == expected, value
    for value in (None, "", "soon", True, {}):
        assert parse_instant(value) is None


def test_plan_of_a_429():
    now = datetime(2026, 12, 1, 9, 59, 18, tzinfo=UTC).timestamp()
    body = ods_429("2026-12-01T10:00:00Z")[2].decode()
    plan = plan_rate_limit_wait("odre", {}, body, window=60, margin=1, now=now)
    assert plan.seconds == 43 and plan.unit == "minute"
    assert plan.why == "odre rate limit (call_limit 1000 per minute) resets at 10:00:00Z"
    # a reset_time already past (clock skew): back off, growing, never beyond the window
    late = [
        plan_rate_limit_wait("odre", {}, body, window=5, margin=1, waits_so_far=n, now=now + 60)
        for n in range(5)
    ]
    assert [p.seconds for p in late] == [1, 2, 4, 5, 5]
    no_hint = plan_rate_limit_wait("ore", {}, DATAFAIR_429, window=60, margin=1, now=now)
    assert no_hint.seconds == 60 and no_hint.reset_at is None
    garbage = plan_rate_limit_wait("odre", {"Retry-After": "soon"}, "{", window=60, margin=1)
    assert garbage.seconds == 60


def test_error_bodies_are_rendered_readably():
    ods = httpx.Response(429, content=ods_429("2026-12-01T10:00:00Z", unit="day")[2])
    text = _error_text(ods)
    assert text.startswith("Too many requests on the domain.")
    assert "errorcode 10002" in text and "call_limit 1000" in text and "limit_time_unit day" in text
    ods_400 = httpx.Response(400, json={"error_code": "ODSQLError", "message": "bad where"})
    assert _error_text(ods_400) == "bad where (error_code ODSQLError)"
    french = "Trop de requêtes\n dans un interval restreint."
    plain = httpx.Response(429, content=french.encode(), headers={"Content-Type": "text/plain"})
    assert _error_text(plain) == "Trop de requêtes dans un interval restreint."
    assert _error_text(httpx.Response(500)) == "(empty body)"
