"""Reading the lake's committed state: gold tables, raw pointers and manifests.

The one place outputs read the lake from. Gold tables are read as a reader must: the files
of the version the publish pointer names (`flows.lake.publish.table_files`), so all tables
come from one publish and never a mix; a lake published before the pointer existed is read
from each table's plain view. Every path comes from `flows.lake.layout`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flows.gold.tables import PARTITION
from flows.lake import layout
from flows.lake.fs import Lake
from flows.lake.publish import table_files

# --- gold zone ------------------------------------------------------------------------------


def gold_version(lake: Lake, table: str) -> tuple[str, list[str]]:
    """A gold table's published version: (lake-relative folder, Parquet files relative to it).

    Empty when the table is not published.
    """
    return table_files(lake, table)


def gold_files(lake: Lake, table: str) -> dict[int, list[str]]:
    """The published version's Parquet files of a gold table by year (ascending),
    lake-relative, each year's in name order: the order that gives a table's rows in key
    order (`flows.gold.tables.GoldTable`)."""
    folder, names = gold_version(lake, table)
    by_year: dict[int, list[str]] = defaultdict(list)
    for name in names:
        folders = [part for part in name.split("/") if part.startswith(layout.YEAR_FOLDER)]
        year = layout.year_of(folders[0]) if folders else None
        if year is not None:
            by_year[year].append(f"{folder}/{name}")
    return dict(sorted(by_year.items()))


def gold_years(lake: Lake, table: str, columns: list[str]) -> Iterator[tuple[int, pa.Table]]:
    """A gold table year by year, with the chosen columns (the year is not one of them).

    The generator keeps no reference to the year it yields, so a consumer that drops it
    (e.g. after sorting) frees it before the next year is read.
    """
    for year, files in gold_files(lake, table).items():
        yield year, read_files(lake, files, columns)


def read_gold(lake: Lake, table: str, columns: list[str]) -> pa.Table | None:
    """A whole gold table with its year (`annee`) as a column, or None when it is not
    published."""
    parts = [
        part.append_column(PARTITION, pa.array([year] * part.num_rows, pa.int32()))
        for year, part in gold_years(lake, table, columns)
    ]
    return pa.concat_tables(parts) if parts else None


def read_files(lake: Lake, files: list[str], columns: list[str]) -> pa.Table:
    """Some columns of lake-relative Parquet files, as one table."""
    parts = []
    for path in files:
        with lake.fs.open(lake.path(path), "rb") as handle:
            parts.append(pq.read_table(handle, columns=columns))
    return pa.concat_tables(parts)


def read_batches(
    lake: Lake,
    files: list[str],
    columns: list[str],
    batch_rows: int,
    dictionary: list[str] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Some columns of lake-relative Parquet files as record batches of at most `batch_rows`
    rows, streamed file after file in the order given, each file's rows in their stored order.

    Memory stays about one row group's pages and one batch, whatever the files' size. With
    the order of `gold_files` (year, then file name), a gold table whose job wrote its files
    in key order comes out in key order. The `dictionary` columns are read dictionary-encoded
    (quicker for repetitive text). One thread: a batch is little work, and every thread's
    allocator heap would keep its own pages.
    """
    for path in files:
        with lake.fs.open(lake.path(path), "rb") as handle:
            parquet = pq.ParquetFile(handle, read_dictionary=dictionary)
            yield from parquet.iter_batches(
                batch_size=batch_rows, columns=columns, use_threads=False
            )


# --- raw zone -------------------------------------------------------------------------------


def all_raw_pointers(lake: Lake) -> list[dict[str, Any]]:
    """The `_current.json` of every committed raw partition of the lake (fresh listings: read
    under the lease, after a killed run)."""
    found = []
    for dataset in lake.listing(layout.RAW):
        for name in lake.listing(layout.raw_dataset(dataset)):
            year = layout.year_of(name)
            if year is not None:
                pointer = lake.read_json(layout.raw_pointer(dataset, year))
                if pointer is not None:
                    found.append(pointer)
    return found


def raw_pointers(lake: Lake, dataset: str) -> list[dict[str, Any]]:
    """The `_current.json` of every committed raw partition of a dataset, by year."""
    pattern = lake.path(layout.raw_pointer(dataset, "*"))
    return [json.loads(lake.fs.cat_file(path)) for path in sorted(lake.fs.glob(pattern))]


# --- manifests ------------------------------------------------------------------------------


def load_manifest(lake: Lake, load_id: str) -> dict[str, Any] | None:
    """The manifest of one load, None when there is none (a load still running, or lost)."""
    document: dict[str, Any] | None = lake.read_json(layout.load_manifest(load_id))
    return document


def latest_publish(lake: Lake) -> dict[str, Any] | None:
    """The manifest of the lake's latest publish, None before the first one."""
    names = lake.files_below(layout.PUBLISHES, ".json")
    if not names:
        return None
    run_id = names[-1].removesuffix(".json")
    document: dict[str, Any] | None = lake.read_json(layout.publish_manifest(run_id))
    return document
