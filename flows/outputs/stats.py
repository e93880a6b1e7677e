"""Figures of the raw zone, per dataset: what the dashboard's data panel shows.

Everything comes from the committed partitions' pointers (read through `flows.lake.readers`),
the footers of their Parquet files and, for lakes older than the load record a pointer
carries, the load manifests.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow.parquet as pq

from flows.lake import layout, readers
from flows.lake.fs import Lake
from flows.sources.catalog import MASK_MARKER, Dataset

# A masked row (ORE secrecy) is one whose total is null; validation nulls its masked measures.


def dataset_stats(lake: Lake, dataset: Dataset) -> dict[str, Any]:
    """A dataset's committed partitions: source update, years, rows, masked and quarantined
    rows, last commit."""
    pointers = readers.raw_pointers(lake, dataset.name)
    return {
        "source_updated": _latest(pointers, "source_signal"),
        "years": sorted(p["year"] for p in pointers),
        "rows": sum(p.get("rows") or 0 for p in pointers),
        "masked": masked_rows(lake, dataset, pointers),
        "quarantined": quarantined_rows(lake, pointers),
        "committed_at": _latest(pointers, "committed_at"),
    }


def masked_rows(lake: Lake, dataset: Dataset, pointers: Iterable[dict[str, Any]]) -> int | None:
    """Masked rows of the committed partitions; None for a dataset without masked measures."""
    if not dataset.masked_measures:
        return None
    return sum(
        null_count(lake, lake.path(layout.raw_file(dataset.name, p["year"], name)), MASK_MARKER)
        for p in pointers
        for name in p.get("files", [])
    )


def null_count(lake: Lake, path: str, column: str) -> int:
    """Nulls of a column in a Parquet file, from its footer statistics when it has them."""
    with lake.fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        position = parquet.schema_arrow.get_field_index(column)
        if position < 0:
            return 0
        metadata = parquet.metadata
        counts = []
        for group in range(metadata.num_row_groups):
            statistics = metadata.row_group(group).column(position).statistics
            counts.append(statistics.null_count if statistics and statistics.has_null_count
                          else None)  # fmt: skip
        if None not in counts:
            return sum(c or 0 for c in counts)
        return parquet.read(columns=[column]).column(0).null_count


def quarantined_rows(lake: Lake, pointers: Iterable[dict[str, Any]]) -> int | None:
    """Rows quarantined by the loads that committed these partitions: the load record each
    pointer carries (committed with the partition), or the load manifest of older lakes;
    None when a manifest it needs is missing."""
    total = 0
    manifests: dict[str, Any] = {}
    for pointer in pointers:
        if isinstance(pointer.get("load"), dict):
            total += pointer["load"].get("rows_quarantined") or 0
            continue
        load_id = str(pointer.get("load_id"))
        if load_id not in manifests:
            manifests[load_id] = readers.load_manifest(lake, load_id)
        manifest = manifests[load_id]
        if manifest is None:
            return None
        partition = layout.partition_label(pointer["dataset"], pointer["year"])
        total += sum(
            p.get("rows_quarantined") or 0
            for p in manifest.get("partitions", [])
            if p.get("partition") == partition and p.get("status") == "loaded"
        )
    return total


def _latest(pointers: list[dict[str, Any]], key: str) -> str | None:
    """The latest value of a timestamp the pointers carry, None when none has it."""
    return max((p.get(key) or "" for p in pointers), default="") or None
