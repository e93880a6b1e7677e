"""Complete half-hourly ODRE series (national and regional), derived from the 2023 samples."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa

from .seed import numbers as _num
from .seed import read_sample as _read
from .sources import ARROW_TYPES

BASE_YEAR = 2023
TZ = "Europe/Paris"
HALF_HOUR = pd.Timedelta(minutes=30)
NATIONAL_STEM = "conso_quotidien_electricite_gaz_nationale"
REGIONAL_STEM = "conso_quotidien_electricite_gaz_regionale"
REGIONAL_ANNUAL_STEM = "conso_electricite_gaz_regionale"
NATIONAL_ANNUAL_STEM = "conso_annuelle_electricite_gaz_nationale"
NEGATIVE_REGION = "53"


def year_index(year: int) -> pd.DatetimeIndex:
    """UTC half-hours of the local (Europe/Paris) calendar year."""
    start = pd.Timestamp(f"{year}-01-01", tz=TZ).tz_convert("UTC")
    end = pd.Timestamp(f"{year + 1}-01-01", tz=TZ).tz_convert("UTC")
    return pd.date_range(start, end, freq="30min", inclusive="left")


def _factor(year: int) -> float:
    return max(0.5, round(1.0 + 0.02 * (BASE_YEAR - year), 4))


def _positions(stamps: pd.Series, index: pd.DatetimeIndex) -> np.ndarray:
    times = pd.to_datetime(stamps, utc=True)
    return ((times - index[0]) // HALF_HOUR).to_numpy(dtype="int64")


@lru_cache(maxsize=1)
def national_base() -> tuple[np.ndarray, np.ndarray]:
    """2023 national electricity and gas (NaN on :30 except gas-on-:30 days), MW."""
    frame = _read(NATIONAL_STEM)
    index = year_index(BASE_YEAR)
    n = len(index)
    pos = _positions(frame["date_heure"], index)
    keep = (pos >= 0) & (pos < n)
    elec = np.full(n, np.nan)
    gas = np.full(n, np.nan)
    elec[pos[keep]] = _num(frame["consommation_brute_electricite_rte"])[keep]
    gas[pos[keep]] = _num(frame["consommation_brute_gaz_totale"])[keep]
    half = (np.arange(n) % 2) == 1
    gas_half_days = _gas_half_days(index, pos[keep], gas[pos[keep]])
    elec = pd.Series(elec).interpolate(limit_direction="both").to_numpy(copy=True)
    gas = pd.Series(gas).interpolate(limit_direction="both").to_numpy(copy=True)
    local_days = index.tz_convert(TZ).normalize().tz_localize(None)
    on_half_day = np.isin(local_days.to_numpy(), gas_half_days)
    gas[half & ~on_half_day] = np.nan
    return elec, gas


def _gas_half_days(index: pd.DatetimeIndex, pos: np.ndarray, gas: np.ndarray) -> np.ndarray:
    """Local days whose :30 slots carry gas in the sample."""
    sel = pos[(pos % 2 == 1) & ~np.isnan(gas)]
    days = index[sel].tz_convert(TZ).normalize().tz_localize(None)
    return np.unique(days.to_numpy())


@lru_cache(maxsize=1)
def _national_terega_share() -> float:
    frame = _read(NATIONAL_ANNUAL_STEM)
    terega = _num(frame["consommation_brute_gaz_terega"])[0]
    total = _num(frame["consommation_brute_gaz_totale"])[0]
    return float(terega / total)


def _national_year(year: int) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray]:
    index = year_index(year)
    elec, gas = national_base()
    base = np.arange(len(index)) % len(elec)
    factor = _factor(year)
    return index, np.round(elec[base] * factor), np.round(gas[base] * factor)


def _int_array(values: np.ndarray) -> pa.Array:
    mask = np.isnan(values)
    return pa.array(np.where(mask, 0, values).astype("int64"), pa.int64(), mask=mask)


def _text_where(mask: np.ndarray, text: str) -> pa.Array:
    return pa.array([text if m else None for m in mask.tolist()], pa.string())


def _series_table(
    index: pd.DatetimeIndex,
    elec: np.ndarray,
    gas: np.ndarray,
    terega_share: float,
    *,
    latest: bool,
    flags: np.ndarray,
    prefix: dict[str, pa.Array] | None = None,
) -> pa.Table:
    """Assemble the ODRE daily columns for one series (gas split GRTgaz/Teréga)."""
    local = index.tz_convert(TZ)
    has_gas = ~np.isnan(gas)
    terega = np.where(has_gas, np.round(gas * terega_share), np.nan)
    grtgaz = gas - terega
    status = "Consolidé" if latest else "Définitif"
    has_terega = has_gas & (terega_share > 0)
    columns: dict[str, pa.Array] = {
        "date_heure": pa.array(index, ARROW_TYPES["datetime"]),
        **(prefix or {}),
        "date": pa.array(local.tz_localize(None).normalize().date, pa.date32()),
        "heure": pa.array(local.strftime("%H:%M"), pa.string()),
        "consommation_brute_gaz_grtgaz": _int_array(grtgaz),
        "statut_grtgaz": _text_where(has_gas, status),
        "consommation_brute_gaz_terega": _int_array(np.where(has_terega, terega, np.nan)),
        "statut_terega": _text_where(has_terega, status),
        "consommation_brute_gaz_totale": _int_array(gas),
        "consommation_brute_electricite_rte": _int_array(elec),
        "statut_rte": pa.array(np.full(len(index), status).tolist(), pa.string()),
        "consommation_brute_totale": _int_array(elec + gas),
        "flag_ignore": pa.array(np.where(flags, "oui", "non").tolist(), pa.string()),
    }
    return pa.table(columns)


def _flags(n: int, rng: np.random.Generator, count: int = 3) -> np.ndarray:
    flags = np.zeros(n, dtype=bool)
    flags[rng.choice(n, size=count, replace=False)] = True
    return flags


def build_national_daily(year: int, *, seed: int = 0, latest: bool = False) -> pa.Table:
    """One complete local year of the national half-hourly series."""
    index, elec, gas = _national_year(year)
    rng = np.random.default_rng([seed, year, 1])
    share = _national_terega_share()
    return _series_table(index, elec, gas, share, latest=latest, flags=_flags(len(index), rng))


@lru_cache(maxsize=1)
def regional_shares() -> pd.DataFrame:
    """Per-region share of national electricity and gas, and Teréga share of regional gas."""
    frame = _read(REGIONAL_STEM)
    index = year_index(BASE_YEAR)
    pos = _positions(frame["date_heure"], index)
    elec, gas = national_base()
    frame = frame.assign(
        e=_num(frame["consommation_brute_electricite_rte"]),
        g=_num(frame["consommation_brute_gaz_totale"]),
        ne=elec[np.clip(pos, 0, len(elec) - 1)],
        ng=gas[np.clip(pos, 0, len(gas) - 1)],
    )
    rows = []
    for (code, name), grp in frame.groupby(["code_insee_region", "region"], sort=True):
        with_gas = grp.dropna(subset=["g", "ng"])
        rows.append(
            {
                "code": code,
                "name": name,
                "elec": grp["e"].sum() / grp["ne"].sum(),
                "gas": with_gas["g"].sum() / with_gas["ng"].sum() if len(with_gas) else 0.0,
            }
        )
    shares = pd.DataFrame(rows).set_index("code")
    annual = _read(REGIONAL_ANNUAL_STEM).set_index("code_insee_region")
    terega = pd.Series(_num(annual["consommation_brute_gaz_terega"]), index=annual.index)
    total = pd.Series(_num(annual["consommation_brute_gaz_totale"]), index=annual.index)
    shares["terega"] = (terega / total).fillna(0.0).reindex(shares.index).fillna(0.0)
    return shares


def build_regional_daily(year: int, *, seed: int = 0, latest: bool = False) -> pa.Table:
    """One complete local year of the regional half-hourly series (12 mainland regions)."""
    index, elec, gas = _national_year(year)
    shares = regional_shares()
    rng = np.random.default_rng([seed, year, 2])
    n = len(index)
    tables = []
    for code, row in shares.iterrows():
        noise_e = 1.0 + np.clip(rng.normal(0.0, 0.02, n), -0.06, 0.06)
        noise_g = 1.0 + np.clip(rng.normal(0.0, 0.03, n), -0.09, 0.09)
        r_elec = np.round(elec * row["elec"] * noise_e)
        r_gas = np.round(gas * row["gas"] * noise_g)
        if code == NEGATIVE_REGION:
            slots = np.flatnonzero(~np.isnan(r_gas))
            picked = rng.choice(slots, size=min(4, len(slots)), replace=False)
            r_gas[picked] = -rng.integers(1, 30, size=len(picked)).astype("float64")
        prefix = {
            "code_insee_region": pa.array([str(code)] * n, pa.string()),
            "region": pa.array([str(row["name"])] * n, pa.string()),
        }
        tables.append(
            _series_table(
                index,
                r_elec,
                r_gas,
                float(row["terega"]),
                latest=latest,
                flags=_flags(n, rng, 1),
                prefix=prefix,
            )
        )
    table = pa.concat_tables(tables)
    order = np.lexsort((np.repeat(np.arange(len(tables)), n), np.tile(np.arange(n), len(tables))))
    return table.take(pa.array(order))
