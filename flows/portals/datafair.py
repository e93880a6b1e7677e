"""Data Fair API v1 (Agence ORE, Enedis): metadata, aggregates, cursor-paginated lines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd

from flows.catalog import Dataset
from flows.errors import TransientError
from flows.http import PortalHttp
from flows.portals.base import PartitionInfo, PartitionStats, SourceMetadata

API = "data-fair/api/v1/datasets"


class DataFairClient:
    """A Data Fair portal: lines pages are followed through `next` until it is absent."""

    def __init__(self, http: PortalHttp, page_size: int = 10_000) -> None:
        self.http = http
        self.page_size = page_size

    def close(self) -> None:
        """Release connections."""
        self.http.close()

    def metadata(self, dataset: Dataset) -> SourceMetadata:
        """Schema keys and `dataUpdatedAt` (or `finalizedAt`), the data change signal."""
        path = f"{API}/{dataset.source_id}"
        doc = self.http.get_json(path)
        signal = doc.get("dataUpdatedAt") or doc.get("finalizedAt") or doc.get("updatedAt") or ""
        fields = tuple(
            f["key"] for f in doc.get("schema", []) if not str(f.get("key", "_")).startswith("_")
        )
        return SourceMetadata(signal=str(signal), fields=fields, url=self.http.url(path))

    def partitions(self, dataset: Dataset, metadata: SourceMetadata) -> dict[int, PartitionInfo]:
        """Rows (and the fingerprint sum) per year in one values_agg request."""
        params: dict[str, Any] = {"field": dataset.partition_field, "agg_size": 1000}
        measure = [f for f in metadata.fields if dataset.canonical(f) == dataset.fingerprint_field]
        if measure:
            params |= {"metric": "sum", "metric_field": measure[0]}
        doc = self.http.get_json(f"{API}/{dataset.source_id}/values_agg", params)
        found = {}
        for agg in doc.get("aggs", []):
            year = int(str(agg["value"])[:4])
            metric = agg.get("metric")
            found[year] = PartitionInfo(
                year, int(agg["total"]), None if metric is None else round(float(metric), 6)
            )
        return found

    def count(self, dataset: Dataset, year: int) -> int:
        """The `total` of the lines query the stream uses."""
        doc = self.http.get_json(
            f"{API}/{dataset.source_id}/lines", {**self._filter(dataset, year), "size": 0}
        )
        return int(doc["total"])

    def stream(self, dataset: Dataset, year: int, stats: PartitionStats) -> Iterator[pd.DataFrame]:
        """Every page of the partition's lines, technical `_` keys dropped."""
        path = f"{API}/{dataset.source_id}/lines"
        params = {**self._filter(dataset, year), "size": self.page_size}
        stats.url = str(
            self.http.client.build_request("GET", self.http.url(path), params=params).url
        )
        url: str | None = path
        first = True
        while url:
            doc, size = self.http.fetch_json(url, params if first else None)
            if first:
                stats.expected = doc.get("total")
                first = False
            rows = doc.get("results")
            if rows is None:
                raise TransientError("lines page without results", url=self.http.url(url))
            if not rows:
                break
            stats.rows += len(rows)
            stats.bytes += size
            yield _frame(rows)
            url = doc.get("next")

    @staticmethod
    def _filter(dataset: Dataset, year: int) -> dict[str, Any]:
        return {f"{dataset.partition_field}_eq": year}


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows)
    technical = [c for c in frame.columns if str(c).startswith("_")]
    return frame.drop(columns=technical) if technical else frame
