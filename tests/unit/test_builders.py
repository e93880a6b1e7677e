"""The gold builders of spark/aggregate.py on small hand-made frames, values worked out by hand.

Each builder is a plain function of its source frames; these tests call it directly on a
local Spark session (no lake, no spark-submit, no Prefect).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flows.gold.tables import TABLES
from tests.support.sparkjob import load_job

job = load_job()

ORE_COMMUNE = (
    "annee int, code_commune string, nom_commune string, code_departement string, "
    "code_region string, operateur string, filiere string, code_grand_secteur string, "
    "nb_sites long, conso_totale_mwh double"
)
ORE_DEPARTEMENT = (
    "annee int, code_departement string, nom_departement string, code_region string, "
    "nom_region string, filiere string, code_grand_secteur string, code_secteur_naf2 string, "
    "nb_sites long, conso_totale_mwh double"
)
ADRESSE = (
    "annee int, code_iris string, numero_de_voie string, indice_de_repetition string, "
    "type_de_voie string, libelle_de_voie string, code_commune string, nom_commune string, "
    "code_departement string, code_region string, nombre_de_logements long, "
    "consommation_annuelle_totale_de_l_adresse_mwh double"
)
ODRE_ANNUAL = (
    "annee int, code_insee_region int, region string, consommation_brute_gaz_totale double, "
    "consommation_brute_electricite_rte double, consommation_brute_totale double"
)
ODRE_DAILY = (
    "annee int, date_heure timestamp, code_insee_region int, "
    "consommation_brute_electricite_rte double, consommation_brute_gaz_totale double, "
    "flag_ignore string"
)


def rows(frame: DataFrame, *order: str) -> list[dict[str, Any]]:
    """The frame's rows as dicts, sorted by the given columns."""
    return [row.asDict() for row in frame.orderBy(*order).collect()]


def by(frame: DataFrame, column: str) -> dict[Any, dict[str, Any]]:
    """The frame's rows by the value of one column (unique in the test)."""
    found = {row[column]: row.asDict() for row in frame.collect()}
    assert len(found) == frame.count()
    return found


def assert_contract(name: str, frame: DataFrame) -> None:
    assert tuple(frame.columns) == TABLES[name].columns, name
    job.check_columns(TABLES[name], frame)


def test_every_table_of_the_contract_has_a_builder() -> None:
    assert set(job.BUILDERS) == set(TABLES)


# --- ORE: masked rows counted and left out of sums and means ---------------------------------


def test_commune_sums_unmasked_rows_and_counts_masked_ones(spark: SparkSession) -> None:
    commune = spark.createDataFrame(
        [
            (2023, "2A004", "Ajaccio", "2A", "94", "Enedis", "Electricité", "RES", 10, 100.0),
            (2023, "2A004", "Ajaccio", "2A", "94", "EDF SEI", "Electricité", "RES", 5, 50.0),
            (2023, "2A004", "Ajaccio", "2A", "94", "Autre", "Electricité", "RES", 3, None),
            (2023, "2A004", "Ajaccio", "2A", "94", "Enedis", "Gaz", "RES", 2, 7.0),
            (2023, "2B033", "Bastia", "2B", "94", "Enedis", "Electricité", "RES", None, None),
        ],
        ORE_COMMUNE,
    )

    out = job.conso_commune(commune)

    assert_contract("conso_commune", out)
    assert rows(out, "code_commune", "filiere") == [
        # 10 + 5 sites, 100 + 50 MWh; the masked row's 3 sites are not counted; 150 / 15
        {"annee": 2023, "code_commune": "2A004", "nom_commune": "Ajaccio",
         "code_departement": "2A", "code_region": "94", "filiere": "Electricité",
         "code_grand_secteur": "RES", "nb_sites": 15, "conso_totale_mwh": 150.0,
         "conso_moyenne_mwh": 10.0, "nb_lignes_masquees": 1},
        {"annee": 2023, "code_commune": "2A004", "nom_commune": "Ajaccio",
         "code_departement": "2A", "code_region": "94", "filiere": "Gaz",
         "code_grand_secteur": "RES", "nb_sites": 2, "conso_totale_mwh": 7.0,
         "conso_moyenne_mwh": 3.5, "nb_lignes_masquees": 0},
        # only a masked row: no sum, no mean, one masked row
        {"annee": 2023, "code_commune": "2B033", "nom_commune": "Bastia",
         "code_departement": "2B", "code_region": "94", "filiere": "Electricité",
         "code_grand_secteur": "RES", "nb_sites": None, "conso_totale_mwh": None,
         "conso_moyenne_mwh": None, "nb_lignes_masquees": 1},
    ]  # fmt: skip


def departements(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(
        [
            (2023, "2A", "Corse-du-Sud", "94", "Corse", "Electricité", "IND", "10", 40, 400.0),
            (2023, "2A", "Corse-du-Sud", "94", "Corse", "Electricité", "IND", "11", 10, 30.0),
            (2023, "2B", "Haute-Corse", "94", "Corse", "Electricité", "IND", "10", 9, None),
            (2023, "01", "Ain", "84", "Auvergne-Rhône-Alpes", "Electricité", "IND", "10", 0, 0.0),
        ],
        ORE_DEPARTEMENT,
    )


def test_departement_rows_sum_over_naf_codes(spark: SparkSession) -> None:
    out = job.conso_departement(departements(spark))

    assert_contract("conso_departement", out)
    found = by(out, "code_departement")
    assert set(found) == {"2A", "2B", "01"}
    assert found["2A"] == {
        "annee": 2023, "code_departement": "2A", "nom_departement": "Corse-du-Sud",
        "code_region": "94", "filiere": "Electricité", "code_grand_secteur": "IND",
        "nb_sites": 50, "conso_totale_mwh": 430.0, "conso_moyenne_mwh": 8.6,
        "nb_lignes_masquees": 0,
    }  # fmt: skip
    assert (found["2B"]["nb_sites"], found["2B"]["nb_lignes_masquees"]) == (None, 1)
    # 0 sites: the mean is null, not a division by zero
    assert found["01"]["conso_totale_mwh"] == 0.0 and found["01"]["conso_moyenne_mwh"] is None


def test_regions_roll_up_departements_and_a_zero_site_mean_is_null(spark: SparkSession) -> None:
    out = job.conso_region(departements(spark))

    assert_contract("conso_region", out)
    assert rows(out, "code_region") == [
        {"annee": 2023, "code_region": "84", "nom_region": "Auvergne-Rhône-Alpes",
         "filiere": "Electricité", "code_grand_secteur": "IND", "nb_sites": 0,
         "conso_totale_mwh": 0.0, "conso_moyenne_mwh": None, "nb_lignes_masquees": 0},
        # 40 + 10 sites, 400 + 30 MWh (2B masked: counted, not summed); 430 / 50
        {"annee": 2023, "code_region": "94", "nom_region": "Corse",
         "filiere": "Electricité", "code_grand_secteur": "IND", "nb_sites": 50,
         "conso_totale_mwh": 430.0, "conso_moyenne_mwh": 8.6, "nb_lignes_masquees": 1},
    ]  # fmt: skip


def test_secteur_is_national_per_naf_code(spark: SparkSession) -> None:
    out = job.conso_secteur(departements(spark))

    assert_contract("conso_secteur", out)
    assert rows(out, "code_secteur_naf2") == [
        # NAF 10: 2A (40, 400) + Ain (0, 0) + 2B masked
        {"annee": 2023, "filiere": "Electricité", "code_grand_secteur": "IND",
         "code_secteur_naf2": "10", "nb_sites": 40, "conso_totale_mwh": 400.0,
         "conso_moyenne_mwh": 10.0, "nb_lignes_masquees": 1},
        {"annee": 2023, "filiere": "Electricité", "code_grand_secteur": "IND",
         "code_secteur_naf2": "11", "nb_sites": 10, "conso_totale_mwh": 30.0,
         "conso_moyenne_mwh": 3.0, "nb_lignes_masquees": 0},
    ]  # fmt: skip


# --- Enedis addresses ------------------------------------------------------------------------


def test_address_parts_are_trimmed_and_joined_by_single_spaces(spark: SparkSession) -> None:
    adresse = spark.createDataFrame(
        [
            (2023, "2A0040101", None, "", "  RUE ", "DE  LA PAIX", "2A004", "Ajaccio", "2A",
             "94", 10, 20.0),
            (2023, "2A0040101", None, " ", "RUE", " DE LA\tPAIX ", "2A004", "Ajaccio", "2A",
             "94", 2, 10.0),
            (2023, "010040000", "3", "B", "AV", "FOCH", "01004", "Ambérieu", "01", "84", 0, 5.0),
        ],
        ADRESSE,
    )  # fmt: skip

    out = job.conso_adresse(adresse)

    assert_contract("conso_adresse", out)
    found = by(out, "adresse")
    assert set(found) == {"RUE DE LA PAIX", "3 B AV FOCH"}
    # both rows of the same address summed: 10 + 2 dwellings, 20 + 10 MWh; 30 / 12
    assert found["RUE DE LA PAIX"] == {
        "annee": 2023, "adresse": "RUE DE LA PAIX", "code_iris": "2A0040101",
        "code_commune": "2A004", "nom_commune": "Ajaccio", "code_departement": "2A",
        "code_region": "94", "nombre_de_logements": 12, "conso_totale_mwh": 30.0,
        "conso_moyenne_mwh": 2.5,
    }  # fmt: skip
    assert found["3 B AV FOCH"]["conso_moyenne_mwh"] is None  # no dwellings, no mean


def test_whitespace_runs_are_squeezed_exactly_as_the_regex_does(spark: SparkSession) -> None:
    texts = ["", " ", "A", "A B", "A  B", " A  B ", "A\tB", "A\t B", "A\nB", "A\x0bB", "A\fB",
             "A\rB", "A\r\nB", "A\u00a0B", "A\u2003B", "É\t\tÈ", "  ", "\t", None]  # fmt: skip
    frame = spark.createDataFrame([(text,) for text in texts], "text string")

    found = frame.select(
        job._squeezed(F.col("text")).alias("squeezed"),
        F.regexp_replace("text", r"\s+", " ").alias("regex"),
    ).collect()

    assert [row["squeezed"] for row in found] == [row["regex"] for row in found]
    assert found[4]["squeezed"] == "A B" and found[13]["squeezed"] == "A\u00a0B"


# --- ODRE annual: GWh to MWh -----------------------------------------------------------------


def test_national_annual_gwh_become_mwh(spark: SparkSession) -> None:
    national = spark.createDataFrame(
        [(2023, None, None, 380.5, 437.25, 817.75), (2022, None, None, 400.0, 450.0, None)],
        ODRE_ANNUAL,
    )

    out = job.conso_nationale(national)

    assert_contract("conso_nationale", out)
    assert rows(out, "annee") == [
        {"annee": 2022, "gaz_mwh": 400_000.0, "electricite_mwh": 450_000.0, "total_mwh": None},
        {"annee": 2023, "gaz_mwh": 380_500.0, "electricite_mwh": 437_250.0, "total_mwh": 817_750.0},
    ]


def test_regional_annual_gwh_become_mwh_with_text_region_codes(spark: SparkSession) -> None:
    regional = spark.createDataFrame([(2023, 11, "Île-de-France", 100.0, 60.5, 160.5)], ODRE_ANNUAL)

    out = job.conso_regionale_brute(regional)

    assert_contract("conso_regionale_brute", out)
    assert rows(out, "annee") == [
        {"annee": 2023, "code_region": "11", "nom_region": "Île-de-France",
         "gaz_mwh": 100_000.0, "electricite_mwh": 60_500.0, "total_mwh": 160_500.0},
    ]  # fmt: skip


# --- ODRE daily: MW steps to MWh per Europe/Paris day ----------------------------------------


def steps(start: datetime, count: int, electricity: float, gas: float) -> list[tuple]:
    """`count` half-hour steps from a UTC instant; gas only on the hour, as ODRE gives it."""
    out = []
    for number in range(count):
        instant = start + timedelta(minutes=30 * number)
        out.append((None, instant, None, electricity, gas if instant.minute == 0 else None, "non"))
    return out


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_daily_energy_per_paris_day_with_dst_and_flagged_rows(spark: SparkSession) -> None:
    # 2023-03-26 in Paris runs from 2023-03-25 23:00 UTC (CET) to 2023-03-26 22:00 UTC
    # (CEST): 23 hours, 46 half-hours, 23 hourly gas values.
    spring = steps(utc(2023, 3, 25, 23, 0), 46, 1000.0, 800.0)
    # 22:30 UTC on the 25th is 23:30 in Paris: the day before.
    before = [(None, utc(2023, 3, 25, 22, 30), None, 10.0, None, "non")]
    # 2023-06-01 (CEST): 22:00 UTC on May 31 to 22:00 UTC on June 1, 48 half-hours.
    june = steps(utc(2023, 5, 31, 22, 0), 48, 1000.0, 800.0)
    june[20] = (*june[20][:5], "oui")  # 08:00 UTC, on the hour: electricity and gas left out
    june[21] = (*june[21][:5], None)  # no flag: kept
    national = spark.createDataFrame(spring + before + june, ODRE_DAILY)

    out = job.conso_journaliere(national, None)

    assert_contract("conso_journaliere", out)
    found = {(r["date"], r["code_region"]): r for r in rows(out, "date")}
    assert set(found) == {
        (date(2023, 3, 25), "FR"),
        (date(2023, 3, 26), "FR"),
        (date(2023, 6, 1), "FR"),
    }
    assert found[(date(2023, 3, 25), "FR")] == {
        "date": date(2023, 3, 25), "annee": 2023, "code_region": "FR",
        "electricite_mwh": 5.0, "gaz_mwh": None, "nb_pas_electricite": 1, "nb_pas_gaz": 0,
    }  # fmt: skip
    assert found[(date(2023, 3, 26), "FR")] == {
        "date": date(2023, 3, 26), "annee": 2023, "code_region": "FR",
        "electricite_mwh": 23_000.0,  # 46 x 1000 MW x 0.5 h
        "gaz_mwh": 18_400.0,  # 23 x 800 MW x 1 h
        "nb_pas_electricite": 46, "nb_pas_gaz": 23,
    }  # fmt: skip
    assert found[(date(2023, 6, 1), "FR")] == {
        "date": date(2023, 6, 1), "annee": 2023, "code_region": "FR",
        "electricite_mwh": 23_500.0,  # 47 x 1000 x 0.5: the flagged step left out
        "gaz_mwh": 18_400.0,  # 23 x 800: the flagged hour left out
        "nb_pas_electricite": 47, "nb_pas_gaz": 23,
    }  # fmt: skip


def test_daily_regional_series_and_the_year_of_the_local_day(spark: SparkSession) -> None:
    # 23:30 UTC on 2022-12-31 is 00:30 on 2023-01-01 in Paris (CET): year 2023.
    regional = spark.createDataFrame(
        [
            (None, utc(2022, 12, 31, 23, 30), 11, -10.0, None, "non"),
            (None, utc(2023, 1, 1, 0, 0), 11, -10.0, 4.0, "non"),
            (None, utc(2023, 1, 1, 0, 0), 84, 7.0, 2.0, "non"),
        ],
        ODRE_DAILY,
    )
    national = spark.createDataFrame([(None, utc(2023, 1, 1, 0, 0), None, 1.0, 1.0, "non")],
                                     ODRE_DAILY)  # fmt: skip

    out = job.conso_journaliere(national, regional)

    assert_contract("conso_journaliere", out)
    assert rows(out, "code_region") == [
        {"date": date(2023, 1, 1), "annee": 2023, "code_region": "11",
         "electricite_mwh": -10.0, "gaz_mwh": 4.0, "nb_pas_electricite": 2, "nb_pas_gaz": 1},
        {"date": date(2023, 1, 1), "annee": 2023, "code_region": "84",
         "electricite_mwh": 3.5, "gaz_mwh": 2.0, "nb_pas_electricite": 1, "nb_pas_gaz": 1},
        {"date": date(2023, 1, 1), "annee": 2023, "code_region": "FR",
         "electricite_mwh": 0.5, "gaz_mwh": 1.0, "nb_pas_electricite": 1, "nb_pas_gaz": 1},
    ]  # fmt: skip
    assert rows(job.conso_journaliere(None, regional), "code_region")[0]["code_region"] == "11"
    with pytest.raises(ValueError, match="national or the regional"):
        job.conso_journaliere(None, None)


# --- the contract check and the carry-over of other years ------------------------------------


def test_a_table_with_other_columns_fails_naming_it(spark: SparkSession) -> None:
    national = spark.createDataFrame([(2023, None, None, 1.0, 2.0, 3.0)], ODRE_ANNUAL)
    swapped = job.conso_nationale(national).select(
        "annee", "electricite_mwh", "gaz_mwh", "total_mwh"
    )

    with pytest.raises(job.ContractError, match="gold table conso_nationale"):
        job.check_columns(TABLES["conso_nationale"], swapped)
    with pytest.raises(job.ContractError, match="conso_nationale"):
        job.check_columns(TABLES["conso_nationale"], swapped.drop("total_mwh"))


def test_carry_over_keeps_the_other_published_years(spark: SparkSession) -> None:
    schema = "annee int, gaz_mwh double, electricite_mwh double, total_mwh double"
    published = spark.createDataFrame(
        [(2021, 1.0, 1.0, 2.0), (2022, 2.0, 2.0, 4.0), (2023, 3.0, 3.0, 6.0)], schema
    ).select("total_mwh", "gaz_mwh", "electricite_mwh", "annee")  # as a Parquet read orders it
    fresh = spark.createDataFrame([(2023, 5.0, 5.0, 10.0)], schema)

    out = job.carry_over(fresh, published, {2023})

    assert out.columns == fresh.columns
    assert [(r["annee"], r["total_mwh"]) for r in rows(out, "annee")] == [
        (2021, 2.0),
        (2022, 4.0),
        (2023, 10.0),  # the fresh year replaces the published one
    ]
    assert job.carry_over(fresh, None, {2023}) is fresh  # nothing published yet
