"""validate_chunk and restore_codes on rows as the portals serve them: nulls, rules, typed codes.

Rows come from the emulator's served tables (what a client decodes from a Data Fair JSON page
or an ODS CSV export), one valid chunk per dataset; expected outcomes are written by hand.
"""

from __future__ import annotations

import json
import math
from functools import cache

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator import PortalEmulator
from flows.sources.catalog import DATASETS, Column, Kind
from flows.sources.portals.datafair import _frame as datafair_frame
from flows.sources.validate import (
    REASON,
    CodeNotRestorable,
    normalise,
    restore_codes,
    validate_chunk,
)

YEAR = 2023
ROWS = 6
NULLS = ("none", "nan", "absent_key", "empty", "absent_column")
GARBAGE = ("nan", "None", "<NA>", "NaT")


@cache
def sample_records(dataset: str) -> tuple[str, ...]:
    """The first rows the emulator serves for (dataset, 2023), as JSON lines (portal names)."""
    table = PortalEmulator().table(dataset, YEAR).head(ROWS)
    records = json.loads(table.to_json(orient="records", date_format="iso"))
    return tuple(json.dumps(r) for r in records)


def records(dataset: str) -> list[dict]:
    return [json.loads(r) for r in sample_records(dataset)]


def size(dataset: str) -> int:
    return len(sample_records(dataset))  # ROWS, or fewer (one national row a year)


def source_name(dataset: str, column: str, record: dict) -> str:
    """The portal's name of a catalog column in a served record (aliases: `_de_ladresse_`)."""
    entry = DATASETS[dataset]
    return next((k for k in record if entry.canonical(k) == column), column)


def chunk(rows: list[dict]) -> pd.DataFrame:
    """A page of lines decoded as the Data Fair client does (a key absent from a line is NaN)."""
    return datafair_frame(rows)


def with_null(dataset: str, column: str, row: int, how: str) -> pd.DataFrame:
    rows = records(dataset)
    name = source_name(dataset, column, rows[0])
    if how == "absent_column":
        for r in rows:
            r.pop(name, None)
        return chunk(rows)
    if how == "absent_key":
        rows[row].pop(name, None)
        frame = chunk(rows)
        if name not in frame.columns:  # absent from every row of the chunk
            frame[name] = None
        return frame
    value = {"none": None, "nan": math.nan, "empty": ""}[how]
    rows[row][name] = value
    return chunk(rows)


def catalog_columns() -> list[tuple[str, str]]:
    return [(d, c.name) for d, entry in DATASETS.items() for c in entry.columns]


def run(dataset: str, frame: pd.DataFrame):
    return validate_chunk(DATASETS[dataset], YEAR, normalise(DATASETS[dataset], frame))


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_the_sample_chunks_are_valid(dataset):
    result = run(dataset, chunk(records(dataset)))

    assert result.bad.empty, result.bad[REASON].tolist()
    assert len(result.good) == size(dataset)


def check_null_outcome(dataset: str, column: str, row: int, how: str) -> None:
    n = size(dataset)
    row %= n
    result = run(dataset, with_null(dataset, column, row, how))

    entry = DATASETS[dataset]
    nulled = set(range(n)) if how == "absent_column" else {row}
    if entry.column_map[column].nullable:
        assert result.bad.empty, result.bad[REASON].tolist()
        assert len(result.good) == n
        assert result.good.loc[sorted(nulled), column].isna().all()
    else:
        assert sorted(result.bad.index) == sorted(nulled)
        assert set(result.bad[REASON]) == {f"{column}: missing"}
        assert result.bad[column].isna().all()  # stored as received: null, not 'nan'
        assert sorted(result.good.index) == sorted(set(range(n)) - nulled)
        assert result.rules == {f"{column}: missing": len(nulled)}


@pytest.mark.parametrize(("dataset", "column"), catalog_columns())
def test_a_null_in_any_column_never_crashes(dataset, column):
    """Every column of every dataset: a null line value quarantines or keeps, never raises."""
    check_null_outcome(dataset, column, row=2, how="none")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.sampled_from(catalog_columns()),
    row=st.integers(0, ROWS - 1),
    how=st.sampled_from(NULLS),
)
def test_nulls_of_every_shape_quarantine_or_keep_the_row(target, row, how):
    dataset, column = target
    check_null_outcome(dataset, column, row, how)


@settings(max_examples=60, deadline=None)
@given(
    dataset=st.sampled_from(list(DATASETS)),
    data=st.data(),
)
def test_several_nulls_in_a_row_are_all_named(dataset, data):
    entry = DATASETS[dataset]
    required = [c.name for c in entry.columns if not c.nullable]
    chosen = data.draw(st.lists(st.sampled_from(required), min_size=1, unique=True))
    rows = records(dataset)
    for column in chosen:
        rows[0].pop(source_name(dataset, column, rows[0]), None)

    result = run(dataset, chunk(rows))

    assert list(result.bad.index) == [0]
    named = set(result.bad[REASON].iloc[0].split("; "))
    assert named == {f"{c}: missing" for c in chosen}
    assert len(result.good) == size(dataset) - 1


def test_ore_masked_rows_and_empty_address_parts_are_kept_as_nulls():
    commune = records("commune")
    for key in ("nb_sites", "conso_totale_mwh", "code_secteur_naf2", "code_epci"):
        commune[1].pop(key, None)  # Data Fair leaves empty values out of a line
    adresse = records("adresse")
    for key in ("numero_de_voie", "indice_de_repetition", "type_de_voie", "libelle_de_voie"):
        adresse[3][key] = None

    ore = run("commune", chunk(commune))
    enedis = run("adresse", chunk(adresse))

    assert ore.bad.empty and enedis.bad.empty
    assert ore.good.loc[1, ["nb_sites", "conso_totale_mwh", "conso_moyenne_mwh"]].isna().all()
    assert enedis.good.loc[3, ["numero_de_voie", "libelle_de_voie"]].isna().all()


def test_reasons_of_every_rule_read_cleanly_and_bad_rows_are_stored_as_received():
    rows = records("departement")
    rows[0]["code_region"] = "8"  # pattern
    rows[0]["nb_sites"] = None  # a null next to a failure: no 'nan' in the reason
    rows[1]["filiere"] = "Gas"  # allowed values
    rows[2]["conso_totale_mwh"] = -2.5  # minimum
    rows[3]["nb_sites"] = "n/a"  # not a number
    rows[4]["annee"] = 2022  # outside the partition
    rows[5].pop("operateur")  # absent from the line
    rows[5]["code_departement"] = "1"  # a second fault on that row

    result = run("departement", chunk(rows))

    reasons = result.bad[REASON].to_dict()
    assert reasons == {
        0: r"code_region: str_matches('^\d{2}$') failed for 8",
        1: "filiere: isin(('Electricité', 'Gaz')) failed for Gas",
        2: "conso_totale_mwh: greater_than_or_equal_to(0.0) failed for -2.5",
        3: "nb_sites: not a number: n/a",
        4: "annee: equal_to(2023) failed for 2022",
        5: "operateur: missing",  # a row's first reasons win: the missing value
    }
    for text in result.bad[REASON]:
        assert not any(g in text.replace("n/a", "") for g in GARBAGE), text
    assert result.good.empty
    # as received: the text and numbers the portal sent, nulls as nulls
    assert result.bad.loc[0, "code_region"] == "8"
    assert pd.isna(result.bad.loc[0, "nb_sites"])
    assert result.bad.loc[2, "conso_totale_mwh"] == "-2.5"
    assert result.bad.loc[3, "nb_sites"] == "n/a"
    assert result.bad.loc[1, "code_departement"] == rows[1]["code_departement"]
    assert pd.isna(result.bad.loc[5, "operateur"])
    stored = result.bad.drop(columns=[REASON])
    assert not stored.isin(list(GARBAGE)).any().any()
    assert result.rules[r"code_region: str_matches('^\d{2}$') failed"] == 1
    assert result.rules["operateur: missing"] == 1


def test_a_row_with_an_operator_missing_is_named_even_when_pandera_sees_no_other_fault():
    rows = records("commune")
    rows[0].pop("code_grand_secteur")

    result = run("commune", chunk(rows))

    assert result.bad[REASON].tolist() == ["code_grand_secteur: missing"]
    assert len(result.good) == ROWS - 1


# ----------------------------------------------------------------- codes typed as numbers


def departement_page(values: list[object]) -> pd.DataFrame:
    """A Data Fair lines page whose `code_departement`/`code_region` the portal typed integer."""
    rows = records("departement")[: len(values)]
    for row, (dep, reg) in zip(rows, values, strict=True):
        row["code_departement"], row["code_region"] = dep, reg
    body = json.dumps({"total": len(rows), "results": rows})
    return chunk(json.loads(body)["results"])


def test_integer_codes_get_their_zeros_back_and_are_counted():
    frame = departement_page([(1, 84), (971, 1), (1.0, 11.0), ("2A", 94)])
    declared = {"code_departement": "integer", "code_region": "integer"}

    restored, counts = restore_codes(DATASETS["departement"], frame, declared)

    assert restored["code_departement"].tolist() == ["01", "971", "01", "2A"]
    assert restored["code_region"].tolist() == ["84", "01", "11", "94"]
    assert counts == {"code_departement": 3, "code_region": 4}
    result = run("departement", restored)
    assert result.bad.empty, result.bad[REASON].tolist()
    assert result.good["code_departement"].tolist() == ["01", "971", "01", "2A"]


def test_numbers_are_restored_even_when_the_schema_says_string():
    frame = departement_page([(1, 84), ("02", "84")])

    restored, counts = restore_codes(DATASETS["departement"], frame, {})

    assert restored["code_departement"].tolist() == ["01", "02"]
    assert counts == {"code_departement": 1, "code_region": 1}


def test_ods_text_of_an_int_field_is_restored_but_text_fields_are_never_cast():
    rows = records("regionale_annuelle")[:2]
    rows[0]["code_insee_region"], rows[1]["code_insee_region"] = "1", "84"
    frame = pd.DataFrame(rows).astype({"code_insee_region": "str"})

    as_int, counts = restore_codes(
        DATASETS["regionale_annuelle"], frame, {"code_insee_region": "int"}
    )
    as_text, none = restore_codes(
        DATASETS["regionale_annuelle"], frame, {"code_insee_region": "text"}
    )

    assert as_int["code_insee_region"].tolist() == ["01", "84"]
    assert counts == {"code_insee_region": 2}
    assert as_text["code_insee_region"].tolist() == ["1", "84"] and none == {}
    rejected = run("regionale_annuelle", as_text)
    assert rejected.bad[REASON].tolist() == [
        r"code_insee_region: str_matches('^\d{2}$') failed for 1"
    ]


@pytest.mark.parametrize(
    ("dataset", "column", "value", "why"),
    [
        ("departement", "code_region", 123, "more digits than the width"),
        ("departement", "code_departement", 977.5, "not a whole number"),
        ("departement", "code_departement", -1, "negative"),
        ("commune", "code_commune", 123456, "more digits than the width"),
        ("departement", "code_departement", 100, "more digits than the width"),
    ],
)
def test_an_unrestorable_code_fails_naming_column_value_and_width(dataset, column, value, why):
    rows = records(dataset)[:2]
    rows[1][column] = value
    frame = chunk(rows)

    with pytest.raises(CodeNotRestorable) as failure:
        restore_codes(DATASETS[dataset], frame, {column: "integer"})

    message = str(failure.value)
    width = DATASETS[dataset].column_map[column].width
    assert f"{column}: " in message and repr(value) in message
    assert f"{width}-digit code ({why})" in message


CODE_COLUMNS = [c for entry in DATASETS.values() for c in entry.columns if c.width]


@settings(max_examples=200, deadline=None)
@given(column=st.sampled_from(CODE_COLUMNS), data=st.data())
def test_any_number_below_the_width_comes_back_as_the_same_code(column: Column, data):
    assert column.kind is Kind.CODE and column.width
    number = data.draw(st.integers(0, 10**column.width - 1))
    as_float = data.draw(st.booleans())
    frame = pd.DataFrame({column.name: [float(number) if as_float else number, None]})
    dataset = next(d for d in DATASETS.values() if column in d.columns)

    restored, counts = restore_codes(dataset, frame, {})

    code = restored[column.name].iloc[0]
    assert len(code) == column.width and code.isdigit() and int(code) == number
    assert pd.isna(restored[column.name].iloc[1])
    assert counts == {column.name: 1}


@settings(max_examples=100, deadline=None)
@given(
    codes=st.lists(
        st.one_of(st.from_regex(r"\A\d{1,5}\Z"), st.from_regex(r"\A2[AB]\d{3}\Z"), st.just("")),
        min_size=1,
        max_size=8,
    )
)
def test_codes_served_as_strings_are_never_cast(codes):
    frame = pd.DataFrame({"code_commune": pd.Series(codes, dtype=object)})
    dataset = DATASETS["commune"]

    restored, counts = restore_codes(dataset, frame, {"code_commune": "string"})
    text = normalise(dataset, restored)["code_commune"]

    assert counts == {}
    assert [None if pd.isna(v) else v for v in text] == [c or None for c in codes]


def test_numpy_integers_and_nan_of_a_float_column_are_handled():
    frame = pd.DataFrame({"code_region": np.array([1.0, np.nan, 93.0])})

    restored, counts = restore_codes(DATASETS["departement"], frame, {})

    assert restored["code_region"].iloc[0] == "01" and restored["code_region"].iloc[2] == "93"
    assert pd.isna(restored["code_region"].iloc[1])
    assert counts == {"code_region": 2}
