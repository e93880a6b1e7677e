"""Errors that name what failed: dataset, partition and URL."""

from __future__ import annotations

from collections.abc import Mapping


class PipelineError(Exception):
    """Base error with the context an operator needs to act."""

    def __init__(
        self,
        message: str,
        *,
        dataset: str | None = None,
        partition: str | None = None,
        url: str | None = None,
    ) -> None:
        self.dataset = dataset
        self.partition = partition
        self.url = url
        self.reason = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = [
            f"{label} {value}"
            for label, value in (
                ("dataset", self.dataset),
                ("partition", self.partition),
                ("url", self.url),
            )
            if value
        ]
        return f"{self.reason} [{', '.join(where)}]" if where else self.reason

    def with_context(self, *, dataset: str, partition: str) -> PipelineError:
        """The same error, completed with the dataset and partition it happened in."""
        self.dataset = self.dataset or dataset
        self.partition = self.partition or partition
        self.args = (self._render(),)
        return self


class TransientError(PipelineError):
    """A failure worth retrying: throttling, server errors, broken or short transfers."""

    retry_after: float | None = None  # seconds the server asked us to wait


class RateLimited(TransientError):
    """A 429: the portal's rate limit or quota; waited out by the HTTP layer, not counted as
    a failed attempt. `headers` and `body` keep what the portal said about when it resets."""

    headers: Mapping[str, str] = {}
    body: str = ""


class PermanentError(PipelineError):
    """A failure no retry can fix: a bad request, a missing column, an unknown dataset."""


class QuotaExhausted(PermanentError):
    """A portal's quota is spent until later than the pipeline may wait (the rate-limit
    patience): no retry, request- or partition-level, can help before it resets."""

    def __init__(
        self,
        message: str,
        *,
        portal: str,
        reset_at: str | None = None,
        unit: str | None = None,
        url: str | None = None,
    ) -> None:
        self.portal = portal
        self.reset_at = reset_at  # ISO 8601 UTC instant the quota resets, as far as known
        self.unit = unit  # the portal's limit_time_unit (minute, hour, day) when it said so
        super().__init__(message, url=url)


def is_transient(exc: BaseException) -> bool:
    """Whether an exception is worth another attempt."""
    return isinstance(exc, TransientError)
