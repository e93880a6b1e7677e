"""Served tables, built in memory from the bundled 2023 samples (deterministic, no writes)."""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from functools import cache

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .daily import build_national_daily, build_regional_daily
from .seed import read_sample
from .sources import ARROW_TYPES, Source, TableSource, scale_measures
from .specs import DATASETS, DatasetSpec
from .synthetic import SyntheticAdresse

SAMPLE_YEAR = 2023
DEFAULT_YEARS = (2021, 2022, 2023)


def year_factor(year: int) -> float:
    """Deterministic scale applied to the 2023 measures to derive another year."""
    return max(0.5, round(1.0 + 0.02 * (SAMPLE_YEAR - year), 4))


def _geo_json(text: str) -> str | None:
    if not text:
        return None
    return orjson.dumps(ast.literal_eval(text)).decode()


def typed_column(values: pd.Series, kind: str) -> pa.Array:
    """Convert sample strings to the Arrow type of a field kind ('' is null)."""
    empty = values == ""
    if kind in ("int", "year"):
        nums = pd.to_numeric(values.mask(empty), errors="coerce")
        ints = np.round(nums.to_numpy(dtype="float64", na_value=np.nan))
        mask = np.isnan(ints)
        return pa.array(np.where(mask, 0, ints).astype("int64"), pa.int64(), mask=mask)
    if kind == "double":
        nums = pd.to_numeric(values.mask(empty), errors="coerce").to_numpy(
            dtype="float64", na_value=np.nan
        )
        return pa.array(nums, pa.float64(), from_pandas=True)
    if kind in ("geo_point_2d", "geo_shape"):
        return pa.array([_geo_json(v) for v in values], pa.string())
    if kind == "datetime":
        stamps = pd.to_datetime(values.mask(empty), utc=True)
        return pa.array(stamps, ARROW_TYPES["datetime"])
    return pa.array([None if v == "" else v for v in values.tolist()], pa.string())


def _typed_table(spec: DatasetSpec, frame: pd.DataFrame) -> pa.Table:
    columns = {}
    for field in spec.fields:
        if field.name in frame.columns:
            columns[field.name] = typed_column(frame[field.name], field.kind)
    return pa.table(columns)


def _add_address_fields(table: pa.Table) -> pa.Table:
    """Add the portal-only `adresse` label and `tri_des_adresses` rank."""
    num = pc.cast(table["numero_de_voie"], pa.string())
    parts = [num, table["indice_de_repetition"], table["type_de_voie"], table["libelle_de_voie"]]
    label = pc.binary_join_element_wise(*parts, " ", null_handling="skip")
    order = pc.sort_indices(
        table,
        [
            ("code_commune", "ascending"),
            ("libelle_de_voie", "ascending"),
            ("numero_de_voie", "ascending"),
        ],
    ).to_numpy()
    rank = np.empty(len(order), dtype="int64")
    rank[order] = np.arange(1, len(order) + 1)
    table = table.append_column("adresse", label)
    return table.append_column("tri_des_adresses", pa.array(rank))


def _ordered(spec: DatasetSpec, table: pa.Table) -> pa.Table:
    names = [f.name for f in spec.fields if f.name in table.column_names]
    return table.select(names)


@cache
def sample_table(short: str) -> pa.Table:
    """The 2023 sample of one annual dataset, deduplicated and typed."""
    spec = DATASETS[short]
    table = _typed_table(spec, read_sample(spec.sample))
    if short == "adresse":
        table = _add_address_fields(table)
    return _ordered(spec, table)


def _set_year(table: pa.Table, year: int) -> pa.Table:
    idx = table.column_names.index("annee")
    return table.set_column(idx, "annee", pa.array(np.full(table.num_rows, year, dtype="int64")))


def _annual_partition(short: str, year: int) -> pa.Table:
    spec = DATASETS[short]
    table = _set_year(sample_table(short), year)
    if year == SAMPLE_YEAR:
        return table
    if short in ("nationale_annuelle", "regionale_annuelle"):
        return _odre_annual_year(table, year, spec)
    return scale_measures(table, spec.measures, year_factor(year))


def _odre_annual_year(table: pa.Table, year: int, spec: DatasetSpec) -> pa.Table:
    """Scale ODRE annual measures and keep totals consistent; past years are final."""
    factor = year_factor(year)
    table = scale_measures(table, spec.measures, factor)
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    gas = frame["consommation_brute_gaz_grtgaz"].fillna(0) + frame[
        "consommation_brute_gaz_terega"
    ].fillna(0)
    has_gas = frame["consommation_brute_gaz_grtgaz"].notna()
    frame["consommation_brute_gaz_totale"] = gas.where(has_gas)
    frame["consommation_brute_totale"] = frame["consommation_brute_electricite_rte"] + frame[
        "consommation_brute_gaz_totale"
    ].fillna(0)
    if year < SAMPLE_YEAR:
        for status in ("statut_grtgaz", "statut_terega", "statut_rte"):
            frame[status] = frame[status].where(frame[status].isna(), "Définitif")
    return pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False)


def partition_sources(
    years: Sequence[int] = DEFAULT_YEARS,
    *,
    adresse_rows: Mapping[int, int] | None = None,
    regional_daily_years: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, dict[int, Source]]:
    """All served partitions: dataset short name -> year -> row source."""
    years = tuple(sorted(set(years)))
    regional_years = (
        tuple(sorted(set(regional_daily_years))) if regional_daily_years is not None else years[-1:]
    )
    out: dict[str, dict[int, Source]] = {}
    annual = [short for short, spec in DATASETS.items() if spec.partition == "annee"]
    for short in annual:  # served from their 2023 sample, scaled for other years
        out[short] = {y: TableSource(_annual_partition(short, y)) for y in years}
    for year, rows in (adresse_rows or {}).items():
        out["adresse"][year] = SyntheticAdresse(
            sample_table("adresse"), year=year, num_rows=rows, seed=seed
        )
    out["adresse"] = dict(sorted(out["adresse"].items()))
    last = max(years)
    out["nationale_quotidienne"] = {
        y: TableSource(build_national_daily(y, seed=seed, latest=y == last)) for y in years
    }
    out["regionale_quotidienne"] = {
        y: TableSource(build_regional_daily(y, seed=seed, latest=y == last)) for y in regional_years
    }
    return out


def served_frame(table: pa.Table, kinds: Mapping[str, str]) -> pd.DataFrame:
    """An Arrow partition as pandas: nullable ints, str codes, geo fields as dicts."""
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    for name, kind in kinds.items():
        if kind in ("geo_point_2d", "geo_shape") and name in frame.columns:
            frame[name] = [orjson.loads(v) if isinstance(v, str) else None for v in frame[name]]
    return frame
