"""Transport-neutral request/response objects shared by the portal engines and the server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from .store import LRU, DatasetState

# A streamed body: given a batch size, yields (rows in chunk, bytes).
Stream = Callable[[int], Iterator[tuple[int, bytes]]]


class ApiError(Exception):
    """An error the portal answers with `status` (rendered in the portal's error shape)."""

    def __init__(self, status: int, message: str, code: str = "InvalidRESTParameterError"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass
class Request:
    """One parsed HTTP request."""

    method: str
    portal: str
    path: str
    params: list[tuple[str, str]]
    host: str
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        """Last value of a query parameter."""
        for key, value in reversed(self.params):
            if key == name:
                return value
        return default

    def getall(self, name: str) -> list[str]:
        """All values of a query parameter."""
        return [v for k, v in self.params if k == name]

    def has(self, name: str) -> bool:
        """True if the parameter is present."""
        return any(k == name for k, _ in self.params)

    @property
    def query(self) -> dict[str, Any]:
        """Parameters as a dict (repeated names give lists)."""
        out: dict[str, Any] = {}
        for key, value in self.params:
            if key in out:
                prev = out[key]
                out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
            else:
                out[key] = value
        return out

    def int_param(self, name: str, default: int) -> int:
        """An integer parameter (ApiError 400 when not an integer)."""
        raw = self.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError as exc:
            raise ApiError(400, f"Invalid value for {name} API parameter: {raw!r}") from exc


@dataclass
class Response:
    """A response: either a complete `body` or a chunked `stream` of rows."""

    status: int
    content_type: str = "application/json; charset=utf-8"
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: Stream | None = None
    total_rows: int = 0
    error_tail: Callable[[int, str], bytes] | None = None


@dataclass(frozen=True)
class Route:
    """What a request addresses: its kind, dataset (short name) and handler."""

    kind: str
    dataset: str | None
    handler: Callable[[Request], Response]


class Catalog(Protocol):
    """What the portal engines need from the emulator."""

    cache: LRU

    def find(self, portal: str, ident: str) -> DatasetState | None:
        """Dataset served by `portal` under this id (or slug)."""
        ...

    def states(self, portal: str) -> list[DatasetState]:
        """Datasets served by `portal`."""
        ...


def iso_seconds(value: datetime) -> str:
    """Opendatasoft timestamp style: 2024-05-02T14:03:12+00:00."""
    return value.isoformat(timespec="seconds")


def iso_millis(value: datetime) -> str:
    """Data Fair (JavaScript) timestamp style: 2024-05-02T14:03:12.000Z."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
