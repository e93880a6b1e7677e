"""The emulator's real-portal behaviour (DATASETS.md 1.4), conformance mode and limits."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from emulator import PortalEmulator
from tests.support.emulator_http import (
    COMMUNE,
    DAILY,
    DEPT,
    NAT,
    REG,
    odre,
    ore,
    walk_lines,
)

pytestmark = pytest.mark.usefixtures("clean_emu")  # no faults or modes left between tests

WIDTHS = {
    "code_region": 2,
    "code_departement": 2,
    "code_commune": 5,
    "code_iris": 9,
    "code_epci": 9,
    "code_secteur_naf2": 2,
}
SEEDS = (1, 2, 3)
csv.field_size_limit(sys.maxsize)  # geo_shape_region fields of several MB


def csv_rows(body: bytes) -> list[dict]:
    text = body.decode("utf-8")
    text = text.removeprefix("\ufeff")
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=";"))


def plain(row: dict) -> dict:
    """A Data Fair line without technical keys, codes zero-padded back to their width."""
    out = {}
    for key, value in row.items():
        if key.startswith("_"):
            continue
        if key in WIDTHS and isinstance(value, int):
            value = str(value).zfill(WIDTHS[key])
        out[key] = value
    return out


# ------------------------------------------------------------------ real behaviour (clean)


def test_full_last_page_gets_an_empty_trailing_page(
    emu: PortalEmulator, client: httpx.Client
) -> None:
    n = emu.count("departement", 2023)
    rows, pages = walk_lines(client, ore(emu, f"/{DEPT}/lines"), {"size": n, "annee_eq": 2023})
    assert len(pages) == 2 and len(rows) == n
    assert pages[0]["total"] == n and len(pages[0]["results"]) == n
    assert pages[1] == {"results": []}
    nxt = pages[0]["next"]
    assert nxt.startswith("http://") and f"/datasets/{emu.datafair_ids['departement']}/" in nxt
    # A page that is not full has no next.
    rows2, pages2 = walk_lines(
        client, ore(emu, f"/{DEPT}/lines"), {"size": n + 1, "annee_eq": 2023}
    )
    assert len(pages2) == 1 and len(rows2) == n


def test_after_cursors_are_json_sort_tuples(emu: PortalEmulator, client: httpx.Client) -> None:
    rows, pages = walk_lines(
        client, ore(emu, f"/{COMMUNE}/lines"), {"size": 3000, "annee_eq": 2023, "sort": "_i"}
    )
    assert len(rows) == emu.count("commune", 2023) and len(pages) >= 3
    for page in pages[:-1]:
        after = parse_qs(urlsplit(page["next"]).query)["after"][0]
        cursor = json.loads(after)
        assert isinstance(cursor, list) and len(cursor) == 2
    assert all("total" not in p for p in pages[1:])
    assert len({r["_id"] for r in rows}) == len(rows)
    bad = client.get(ore(emu, f"/{COMMUNE}/lines"), params={"after": "nope"})
    assert bad.status_code == 400 and bad.headers["content-type"].startswith("text/plain")


def test_values_agg_is_capped_at_1000_with_total_other(
    emu: PortalEmulator, client: httpx.Client
) -> None:
    distinct = emu.table("commune", 2023)["code_commune"].nunique()
    assert distinct > 1000
    params = {"field": "code_commune", "agg_size": 5000, "annee_eq": 2023}
    body = client.get(ore(emu, f"/{COMMUNE}/values_agg"), params=params).json()
    assert len(body["aggs"]) == 1000
    assert {"value", "total"} <= set(body["aggs"][0])
    shown = sum(a["total"] for a in body["aggs"])
    assert body["total_other"] == emu.count("commune", 2023) - shown > 0
    params = {**params, "metric": "sum", "metric_field": "conso_totale_mwh", "agg_size": 10}
    small = client.get(ore(emu, f"/{COMMUNE}/values_agg"), params=params).json()
    assert len(small["aggs"]) == 10 and all("metric" in a for a in small["aggs"])


def test_year_needs_a_date_field(emu: PortalEmulator, client: httpx.Client) -> None:
    url = odre(emu, f"/{DAILY}/records")
    bad = client.get(url, params={"limit": 0, "where": "year(heure) = 2023"})
    assert bad.status_code == 400
    assert set(bad.json()) == {"error_code", "message"} and "heure" in bad.json()["message"]
    assert client.get(url, params={"select": "year(heure) as y"}).status_code == 400
    grouped = client.get(
        url,
        params={
            "group_by": "year(date_heure) as y",
            "select": "count(*) as n",
            "timezone": "Europe/Paris",
        },
    ).json()["results"]
    assert grouped == [{"y": 2022, "n": 17520}, {"y": 2023, "n": 17520}]


def _seed_with(emu: PortalEmulator, annee_type: str) -> int:
    for seed in range(200):
        info = emu.conformance(seed, rate_limit_probability=0.0)
        if info["datasets"]["regionale_annuelle"]["annee_type"] == annee_type:
            return seed
    raise AssertionError(f"no seed declares annee {annee_type}")


@pytest.mark.parametrize("annee_type", ["date", "int", "text"])
def test_annee_declared_type(emu: PortalEmulator, client: httpx.Client, annee_type: str) -> None:
    _seed_with(emu, annee_type)
    meta = client.get(odre(emu, f"/{REG}")).json()
    field = next(f for f in meta["fields"] if f["name"] == "annee")
    assert field["type"] == annee_type
    url = odre(emu, f"/{REG}/records")

    def total(**params: str) -> int:
        resp = client.get(url, params={"limit": 0, **params})
        assert resp.status_code == 200, resp.text
        return resp.json()["total_count"]

    assert total(refine="annee:2023") == 13
    assert total(where="annee = 2023") == 13
    assert total(where='annee = "2023"') == 13
    year = client.get(url, params={"limit": 0, "where": "year(annee) = 2023"})
    if annee_type == "date":
        assert year.status_code == 200 and year.json()["total_count"] == 13
    else:
        assert year.status_code == 400 and year.json()["error_code"] == "ODSQLError"
        grouped = client.get(url, params={"group_by": "year(annee) as y", "select": "count(*)"})
        assert grouped.status_code == 400
    grouped = client.get(url, params={"group_by": "annee", "select": "annee, count(*) as n"})
    assert grouped.status_code == 200, grouped.text
    results = grouped.json()["results"]
    assert [int(r["annee"]) for r in results] == [2022, 2023]
    assert [r["n"] for r in results] == [13, 13]
    one = client.get(url, params={"refine": "annee:2023", "limit": 1}).json()["results"][0]
    assert one["annee"] == (2023 if annee_type == "int" else "2023")
    exported = csv_rows(client.get(odre(emu, f"/{NAT}/exports/csv")).content)
    assert sorted(r["annee"] for r in exported) == [
        str(y) for y in sorted(emu.years_of("nationale_annuelle"))
    ]


# ------------------------------------------------------------------ conformance mode


def _export(client: httpx.Client, emu: PortalEmulator, ds: str, params: dict) -> list[dict]:
    resp = client.get(odre(emu, f"/{ds}/exports/csv"), params=params)
    assert resp.status_code == 200, resp.text[:300]
    return csv_rows(resp.content)


def test_conformance_keeps_ods_csv_rows(emu: PortalEmulator, client: httpx.Client) -> None:
    queries = [
        (REG, {"refine": "annee:2023"}),
        (DAILY, {"refine": "date_heure:2023", "timezone": "Europe/Paris"}),
    ]
    clean = [_export(client, emu, ds, p) for ds, p in queries]
    assert len(clean[1]) == 17520
    line_ends, boms, gz = set(), set(), 0
    for seed in SEEDS:
        emu.conformance(seed, rate_limit_probability=0.0)
        for (ds, params), expected in zip(queries, clean, strict=True):
            for _ in range(2):
                resp = client.get(odre(emu, f"/{ds}/exports/csv"), params=params)
                assert resp.status_code == 200
                gz += resp.headers.get("content-encoding") == "gzip"
                body = resp.content
                boms.add(body.startswith(b"\xef\xbb\xbf"))
                line_ends.add(b"\r\n" in body.split(b"\n", 1)[0] + b"\n")
                rows = csv_rows(body)
                assert len(rows) == len(expected)
                if ds == REG:
                    shapes = [r.pop("geo_shape_region") for r in rows]
                    for r in expected:
                        r.pop("geo_shape_region", None)
                    big = max(shapes, key=len)
                    assert len(big) >= 1_000_000
                    assert ";" in big and '"' in big and "\n" in big
                    assert json.loads(big)["type"] == "Feature"
                assert rows == expected
    assert boms == {True, False} and len(line_ends) == 2 and gz > 0
    stats = emu.stats()["odre"]
    assert stats["requests"] >= 12 and stats["bytes_sent"] > 0 and stats["gzip"] == gz


def test_conformance_keeps_datafair_lines(emu: PortalEmulator, client: httpx.Client) -> None:
    params = {"size": 2500, "annee_eq": 2023}
    clean, _ = walk_lines(client, ore(emu, f"/{COMMUNE}/lines"), params)
    expected = sorted((plain(r) for r in clean), key=json.dumps)
    for seed in SEEDS:
        info = emu.conformance(seed, rate_limit_probability=0.0)
        typed = info["datasets"]["commune"]["int_codes"]
        assert typed
        rows, pages = walk_lines(client, ore(emu, f"/{COMMUNE}/lines"), params)
        assert pages[0]["total"] == len(clean)
        for name in typed:
            assert any(isinstance(r.get(name), int) for r in rows)
        assert sorted((plain(r) for r in rows), key=json.dumps) == expected


def test_integer_typed_codes_in_schema_and_lines(emu: PortalEmulator, client: httpx.Client) -> None:
    info = emu.conformance(5, rate_limit_probability=0.0)
    assert info == emu.conformance(5, rate_limit_probability=0.0)  # pure function of the seed
    for short, slug in (("commune", COMMUNE), ("departement", DEPT)):
        typed = info["datasets"][short]["int_codes"]
        assert typed
        meta = client.get(ore(emu, f"/{slug}")).json()
        types = {e["key"]: e["type"] for e in meta["schema"]}
        for name in typed:
            assert types[name] == "integer"
        page = client.get(ore(emu, f"/{slug}/lines"), params={"size": 10000}).json()["results"]
        for name in typed:
            values = [r[name] for r in page if name in r]
            assert values and all(isinstance(v, int) for v in values)
        agg = client.get(
            ore(emu, f"/{slug}/values_agg"), params={"field": typed[0], "agg_size": 5}
        ).json()
        assert all(isinstance(a["value"], int) for a in agg["aggs"])
    emu.reset()
    meta = client.get(ore(emu, f"/{COMMUNE}")).json()
    assert {e["key"]: e["type"] for e in meta["schema"]}["code_region"] == "string"


def test_chunking_regimes_and_gzip(emu: PortalEmulator, client: httpx.Client) -> None:
    emu.conformance(11, rate_limit_probability=0.0)
    url = odre(emu, f"/{NAT}/records")
    for _ in range(30):
        resp = client.get(url, params={"limit": 5}, headers={"Accept-Encoding": "gzip"})
        assert resp.status_code == 200 and len(resp.json()["results"]) == 2
    raw = []
    with client.stream(
        "GET", url, params={"limit": 5}, headers={"Accept-Encoding": "identity"}
    ) as r:
        assert "content-encoding" not in r.headers
        raw = list(r.iter_raw())
    assert json.loads(b"".join(raw))["total_count"] == emu.count("nationale_annuelle")
    stats = emu.stats()["odre"]
    assert stats["regimes"]["tiny"] > 0 and stats["regimes"]["medium"] > 0
    assert stats["regimes"]["large"] > 0 and 0 < stats["gzip"] <= 30
    assert stats["chunks"] > stats["requests"]


# ------------------------------------------------------------------ rate limits


def test_rate_limit_windows_have_the_real_shapes(emu: PortalEmulator, client: httpx.Client) -> None:
    emu.conformance(3, rate_window_s=0.6, rate_limit_probability=1.0)
    ods = client.get(odre(emu, f"/{NAT}/records"), params={"limit": 1})
    assert ods.status_code == 429
    body = ods.json()
    assert set(body) == {"errorcode", "error", "reset_time", "limit_time_unit", "call_limit"}
    assert body["errorcode"] == 10002 and body["limit_time_unit"] == "minute"
    assert body["error"].startswith("Too many requests on the domain")
    assert body["reset_time"].endswith("Z") and body["call_limit"] == 1000
    assert "retry-after" not in ods.headers
    assert not [h for h in ods.headers if h.lower().startswith("x-ratelimit")]
    # The whole portal is limited during the window, metadata included.
    assert client.get(odre(emu, f"/{NAT}")).status_code == 429
    df = client.get(ore(emu, f"/{COMMUNE}/lines"), params={"size": 1})
    assert df.status_code == 429 and "retry-after" not in df.headers
    assert df.headers["content-type"] == "text/plain; charset=utf-8"
    assert df.text.startswith("Trop de requêtes")
    emu.conformance(3, rate_window_s=0.6, rate_limit_probability=0.0)
    assert client.get(odre(emu, f"/{NAT}/records"), params={"limit": 1}).status_code == 200
    emu.conformance(4, rate_window_s=0.5, rate_limit_probability=1.0)
    assert client.get(ore(emu, f"/{COMMUNE}/lines")).status_code == 429
    emu.conformance(4, rate_window_s=0.5, rate_limit_probability=0.0)
    stats = emu.stats()
    assert stats["odre"]["status_429"] == 2 and stats["ore"]["status_429"] == 2
    assert stats["odre"]["rate_windows"] == 1


def test_rate_window_expires(emu: PortalEmulator, client: httpx.Client) -> None:
    emu.conformance(9, rate_window_s=0.4, rate_limit_probability=0.5)
    statuses = []
    deadline = time.time() + 20
    while time.time() < deadline and len(statuses) < 40:
        resp = client.get(odre(emu, f"/{NAT}/records"), params={"limit": 1})
        statuses.append(resp.status_code)
        if resp.status_code == 429:
            reset = resp.json()["reset_time"]
            assert reset.endswith("Z")
            time.sleep(0.45)
    assert 200 in statuses and 429 in statuses


def test_limits_requests_per_minute_and_bandwidth(
    emu: PortalEmulator, client: httpx.Client
) -> None:
    emu.limits(requests_per_minute=5, window_s=1.0, bandwidth=None)
    codes = [client.get(ore(emu, f"/{COMMUNE}/lines"), params={"size": 1}).status_code
             for _ in range(6)]  # fmt: skip
    assert codes == [200] * 5 + [429]
    assert client.get(odre(emu, f"/{NAT}")).status_code == 200  # ODS has no per-minute limit
    time.sleep(1.05)
    assert client.get(ore(emu, f"/{COMMUNE}/lines"), params={"size": 1}).status_code == 200
    emu.limits(requests_per_minute=None, bandwidth=400_000)
    start = time.monotonic()
    resp = client.get(ore(emu, f"/{COMMUNE}/lines"), params={"size": 2000})
    elapsed = time.monotonic() - start
    assert resp.status_code == 200 and len(resp.json()["results"]) == 2000
    size = emu.stats()["ore"]["bytes_sent"]
    assert size > 400_000 and elapsed >= size / 400_000 - 0.3
    emu.reset()
    assert emu.stats()["ore"]["requests"] == 0


def test_admin_api_conformance_limits_stats(emu: PortalEmulator, client: httpx.Client) -> None:
    admin = emu.base_url + "/_emulator"
    body = {"seed": 7, "rate_window_s": 0.5, "rate_limit_probability": 0.0}
    info = client.post(admin + "/conformance", json=body).json()
    assert info["seed"] == 7 and "commune" in info["datasets"]
    assert client.get(admin + "/conformance").json()["seed"] == 7
    client.get(odre(emu, f"/{NAT}"))
    stats = client.get(admin + "/stats").json()
    assert stats["odre"]["requests"] == 1
    assert client.post(admin + "/limits", json={"requests_per_minute": 100}).status_code == 200
    assert client.get(admin + "/limits").json()["requests_per_minute"] == 100
    assert client.delete(admin + "/limits").status_code == 200
    assert client.delete(admin + "/conformance").status_code == 200
    assert client.get(admin + "/conformance").json() is None
    client.post(admin + "/conformance", json={"seed": 8})
    client.post(admin + "/reset")
    assert client.get(admin + "/conformance").json() is None


def test_faults_still_work_in_conformance_mode(emu: PortalEmulator, client: httpx.Client) -> None:
    emu.conformance(2, rate_limit_probability=0.0)
    emu.inject("error_in_body", dataset="nationale_quotidienne", fraction=0.5)
    resp = client.get(odre(emu, f"/{DAILY}/exports/csv"), params={"refine": "date_heure:2023"})
    assert resp.status_code == 200 and b"Streaming interrupted" in resp.content
    emu.inject("reset", dataset="commune", request="lines", fraction=0.5)
    with pytest.raises(httpx.HTTPError):
        client.get(ore(emu, f"/{COMMUNE}/lines"), params={"size": 5000})
    emu.inject("status", dataset="commune", request="lines", status=503)
    assert client.get(ore(emu, f"/{COMMUNE}/lines")).status_code == 503
