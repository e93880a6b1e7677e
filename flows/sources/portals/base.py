"""What every portal client offers: metadata, per-partition counts, and a row stream."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import pandas as pd

from flows.sources.catalog import Dataset


@dataclass(frozen=True)
class SourceMetadata:
    """A dataset as the portal describes it."""

    signal: str  # when the data last changed at the source
    fields: tuple[str, ...]  # source column names, as declared
    url: str
    types: dict[str, str] = field(default_factory=dict)  # declared type per source field


@dataclass(frozen=True)
class PartitionInfo:
    """A partition as the portal counts it: rows and an optional sum of one measure."""

    year: int
    count: int
    checksum: float | None = None


@dataclass
class PartitionStats:
    """What a stream received, filled in as it goes."""

    url: str = ""
    rows: int = 0
    bytes: int = 0
    expected: int | None = None
    columns: list[str] = field(default_factory=list)


class PortalClient(Protocol):
    """One client per portal protocol."""

    def metadata(self, dataset: Dataset) -> SourceMetadata:
        """The dataset's declared fields and change signal."""

    def partitions(self, dataset: Dataset, metadata: SourceMetadata) -> dict[int, PartitionInfo]:
        """Every partition the portal holds, with its row count (one request)."""

    def count(self, dataset: Dataset, year: int) -> int:
        """Rows the portal holds for one partition, with the filter the stream uses."""

    def stream(self, dataset: Dataset, year: int, stats: PartitionStats) -> Iterator[pd.DataFrame]:
        """The partition's rows as raw frames (source names, values as received)."""

    def declare(self, dataset: Dataset, types: dict[str, str]) -> None:
        """Tell the client the field types the plan already read, sparing a metadata call."""

    def close(self) -> None:
        """Release connections."""
