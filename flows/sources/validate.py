"""Validate one chunk of source rows: normalise, check with Pandera, split good from bad."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa

from flows.sources.catalog import MASK_MARKER, Column, Dataset, Kind
from flows.sources.schemas import INSTANT_DTYPE, partition_schema

REASON = "_reason"
MAX_PASSES = 3
NUMERIC_TYPES = frozenset({"int", "integer", "long", "number", "double", "float", "decimal"})
_NUMBER_TEXT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


@dataclass
class ChunkResult:
    """Rows that passed (lake types) and rows that failed (as received, with a reason).

    `rules` counts rejected rows per failed rule (`column: rule`, without the value), so a
    partition can name its dominant reason.
    """

    good: pd.DataFrame
    bad: pd.DataFrame
    rules: Counter[str] = field(default_factory=Counter)


class CodeNotRestorable(ValueError):
    """A code column served as a number that no code of its known width can come from."""

    def __init__(self, column: str, value: object, width: int, why: str) -> None:
        self.column, self.value, self.width = column, value, width
        super().__init__(
            f"{column}: the portal serves this code as a number and {value!r} cannot be "
            f"restored to a {width}-digit code ({why}); a code never loses its zeros: "
            "fix the portal's schema or the catalog's width"
        )


def normalise(dataset: Dataset, frame: pd.DataFrame) -> pd.DataFrame:
    """Canonical names, every known column present, text kept as text, extra columns as text."""
    frame = frame.rename(columns={c: dataset.canonical(c) for c in frame.columns})
    known = dataset.column_map
    out: dict[str, pd.Series] = {}
    for name, column in known.items():
        values = frame[name] if name in frame.columns else pd.Series(None, index=frame.index)
        out[name] = _prepare(values, column.kind)
    for name in frame.columns:
        if name not in known:
            out[name] = _as_text(frame[name])
    return pd.DataFrame(out, index=frame.index)


def _prepare(values: pd.Series, kind: Kind) -> pd.Series:
    if kind in (Kind.CODE, Kind.TEXT):
        return _as_text(values)
    if kind is Kind.YEAR and values.dtype.kind not in "iuf":
        text = _as_text(values)
        return text.str.slice(0, 4).where(text.str.fullmatch(r"\d{4}(-.*)?").fillna(False), text)
    return values


def _as_text(values: pd.Series) -> pd.Series:
    """Text as pandas strings; numbers that arrived as JSON numbers written without '.0'."""
    if values.dtype == object:
        values = values.map(_number_as_text, na_action="ignore")
    elif values.dtype.kind == "f":
        return values.map(_number_as_text, na_action="ignore").astype("str")
    elif values.dtype.kind in "iu":
        return values.astype("str")
    text = values.astype("str")
    return text.where(text != "", None)


def _number_as_text(value: object) -> object:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def restore_codes(
    dataset: Dataset, frame: pd.DataFrame, declared: Mapping[str, str]
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Codes of known width that a portal typed as numbers, written back as codes.

    A code column is restored when the portal declares it numeric (`declared`: source field
    -> declared type, e.g. `integer`, `int`, `double`) or when its values arrive as numbers:
    1 -> '01', 1001 -> '01001', 1.0 -> '01'. Text served for a column declared as text is
    never touched. Returns the frame (source names) and, per restored column, the rows whose
    code was rebuilt from a number. Raises CodeNotRestorable for a fractional, negative or
    too wide number.
    """
    restored: dict[str, int] = {}
    changed: dict[str, pd.Series] = {}
    known = dataset.column_map
    for source in frame.columns:
        column = known.get(dataset.canonical(source))
        if column is None or column.kind is not Kind.CODE or column.width is None:
            continue
        values = frame[source]
        typed = str(declared.get(source, "")).lower() in NUMERIC_TYPES
        if values.dtype.kind not in "iuf" and not typed and values.dtype != object:
            continue  # text declared and served as text: never cast
        count = 0

        def one(value: object, column: Column = column, typed: bool = typed) -> object:
            nonlocal count
            code = _code_of(value, column, typed)
            if code is None:
                return value
            count += 1
            return code

        rebuilt = values.astype(object).map(one, na_action="ignore")
        if count:
            restored[column.name] = count
            changed[source] = rebuilt.astype("str")
    if changed:
        frame = frame.assign(**changed)
    return frame, restored


def _code_of(value: object, column: Column, typed: bool) -> str | None:
    """The code a served number stands for; None when the value is not a number to restore."""
    width = column.width or 0
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        number: float = int(value)
    elif isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return None
    elif isinstance(value, str) and typed and _NUMBER_TEXT.fullmatch(value.strip()):
        text = value.strip()
        number = int(text) if text.isdigit() else float(text)
    else:
        return None
    if isinstance(number, float):
        if not math.isfinite(number) or not number.is_integer():
            raise CodeNotRestorable(column.name, value, width, "not a whole number")
        number = int(number)
    if number < 0:
        raise CodeNotRestorable(column.name, value, width, "negative")
    code = column.code_from_number(int(number))
    if code is None:
        raise CodeNotRestorable(column.name, value, width, "more digits than the width")
    return code


def validate_chunk(dataset: Dataset, year: int, frame: pd.DataFrame) -> ChunkResult:
    """Split a normalised chunk into valid rows (typed) and rejected rows (with reasons).

    Never raises on a row's values: a null in a column that is not nullable is the reason
    `<column>: missing`; a value that does not parse or fails a rule is named with its rule.
    """
    raw = frame
    reasons = _Reasons()
    frame = _parse_types(dataset, frame, reasons)
    for column in dataset.columns:
        if not column.nullable:  # absent, null or empty as received (not a value that broke)
            received = raw[column.name]
            absent = (received.isna() | (received.astype(object) == "")).to_numpy()
            reasons.add(absent, frame.index, f"{column.name}: missing")
    candidate = frame.drop(index=reasons.labels())
    schema = partition_schema(dataset.name, year)
    for _ in range(MAX_PASSES):
        try:
            valid = schema.validate(candidate, lazy=True)
            break
        except pa.errors.SchemaErrors as errors:
            failed = reasons.add_failures(errors.failure_cases, raw)
            if not failed:
                raise
            candidate = candidate.drop(index=failed)
    else:
        valid = schema.validate(candidate)
    valid = _mask_secret(dataset, valid)
    labels = [label for label in raw.index if label in reasons.rows]
    bad = raw.loc[labels]
    bad = pd.DataFrame({name: _as_text(bad[name]) for name in bad.columns}, index=bad.index)
    bad[REASON] = pd.Series([reasons.text(label) for label in labels], index=bad.index, dtype=str)
    return ChunkResult(good=valid, bad=bad, rules=reasons.count())


class _Reasons:
    """Why each rejected row was rejected: (rule, text) pairs by row label, first seen first."""

    def __init__(self) -> None:
        self.rows: dict[object, dict[str, str]] = {}

    def labels(self) -> list[object]:
        return list(self.rows)

    def note(self, label: object, rule: str, text: str) -> None:
        self.rows.setdefault(label, {}).setdefault(rule, text)

    def add(
        self, mask: np.ndarray, index: pd.Index, rule: str, values: pd.Series | None = None
    ) -> None:
        """`rule` for the rows of `mask`; with `values`, each row's value follows the rule."""
        if not mask.any():
            return
        labels = index[mask]
        shown = [None] * len(labels) if values is None else [_show(v) for v in values[mask]]
        for label, value in zip(labels, shown, strict=True):
            self.note(label, rule, rule if value is None else f"{rule}: {value}")

    def add_failures(self, failures: pd.DataFrame, raw: pd.DataFrame) -> list[object]:
        """Pandera's row failures, each with the value as received; returns their rows."""
        rows = failures.dropna(subset=["index"])
        labels: list[object] = []
        for column, check, case, label in zip(
            rows["column"], rows["check"], rows["failure_case"], rows["index"], strict=True
        ):
            received = raw.at[label, column] if column in raw.columns else None
            value = _show(received) if _show(received) is not None else _show(case)
            if check == "not_nullable" or value is None:
                rule = text = f"{column}: missing"
            else:
                rule = f"{column}: {check} failed"
                text = f"{rule} for {value}"
            self.note(label, rule, text)
            labels.append(label)
        return list(dict.fromkeys(labels))

    def text(self, label: object) -> str:
        return "; ".join(self.rows[label].values())

    def count(self) -> Counter[str]:
        return Counter(rule for rules in self.rows.values() for rule in rules)


def _show(value: object) -> str | None:
    """A failing value as a reader would write it; None for a null."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float | np.floating) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    text = str(value)
    return text if text.strip() else repr(text)


def _parse_types(dataset: Dataset, frame: pd.DataFrame, reasons: _Reasons) -> pd.DataFrame:
    """Numbers and instants parsed; values that do not parse are reasons to reject the row."""
    frame = frame.copy(deep=False)
    for column in dataset.columns:
        if column.kind in (Kind.CODE, Kind.TEXT):
            continue
        source = frame[column.name]
        if column.kind is Kind.INSTANT:
            parsed = pd.to_datetime(source, utc=True, format="ISO8601", errors="coerce")
            problem = "not an ISO 8601 instant"
        else:
            parsed = pd.to_numeric(source.replace("", None), errors="coerce")
            parsed = parsed.astype("float64")
            problem = "not a number"
        broken = (parsed.isna() & source.notna() & (source != "")).to_numpy()
        reasons.add(broken, frame.index, f"{column.name}: {problem}", source)
        if column.kind in (Kind.INT, Kind.YEAR):
            fractional = (parsed.notna() & (parsed % 1 != 0)).to_numpy()
            reasons.add(fractional, frame.index, f"{column.name}: not an integer", source)
            broken = broken | fractional
        if broken.any():
            parsed = parsed.mask(broken)
        frame[column.name] = parsed.astype(
            INSTANT_DTYPE
            if column.kind is Kind.INSTANT
            else "Int64"
            if column.kind in (Kind.INT, Kind.YEAR)
            else "float64"
        )
    return frame


def _mask_secret(dataset: Dataset, valid: pd.DataFrame) -> pd.DataFrame:
    """ORE statistical secrecy: a masked row's measures are unknown (null), never 0."""
    if not dataset.masked_measures:
        return valid
    masked = valid[MASK_MARKER].isna().to_numpy()
    if not masked.any():
        return valid
    valid = valid.copy()
    for name in dataset.masked_measures:
        valid[name] = valid[name].mask(masked, np.nan)
    return valid
