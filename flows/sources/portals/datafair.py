"""Data Fair API v1 (Agence ORE, Enedis): metadata, aggregates, cursor-paginated lines."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pandas as pd

from flows.errors import PermanentError, TransientError
from flows.sources.catalog import Dataset
from flows.sources.http import URL_CHARS, PortalHttp, excerpt, origin_of
from flows.sources.portals.base import PartitionInfo, PartitionStats, SourceMetadata

API = "data-fair/api/v1/datasets"
AGG_CAP = 1000  # values_agg buckets the server returns at most, whatever agg_size says
YEAR_RANGE = (1900, 2199)


class DataFairClient:
    """A Data Fair portal: lines pages are followed through `next` until it is absent."""

    def __init__(self, http: PortalHttp, page_size: int = 10_000) -> None:
        self.http = http
        self.page_size = page_size

    def close(self) -> None:
        """Release connections."""
        self.http.close()

    def declare(self, dataset: Dataset, types: dict[str, str]) -> None:
        """Nothing to remember: Data Fair's filters do not depend on the declared types."""

    def metadata(self, dataset: Dataset) -> SourceMetadata:
        """Schema keys and `dataUpdatedAt` (or `finalizedAt`), the data change signal."""
        path = f"{API}/{dataset.source_id}"
        doc = self.http.get_json(path)
        signal = doc.get("dataUpdatedAt") or doc.get("finalizedAt") or doc.get("updatedAt") or ""
        declared = [f for f in doc.get("schema", []) if not str(f.get("key", "_")).startswith("_")]
        fields = tuple(f["key"] for f in declared)
        types = {f["key"]: str(f.get("type") or "") for f in declared}
        return SourceMetadata(
            signal=str(signal), fields=fields, url=self.http.url(path), types=types
        )

    def partitions(self, dataset: Dataset, metadata: SourceMetadata) -> dict[int, PartitionInfo]:
        """Rows (and the fingerprint sum) per year from values_agg.

        Data Fair returns at most 1000 buckets whatever `agg_size` asks (DATASETS.md 1.4) and
        counts the rest in `total_other`; when that is not 0 the year range is split in halves
        (`<field>_gte` / `<field>_lte`) until every bucket is seen, so no year goes missing.
        """
        params: dict[str, Any] = {"field": dataset.partition_field, "agg_size": AGG_CAP}
        measure = [f for f in metadata.fields if dataset.canonical(f) == dataset.fingerprint_field]
        if measure:
            params |= {"metric": "sum", "metric_field": measure[0]}
        found: dict[int, PartitionInfo] = {}
        self._values_agg(dataset, params, None, found)
        return found

    def _values_agg(
        self,
        dataset: Dataset,
        params: dict[str, Any],
        bounds: tuple[int, int] | None,
        found: dict[int, PartitionInfo],
    ) -> None:
        field = dataset.partition_field
        query = dict(params)
        if bounds is not None:
            query |= {f"{field}_gte": bounds[0], f"{field}_lte": bounds[1]}
        doc = self.http.get_json(f"{API}/{dataset.source_id}/values_agg", query)
        for agg in doc.get("aggs", []):
            year = int(str(agg["value"])[:4])
            metric = agg.get("metric")
            found[year] = PartitionInfo(
                year, int(agg["total"]), None if metric is None else round(float(metric), 6)
            )
        if not doc.get("total_other"):
            return
        low, high = bounds or YEAR_RANGE
        if low >= high:
            raise TransientError(
                f"values_agg of {dataset.name} left {doc['total_other']} rows out of a "
                f"single-value range {field}={low}",
                url=self.http.url(f"{API}/{dataset.source_id}/values_agg"),
            )
        middle = (low + high) // 2
        self._values_agg(dataset, params, (low, middle), found)
        self._values_agg(dataset, params, (middle + 1, high), found)

    def count(self, dataset: Dataset, year: int) -> int:
        """The `total` of the lines query the stream uses."""
        doc = self.http.get_json(
            f"{API}/{dataset.source_id}/lines", {**self._filter(dataset, year), "size": 0}
        )
        return int(doc["total"])

    def stream(self, dataset: Dataset, year: int, stats: PartitionStats) -> Iterator[pd.DataFrame]:
        """Every page of the partition's lines, technical `_` keys dropped.

        The next page is requested as soon as its `next` link is known, while this page is
        validated and spooled: the portal's time to answer overlaps with ours (one page ahead,
        so memory grows by one page at most).
        """
        path = f"{API}/{dataset.source_id}/lines"
        params = {**self._filter(dataset, year), "size": self.page_size}
        stats.url = str(
            self.http.client.build_request("GET", self.http.url(path), params=params).url
        )
        pool = ThreadPoolExecutor(1, thread_name_prefix=f"{self.http.portal}-next-page")
        try:
            url: str = path
            pending: Future[tuple[Any, int]] | None = pool.submit(
                self.http.fetch_json, path, params
            )
            first = True
            while pending is not None:
                doc, size = pending.result()
                if first:
                    stats.expected = doc.get("total")
                    first = False
                rows = doc.get("results")
                if rows is None:
                    raise TransientError("lines page without results", url=self.http.url(url))
                if not rows:
                    break
                following = self._next_link(dataset, doc.get("next"), stats.url)
                pending = pool.submit(self.http.fetch_json, following) if following else None
                url = following or url
                stats.rows += len(rows)
                stats.bytes += size
                yield _frame(rows)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _next_link(self, dataset: Dataset, link: Any, lines_url: str) -> str | None:
        """The page's `next` link, if it stays on the portal's origin; else the partition fails.

        Data Fair's `next` is absolute, built on the portal's public URL (read.ts `nextLinkHref`:
        `{publicBaseUrl}/api/v1/datasets/{id}/lines?...&after=...`), so its path may differ
        from ours (dataset id for slug, the portal's own prefix) but its origin - scheme,
        host and port - is the base URL's (see flows.sources.http.origin_of for why http -> https
        counts as another origin). Following a link elsewhere would let the portal, or
        anyone who can alter its answer, make the pipeline request any host: refused, not
        retried (the same answer would come back).
        """
        if link is None or link == "":
            return None
        if not isinstance(link, str):
            raise PermanentError(
                f"{dataset.name}: the lines page's `next` is not a URL but "
                f"{type(link).__name__} {excerpt(str(link))}",
                url=lines_url,
            )
        if self.http.origin and origin_of(link) == self.http.origin:
            return link
        refused = origin_of(link) or excerpt(link)
        raise PermanentError(
            f"{dataset.name}: refused to follow the lines page's `next` link to another origin "
            f"{refused} (the portal's origin is {self.http.origin or self.http.base_url}); "
            f"next = {excerpt(link, URL_CHARS)}",
            url=lines_url,
        )

    @staticmethod
    def _filter(dataset: Dataset, year: int) -> dict[str, Any]:
        return {f"{dataset.partition_field}_eq": year}


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows)
    technical = [c for c in frame.columns if str(c).startswith("_")]
    return frame.drop(columns=technical) if technical else frame
