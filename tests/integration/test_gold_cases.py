"""Hand-made raw partitions whose gold values are worked out by hand in each test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.gold.aggregate import run_aggregate
from flows.gold.tables import GOLD_TABLES
from flows.lake.fs import Lake
from flows.settings import Settings
from flows.sources.catalog import get_dataset
from flows.sources.spool import lake_schema
from tests.support.gold_reference import reference
from tests.support.goldview import assert_same_table, read_gold

NAN = None


def write_raw(lake: Path, dataset: str, year: int, rows: list[dict]) -> None:
    """Commit one raw partition of hand-made rows, as the ingestion would."""
    schema = lake_schema(get_dataset(dataset), [])
    frame = pd.DataFrame(rows)
    for field in schema:
        if field.name not in frame:
            frame[field.name] = None
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    table = table.drop_columns(["annee"]) if "annee" in table.column_names else table
    store = Lake(str(lake))
    staged = Path(store.path(store.staging(dataset, year, "hand")))
    staged.mkdir(parents=True)
    pq.write_table(table, staged / "part-hand-00000.parquet")
    store.commit_partition(dataset, year, "hand", {"files": ["part-hand-00000.parquet"]})


def ore_row(**values: object) -> dict:
    base = {"annee": 2023, "operateur": "Enedis", "filiere": "Electricité",
            "code_categorie_consommation": "RES", "code_grand_secteur": "RESIDENTIEL",
            "code_secteur_naf2": None, "code_region": "94", "nom_region": "Corse"}  # fmt: skip
    return base | values


def half_hours(day: str, minutes: int = 30) -> pd.DatetimeIndex:
    """Every step of a Europe/Paris local day, as UTC instants."""
    start = pd.Timestamp(day, tz="Europe/Paris")
    end = start + pd.DateOffset(days=1)  # a calendar day: 23, 24 or 25 hours
    return pd.date_range(start, end, freq=f"{minutes}min", inclusive="left").tz_convert("UTC")


def daily_rows(day: str, electricity: float, gas: float, region: str | None = None) -> list[dict]:
    rows = []
    for instant in half_hours(day):
        row = {
            "date_heure": instant.to_pydatetime(),
            "consommation_brute_electricite_rte": electricity,
            "consommation_brute_gaz_totale": gas if instant.minute == 0 else None,
            "consommation_brute_totale": None,
            "flag_ignore": "non",
        }
        if region:
            row |= {"code_insee_region": region, "region": f"Région {region}"}
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def hand_lake(tmp_path_factory) -> Iterator[Path]:
    lake = tmp_path_factory.mktemp("cases") / "lake"
    write_raw(lake, "commune", 2023, [
        ore_row(code_commune="2A004", nom_commune="Ajaccio", code_departement="2A",
                nb_sites=10, conso_totale_mwh=100.0, conso_moyenne_mwh=10.0),
        ore_row(code_commune="2A004", nom_commune="Ajaccio", code_departement="2A",
                operateur="EDF SEI", nb_sites=5, conso_totale_mwh=50.0, conso_moyenne_mwh=10.0),
        ore_row(code_commune="2A004", nom_commune="Ajaccio", code_departement="2A",
                operateur="Autre", nb_sites=None, conso_totale_mwh=None, conso_moyenne_mwh=None),
        ore_row(code_commune="2B033", nom_commune="Bastia", code_departement="2B",
                nb_sites=None, conso_totale_mwh=None, conso_moyenne_mwh=None),
    ])  # fmt: skip
    write_raw(lake, "departement", 2023, [
        ore_row(code_departement="2A", nom_departement="Corse-du-Sud", nb_sites=40,
                conso_totale_mwh=400.0, code_secteur_naf2="10"),
        ore_row(code_departement="2B", nom_departement="Haute-Corse", nb_sites=None,
                conso_totale_mwh=None, code_secteur_naf2="10"),
        ore_row(code_departement="01", nom_departement="Ain", code_region="84",
                nom_region="Auvergne-Rhône-Alpes", nb_sites=0, conso_totale_mwh=0.0),
    ])  # fmt: skip
    write_raw(lake, "adresse", 2023, [
        {"annee": 2023, "code_iris": "2A0040101", "numero_de_voie": None,
         "indice_de_repetition": "", "type_de_voie": "  RUE ", "libelle_de_voie": "DE  LA PAIX",
         "code_commune": "2A004", "nom_commune": "Ajaccio", "code_departement": "2A",
         "code_region": "94", "nombre_de_logements": 12,
         "consommation_annuelle_totale_de_l_adresse_mwh": 30.0},
        {"annee": 2023, "code_iris": "010040000", "numero_de_voie": "3",
         "indice_de_repetition": "B", "type_de_voie": "AV", "libelle_de_voie": "FOCH",
         "code_commune": "01004", "nom_commune": "Ambérieu", "code_departement": "01",
         "code_region": "84", "nombre_de_logements": 0,
         "consommation_annuelle_totale_de_l_adresse_mwh": 5.0},
    ])  # fmt: skip
    write_raw(lake, "nationale_annuelle", 2023, [
        {"annee": 2023, "consommation_brute_gaz_totale": 380496.0,
         "consommation_brute_electricite_rte": 437432.0, "consommation_brute_totale": 817928.0},
    ])  # fmt: skip
    national = daily_rows("2023-03-26", 1000.0, 800.0) + daily_rows("2023-10-29", 1000.0, 800.0)
    national += daily_rows("2023-06-01", 1000.0, 800.0)
    national[-1]["consommation_brute_gaz_totale"] = 400.0  # gas on a :30 slot is counted
    national[-4]["flag_ignore"] = "oui"  # 22:00 local, a full hour: left out, gas too
    write_raw(lake, "nationale_quotidienne", 2023, national)
    regional = daily_rows("2023-06-01", -10.0, 5.0, region="11")
    write_raw(lake, "regionale_quotidienne", 2023, regional)
    run_aggregate(Settings(lake=str(lake), spark_master="local[2]"), on_line=lambda _: None)
    yield lake


def one(frame: pd.DataFrame, **where: object) -> pd.Series:
    for column, value in where.items():
        frame = frame[frame[column] == value]
    assert len(frame) == 1, frame
    return frame.iloc[0]


def test_masked_rows_are_counted_and_left_out_of_sums_and_means(hand_lake):
    commune = read_gold(hand_lake, "conso_commune")

    ajaccio = one(commune, code_commune="2A004")
    assert ajaccio["nb_sites"] == 15
    assert ajaccio["conso_totale_mwh"] == 150.0
    assert ajaccio["conso_moyenne_mwh"] == 10.0  # Σ energy / Σ sites
    assert ajaccio["nb_lignes_masquees"] == 1
    assert ajaccio["code_departement"] == "2A"
    bastia = one(commune, code_commune="2B033")
    assert bastia["nb_lignes_masquees"] == 1
    assert pd.isna(bastia["conso_totale_mwh"]) and pd.isna(bastia["conso_moyenne_mwh"])


def test_regions_roll_up_departements_and_a_zero_site_mean_is_null(hand_lake):
    region = read_gold(hand_lake, "conso_region")

    corse = one(region, code_region="94")
    assert (corse["nb_sites"], corse["conso_totale_mwh"], corse["nb_lignes_masquees"]) == (
        40,
        400.0,
        1,
    )
    assert corse["conso_moyenne_mwh"] == 10.0
    ara = one(region, code_region="84")
    assert ara["conso_totale_mwh"] == 0.0 and pd.isna(ara["conso_moyenne_mwh"])


def test_address_is_built_from_its_non_empty_parts(hand_lake):
    adresse = read_gold(hand_lake, "conso_adresse")

    assert set(adresse["adresse"]) == {"RUE DE LA PAIX", "3 B AV FOCH"}
    paix = one(adresse, adresse="RUE DE LA PAIX")
    assert paix["conso_moyenne_mwh"] == 2.5 and paix["code_commune"] == "2A004"
    assert pd.isna(one(adresse, adresse="3 B AV FOCH")["conso_moyenne_mwh"])


def test_annual_gwh_become_mwh(hand_lake):
    national = one(read_gold(hand_lake, "conso_nationale"), annee=2023)

    assert national["electricite_mwh"] == 437_432_000.0
    assert national["gaz_mwh"] == 380_496_000.0
    assert national["total_mwh"] == 817_928_000.0


def test_daily_energy_counts_46_and_50_half_hours_on_dst_days(hand_lake):
    daily = read_gold(hand_lake, "conso_journaliere")
    daily["date"] = pd.to_datetime(daily["date"]).dt.date

    spring = one(daily, date=date(2023, 3, 26), code_region="FR")
    autumn = one(daily, date=date(2023, 10, 29), code_region="FR")
    assert (spring["nb_pas_electricite"], autumn["nb_pas_electricite"]) == (46, 50)
    assert spring["electricite_mwh"] == 46 * 1000.0 * 0.5
    assert autumn["electricite_mwh"] == 50 * 1000.0 * 0.5
    assert (spring["nb_pas_gaz"], autumn["nb_pas_gaz"]) == (23, 25)
    assert spring["gaz_mwh"] == 23 * 800.0


def test_gas_on_half_hour_slots_counts_and_flagged_rows_are_left_out(hand_lake):
    daily = read_gold(hand_lake, "conso_journaliere")
    daily["date"] = pd.to_datetime(daily["date"]).dt.date

    june = one(daily, date=date(2023, 6, 1), code_region="FR")
    assert june["nb_pas_electricite"] == 47  # one 'oui' row left out
    assert june["electricite_mwh"] == 47 * 500.0
    assert june["nb_pas_gaz"] == 24  # 23 full hours kept (one flagged) + the :30 slot
    assert june["gaz_mwh"] == 23 * 800.0 + 400.0


def test_negative_regional_values_are_summed_as_they_are(hand_lake):
    daily = read_gold(hand_lake, "conso_journaliere")

    ile_de_france = one(daily, code_region="11")
    assert ile_de_france["electricite_mwh"] == 48 * -10.0 * 0.5
    assert ile_de_france["annee"] == 2023


@pytest.mark.parametrize("table", [t for t in GOLD_TABLES if t != "conso_regionale_brute"])
def test_hand_made_tables_equal_the_duckdb_computation(hand_lake, table):
    assert_same_table(read_gold(hand_lake, table), reference(hand_lake, table), table)
