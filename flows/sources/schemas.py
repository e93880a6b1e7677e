"""Pandera schemas built from the catalog: types, value rules and partition membership."""

from __future__ import annotations

from functools import lru_cache

import pandas as pd
import pandera.pandas as pa

from flows.lake.layout import partition_label
from flows.sources.catalog import Column, Dataset, Kind, get_dataset

PARIS = "Europe/Paris"
INSTANT_DTYPE = pd.DatetimeTZDtype("us", "UTC")

_DTYPES: dict[Kind, object] = {
    Kind.CODE: str,
    Kind.TEXT: str,
    Kind.FLOAT: "float64",
    Kind.INT: "Int64",
    Kind.YEAR: "Int64",
    Kind.INSTANT: INSTANT_DTYPE,
}


def _checks(column: Column, year: int, dataset: Dataset) -> list[pa.Check]:
    checks: list[pa.Check] = []
    if column.min_value is not None:
        checks.append(pa.Check.ge(column.min_value))
    if column.pattern:
        checks.append(pa.Check.str_matches(column.pattern))
    if column.allowed:
        checks.append(pa.Check.isin(column.allowed))
    if column.name == dataset.partition_field:
        checks.append(_in_partition(column.kind, year))
    return checks


def _in_partition(kind: Kind, year: int) -> pa.Check:
    if kind is Kind.INSTANT:
        return pa.Check(
            lambda s: s.dt.tz_convert(PARIS).dt.year == year,
            name=f"local_year_is_{year}",
            error=f"instant outside the partition's Europe/Paris year {year}",
        )
    return pa.Check.eq(year, name=f"year_is_{year}")


@lru_cache(maxsize=64)
def partition_schema(dataset_name: str, year: int) -> pa.DataFrameSchema:
    """The schema a partition's rows must satisfy; unknown columns are allowed (drift)."""
    dataset = get_dataset(dataset_name)
    columns = {
        c.name: pa.Column(
            _DTYPES[c.kind],
            checks=_checks(c, year, dataset),
            nullable=c.nullable,
            coerce=c.kind is not Kind.INSTANT,
            required=True,
        )
        for c in dataset.columns
    }
    return pa.DataFrameSchema(columns, strict=False, name=partition_label(dataset_name, year))
