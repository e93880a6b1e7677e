"""The one HTTP layer: timeouts, retries with backoff and jitter, rate limits, concurrency caps."""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx
import orjson

from flows.errors import PermanentError, TransientError

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
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        if retry_after.strip().isdigit():
            return float(retry_after)
        parsed = email.utils.parsedate_to_datetime(retry_after)
        if parsed is not None:
            return parsed.timestamp() - time.time()
    reset = response.headers.get("X-RateLimit-Reset")
    if reset and reset.strip().replace(".", "", 1).isdigit():
        return float(reset) - time.time()
    return None


_PORTAL_SLOTS: dict[str, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def portal_slots(portal: str, limit: int) -> threading.BoundedSemaphore:
    """The process-wide cap on concurrent requests to one portal."""
    with _SLOTS_LOCK:
        if portal not in _PORTAL_SLOTS:
            _PORTAL_SLOTS[portal] = threading.BoundedSemaphore(limit)
        return _PORTAL_SLOTS[portal]


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
    ) -> None:
        self.portal = portal
        self.base_url = base_url
        self.policy = policy
        self._slots = portal_slots(portal, concurrency)
        self._sleep = sleep
        self.client = httpx.Client(
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            headers={"User-Agent": user_agent, "Accept-Encoding": "gzip"},
            follow_redirects=True,
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
        for attempt in range(1, self.policy.max_attempts + 1):
            try:
                with self._slots, self._send(url, params) as response:
                    body = response.read()
                return _decode_json(body, url), response.num_bytes_downloaded
            except TransientError as exc:
                self._wait_or_raise(attempt, exc)
        raise AssertionError("unreachable")

    @contextmanager
    def stream(self, path: str, params: Params | None = None) -> Iterator[httpx.Response]:
        """Open a streamed GET once its status is good; failures after this are the caller's."""
        url = self.url(path)
        for attempt in range(1, self.policy.max_attempts + 1):
            opened = False
            try:
                with self._slots, self._send(url, params) as response:
                    opened = True
                    yield response
                    return
            except TransientError as exc:
                if opened:
                    raise
                self._wait_or_raise(attempt, exc)

    @contextmanager
    def _send(self, url: str, params: Params | None) -> Iterator[httpx.Response]:
        """One request: classify status and transport errors as transient or permanent."""
        request = self.client.build_request("GET", url, params=params)
        shown = str(request.url)
        try:
            response = self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}", url=shown) from exc
        try:
            if response.status_code >= 400:
                text = _error_text(response)
                message = f"HTTP {response.status_code} from {self.portal}: {text}"
                if response.status_code not in RETRYABLE_STATUS:
                    raise PermanentError(message, url=shown)
                error = TransientError(message, url=shown)
                error.retry_after = _server_hint(response)
                raise error
            try:
                yield response
            except (httpx.TransportError, httpx.DecodingError) as exc:
                raise TransientError(
                    f"transfer broken: {type(exc).__name__}: {exc}", url=shown
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


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.read()[:500].decode("utf-8", "replace")
    except httpx.HTTPError:
        return "(no body)"
    try:
        doc = orjson.loads(body)
        if isinstance(doc, dict):
            return str(doc.get("message") or doc.get("error") or doc)
    except orjson.JSONDecodeError:
        pass
    return body.strip() or "(empty body)"


def _decode_json(body: bytes, url: str) -> Any:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise TransientError(
            f"invalid or incomplete JSON body ({len(body)} bytes)", url=url
        ) from exc
    if isinstance(doc, dict) and "error_code" in doc and "results" not in doc:
        raise TransientError(f"portal error in a 200 body: {doc.get('message')}", url=url)
    return doc
