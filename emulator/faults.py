"""Fault injection: transport faults armed per request, data faults applied to partitions."""

from __future__ import annotations

import itertools
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .specs import NUMERIC_KINDS
from .store import DatasetState, Partition

TRANSPORT_FAULTS = ("status", "quota", "reset", "truncate", "error_in_body", "slow")
DATA_FAULTS = (
    "extra_column",
    "missing_column",
    "non_numeric",
    "negative",
    "conflicting_duplicate",
    "exact_duplicate",
)
REQUEST_KINDS = ("metadata", "records", "export", "lines", "agg")
_ids = itertools.count(1)


@dataclass
class TransportFault:
    """A transport fault applied to the next `times` matching requests (None: forever)."""

    # dataset (short name) and request (metadata, records, export, lines, agg) restrict
    # matching, None matches anything. status/retry_after serve `status`; fraction is the
    # share of the body (or of a stream's rows) sent before reset, truncate or error_in_body;
    # delay (before the response starts) and chunk_delay (between chunks) serve `slow`.
    # `quota` is a 429 in the portal's real shape, without any hint header: on ODS a daily
    # quota whose reset_time is `retry_after` seconds away, on Data Fair its French text.

    kind: str
    dataset: str | None = None
    request: str | None = None
    times: int | None = 1
    status: int = 503
    retry_after: float = 1.0
    fraction: float = 0.5
    delay: float = 0.0
    chunk_delay: float = 0.0
    message: str = "Streaming interrupted: an internal error occurred while exporting the data."
    id: int = field(default_factory=lambda: next(_ids))
    hits: int = 0

    def __post_init__(self) -> None:
        if self.kind not in TRANSPORT_FAULTS:
            raise ValueError(f"unknown transport fault {self.kind!r}; one of {TRANSPORT_FAULTS}")
        if self.request in ("any", "*", ""):
            self.request = None
        if self.request is not None and self.request not in REQUEST_KINDS:
            raise ValueError(f"unknown request kind {self.request!r}; one of {REQUEST_KINDS}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError("fraction must be within [0, 1]")

    def matches(self, dataset: str | None, kind: str) -> bool:
        """True if this fault applies to a request of `kind` on `dataset`."""
        if self.dataset is not None and self.dataset != dataset:
            return False
        if self.request is not None and self.request != kind:
            return False
        return not (self.kind == "error_in_body" and kind != "export")

    def describe(self) -> dict[str, Any]:
        """JSON-ready description."""
        return asdict(self)


class FaultBoard:
    """Armed transport faults, consumed in arming order."""

    def __init__(self) -> None:
        self._faults: list[TransportFault] = []
        self._lock = threading.Lock()

    def add(self, fault: TransportFault) -> TransportFault:
        """Arm a fault."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, dataset: str | None, kind: str) -> TransportFault | None:
        """The first matching fault, counting one use (removed when used up)."""
        with self._lock:
            for fault in self._faults:
                if fault.times is not None and fault.times <= 0:
                    continue
                if fault.matches(dataset, kind):
                    fault.hits += 1
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def active(self) -> list[TransportFault]:
        """Faults still armed."""
        with self._lock:
            return list(self._faults)

    def clear(self) -> None:
        """Disarm everything."""
        with self._lock:
            self._faults.clear()


def _value_at(part: Partition, row: int, column: str) -> Any:
    return part.take(np.array([row]), [column])[column][0].as_py()


def _numeric_column(state: DatasetState, part: Partition, column: str | None) -> str:
    if column is None:
        return state.spec.measures[0]
    field = state.spec.field(column)
    if column not in part.column_names() or field is None or field.kind not in NUMERIC_KINDS:
        raise ValueError(f"{column!r} is not a numeric column served by {state.spec.short}")
    return column


def _typed(part: Partition, column: str, value: float) -> Any:
    kind = next(f.kind for f in part.fields() if f.name == column)
    if kind == "int":
        return round(value)
    return round(value, 3) if kind == "double" else value


def apply_data_fault(
    state: DatasetState,
    kind: str,
    year: int,
    *,
    column: str | None = None,
    row: int = 0,
    value: Any = None,
) -> dict[str, Any]:
    """Change what is served for (dataset, year); returns a description of the change."""
    if kind not in DATA_FAULTS:
        raise ValueError(f"unknown data fault {kind!r}; one of {DATA_FAULTS}")
    if year not in state.partitions:
        raise ValueError(f"{state.spec.short} has no partition for {year}")
    if column is not None:
        column = state.base_name(column) or column
    part = state.partitions[year]
    if not 0 <= row < part.num_rows:
        raise ValueError(f"row {row} out of range (partition has {part.num_rows} rows)")
    mods = part.mods
    if kind == "extra_column":
        name = column or "colonne_nouvelle"
        new = part.with_mods(extra=(*mods.extra, (name, "valeur" if value is None else str(value))))
    elif kind == "missing_column":
        if column is None or column not in part.column_names():
            raise ValueError(f"missing_column needs a served column, got {column!r}")
        new = part.with_mods(dropped=(*mods.dropped, column))
    elif kind == "non_numeric":
        name = _numeric_column(state, part, column)
        text = "n/a" if value is None else str(value)
        new = part.with_mods(
            text_columns=(*mods.text_columns, name), cells=(*mods.cells, (row, name, text))
        )
    elif kind == "negative":
        name = _numeric_column(state, part, column)
        current = _value_at(part, row, name)
        amount = value if value is not None else -abs(current) if current else -1.0
        new = part.with_mods(cells=(*mods.cells, (row, name, _typed(part, name, amount))))
    elif kind == "conflicting_duplicate":
        name = _numeric_column(state, part, column)
        current = _value_at(part, row, name)
        amount = value if value is not None else (current or 0) * 1.5 + 1
        position = part.num_rows
        new = part.with_mods(
            appended=(*mods.appended, row),
            cells=(*mods.cells, (position, name, _typed(part, name, amount))),
        )
    else:
        new = part.with_mods(appended=(*mods.appended, row))
    state.set_partition(year, new)
    return {"kind": kind, "dataset": state.spec.short, "year": year, "column": column, "row": row}
