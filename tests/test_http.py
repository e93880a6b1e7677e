"""The HTTP layer's waiting rules, on real httpx responses."""

from __future__ import annotations

import email.utils
import time

import httpx

from flows.http import RetryPolicy, _server_hint, join_url


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
