"""Opendatasoft Explore API v2.1 (ODRE): metadata, count probes, year-filtered CSV exports."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd

from flows.errors import PermanentError, TransientError
from flows.sources.catalog import Dataset
from flows.sources.http import PortalHttp
from flows.sources.portals.base import PartitionInfo, PartitionStats, SourceMetadata
from flows.sources.portals.csvframes import BLOCK, CsvBodyError, CsvStats, read_records

API = "api/explore/v2.1/catalog/datasets"
TIMEZONE = "Europe/Paris"  # partitions are local calendar years
DATE_TYPES = frozenset({"date", "datetime"})
NUMBER_TYPES = frozenset({"int", "double", "integer", "number"})


class OpendatasoftClient:
    """An ODS v2.1 portal; data only ever comes from exports, never from paged records."""

    def __init__(self, http: PortalHttp, page_size: int = 0, block: int = BLOCK) -> None:
        self.http = http
        self.block = block
        self._types: dict[str, dict[str, str]] = {}  # declared field types per dataset id

    def close(self) -> None:
        """Release connections."""
        self.http.close()

    def declare(self, dataset: Dataset, types: dict[str, str]) -> None:
        """The declared field types, as the plan read them: the year filter depends on them."""
        if types:
            self._types[dataset.source_id] = dict(types)

    def metadata(self, dataset: Dataset) -> SourceMetadata:
        """Fields and `data_processed`, the time the data last changed."""
        path = f"{API}/{dataset.source_id}"
        doc = self.http.get_json(path)
        metas = doc.get("metas", {}).get("default", {})
        signal = metas.get("data_processed") or metas.get("modified") or ""
        declared = doc.get("fields", [])
        fields = tuple(f["name"] for f in declared)
        types = {f["name"]: str(f.get("type") or "") for f in declared}
        self._types[dataset.source_id] = types
        return SourceMetadata(
            signal=str(signal), fields=fields, url=self.http.url(path), types=types
        )

    def partitions(self, dataset: Dataset, metadata: SourceMetadata) -> dict[int, PartitionInfo]:
        """Rows per year in one grouped records query (`group_by=<year expr> as y`)."""
        self._types.setdefault(dataset.source_id, metadata.types)
        expression = self._year_expression(dataset)
        params = {
            "select": "count(*) as n",
            "group_by": f"{expression} as y",
            "limit": 100,
            "timezone": TIMEZONE,
        }
        doc = self._filtered_json(dataset, "records", params)
        found: dict[int, PartitionInfo] = {}
        for row in doc.get("results", []):
            year = _year_of(row.get("y"))
            if year is not None:
                count = int(row["n"]) + (found[year].count if year in found else 0)
                found[year] = PartitionInfo(year, count)
        return found

    def count(self, dataset: Dataset, year: int) -> int:
        """The total_count of the export's own filter."""
        doc = self._filtered_json(dataset, "records", {**self._filter(dataset, year), "limit": 0})
        return int(doc["total_count"])

    def stream(self, dataset: Dataset, year: int, stats: PartitionStats) -> Iterator[pd.DataFrame]:
        """The partition's CSV export, cut into whole records as it arrives, values as text."""
        params = {**self._filter(dataset, year), "delimiter": ";", "with_bom": "true"}
        path = f"{API}/{dataset.source_id}/exports/csv"
        stats.url = str(
            self.http.client.build_request("GET", self.http.url(path), params=params).url
        )
        counters = CsvStats()
        with self.http.stream(path, params) as response:
            try:
                columns, tables = read_records(
                    response.iter_bytes(), counters, delimiter=";", block=self.block
                )
                stats.columns = columns
                for table in tables:
                    stats.rows, stats.bytes = counters.rows, counters.bytes
                    yield table.to_pandas()
            except CsvBodyError as exc:
                # a cut body, an error text in a 200 body ("Streaming interrupted ..."), or a
                # body of the wrong shape: retried; if every attempt fails, the partition fails
                raise TransientError(
                    f"export body is not valid CSV (cut short, or an error text in a 200 "
                    f"body?): {exc}",
                    url=stats.url,
                ) from exc
            finally:
                stats.rows, stats.bytes = counters.rows, counters.bytes

    def _field_type(self, dataset: Dataset) -> str:
        """The declared type of the partition field (from the metadata, fetched once)."""
        types = self._types.get(dataset.source_id)
        if types is None:
            types = self.metadata(dataset).types
        return types.get(dataset.partition_field, "")

    def _year_expression(self, dataset: Dataset) -> str:
        """`year(f)` on a date/datetime field; the field itself on a text or number field."""
        field = dataset.partition_field
        return f"year({field})" if self._field_type(dataset) in DATE_TYPES else field

    def _filter(self, dataset: Dataset, year: int) -> dict[str, Any]:
        """The ODSQL year filter, chosen from the field's declared type (DATASETS.md 1.4)."""
        field = dataset.partition_field
        kind = self._field_type(dataset)
        if kind in DATE_TYPES:
            where = f"year({field}) = {year}"
        elif kind in NUMBER_TYPES:
            where = f"{field} = {year}"
        else:
            where = f'{field} = "{year}"'
        return {"where": where, "timezone": TIMEZONE}

    def _filtered_json(self, dataset: Dataset, endpoint: str, params: dict[str, Any]) -> Any:
        """A records query; a 400 names the dataset, the field, its declared type and the query."""
        try:
            return self.http.get_json(f"{API}/{dataset.source_id}/{endpoint}", params)
        except PermanentError as exc:
            if "HTTP 400" not in exc.reason:
                raise
            query = ", ".join(f"{k}={v}" for k, v in params.items())
            exc.reason = (
                f"{dataset.name}: the portal rejected the year filter on field "
                f"{dataset.partition_field!r} (declared {self._field_type(dataset) or 'untyped'}"
                f") in the query [{query}]: {exc.reason}"
            )
            exc.args = (exc._render(),)
            raise


def _year_of(value: object) -> int | None:
    """A year from a grouped value: 2023, '2023', '2023-01-01', '2023-01-01T00:00:00+01:00'."""
    if value is None:
        return None
    text = str(value).strip()
    if len(text) >= 4 and text[:4].isdigit():
        return int(text[:4])
    return None
