"""Access to the bundled 2023 seed samples (gzip CSV copies of the shared samples)."""

from __future__ import annotations

import gzip
import io
from functools import cache
from importlib import resources

import numpy as np
import pandas as pd

SAMPLE_SPELLING = {
    "consommation_annuelle_totale_de_l_adresse_mwh": "consommation_annuelle_totale_de_ladresse_mwh",
    "consommation_annuelle_moyenne_par_site_de_l_adresse_mwh": (
        "consommation_annuelle_moyenne_par_site_de_ladresse_mwh"
    ),
}


@cache
def read_sample(stem: str) -> pd.DataFrame:
    """One bundled sample as strings ('' for empty), exact duplicates removed, Data Fair names."""
    raw = resources.files(__package__).joinpath("samples", f"{stem}.csv.gz").read_bytes()
    frame = pd.read_csv(
        io.BytesIO(gzip.decompress(raw)), dtype=str, keep_default_na=False, na_filter=False
    )
    frame = frame.drop_duplicates(ignore_index=True)
    return frame.rename(columns=SAMPLE_SPELLING)


def numbers(values: pd.Series) -> np.ndarray:
    """Sample strings as float64 (NaN for empty or unparsable)."""
    return pd.to_numeric(values.mask(values == ""), errors="coerce").to_numpy(
        dtype="float64", na_value=np.nan
    )
