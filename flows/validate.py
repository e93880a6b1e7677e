"""Validate one chunk of source rows: normalise, check with Pandera, split good from bad."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa

from flows.catalog import Dataset, Kind
from flows.schemas import INSTANT_DTYPE, partition_schema

REASON = "_reason"
MAX_PASSES = 3


@dataclass
class ChunkResult:
    """Rows that passed (lake types) and rows that failed (as received, with a reason)."""

    good: pd.DataFrame
    bad: pd.DataFrame


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


def validate_chunk(dataset: Dataset, year: int, frame: pd.DataFrame) -> ChunkResult:
    """Split a normalised chunk into valid rows (typed) and rejected rows (with reasons)."""
    raw = frame
    reasons = pd.Series(None, index=frame.index, dtype=object)
    frame, type_reasons = _parse_types(dataset, frame)
    reasons = reasons.combine_first(type_reasons)
    candidate = frame.loc[reasons.isna()]
    schema = partition_schema(dataset.name, year)
    for _ in range(MAX_PASSES):
        try:
            valid = schema.validate(candidate, lazy=True)
            break
        except pa.errors.SchemaErrors as errors:
            row_reasons = _row_reasons(errors.failure_cases)
            if row_reasons.empty:
                raise
            reasons = reasons.combine_first(row_reasons)
            candidate = candidate.drop(index=row_reasons.index)
    else:
        valid = schema.validate(candidate)
    valid = _mask_secret(dataset, valid)
    bad = raw.loc[reasons.dropna().index].astype("str").assign(**{REASON: reasons.dropna()})
    return ChunkResult(good=valid, bad=bad)


def _parse_types(dataset: Dataset, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Numbers and instants parsed; values that do not parse are reasons to reject the row."""
    reasons = pd.Series(None, index=frame.index, dtype=object)
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
        if column.kind in (Kind.INT, Kind.YEAR):
            fractional = (parsed.notna() & (parsed % 1 != 0)).to_numpy()
            _note(reasons, fractional, f"{column.name}: not an integer: ", source)
            broken = broken | fractional
        _note(reasons, broken, f"{column.name}: {problem}: ", source)
        if broken.any():
            parsed = parsed.mask(broken)
        frame[column.name] = parsed.astype(
            INSTANT_DTYPE
            if column.kind is Kind.INSTANT
            else "Int64"
            if column.kind in (Kind.INT, Kind.YEAR)
            else "float64"
        )
    return frame, reasons


def _note(reasons: pd.Series, rows: np.ndarray, prefix: str, values: pd.Series) -> None:
    """Record a reason for the given rows, keeping the first reason a row got."""
    if rows.any():
        fresh = prefix + values[rows].astype("str")
        reasons[rows] = reasons[rows].combine_first(fresh)


def _row_reasons(failures: pd.DataFrame) -> pd.Series:
    rows = failures.dropna(subset=["index"])
    if rows.empty:
        return pd.Series(dtype=object)
    index = rows["index"].astype("int64").to_numpy()
    text = (
        rows["column"].astype("str")
        + ": "
        + rows["check"].astype("str")
        + " failed for "
        + rows["failure_case"].astype("str")
    )
    return text.groupby(index).agg(lambda parts: "; ".join(dict.fromkeys(parts)))


def _mask_secret(dataset: Dataset, valid: pd.DataFrame) -> pd.DataFrame:
    """ORE statistical secrecy: a masked row's measures are unknown (null), never 0."""
    if not dataset.masked_measures:
        return valid
    masked = valid["conso_totale_mwh"].isna().to_numpy()
    if not masked.any():
        return valid
    valid = valid.copy()
    for name in dataset.masked_measures:
        valid[name] = valid[name].mask(masked, np.nan)
    return valid
