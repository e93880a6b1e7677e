"""Exact dedup in bounded memory: rows hashed by natural key into local buckets."""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc

from flows.runtime import scratch_dir
from flows.sources.catalog import Dataset, Kind

_ARROW_TYPES = {
    Kind.CODE: pa.string(),
    Kind.TEXT: pa.string(),
    Kind.FLOAT: pa.float64(),
    Kind.INT: pa.int64(),
    Kind.YEAR: pa.int64(),
    Kind.INSTANT: pa.timestamp("us", tz="UTC"),
}


def lake_schema(dataset: Dataset, extras: list[str]) -> pa.Schema:
    """The Arrow schema of a partition's files: catalog columns, then drifted extras as text."""
    fields = [pa.field(c.name, _ARROW_TYPES[c.kind]) for c in dataset.columns]
    fields += [pa.field(name, pa.string()) for name in extras]
    return pa.schema(fields)


@dataclass
class Bucket:
    """One resolved bucket: unique rows, and rows whose key has conflicting values."""

    rows: pa.Table
    conflicts: pd.DataFrame
    exact_duplicates: int


KEY_HASH = "__key_hash"
ROW_HASH = "__row_hash"


class KeySpool:
    """Spreads rows over buckets by key hash so each bucket fits in memory for exact dedup.

    Each row carries a 64-bit hash of its natural key and one of the whole row, so a bucket
    is resolved on two integer columns; key conflicts found by hash are confirmed on the
    key values themselves.
    """

    def __init__(
        self, schema: pa.Schema, key: tuple[str, ...], expected_rows: int, bucket_rows: int
    ) -> None:
        self.schema = schema.append(pa.field(KEY_HASH, pa.uint64())).append(
            pa.field(ROW_HASH, pa.uint64())
        )
        self.key = list(key)
        self.buckets = max(1, math.ceil(expected_rows / bucket_rows))
        # Under the run's scratch root: swept by the next run if this process is killed.
        self.folder = Path(scratch_dir("spool-"))
        self._writers: list[ipc.RecordBatchStreamWriter | None] = [None] * self.buckets

    def _path(self, bucket: int) -> Path:
        return self.folder / f"bucket-{bucket:05d}.arrows"

    def add(self, frame: pd.DataFrame) -> None:
        """Route validated rows to their buckets."""
        key_hash = pd.util.hash_pandas_object(frame[self.key], index=False).to_numpy()
        row_hash = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        table = pa.Table.from_pandas(
            frame.assign(**{KEY_HASH: key_hash, ROW_HASH: row_hash}),
            schema=self.schema,
            preserve_index=False,
        )
        if self.buckets == 1:
            self._write(0, table)
            return
        targets = key_hash % np.uint64(self.buckets)
        for bucket in np.unique(targets):
            self._write(int(bucket), table.filter(pa.array(targets == bucket)))

    def _write(self, bucket: int, table: pa.Table) -> None:
        writer = self._writers[bucket]
        if writer is None:
            writer = ipc.new_stream(str(self._path(bucket)), self.schema)
            self._writers[bucket] = writer
        writer.write_table(table)

    def resolve(self) -> Iterator[Bucket]:
        """Each bucket with exact duplicates dropped and conflicting keys set apart."""
        for writer in self._writers:
            if writer is not None:
                writer.close()
        for bucket, writer in enumerate(self._writers):
            if writer is None:
                continue
            with ipc.open_stream(str(self._path(bucket))) as reader:
                table = reader.read_all()
            self._path(bucket).unlink()
            yield self._resolve(table)

    def _resolve(self, table: pa.Table) -> Bucket:
        hashes = pd.DataFrame(
            {
                "key": table.column(KEY_HASH).to_numpy(),
                "row": table.column(ROW_HASH).to_numpy(),
            }
        )
        exact = hashes.duplicated(keep="first").to_numpy()
        unique = np.flatnonzero(~exact)
        shared = hashes.iloc[unique].duplicated(subset="key", keep=False).to_numpy()
        rows = table.drop_columns([KEY_HASH, ROW_HASH])
        suspects = rows.take(pa.array(unique[shared])).to_pandas()
        conflicting = suspects.duplicated(subset=self.key, keep=False).to_numpy()
        kept = unique[~np.isin(unique, unique[shared][conflicting])]
        return Bucket(
            rows=rows.take(pa.array(kept)),
            conflicts=suspects.loc[conflicting],
            exact_duplicates=int(exact.sum()),
        )

    def close(self) -> None:
        """Drop the spool files."""
        for writer in self._writers:
            if writer is not None:
                with contextlib.suppress(pa.ArrowInvalid):
                    writer.close()
        shutil.rmtree(self.folder, ignore_errors=True)
