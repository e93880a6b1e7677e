"""Tests of the portal emulator itself, over real sockets with httpx."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from emulator import DATA_FAULTS, DATASETS, TRANSPORT_FAULTS, PortalEmulator
from emulator.daily import build_national_daily
from emulator.fixtures import sample_table
from emulator.synthetic import SyntheticAdresse
from tests.support.emulator_http import (
    ADRESSE,
    COMMUNE,
    DAILY,
    DEPT,
    DF,
    NAT,
    ODS,
    REG,
    odre,
    ore,
    walk_lines,
)

pytestmark = pytest.mark.usefixtures("clean_emu")  # no faults or modes left between tests

# ------------------------------------------------------------------ fixtures


def test_fixture_tables_are_typed_and_deduplicated(emu: PortalEmulator) -> None:
    dept = emu.table("departement", 2023)
    assert not dept.duplicated().any()
    assert {"01", "2A", "2B", "971"} <= set(dept["code_departement"])
    assert dept["annee"].dtype == "Int64" and set(dept["annee"]) == {2023}
    assert dept["nb_sites"].dtype == "Int64"
    commune = emu.table("commune", 2023)
    masked = commune[commune["nb_sites"].isna()]
    assert len(masked) > 0 and masked["conso_totale_mwh"].isna().all()
    assert (masked["conso_moyenne_mwh"] == 0.0).all()
    adresse = emu.table("adresse", 2022)
    assert "consommation_annuelle_totale_de_ladresse_mwh" in adresse.columns
    assert {"adresse", "tri_des_adresses"} <= set(adresse.columns)
    assert adresse["code_commune"].str.len().eq(5).all()
    regional = emu.table("regionale_annuelle", 2022)
    assert isinstance(regional["geo_point_region"].iloc[0], dict)
    assert (
        regional.loc[regional["code_insee_region"] == "94", "consommation_brute_gaz_totale"]
        .isna()
        .all()
    )
    nat = emu.table("nationale_annuelle", 2022)
    assert len(nat) == 1 and nat["consommation_brute_totale"].iloc[0] == (
        nat["consommation_brute_gaz_totale"].iloc[0]
        + nat["consommation_brute_electricite_rte"].iloc[0]
    )


def test_daily_series_are_complete(emu: PortalEmulator) -> None:
    daily = emu.table("nationale_quotidienne", 2023)
    assert len(daily) == 17520 and daily["date_heure"].is_unique
    steps = daily["date_heure"].sort_values().diff().dropna().unique()
    assert list(steps) == [pd.Timedelta(minutes=30)]
    local = daily["date_heure"].dt.tz_convert("Europe/Paris")
    assert (local.dt.year == 2023).all() and local.iloc[0].hour == 0
    half = local.dt.minute == 30
    gas = daily["consommation_brute_gaz_totale"]
    assert gas[~half].notna().all()
    assert 0 < gas[half].notna().sum() < 200
    assert 0 < (daily["flag_ignore"] == "oui").sum() < 10
    assert daily["statut_rte"].notna().all()
    assert 40_000 < daily["consommation_brute_electricite_rte"].mean() < 60_000
    regional = emu.table("regionale_quotidienne", 2023)
    assert len(regional) == 12 * 17520
    assert "94" not in set(regional["code_insee_region"])
    assert (regional["consommation_brute_gaz_totale"] < 0).sum() > 0
    assert emu.years_of("regionale_quotidienne") == [2023]


def test_fixtures_are_deterministic() -> None:
    template = sample_table("adresse")
    pos = np.arange(0, 3_000_000, 997)
    a = SyntheticAdresse(template, year=2023, num_rows=3_000_000, seed=3).take(pos, ["adresse"])
    b = SyntheticAdresse(template, year=2023, num_rows=3_000_000, seed=3).take(pos, ["adresse"])
    c = SyntheticAdresse(template, year=2023, num_rows=3_000_000, seed=4).take(pos, ["adresse"])
    assert a.equals(b) and not a.equals(c)
    assert build_national_daily(2022, seed=1).equals(build_national_daily(2022, seed=1))


# ------------------------------------------------------------------ Opendatasoft


def test_ods_metadata_and_404(emu: PortalEmulator, client: httpx.Client) -> None:
    meta = client.get(odre(emu, f"/{DAILY}")).json()
    assert meta["dataset_id"] == DAILY
    types = {f["name"]: f["type"] for f in meta["fields"]}
    assert types["date_heure"] == "datetime" and types["date"] == "date"
    assert types["consommation_brute_electricite_rte"] == "int"
    assert all({"name", "type", "label", "annotations"} <= set(f) for f in meta["fields"])
    default = meta["metas"]["default"]
    assert default["records_count"] == emu.count("nationale_quotidienne")
    assert {"title", "modified", "data_processed"} <= set(default)
    nat = client.get(odre(emu, f"/{NAT}")).json()
    assert {f["name"]: f["type"] for f in nat["fields"]}["annee"] == "date"
    missing = client.get(odre(emu, "/nope"))
    assert missing.status_code == 404 and "error_code" in missing.json()


def test_ods_records_limits(emu: PortalEmulator, client: httpx.Client) -> None:
    url = odre(emu, f"/{DAILY}/records")
    page = client.get(url).json()
    assert len(page["results"]) == 10 and page["total_count"] == 2 * 17520
    too_big = client.get(url, params={"limit": 101})
    assert too_big.status_code == 400
    assert too_big.json()["error_code"] == "InvalidRESTParameterError"
    window = client.get(url, params={"limit": 100, "offset": 9950})
    assert window.status_code == 400 and "message" in window.json()
    assert client.get(url, params={"limit": 100, "offset": 9900}).status_code == 200
    count = client.get(url, params={"limit": 0, "where": "year(date_heure) = 2023"}).json()
    assert count["results"] == [] and count["total_count"] == 17520 - 2
    local = {"limit": 0, "where": "year(date_heure)=2023", "timezone": "Europe/Paris"}
    assert client.get(url, params=local).json()["total_count"] == 17520
    refine = {"limit": 0, "refine": "date_heure:2023", "timezone": "Europe/Paris"}
    assert client.get(url, params=refine).json()["total_count"] == 17520
    unknown = client.get(url, params={"where": "nope = 1"})
    assert unknown.status_code == 400 and unknown.json()["error_code"]


def test_ods_where_subset(emu: PortalEmulator, client: httpx.Client) -> None:
    url = odre(emu, f"/{REG}/records")

    def total(where: str) -> int:
        resp = client.get(url, params={"limit": 0, "where": where})
        assert resp.status_code == 200, resp.text
        return resp.json()["total_count"]

    assert total("annee = date'2023'") == 13
    assert total("annee = 2023") == 13
    assert total("year(annee) = 2022") == 13
    assert total("annee >= date'2022' AND annee < date'2023'") == 13
    assert total('code_insee_region = "11" AND annee <= 2023') == 2
    assert total("code_insee_region = '94' or code_insee_region = '11'") == 4
    assert total("consommation_brute_gaz_totale > 50000 AND annee = 2023") > 0
    rows = client.get(url, params={"refine": ["annee:2023", "code_insee_region:11"]}).json()
    assert rows["total_count"] == 1
    row = rows["results"][0]
    assert row["annee"] == "2023" and isinstance(row["geo_point_region"], dict)
    assert row["geo_shape_region"]["type"] == "Feature"


def test_ods_aggregates(emu: PortalEmulator, client: httpx.Client) -> None:
    url = odre(emu, f"/{DAILY}/records")
    params = {
        "select": "year(date_heure) as annee, count(*) as n",
        "group_by": "year(date_heure)",
        "timezone": "Europe/Paris",
    }
    body = client.get(url, params=params).json()
    assert body["results"] == [{"annee": 2022, "n": 17520}, {"annee": 2023, "n": 17520}]
    table = emu.table("nationale_quotidienne", 2023)
    params = {
        "select": "sum(consommation_brute_electricite_rte) as s, count(*) as n",
        "where": "year(date_heure)=2023",
        "timezone": "Europe/Paris",
    }
    res = client.get(url, params=params).json()["results"][0]
    assert res == {"s": int(table["consommation_brute_electricite_rte"].sum()), "n": 17520}
    reg = client.get(
        odre(emu, f"/{REG}/records"),
        params={
            "select": "annee, sum(consommation_brute_totale) as s",
            "group_by": "annee",
            "order_by": "annee desc",
        },
    ).json()
    assert [r["annee"] for r in reg["results"]] == ["2023", "2022"]


def test_ods_exports(emu: PortalEmulator, client: httpx.Client) -> None:
    base = odre(emu, f"/{DAILY}/exports")
    params = {"refine": "date_heure:2023", "timezone": "Europe/Paris"}
    resp = client.get(f"{base}/csv", params=params)
    assert resp.status_code == 200 and resp.headers["transfer-encoding"] == "chunked"
    assert resp.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(resp.content.decode("utf-8-sig")), delimiter=";"))
    assert len(rows) == 17520
    assert rows[0]["date_heure"] == "2023-01-01T00:00:00+01:00"
    assert rows[1]["consommation_brute_gaz_totale"] == ""
    plain = client.get(f"{base}/csv", params={**params, "with_bom": "false", "delimiter": ","})
    assert plain.content.startswith(b"date_heure,")
    utc = client.get(f"{base}/json", params={"where": "year(date_heure) = 2023"}).json()
    assert isinstance(utc, list) and len(utc) == 17518
    assert utc[0]["date_heure"] == "2023-01-01T00:00:00+00:00"
    lines = client.get(f"{base}/jsonl", params={**params, "select": "date_heure,heure"})
    parsed = [json.loads(line) for line in lines.text.splitlines()]
    assert len(parsed) == 17520 and set(parsed[0]) == {"date_heure", "heure"}
    assert client.get(f"{base}/csv", params={"offset": 10}).status_code == 400
    pq = client.get(f"{base}/parquet", params=params)
    assert len(pd.read_parquet(io.BytesIO(pq.content))) == 17520


# ------------------------------------------------------------------ Data Fair


def test_datafair_metadata_by_slug_and_id(emu: PortalEmulator, client: httpx.Client) -> None:
    meta = client.get(ore(emu, f"/{COMMUNE}")).json()
    assert meta["slug"] == COMMUNE and meta["id"] != COMMUNE
    assert meta["id"] == emu.datafair_ids["commune"]
    assert client.get(ore(emu, f"/{meta['id']}")).json()["count"] == meta["count"]
    assert meta["count"] == emu.count("commune")
    keys = {entry["key"]: entry for entry in meta["schema"]}
    assert keys["code_commune"]["type"] == "string" and keys["annee"]["type"] == "integer"
    assert {"key", "type", "title", "x-originalName"} <= set(keys["conso_totale_mwh"])
    for stamp in ("dataUpdatedAt", "finalizedAt", "updatedAt"):
        assert meta[stamp].endswith("Z")
    enedis = client.get(emu.urls["enedis"] + DF + f"/{ADRESSE}").json()
    keys = {entry["key"] for entry in enedis["schema"]}
    assert "consommation_annuelle_totale_de_ladresse_mwh" in keys
    missing = client.get(ore(emu, "/nope"))
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/plain")
    compat = client.get(emu.urls["ore"] + ODS + f"/{COMMUNE}")
    assert compat.status_code == 410


def test_datafair_pagination_is_exact(emu: PortalEmulator, client: httpx.Client) -> None:
    rows, pages = walk_lines(
        client, ore(emu, f"/{COMMUNE}/lines"), {"size": 1000, "annee_eq": 2023}
    )
    expected = emu.table("commune", 2023)
    assert len(rows) == len(expected) == pages[0]["total"]
    assert all("total" not in p for p in pages[1:])
    assert "next" not in pages[-1]
    assert len({r["_id"] for r in rows}) == len(rows)
    assert all(f"/datasets/{emu.datafair_ids['commune']}/lines?" in p["next"] for p in pages[:-1])
    assert all({"_id", "_i", "_score", "_rand"} <= set(r) for r in rows)
    masked = [r for r in rows if "nb_sites" not in r]
    assert masked and all(None not in r.values() for r in rows)
    assert len(masked) == expected["nb_sites"].isna().sum()
    total = sum(r.get("conso_totale_mwh", 0) for r in rows)
    assert total == pytest.approx(expected["conso_totale_mwh"].sum())


def test_datafair_params_and_errors(emu: PortalEmulator, client: httpx.Client) -> None:
    url = ore(emu, f"/{DEPT}/lines")
    default = client.get(url).json()
    assert len(default["results"]) == 12 and default["total"] == emu.count("departement")
    too_big = client.get(url, params={"size": 10001})
    assert too_big.status_code == 400
    assert too_big.headers["content-type"].startswith("text/plain") and "size" in too_big.text
    assert client.get(url, params={"nope_eq": 1}).status_code == 400
    sel = client.get(url, params={"select": "code_departement,nb_sites", "size": 3}).json()
    assert {k for k in sel["results"][0] if not k.startswith("_")} <= {
        "code_departement",
        "nb_sites",
    }
    corse = client.get(url, params={"code_departement_in": "2A,2B", "annee_eq": 2023, "size": 0})
    expected = emu.table("departement", 2023)["code_departement"].isin(["2A", "2B"]).sum()
    assert corse.json()["total"] == expected
    qs = client.get(url, params={"qs": 'code_departement:"2A" AND annee:2023', "size": 0})
    assert qs.json()["total"] == (emu.table("departement", 2023)["code_departement"] == "2A").sum()
    rng = client.get(url, params={"nb_sites_gte": 10, "nb_sites_lte": 20, "size": 0}).json()
    both = pd.concat([emu.table("departement", y) for y in (2022, 2023)])
    assert rng["total"] == both["nb_sites"].between(10, 20).sum()
    ordered = client.get(url, params={"sort": "-conso_totale_mwh", "size": 5}).json()["results"]
    values = [r["conso_totale_mwh"] for r in ordered]
    assert values == sorted(values, reverse=True)
    page = client.get(url, params={"format": "csv", "size": 5})
    header = next(csv.reader(io.StringIO(page.text)))
    assert "Code departement" in header and len(page.text.strip().splitlines()) == 6


def test_datafair_aggregations(emu: PortalEmulator, client: httpx.Client) -> None:
    params = {
        "field": "annee",
        "metric": "sum",
        "metric_field": "conso_totale_mwh",
        "agg_size": 100,
    }
    aggs = client.get(ore(emu, f"/{COMMUNE}/values_agg"), params=params).json()
    assert aggs["total"] == emu.count("commune")
    by_year = {a["value"]: a for a in aggs["aggs"]}
    for year in (2022, 2023):
        table = emu.table("commune", year)
        assert by_year[year]["total"] == len(table)
        assert by_year[year]["metric"] == pytest.approx(table["conso_totale_mwh"].sum())
    metric = client.get(
        ore(emu, f"/{COMMUNE}/metric_agg"),
        params={"field": "conso_totale_mwh", "metric": "sum", "annee_eq": 2023},
    ).json()
    assert metric["total"] == len(emu.table("commune", 2023))
    assert metric["metric"] == pytest.approx(emu.table("commune", 2023)["conso_totale_mwh"].sum())


def test_large_synthetic_adresse_partition(client: httpx.Client) -> None:
    with PortalEmulator(years=(2023,), adresse_rows={2023: 25_000}, seed=7) as big:
        url = big.urls["enedis"] + DF + f"/{ADRESSE}/lines"
        rows, pages = walk_lines(client, url, {"size": 10_000, "annee_eq": 2023})
        assert len(rows) == 25_000 == pages[0]["total"] and len(pages) == 3
        keys = {
            (
                r["code_commune"],
                r["numero_de_voie"],
                r.get("indice_de_repetition"),
                r.get("type_de_voie"),
                r["libelle_de_voie"],
                r["code_iris"],
            )
            for r in rows
        }
        assert len(keys) == 25_000
        sorted_rows, _ = walk_lines(
            client, url, {"size": 7000, "sort": "code_commune,-numero_de_voie"}
        )
        assert sorted({r["_id"] for r in sorted_rows}) == sorted({r["_id"] for r in rows})
        communes = [r["code_commune"] for r in sorted_rows]
        assert communes == sorted(communes)
        table = big.table("adresse", 2023)
        assert len(table) == 25_000
        assert table["consommation_annuelle_totale_de_ladresse_mwh"].sum() == pytest.approx(
            sum(r["consommation_annuelle_totale_de_ladresse_mwh"] for r in rows)
        )


# ------------------------------------------------------------------ transport faults


def test_status_faults(emu: PortalEmulator, client: httpx.Client) -> None:
    assert set(TRANSPORT_FAULTS) == {
        "status",
        "quota",
        "reset",
        "truncate",
        "error_in_body",
        "slow",
    }
    emu.inject("status", dataset="nationale_annuelle", status=429, retry_after=2)
    quota = client.get(odre(emu, f"/{NAT}/records"))
    assert quota.status_code == 429 and quota.json()["error_code"]
    assert quota.headers["retry-after"] == "2"
    assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(quota.headers)
    assert int(quota.headers["x-ratelimit-reset"]) >= int(time.time())
    assert client.get(odre(emu, f"/{NAT}/records")).status_code == 200
    emu.inject("status", dataset="commune", request="lines", status=429)
    assert client.get(ore(emu, f"/{COMMUNE}")).status_code == 200
    limited = client.get(ore(emu, f"/{COMMUNE}/lines"))
    assert limited.status_code == 429 and limited.headers["content-type"].startswith("text/plain")
    assert "retry-after" in limited.headers
    emu.inject("status", dataset="departement", status=503, times=2)
    codes = [client.get(ore(emu, f"/{DEPT}/lines")).status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    emu.inject("status", status=502, times=None)
    assert client.get(odre(emu, f"/{DAILY}")).status_code == 502
    assert client.get(ore(emu, f"/{DEPT}")).status_code == 502
    emu.clear_faults()
    assert client.get(odre(emu, f"/{DAILY}")).status_code == 200
    log = emu.requests
    assert [e["status"] for e in log[:2]] == [429, 200]
    assert log[0]["fault"] == "status" and log[0]["dataset"] == "nationale_annuelle"
    assert log[0]["kind"] == "records" and log[0]["portal"] == "odre"


def test_reset_fault(emu: PortalEmulator, client: httpx.Client) -> None:
    emu.inject("reset", dataset="nationale_quotidienne", request="export")
    with pytest.raises(httpx.TransportError):
        client.get(odre(emu, f"/{DAILY}/exports/csv"))
    emu.inject("reset", dataset="commune", request="lines")
    with pytest.raises(httpx.TransportError):
        client.get(ore(emu, f"/{COMMUNE}/lines"), params={"size": 500})
    assert client.get(ore(emu, f"/{COMMUNE}/lines")).status_code == 200
    assert [e["fault"] for e in emu.requests] == ["reset", "reset", None]


def test_truncate_fault(emu: PortalEmulator, client: httpx.Client) -> None:
    emu.inject("truncate", dataset="nationale_quotidienne", request="metadata")
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(odre(emu, f"/{DAILY}"))
    emu.inject("truncate", dataset="nationale_quotidienne", request="export", fraction=0.3)
    received = bytearray()
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("GET", odre(emu, f"/{DAILY}/exports/jsonl")) as resp,
    ):
        for chunk in resp.iter_bytes():
            received += chunk
    assert 0 < received.count(b"\n") < 2 * 17520


def test_error_in_body_fault(emu: PortalEmulator, client: httpx.Client) -> None:
    emu.inject("error_in_body", dataset="nationale_quotidienne", times=3)
    assert client.get(odre(emu, f"/{DAILY}/records")).status_code == 200  # not an export
    resp = client.get(odre(emu, f"/{DAILY}/exports/csv"), params={"refine": "date_heure:2023"})
    assert resp.status_code == 200
    text = resp.content.decode("utf-8-sig").splitlines()
    assert text[-1].startswith("Streaming interrupted")
    assert 1 < len(text) - 2 < 17520
    data = client.get(odre(emu, f"/{DAILY}/exports/json")).json()
    assert "error_code" in data[-1] and 0 < len(data) - 1 < 2 * 17520
    jsonl = client.get(odre(emu, f"/{DAILY}/exports/jsonl")).text.splitlines()
    assert "error_code" in json.loads(jsonl[-1])


def test_slow_fault(emu: PortalEmulator, client: httpx.Client) -> None:
    emu.inject("slow", dataset="regionale_annuelle", delay=0.4)
    start = time.monotonic()
    assert client.get(odre(emu, f"/{REG}")).status_code == 200
    assert time.monotonic() - start >= 0.4
    emu.inject("slow", dataset="regionale_annuelle", delay=1.0)
    with pytest.raises(httpx.ReadTimeout):
        client.get(odre(emu, f"/{REG}"), timeout=0.2)
    emu.inject("slow", dataset="nationale_annuelle", request="export", chunk_delay=0.05)
    start = time.monotonic()
    assert client.get(odre(emu, f"/{NAT}/exports/csv")).status_code == 200
    assert time.monotonic() - start >= 0.05


# ------------------------------------------------------------------ data faults


def test_schema_data_faults(emu: PortalEmulator, client: httpx.Client) -> None:
    assert "extra_column" in DATA_FAULTS
    emu.data_fault("extra_column", "commune", 2023, column="colonne_nouvelle")
    emu.data_fault("missing_column", "nationale_annuelle", 2023, column="statut_rte")
    row = client.get(ore(emu, f"/{COMMUNE}/lines"), params={"annee_eq": 2023, "size": 1}).json()
    assert row["results"][0]["colonne_nouvelle"] == "valeur"
    old = client.get(ore(emu, f"/{COMMUNE}/lines"), params={"annee_eq": 2022, "size": 1}).json()
    assert "colonne_nouvelle" not in old["results"][0]
    meta = client.get(ore(emu, f"/{COMMUNE}")).json()
    assert "colonne_nouvelle" in {s["key"] for s in meta["schema"]}
    csv_text = client.get(odre(emu, f"/{NAT}/exports/csv"), params={"refine": "annee:2023"}).text
    assert "statut_rte" not in csv_text.splitlines()[0]
    assert "statut_rte" not in emu.table("nationale_annuelle", 2023).columns
    fields = {f["name"] for f in client.get(odre(emu, f"/{NAT}")).json()["fields"]}
    assert "statut_rte" not in fields
    assert "statut_rte" in emu.table("nationale_annuelle", 2022).columns


def test_value_data_faults(emu: PortalEmulator, client: httpx.Client) -> None:
    emu.data_fault("non_numeric", "departement", 2023, column="conso_totale_mwh", row=3)
    emu.data_fault(
        "negative", "regionale_annuelle", 2023, column="consommation_brute_electricite_rte"
    )
    dept = emu.table("departement", 2023)
    assert dept["conso_totale_mwh"].iloc[3] == "n/a"
    rows, _ = walk_lines(client, ore(emu, f"/{DEPT}/lines"), {"annee_eq": 2023, "size": 10000})
    assert rows[3]["conso_totale_mwh"] == "n/a"
    reg = client.get(odre(emu, f"/{REG}/records"), params={"refine": "annee:2023", "limit": 1})
    assert reg.json()["results"][0]["consommation_brute_electricite_rte"] < 0


def test_duplicate_data_faults(emu: PortalEmulator, client: httpx.Client) -> None:
    before = emu.count("commune", 2023)
    emu.data_fault("exact_duplicate", "commune", 2023, row=5)
    emu.data_fault("conflicting_duplicate", "commune", 2023, row=7, column="conso_totale_mwh")
    table = emu.table("commune", 2023)
    assert len(table) == before + 2
    assert table.duplicated().sum() == 1
    keys = list(DATASETS["commune"].keys)
    conflict = table[table.duplicated(keys, keep=False) & ~table.duplicated(keep=False)]
    assert len(conflict) == 2 and conflict["conso_totale_mwh"].nunique() == 2
    rows, pages = walk_lines(
        client, ore(emu, f"/{COMMUNE}/lines"), {"annee_eq": 2023, "size": 5000}
    )
    assert len(rows) == pages[0]["total"] == before + 2
    agg = client.get(ore(emu, f"/{COMMUNE}/values_agg"), params={"field": "annee"}).json()
    assert {a["value"]: a["total"] for a in agg["aggs"]}[2023] == before + 2
    emu.clear_faults()
    assert emu.count("commune", 2023) == before


def test_revise_and_signals(emu: PortalEmulator, client: httpx.Client) -> None:
    ods_before = client.get(odre(emu, f"/{NAT}")).json()["metas"]["default"]
    df_before = client.get(ore(emu, f"/{COMMUNE}")).json()
    base = emu.table("nationale_annuelle", 2023)["consommation_brute_electricite_rte"].iloc[0]
    commune_sum = emu.table("commune", 2023)["conso_totale_mwh"].sum()
    emu.revise("nationale_annuelle", 2023, factor=1.1)
    emu.revise("commune", 2023, factor=0.5)
    ods_after = client.get(odre(emu, f"/{NAT}")).json()["metas"]["default"]
    df_after = client.get(ore(emu, f"/{COMMUNE}")).json()
    assert ods_after["data_processed"] > ods_before["data_processed"]
    assert df_after["dataUpdatedAt"] > df_before["dataUpdatedAt"]
    rec = client.get(odre(emu, f"/{NAT}/records"), params={"where": "annee = 2023"}).json()
    assert rec["results"][0]["consommation_brute_electricite_rte"] == round(base * 1.1)
    metric = client.get(
        ore(emu, f"/{COMMUNE}/metric_agg"),
        params={"field": "conso_totale_mwh", "metric": "sum", "annee_eq": 2023},
    )
    assert metric.json()["metric"] == pytest.approx(commune_sum * 0.5, rel=1e-4)
    signal = emu.signal("departement")
    emu.bump_signal("departement", data=False)
    meta = client.get(ore(emu, f"/{DEPT}")).json()
    assert meta["dataUpdatedAt"] == signal and meta["updatedAt"] > signal
    emu.bump_signal("departement")
    assert emu.signal("departement") > signal


def test_alias_variant(emu: PortalEmulator, client: httpx.Client) -> None:
    emu.alias_variant("nationale_quotidienne")
    names = {f["name"] for f in client.get(odre(emu, f"/{DAILY}")).json()["fields"]}
    assert "consommation_brute_gaz_natran" in names and "statut_natran" in names
    assert "consommation_brute_gaz_grtgaz" not in names
    params = {"where": "consommation_brute_gaz_natran > 0", "limit": 1}
    row = client.get(odre(emu, f"/{DAILY}/records"), params=params).json()["results"][0]
    assert "consommation_brute_gaz_natran" in row
    old = {"where": "consommation_brute_gaz_grtgaz > 0"}
    assert client.get(odre(emu, f"/{DAILY}/records"), params=old).status_code == 400
    assert "consommation_brute_gaz_natran" in emu.table("nationale_quotidienne", 2023).columns
    nat = {f["name"] for f in client.get(odre(emu, f"/{NAT}")).json()["fields"]}
    assert "consommation_brute_gaz_grtgaz" in nat


# ------------------------------------------------------------------ admin API and CLI


def test_admin_api(emu: PortalEmulator, client: httpx.Client) -> None:
    admin = emu.base_url + "/_emulator"
    spec = {"kind": "status", "dataset": "commune", "request": "lines", "status": 500}
    assert client.post(f"{admin}/faults", json=spec).status_code == 200
    assert client.get(ore(emu, f"/{COMMUNE}/lines")).status_code == 500
    data = {"kind": "exact_duplicate", "dataset": "departement", "year": 2023, "row": 0}
    assert (
        client.post(
            f"{admin}/faults", json=[data, {"kind": "bump_signal", "dataset": "departement"}]
        ).status_code
        == 200
    )
    assert emu.count("departement", 2023) == len(emu.table("departement", 2022)) + 1
    assert client.post(f"{admin}/faults", json={"kind": "nope"}).status_code == 400
    log = client.get(f"{admin}/requests").json()
    assert log[0]["status"] == 500 and log[0]["query"] == {}
    assert client.post(f"{admin}/reset").status_code == 200
    assert emu.requests == [] and emu.count("departement", 2023) == len(
        emu.table("departement", 2022)
    )


def test_cli_prints_urls() -> None:
    cmd = [sys.executable, "-m", "emulator", "--port", "0", "--years", "2023"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        urls = json.loads(line)
        assert set(urls) == {"odre", "ore", "enedis"}
        resp = httpx.get(urls["odre"] + ODS + f"/{NAT}/records", timeout=10)
        assert resp.json()["total_count"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0
