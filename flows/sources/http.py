"""The one HTTP layer: timeouts, retries with backoff and jitter, rate limits, concurrency caps."""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
import unicodedata
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson

from flows.errors import PermanentError, QuotaExhausted, RateLimited, TransientError

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
Params = Mapping[str, str | int | float]


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before another attempt; used for requests and partitions."""

    max_attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter for attempt 1, 2, ..."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def delay(self, attempt: int, hinted: float | None = None) -> float:
        """The wait before the next attempt: the server's hint if any, else backoff."""
        if hinted is not None:
            return min(self.max_delay, max(0.0, hinted))
        return self.backoff(attempt)


def _server_hint(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait (Retry-After, else X-RateLimit-Reset), if it said."""
    hint = _header_hint(response.headers, time.time())
    return None if hint is None else hint[0]


def _header_hint(headers: Mapping[str, str], now: float) -> tuple[float, str] | None:
    """(seconds to wait, which header said so) from Retry-After or X-RateLimit-Reset."""
    retry_after = (headers.get("Retry-After") or "").strip()
    if retry_after:
        seconds = _number(retry_after)
        if seconds is not None:
            return seconds, f"Retry-After: {retry_after}"
        try:
            parsed = email.utils.parsedate_to_datetime(retry_after)
        except (TypeError, ValueError, IndexError):
            parsed = None
        if parsed is not None:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.timestamp() - now, f"Retry-After: {retry_after}"
    reset = _number((headers.get("X-RateLimit-Reset") or "").strip())
    if reset is not None:
        if reset < 1e9:  # a delta in seconds, not an epoch: be lenient
            return reset, f"X-RateLimit-Reset: {reset:g} s"
        at = _epoch(reset)
        return at - now, f"X-RateLimit-Reset {_iso(at)}"
    return None


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def _epoch(value: float) -> float:
    """An epoch in seconds, also accepting milliseconds."""
    return value / 1000 if value > 1e11 else value


def parse_instant(value: object) -> datetime | None:
    """A UTC instant from ISO 8601 ('Z' or an offset; no zone means UTC) or an epoch number."""
    if isinstance(value, bool) or value is None:
        return None
    number = float(value) if isinstance(value, int | float) else None
    if isinstance(value, str):
        text = value.strip()
        number = _number(text)
        if number is None:
            if text[-1:] in ("Z", "z"):
                text = text[:-1] + "+00:00"
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                return None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
    if number is None:
        return None
    try:
        return datetime.fromtimestamp(_epoch(number), UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _iso(instant: datetime | float) -> str:
    if not isinstance(instant, datetime):
        instant = datetime.fromtimestamp(instant, UTC)
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clock(instant: datetime, now: float) -> str:
    """The time of day of a near instant, the full ISO instant of a far one."""
    if abs(instant.timestamp() - now) < 12 * 3600:
        return instant.astimezone(UTC).strftime("%H:%M:%SZ")
    return _iso(instant)


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


@dataclass(frozen=True)
class RateLimitWait:
    """How long to wait out one 429 and why; `reset_at` is when the quota resets, if known."""

    seconds: float
    why: str
    reset_at: datetime | None = None
    unit: str | None = None


def plan_rate_limit_wait(
    portal: str,
    headers: Mapping[str, str],
    body: str,
    *,
    window: float,
    margin: float,
    waits_so_far: int = 0,
    now: float | None = None,
) -> RateLimitWait:
    """The wait a 429 asks for: a Retry-After or X-RateLimit-Reset header if any, else an
    Opendatasoft body's `reset_time` (plus `margin`), else one rate-limit `window` (Data
    Fair limits per minute and gives no hint)."""
    now = time.time() if now is None else now
    doc = _json_object(body) or {}
    unit = doc.get("limit_time_unit")
    unit = str(unit) if unit else None
    quota = f"{portal} rate limit"
    if doc.get("call_limit") is not None:
        quota += f" (call_limit {doc['call_limit']} per {unit or '?'})"
    elif unit:
        quota += f" (per {unit})"
    hint = _header_hint(headers, now)
    if hint is not None and hint[0] > 0:
        seconds, source = hint
        reset_at = datetime.fromtimestamp(now + seconds, UTC)
        return RateLimitWait(seconds, f"{quota}, {source}", reset_at, unit)
    reset = parse_instant(doc.get("reset_time"))
    if reset is not None:
        ahead = reset.timestamp() - now
        if ahead > 0:
            return RateLimitWait(
                ahead + margin, f"{quota} resets at {_clock(reset, now)}", reset, unit
            )
        # reset_time already past, yet still limited: clock skew or a lagging counter
        seconds = min(window, max(margin, 0.1) * 2**waits_so_far)
        why = f"{quota} reset at {_clock(reset, now)}, already past: backing off"
        return RateLimitWait(seconds, why, None, unit)
    why = f"{quota}, no reset time given: one {_seconds(window)} window"
    return RateLimitWait(window, why, None, unit)


def _quota_name(unit: str | None) -> str:
    names = {"day": "daily", "hour": "hourly", "minute": "per-minute", "month": "monthly"}
    if not unit:
        return "rate-limit quota"
    return f"{names.get(unit.lower(), 'per-' + unit)} quota"


@dataclass
class _RateLimitBudget:
    """Rate-limit waits of one request: counted apart from its attempts, bounded by patience."""

    waits: int = 0
    waited: float = 0.0


_PORTAL_SLOTS: dict[str, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def portal_slots(portal: str, limit: int) -> threading.BoundedSemaphore:
    """The process-wide cap on concurrent requests to one portal."""
    with _SLOTS_LOCK:
        if portal not in _PORTAL_SLOTS:
            _PORTAL_SLOTS[portal] = threading.BoundedSemaphore(limit)
        return _PORTAL_SLOTS[portal]


# Where a portal's answer may send us. Every request of a PortalHttp, including the `next`
# links Data Fair pages carry and any redirect, must stay on the origin (scheme, host, port)
# of the configured base URL: a portal, or anything between it and us, must not make the
# pipeline fetch from another host (an internal service, a cloud metadata endpoint) nor
# downgrade https to http. Data Fair builds `next` from its public URL (config.publicUrl on
# its main domain, else the site URL its reverse proxy forwards, X-Forwarded-Proto and Host
# included), so on a correctly configured base URL the origin is the same; an http base URL
# whose portal answers with https links fails loudly: configure the https URL instead.
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str:
    """`scheme://host:port` of a URL, lower-cased with the default port made explicit;
    "" when the URL has no http(s) scheme or no host (nothing can match it)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return ""
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in DEFAULT_PORTS or not host:
        return ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{scheme}://{host}:{port or DEFAULT_PORTS[scheme]}"


def join_url(base: str, path: str) -> str:
    """Join a path onto a base URL, keeping the base's own path prefix."""
    if path.startswith(("http://", "https://")):
        return path
    return urljoin(base.rstrip("/") + "/", path.lstrip("/"))


class PortalHttp:
    """An httpx client for one portal, with the project's retry and throttling rules."""

    def __init__(
        self,
        portal: str,
        base_url: str,
        *,
        policy: RetryPolicy,
        connect_timeout: float,
        read_timeout: float,
        concurrency: int,
        user_agent: str,
        sleep: Any = time.sleep,
        rate_limit_window_s: float = 60.0,
        rate_limit_patience_s: float = 900.0,
        rate_limit_margin_s: float = 1.0,
    ) -> None:
        """`policy` bounds attempts on server and transport errors; a 429 is waited out
        apart from it: `rate_limit_window_s` when the portal gives no reset time, until its
        reset (plus `rate_limit_margin_s`) otherwise, at most `rate_limit_patience_s` in all
        for one request, beyond which the request fails with QuotaExhausted."""
        self.portal = portal
        self.base_url = base_url
        self.policy = policy
        self.rate_limit_window_s = rate_limit_window_s
        self.rate_limit_patience_s = rate_limit_patience_s
        self.rate_limit_margin_s = rate_limit_margin_s
        self.origin = origin_of(base_url)
        self._slots = portal_slots(portal, concurrency)
        self._sleep = sleep
        self.client = httpx.Client(
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            headers={"User-Agent": user_agent, "Accept-Encoding": "gzip"},
            follow_redirects=True,
            # called before every request, each redirect included: nothing leaves the origin
            event_hooks={"request": [self._stay_on_origin]},
        )

    def _stay_on_origin(self, request: httpx.Request) -> None:
        """Refuse, before it is sent, a request to another origin than the base URL's."""
        url = str(request.url)
        if self.origin and origin_of(url) == self.origin:
            return
        raise PermanentError(
            f"refused to contact {origin_of(url) or excerpt(url, 100)}: not the origin of "
            f"{self.portal}'s base URL ({self.origin or self.base_url}); a portal's links and "
            f"redirects are only followed on its own origin",
            url=excerpt(url, URL_CHARS, quote=False),
        )

    def url(self, path: str) -> str:
        """The absolute URL of a portal path."""
        return join_url(self.base_url, path)

    def close(self) -> None:
        """Release the connection pool."""
        self.client.close()

    def get_json(self, path: str, params: Params | None = None) -> Any:
        """GET a JSON document, retrying transient failures, including short or broken bodies."""
        return self.fetch_json(path, params)[0]

    def fetch_json(self, path: str, params: Params | None = None) -> tuple[Any, int]:
        """GET a JSON document and the size of its body in bytes."""
        url = self.url(path)
        attempt = 0
        limited = _RateLimitBudget()
        while True:
            try:
                with self._slots, self._send(url, params) as response:
                    body = response.read()
                return _decode_json(body, url), response.num_bytes_downloaded
            except RateLimited as exc:
                self._wait_out_rate_limit(exc, limited)
            except TransientError as exc:
                attempt += 1
                self._wait_or_raise(attempt, exc)

    @contextmanager
    def stream(self, path: str, params: Params | None = None) -> Iterator[httpx.Response]:
        """Open a streamed GET once its status is good; failures after this are the caller's."""
        url = self.url(path)
        attempt = 0
        limited = _RateLimitBudget()
        while True:
            opened = False
            try:
                with self._slots, self._send(url, params) as response:
                    opened = True
                    yield response
                    return
            except RateLimited as exc:
                if opened:
                    raise
                self._wait_out_rate_limit(exc, limited)
            except TransientError as exc:
                if opened:
                    raise
                attempt += 1
                self._wait_or_raise(attempt, exc)

    @contextmanager
    def _send(self, url: str, params: Params | None) -> Iterator[httpx.Response]:
        """One request: classify status and transport errors as transient or permanent."""
        request = self.client.build_request("GET", url, params=params)
        shown = str(request.url)
        try:
            response = self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise TransientError(f"{type(exc).__name__}: {_said(exc)}", url=shown) from exc
        try:
            if response.status_code >= 400:
                body, complete = _read_error_body(response)
                text = excerpt(_render_error(body), more=not complete)
                message = f"HTTP {response.status_code} from {self.portal}, body {text}"
                if response.status_code == 429:
                    limited = RateLimited(message, url=shown)
                    limited.headers = response.headers
                    limited.body = body
                    raise limited
                if response.status_code not in RETRYABLE_STATUS:
                    raise PermanentError(message, url=shown)
                error = TransientError(message, url=shown)
                error.retry_after = _server_hint(response)
                raise error
            try:
                yield response
            except (httpx.TransportError, httpx.DecodingError) as exc:
                raise TransientError(
                    f"transfer broken: {type(exc).__name__}: {_said(exc)}", url=shown
                ) from exc
        finally:
            response.close()

    def _wait_or_raise(self, attempt: int, exc: TransientError) -> None:
        if attempt >= self.policy.max_attempts:
            exc.reason = f"{exc.reason} (gave up after {attempt} attempts)"
            exc.args = (exc._render(),)
            raise exc
        wait = self.policy.delay(attempt, exc.retry_after)
        log.warning("retry %d/%d in %.1fs: %s", attempt, self.policy.max_attempts, wait, exc)
        self._sleep(wait)

    def _wait_out_rate_limit(self, exc: RateLimited, budget: _RateLimitBudget) -> None:
        """Sleep until the portal's limit resets, or fail when that passes the patience."""
        now = time.time()
        plan = plan_rate_limit_wait(
            self.portal,
            exc.headers,
            exc.body,
            window=self.rate_limit_window_s,
            margin=self.rate_limit_margin_s,
            waits_so_far=budget.waits,
            now=now,
        )
        seconds = max(plan.seconds, 0.05)
        patience = self.rate_limit_patience_s
        if budget.waited + seconds > patience:
            reset_at = plan.reset_at or datetime.fromtimestamp(now + seconds, UTC)
            already = (
                f" after {_seconds(budget.waited)} already waited in {budget.waits} wait(s)"
                if budget.waits
                else ""
            )
            said = excerpt(_render_error(exc.body))
            raise QuotaExhausted(
                f"{_quota_name(plan.unit)} of {self.portal} spent until {_iso(reset_at)}: "
                f"{plan.why}; waiting {_seconds(seconds)}{already} would pass the "
                f"rate-limit patience of {_seconds(patience)} (HTTP 429, body {said})",
                portal=self.portal,
                reset_at=_iso(reset_at),
                unit=plan.unit,
                url=exc.url,
            ) from exc
        budget.waits += 1
        budget.waited += seconds
        log.warning(
            "HTTP 429 from %s at %s: %s: waiting %s (rate-limit wait %d, %s of %s patience used)"
            " - portal said: %s",
            self.portal,
            exc.url,
            plan.why,
            _seconds(seconds),
            budget.waits,
            _seconds(budget.waited),
            _seconds(patience),
            excerpt(_render_error(exc.body)),
        )
        self._sleep(seconds)


_ERROR_BODY_LIMIT = 64 * 1024
EXCERPT_CHARS = 200  # of a portal's error text quoted into an error message
URL_CHARS = 2000  # of a URL a portal chose (a `next` link) quoted into an error message
# Line ends and separators, tabs, and the C0/C1 controls: each becomes a space.
_BREAKS = frozenset("\u0085\u2028\u2029")


def one_line(text: str) -> str:
    """Untrusted text made printable on one line: line breaks, tabs and other control
    characters become spaces, runs of spaces one space; other non-printable characters
    (format controls such as bidirectional overrides, surrogates, private use, unassigned)
    are dropped. Markup is left alone: escaping belongs to each output (Slack, Markdown,
    HTML), which knows its own syntax."""
    kept = []
    for char in text:
        if char.isprintable():
            kept.append(char)
        elif char.isspace() or char in _BREAKS or unicodedata.category(char) == "Cc":
            kept.append(" ")
        # else: Cf, Cs, Co, Cn (and Zl/Zp handled above) are dropped
    return " ".join("".join(kept).split())


def excerpt(
    text: str, limit: int = EXCERPT_CHARS, *, quote: bool = True, more: bool = False
) -> str:
    """At most `limit` characters of untrusted text, on one line (see `one_line`), as a
    double-quoted string (inner quotes and backslashes escaped, as in JSON) so where it starts
    and ends is unmistakable; a cut one is marked `(truncated: N of M characters)`. `more`
    says the text given was itself only the start of something longer."""
    flat = one_line(text)
    shown = flat[:limit]
    quoted = json.dumps(shown, ensure_ascii=False) if quote else shown
    if len(flat) > limit or more:
        total = f"{len(flat)}{'+' if more else ''}"
        quoted += f"{'' if quote else '...'} (truncated: {len(shown)} of {total} characters)"
    return quoted


def _said(exc: BaseException) -> str:
    """An exception's text, which may quote what the server sent, bounded and on one line."""
    return excerpt(str(exc), quote=False)


def _read_error_body(response: httpx.Response) -> tuple[str, bool]:
    """The start of an error body, decoded, and whether that is all of it; ("", True) when
    there is none or it cannot be read."""
    data = bytearray()
    complete = True
    try:
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) >= _ERROR_BODY_LIMIT:
                complete = False
                break
    except (httpx.HTTPError, httpx.StreamError):
        pass
    try:
        return bytes(data).decode(response.encoding or "utf-8", "replace"), complete
    except LookupError:
        return bytes(data).decode("utf-8", "replace"), complete


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _render_error(body: str) -> str:
    """An error body made readable: the message of a JSON error (Opendatasoft `message` or
    `error`, with its code and quota), or plain text (Data Fair), on one line (`one_line`).
    Not bounded: quote it through `excerpt`."""
    text = body.strip()
    if not text:
        return "(empty body)"
    doc = _json_object(text)
    if doc is None:
        return one_line(text)
    message = doc.get("message") or doc.get("error") or doc.get("detail")
    if not message:
        return one_line(str(doc))
    details = [
        f"{key} {doc[key]}"
        for key in ("error_code", "errorcode", "call_limit", "limit_time_unit", "reset_time")
        if doc.get(key) not in (None, "")
    ]
    rendered = one_line(str(message))
    return one_line(f"{rendered} ({'; '.join(details)})") if details else rendered


def _error_text(response: httpx.Response) -> str:
    """The readable error of a response (see `_render_error`)."""
    return _render_error(_read_error_body(response)[0])


def _decode_json(body: bytes, url: str) -> Any:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise TransientError(
            f"invalid or incomplete JSON body ({len(body)} bytes)", url=url
        ) from exc
    if isinstance(doc, dict) and "error_code" in doc and "results" not in doc:
        said = excerpt(str(doc.get("message")))
        raise TransientError(f"portal error in a 200 body: {said}", url=url)
    return doc
