"""Exact dedup in bounded memory: rows hashed by natural key into local buckets."""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc

from flows.catalog import Dataset, Kind

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


class KeySpool:
    """Spreads rows over buckets by key hash so each bucket fits in memory for exact dedup."""

    def __init__(
        self, schema: pa.Schema, key: tuple[str, ...], expected_rows: int, bucket_rows: int
    ) -> None:
        self.schema = schema
        self.key = list(key)
        self.buckets = max(1, math.ceil(expected_rows / bucket_rows))
        self._dir = tempfile.TemporaryDirectory(prefix="energy-pipeline-spool-")
        self._writers: list[ipc.RecordBatchStreamWriter | None] = [None] * self.buckets

    def _path(self, bucket: int) -> Path:
        return Path(self._dir.name) / f"bucket-{bucket:05d}.arrows"

    def add(self, frame: pd.DataFrame) -> None:
        """Route validated rows to their buckets."""
        table = pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False)
        if self.buckets == 1:
            self._write(0, table)
            return
        hashes = pd.util.hash_pandas_object(frame[self.key], index=False).to_numpy()
        targets = hashes % np.uint64(self.buckets)
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
        frame = table.to_pandas()
        exact = frame.duplicated(keep="first").to_numpy()
        unique = frame.loc[~exact]
        conflicting = unique.duplicated(subset=self.key, keep=False).to_numpy()
        kept = np.flatnonzero(~exact)[~conflicting]
        return Bucket(
            rows=table.take(pa.array(kept)),
            conflicts=unique.loc[conflicting],
            exact_duplicates=int(exact.sum()),
        )

    def close(self) -> None:
        """Drop the spool files."""
        for writer in self._writers:
            if writer is not None:
                with contextlib.suppress(pa.ArrowInvalid):
                    writer.close()
        self._dir.cleanup()
