"""Reading gold tables back as any plain Parquet reader would, and comparing them."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

KEYS = {
    "conso_adresse": ["annee", "code_commune", "code_iris", "adresse"],
    "conso_commune": ["annee", "code_commune", "filiere", "code_grand_secteur"],
    "conso_departement": ["annee", "code_departement", "filiere", "code_grand_secteur"],
    "conso_region": ["annee", "code_region", "filiere", "code_grand_secteur"],
    "conso_secteur": ["annee", "filiere", "code_grand_secteur", "code_secteur_naf2"],
    "conso_nationale": ["annee"],
    "conso_regionale_brute": ["annee", "code_region"],
    "conso_journaliere": ["date", "code_region"],
}
REQUIRED = {
    "conso_adresse": "annee, adresse, code_iris, code_commune, nom_commune, code_departement, "
    "code_region, nombre_de_logements, conso_totale_mwh, conso_moyenne_mwh",
    "conso_commune": "annee, code_commune, nom_commune, code_departement, code_region, filiere, "
    "code_grand_secteur, nb_sites, conso_totale_mwh, conso_moyenne_mwh, nb_lignes_masquees",
    "conso_departement": "annee, code_departement, nom_departement, code_region, filiere, "
    "code_grand_secteur, nb_sites, conso_totale_mwh, conso_moyenne_mwh, nb_lignes_masquees",
    "conso_region": "annee, code_region, nom_region, filiere, code_grand_secteur, nb_sites, "
    "conso_totale_mwh, conso_moyenne_mwh, nb_lignes_masquees",
    "conso_secteur": "annee, filiere, code_grand_secteur, code_secteur_naf2, nb_sites, "
    "conso_totale_mwh, conso_moyenne_mwh, nb_lignes_masquees",
    "conso_nationale": "annee, gaz_mwh, electricite_mwh, total_mwh",
    "conso_regionale_brute": "annee, code_region, nom_region, gaz_mwh, electricite_mwh, total_mwh",
    "conso_journaliere": "date, annee, code_region, electricite_mwh, gaz_mwh, nb_pas_electricite, "
    "nb_pas_gaz",
}


def required(table: str) -> list[str]:
    """The columns CONTRACT.md requires, in its order."""
    return [c.strip() for c in REQUIRED[table].split(",")]


def read_gold(lake: Path, table: str) -> pd.DataFrame:
    """A gold table: every Parquet file below gold/<table>/ outside `_`/`.` folders."""
    glob = lake / "gold" / table / "annee=*" / "*.parquet"
    return duckdb.sql(f"select * from read_parquet('{glob}', hive_partitioning = true)").df()


def canonical(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Required columns in contract order, rows sorted by the table's key."""
    frame = frame[required(table)].copy()
    if "date" in frame:
        frame["date"] = pd.to_datetime(frame["date"]).dt.date
    frame["annee"] = frame["annee"].astype("int64")
    keys = KEYS[table]
    return frame.sort_values(keys, na_position="first").reset_index(drop=True)


def assert_same_table(actual: pd.DataFrame, expected: pd.DataFrame, table: str) -> None:
    """Value by value: exact for text and integers, 1e-9 relative for energies."""
    actual, expected = canonical(actual, table), canonical(expected, table)
    assert len(actual) == len(expected), f"{table}: {len(actual)} rows vs {len(expected)}"
    for column in required(table):
        left, right = actual[column], expected[column]
        assert (left.isna().to_numpy() == right.isna().to_numpy()).all(), f"{table}.{column} nulls"
        present = left.notna().to_numpy()
        if column.endswith("_mwh"):
            ok = np.isclose(
                left[present].astype(float), right[present].astype(float), rtol=1e-9, atol=1e-9
            )
            assert ok.all(), (
                f"{table}.{column}: {left[present][~ok].head()} vs {right[present][~ok].head()}"
            )
        else:
            assert [_plain(v) for v in left[present]] == [_plain(v) for v in right[present]], (
                f"{table}.{column} differs"
            )


def _plain(value: object) -> object:
    """Integers however a reader typed them (1, 1.0, Int64), text as text."""
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        return float(value)
    return str(value)
