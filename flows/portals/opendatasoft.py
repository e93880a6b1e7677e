"""Opendatasoft Explore API v2.1 (ODRE): metadata, count probes, year-filtered CSV exports."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from flows.catalog import Dataset
from flows.errors import PermanentError, TransientError
from flows.http import PortalHttp
from flows.portals.base import PartitionInfo, PartitionStats, SourceMetadata

API = "api/explore/v2.1/catalog/datasets"
TIMEZONE = "Europe/Paris"  # partitions are local calendar years
CSV_BLOCK = 4 << 20
BOM = b"\xef\xbb\xbf"


class OpendatasoftClient:
    """An ODS v2.1 portal; data only ever comes from exports, never from paged records."""

    def __init__(self, http: PortalHttp, page_size: int = 0) -> None:
        self.http = http

    def close(self) -> None:
        """Release connections."""
        self.http.close()

    def metadata(self, dataset: Dataset) -> SourceMetadata:
        """Fields and `data_processed`, the time the data last changed."""
        path = f"{API}/{dataset.source_id}"
        doc = self.http.get_json(path)
        metas = doc.get("metas", {}).get("default", {})
        signal = metas.get("data_processed") or metas.get("modified") or ""
        fields = tuple(f["name"] for f in doc.get("fields", []))
        return SourceMetadata(signal=str(signal), fields=fields, url=self.http.url(path))

    def partitions(self, dataset: Dataset, metadata: SourceMetadata) -> dict[int, PartitionInfo]:
        """Rows per year in one grouped records query."""
        year = f"year({dataset.partition_field})"
        doc = self.http.get_json(
            f"{API}/{dataset.source_id}/records",
            {
                "select": f"{year} as y, count(*) as n",
                "group_by": year,
                "limit": 100,
                "timezone": TIMEZONE,
            },
        )
        return {
            int(str(r["y"])[:4]): PartitionInfo(int(str(r["y"])[:4]), int(r["n"]))
            for r in doc.get("results", [])
            if r.get("y") is not None
        }

    def count(self, dataset: Dataset, year: int) -> int:
        """The total_count of the export's own filter."""
        doc = self.http.get_json(
            f"{API}/{dataset.source_id}/records", {**self._filter(dataset, year), "limit": 0}
        )
        return int(doc["total_count"])

    def stream(self, dataset: Dataset, year: int, stats: PartitionStats) -> Iterator[pd.DataFrame]:
        """The partition's CSV export, parsed in blocks as it arrives, every value as text."""
        params = {**self._filter(dataset, year), "delimiter": ";", "with_bom": "true"}
        path = f"{API}/{dataset.source_id}/exports/csv"
        stats.url = str(
            self.http.client.build_request("GET", self.http.url(path), params=params).url
        )
        with self.http.stream(path, params) as response:
            body = _ResponseFile(response, stats)
            columns = body.header()
            stats.columns = columns
            reader = pacsv.open_csv(
                body,
                read_options=pacsv.ReadOptions(column_names=columns, block_size=CSV_BLOCK),
                parse_options=pacsv.ParseOptions(delimiter=";", newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in columns},
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=True,
                ),
            )
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                except pa.ArrowInvalid as exc:
                    raise TransientError(
                        f"export body is not valid CSV (error text in a 200 body?): {exc}",
                        url=stats.url,
                    ) from exc
                stats.rows += batch.num_rows
                yield batch.to_pandas()

    @staticmethod
    def _filter(dataset: Dataset, year: int) -> dict[str, Any]:
        return {"where": f"year({dataset.partition_field}) = {year}", "timezone": TIMEZONE}


class _ResponseFile(io.RawIOBase):
    """A read-only file over a streamed response body, counting bytes, without the BOM."""

    def __init__(self, response: httpx.Response, stats: PartitionStats) -> None:
        self._chunks = response.iter_bytes()
        self._buffer = b""
        self._stats = stats
        self._url = str(response.request.url)

    def readable(self) -> bool:
        return True

    def _more(self) -> bool:
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        self._stats.bytes += len(chunk)
        self._buffer += chunk
        return True

    def header(self) -> list[str]:
        """Consume and decode the header line."""
        while b"\n" not in self._buffer:
            if not self._more():
                break
        line, _, self._buffer = self._buffer.partition(b"\n")
        line = line.removeprefix(BOM).rstrip(b"\r")
        if not line:
            raise PermanentError("export returned an empty body (no header)", url=self._url)
        if line.lstrip().startswith(b"{"):
            raise PermanentError(f"export returned an error: {line[:300]!r}", url=self._url)
        return next(csv.reader([line.decode("utf-8")], delimiter=";"))

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            if not self._more():
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size
