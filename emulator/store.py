"""What is served: partitions with their data faults, dataset state, and query selections."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .sources import ARROW_TYPES, Source, scale_measures
from .specs import DatasetSpec, Field, natran_name


@dataclass(frozen=True)
class Mods:
    """Changes applied on top of a partition's source rows (revisions and data faults)."""

    factor: float = 1.0
    dropped: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()
    text_columns: tuple[str, ...] = ()
    cells: tuple[tuple[int, str, Any], ...] = ()
    appended: tuple[int, ...] = ()


class Partition:
    """One (dataset, year) partition as served: source rows plus `Mods` (immutable)."""

    def __init__(self, spec: DatasetSpec, year: int, source: Source, mods: Mods | None = None):
        self.spec = spec
        self.year = year
        self.source = source
        self.mods = mods or Mods()

    @property
    def num_rows(self) -> int:
        """Rows served, appended duplicates included."""
        return self.source.num_rows + len(self.mods.appended)

    def with_mods(self, **changes: Any) -> Partition:
        """A copy with some `Mods` fields replaced."""
        return Partition(self.spec, self.year, self.source, replace(self.mods, **changes))

    def fields(self) -> list[Field]:
        """Served fields (base names), in order, with kinds after data faults."""
        have = set(self.source.column_names)
        out = []
        for f in self.spec.fields:
            if f.name not in have or f.name in self.mods.dropped:
                continue
            out.append(replace(f, kind="text") if f.name in self.mods.text_columns else f)
        out.extend(Field(name, "text") for name, _ in self.mods.extra)
        return out

    def column_names(self) -> list[str]:
        """Served column names (base names), in order."""
        return [f.name for f in self.fields()]

    def take(self, positions: np.ndarray, columns: Sequence[str] | None = None) -> pa.Table:
        """The served rows at `positions` (appended rows follow the source rows)."""
        pos = np.asarray(positions, dtype=np.int64)
        wanted = list(columns) if columns is not None else self.column_names()
        extra = dict(self.mods.extra)
        base_cols = [c for c in wanted if c not in extra]
        n = self.source.num_rows
        src = pos
        if self.mods.appended:
            app = np.asarray(self.mods.appended, dtype=np.int64)
            src = np.where(pos < n, pos, app[np.clip(pos - n, 0, len(app) - 1)])
        table = self.source.take(src, base_cols)
        table = scale_measures(table, self.spec.measures, self.mods.factor)
        for name in self.mods.text_columns:
            if name in base_cols:
                idx = table.column_names.index(name)
                table = table.set_column(idx, name, pc.cast(table[name], pa.string()))
        for row, name, value in self.mods.cells:
            if name not in base_cols:
                continue
            mask = pos == row
            if mask.any():
                idx = table.column_names.index(name)
                col = table[name]
                new = pc.if_else(pa.array(mask), pa.scalar(value, col.type), col)
                table = table.set_column(idx, name, new)
        for name, value in extra.items():
            if name in wanted:
                table = table.append_column(name, pa.array([value] * len(pos), pa.string()))
        return table.select(wanted)

    def constant_columns(self) -> set[str]:
        """Columns holding one value on every row (the year of annual partitions)."""
        if self.spec.partition != "annee" or any(c == "annee" for _, c, _ in self.mods.cells):
            return set()
        return {"annee"}

    def take_all(self) -> pa.Table:
        """Every served row."""
        return self.take(np.arange(self.num_rows))

    def column(self, name: str) -> pa.Array:
        """One full served column."""
        col = self.take(np.arange(self.num_rows), [name])[name]
        return col.combine_chunks()


def union_fields(parts: Sequence[Partition]) -> list[Field]:
    """Fields of several partitions: spec order, then extras; conflicting kinds become text."""
    merged: dict[str, Field] = {}
    for part in parts:
        for f in part.fields():
            old = merged.get(f.name)
            if old is None:
                merged[f.name] = f
            elif old.kind != f.kind:
                merged[f.name] = replace(old, kind="text")
    spec_order = [f.name for f in parts[0].spec.fields] if parts else []
    ordered = [merged[n] for n in spec_order if n in merged]
    return ordered + [f for n, f in merged.items() if n not in spec_order]


def conform(table: pa.Table, fields: Sequence[Field]) -> pa.Table:
    """Give a partition's rows the columns and types of `fields` (missing ones null)."""
    arrays = []
    for f in fields:
        target = ARROW_TYPES[f.kind]
        if f.name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, target))
            continue
        col = table[f.name]
        if col.type != target:
            col = pc.cast(col, target)
        arrays.append(col)
    return pa.table(arrays, names=[f.name for f in fields])


def _now_signal(previous: datetime) -> datetime:
    now = datetime.now(UTC).replace(microsecond=0)
    return max(now, previous + timedelta(seconds=1))


class DatasetState:
    """A dataset's partitions, change signals and naming variant."""

    def __init__(self, spec: DatasetSpec, sources: dict[int, Source], signal: datetime):
        self.spec = spec
        self.base = {y: Partition(spec, y, src) for y, src in sorted(sources.items())}
        self.partitions = dict(self.base)
        self.initial_signal = signal
        self.data_processed = signal
        self.modified = signal
        self.natran = False
        self.version = 0
        # Seeded representation choices of conformance mode (conformance.DatasetConformance).
        self.conformance: Any = None

    def reset(self) -> None:
        """Back to the fixture data, signals and naming."""
        self.partitions = dict(self.base)
        self.data_processed = self.initial_signal
        self.modified = self.initial_signal
        self.natran = False
        self.version += 1

    def bump(self, data: bool = True) -> None:
        """Move the change signal (and `modified`); `data=False` moves only `modified`."""
        self.modified = _now_signal(self.modified)
        if data:
            self.data_processed = _now_signal(self.data_processed)
            self.modified = max(self.modified, self.data_processed)
        self.version += 1

    def set_partition(self, year: int, part: Partition) -> None:
        """Replace what is served for one year."""
        self.partitions[year] = part
        self.version += 1

    @property
    def count(self) -> int:
        """Rows served over all partitions."""
        return sum(p.num_rows for p in self.partitions.values())

    def out_name(self, name: str) -> str:
        """Served spelling of a base column name."""
        return natran_name(name) if self.natran else name

    def base_name(self, name: str) -> str | None:
        """Base column name for a served name (None if not served under that name)."""
        for f in self.fields():
            if self.out_name(f.name) == name:
                return f.name
        return None

    def fields(self, parts: Sequence[Partition] | None = None) -> list[Field]:
        """Union of `parts` fields; default: the dataset schema, minus columns dropped anywhere."""
        if parts is not None:
            return union_fields(parts)
        every = list(self.partitions.values())
        dropped = {name for p in every for name in p.mods.dropped}
        return [f for f in union_fields(every) if f.name not in dropped]

    def offsets(self) -> dict[int, int]:
        """Global row number of each partition's first row (dataset order = year order)."""
        out, total = {}, 0
        for year, part in sorted(self.partitions.items()):
            out[year] = total
            total += part.num_rows
        return out


# Per-partition row filter: None or True (all rows), False (none) or a boolean array.
Mask = Callable[[Partition], np.ndarray | bool | None]


class Selection:
    """The rows a query selects, in order, addressable by rank in O(page)."""

    def __init__(
        self,
        state: DatasetState,
        parts: list[Partition],
        idx: list[np.ndarray | None],
        order: np.ndarray | None = None,
    ):
        self.state = state
        self.parts = parts
        self.idx = idx
        self.order = order
        counts = [p.num_rows if i is None else len(i) for p, i in zip(parts, idx, strict=True)]
        self.cum = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        offsets = state.offsets()
        self.offsets = [offsets.get(p.year, 0) for p in parts]
        touched = [p for p, c in zip(parts, counts, strict=True) if c > 0] or parts
        self.fields = state.fields(touched) if touched else state.fields()

    def __len__(self) -> int:
        return int(self.cum[-1])

    @property
    def nbytes(self) -> int:
        """Memory held by the index arrays."""
        arrays = [i for i in self.idx if i is not None]
        if self.order is not None:
            arrays.append(self.order)
        return sum(a.nbytes for a in arrays)

    def _locate(self, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        part_no = np.searchsorted(self.cum[1:], ranks, side="right")
        local = ranks - self.cum[part_no]
        return part_no, local

    def slice(self, start: int, stop: int, columns: Sequence[str]) -> tuple[pa.Table, np.ndarray]:
        """Rows ranked [start, stop): table (conformed to `columns`) and global row numbers."""
        stop = min(stop, len(self))
        start = min(start, stop)
        fields = [f for f in self.fields if f.name in set(columns)]
        fields.sort(key=lambda f: list(columns).index(f.name))
        ranks = self.order[start:stop] if self.order is not None else np.arange(start, stop)
        part_no, local = self._locate(ranks)
        if len(ranks) == 0:
            return conform(pa.table({}).slice(0, 0), fields), np.empty(0, np.int64)
        tables, where, rownum = [], [], np.empty(len(ranks), dtype=np.int64)
        for p in np.unique(part_no):
            sel = np.flatnonzero(part_no == p)
            idx = self.idx[p]
            pos = local[sel] if idx is None else idx[local[sel]]
            part = self.parts[p]
            names = [f.name for f in fields if f.name in set(part.column_names())]
            tables.append(conform(part.take(pos, names), fields))
            where.append(sel)
            rownum[sel] = self.offsets[p] + pos
        if len(tables) == 1:
            return tables[0], rownum
        table = pa.concat_tables(tables)
        back = np.argsort(np.concatenate(where), kind="stable")
        return table.take(pa.array(back)), rownum

    def batches(self, size: int, columns: Sequence[str]) -> Iterator[pa.Table]:
        """All selected rows, in order, `size` rows at a time."""
        for start in range(0, len(self), size):
            yield self.slice(start, start + size, columns)[0]

    def column(self, name: str, ordered: bool = False) -> pa.Array:
        """One column over the selection (selection order if `ordered`)."""
        kind = next((f.kind for f in self.fields if f.name == name), "text")
        arrays = []
        for part, idx in zip(self.parts, self.idx, strict=True):
            if name in part.column_names():
                if idx is None:
                    col = part.column(name)
                else:
                    col = part.take(idx, [name])[name].combine_chunks()
            else:
                col = pa.nulls(part.num_rows if idx is None else len(idx), ARROW_TYPES[kind])
            if col.type != ARROW_TYPES[kind]:
                col = pc.cast(col, ARROW_TYPES[kind])
            arrays.append(col)
        if not arrays:
            return pa.array([], ARROW_TYPES[kind])
        full = pa.concat_arrays(arrays)
        if ordered and self.order is not None:
            full = full.take(pa.array(self.order))
        return full


def select_rows(
    state: DatasetState,
    mask: Mask,
    sort: Sequence[tuple[str, bool]] = (),
    years: Sequence[int] | None = None,
) -> Selection:
    """Evaluate a per-partition mask, then order by `sort` [(base name, descending)]."""
    parts = [p for y, p in sorted(state.partitions.items()) if years is None or y in years]
    idx: list[np.ndarray | None] = []
    for part in parts:
        m = mask(part)
        if m is None or m is True:
            idx.append(None)
        elif m is False:
            idx.append(np.empty(0, dtype=np.int64))
        else:
            idx.append(None if bool(m.all()) else np.flatnonzero(m))
    selection = Selection(state, parts, idx)
    if sort and len(selection):
        keys = pa.table({f"k{i}": selection.column(name) for i, (name, _) in enumerate(sort)})
        order = pc.sort_indices(
            keys,
            sort_keys=[
                (f"k{i}", "descending" if desc else "ascending") for i, (_, desc) in enumerate(sort)
            ],
        )
        selection.order = order.to_numpy()
    return selection


class LRU:
    """A small thread-safe least-recently-used cache, bounded in entries and in bytes."""

    def __init__(self, size: int = 16, max_bytes: int = 256 * 2**20) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        """Cached value or None."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key][0]
            return None

    def put(self, key: Hashable, value: Any) -> None:
        """Store a value (weighed by its `nbytes`), evicting the least recently used."""
        weight = int(getattr(value, "nbytes", 0))
        with self._lock:
            if key in self._data:
                self._bytes -= self._data.pop(key)[1]
            self._data[key] = (value, weight)
            self._bytes += weight
            while len(self._data) > 1 and (
                len(self._data) > self.size or self._bytes > self.max_bytes
            ):
                self._bytes -= self._data.popitem(last=False)[1][1]

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._data.clear()
            self._bytes = 0
