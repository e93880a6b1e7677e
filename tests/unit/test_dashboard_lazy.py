"""The dashboard's lazy files against straightforward pandas and DuckDB computations.

The addresses are cut while streaming `conso_adresse` in key order, or after sorting a year
in memory when its files are not in key order: random rows, random file splits, row groups
and batch sizes, sorted or shuffled, must give the same files as a pandas groupby of the
rows sorted by key. The commune files are built from whole columns: the same check against
pandas. Then a whole small dashboard, built from a lake in key order and from the same rows
shuffled, against DuckDB.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.lake.fs import Lake
from flows.outputs import dashboard
from flows.outputs.dashboard import (
    ADDRESS_COLUMNS,
    COMMUNE_COLUMNS,
    SAFE_CODE,
    LazyWriter,
    build_dashboard,
    commune_documents,
    lazy_file,
)
from tests.support.lakeview import download_bucket

LAZY = re.compile(r'window\.__lazy__\[("[^"]*")\] = (.*);\n', re.S)
# (code_commune, code_departement, code_region): codes a file name cannot be made of too
COMMUNES = [
    ("01001", "01", "84"),
    ("01002", "01", "84"),
    ("01010", "01", "84"),
    ("02001", "02", None),
    ("02002", "02", "32"),
    ("2A004", "2A", "94"),
    ("2B002", "2B", "94"),
    ("75056", "75", "11"),
    ("97101", "971", "01"),
    ("97102", "971", "01"),
    ("", "01", "84"),
    (None, "75", "11"),
    ("7 5", "75", "11"),
    ("03001", "0/3", "84"),
    ("03002", None, "84"),
]
TEXT = st.text(alphabet="aAéÉz 1<\u2028", max_size=3)


def safe(code: Any) -> bool:
    return isinstance(code, str) and bool(SAFE_CODE.match(code))


def read_lazy(folder: Path) -> dict[str, Any]:
    """Every lazy file below a build folder: {key: document}, keys checked against paths."""
    documents = {}
    for path in sorted(folder.rglob("*.js")):
        match = LAZY.fullmatch(path.read_text(encoding="utf-8"))
        assert match, path
        key = json.loads(match.group(1))
        assert f"{key}.js" == path.relative_to(folder).as_posix()
        documents[key] = json.loads(match.group(2))
    return documents


def write_year(
    root: Path, table: str, year: int, frame: pd.DataFrame, cuts: list[int], groups: int
) -> None:
    """One year of a gold table as Parquet files cut at `cuts`, in name order."""
    folder = root / "gold" / table / f"annee={year}"
    folder.mkdir(parents=True, exist_ok=True)
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(frame)), len(frame)]
    types = {"nombre_de_logements": pa.int64(), "conso_totale_mwh": pa.float64()}
    schema = pa.schema([(name, types.get(name, pa.string())) for name in frame.columns])
    for part, (start, end) in enumerate(pairwise(bounds)):
        rows = pa.Table.from_pandas(frame.iloc[start:end], schema=schema, preserve_index=False)
        path = folder / f"part-{part:05d}-c000.snappy.parquet"
        pq.write_table(rows, path, row_group_size=max(1, groups))


def key_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by (code_commune, adresse, code_iris), nulls first, as the Spark job does."""
    keys = frame.assign(ckey=frame["code_commune"].fillna(""), ikey=frame["code_iris"].fillna(""))
    return frame.loc[keys.sort_values(["ckey", "adresse", "ikey"], kind="stable").index]


def expected_addresses(
    frame: pd.DataFrame, per_file: int
) -> tuple[dict[str, Any], dict[int, Any], dict[str, str], set[int]]:
    """What the address cutting must give, by pandas: (files, index, regions, years whose
    départements come back in commune order). A file takes a département's communes while
    it holds at most `per_file` addresses."""
    files: dict[str, Any] = {}
    index: dict[int, Any] = {}
    parents: dict[str, str] = {}
    broken = set()
    for year, rows in frame.groupby("annee", sort=True):
        rows = key_order(rows).assign(ckey=lambda f: f["code_commune"].fillna(""))
        firsts = rows.drop_duplicates("ckey", keep="first")
        documents: dict[str, list[dict[str, Any]]] = defaultdict(list)
        communes: dict[str, dict[str, tuple[str, int, int]]] = defaultdict(dict)
        held: dict[str, int] = {}
        order = []
        for first in firsts.itertuples():
            departement = first.code_departement
            if not (safe(first.code_commune) and safe(departement)):
                continue
            group = rows[rows["ckey"] == first.ckey]
            files_of = documents[departement]
            if not files_of or held[departement] + len(group) > per_file:
                files_of.append({})
                held[departement] = 0
            held[departement] += len(group)
            files_of[-1][first.code_commune] = [group[n].tolist() for n in ADDRESS_COLUMNS[4:]]
            part = len(files_of) - 1
            communes[departement][first.code_commune] = (first.nom_commune, len(group), part)
            if first.code_region is not None:
                parents.setdefault(departement, first.code_region)
            if not order or order[-1] != departement:
                order.append(departement)
        if len(order) != len(set(order)):
            broken.add(int(year))
        for departement, parts in documents.items():
            for part, document in enumerate(parts):
                files[f"adresses/{year}/{departement}/{part}"] = document
        index[int(year)] = {d: dict(c) for d, c in communes.items()}
    return files, index, parents, broken


@st.composite
def address_rows(draw: st.DrawFn) -> pd.DataFrame:
    """conso_adresse rows with unique keys: odd codes, nulls, a commune now and then filed
    under another département, names and regions that vary within a commune."""
    rows = {}
    for _ in range(draw(st.integers(0, 60))):
        commune, departement, region = draw(st.sampled_from(COMMUNES))
        if draw(st.integers(0, 9)) == 0:
            departement = draw(st.sampled_from(COMMUNES))[1]
        row = {
            "annee": draw(st.sampled_from([2021, 2022])),
            "code_commune": commune,
            "nom_commune": f"{commune}-{draw(st.integers(0, 1))}",
            "code_departement": departement,
            "code_region": region if draw(st.integers(0, 5)) else None,
            "adresse": draw(TEXT),
            "code_iris": draw(st.sampled_from([None, "0001", "0002", "1000"])),
            "nombre_de_logements": draw(st.one_of(st.none(), st.integers(0, 900))),
            "conso_totale_mwh": draw(
                st.one_of(st.none(), st.floats(0, 1e7, allow_nan=False, allow_infinity=False))
            ),
        }
        key = (row["annee"], commune or "", row["adresse"], row["code_iris"] or "")
        rows.setdefault(key, row)
    columns = ["annee", *ADDRESS_COLUMNS]
    return pd.DataFrame(list(rows.values()), columns=columns, dtype=object)


@contextmanager
def fallbacks() -> Iterator[list[int]]:
    """The years the dashboard sorted in memory, from its warnings."""
    years: list[int] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "not in key order" in record.getMessage():
                years.append(int(record.args[1]))  # type: ignore[index]

    handler = Handler(logging.WARNING)
    logger = logging.getLogger(dashboard.__name__)
    logger.addHandler(handler)
    try:
        yield years
    finally:
        logger.removeHandler(handler)


def check_address_files(
    frame: pd.DataFrame,
    order: str,
    seed: int,
    cuts: list[int],
    groups: int,
    batch_rows: int,
    per_file: int = 10**6,
) -> list[int]:
    """Write the rows in some order ('key', 'shuffled' or 'as given'), files cut at `cuts`,
    `groups` rows a row group; the address files cut from them, read `batch_rows` at a time,
    at most `per_file` addresses a file, must be the pandas groupby's. Returns the years
    sorted in memory."""
    files, index, parents, broken = expected_addresses(frame, per_file)

    with tempfile.TemporaryDirectory() as scratch, fallbacks() as sorted_years:
        root = Path(scratch)
        for year, rows in frame.groupby("annee"):
            rows = rows.drop(columns="annee")
            if order == "key":
                rows = key_order(rows)
            elif order == "shuffled":
                rows = rows.sample(frac=1, random_state=np.random.RandomState(seed % 2**31))
            write_year(root, "conso_adresse", int(year), rows, cuts, groups)
        writer = LazyWriter(Lake(scratch), "build")
        found_parents: dict[str, str] = {}
        found = dashboard._address_files(Lake(scratch), writer, found_parents, batch_rows, per_file)
        written = read_lazy(root / "build")

    assert written == files
    assert found == index
    assert found_parents == parents
    assert writer.files == len(files)
    if order == "key":  # streamed, unless a département comes back
        assert set(sorted_years) == broken
    return sorted_years


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frame=address_rows(),
    order=st.sampled_from(["key", "shuffled"]),
    seed=st.integers(0, 2**32 - 1),
    cuts=st.lists(st.integers(0, 60), max_size=4),
    groups=st.integers(1, 20),
    batch_rows=st.integers(1, 25),
    per_file=st.integers(1, 12),
)
def test_address_files_equal_a_pandas_groupby_of_the_rows_in_key_order(
    frame, order, seed, cuts, groups, batch_rows, per_file
):
    check_address_files(frame, order, seed, cuts, groups, batch_rows, per_file)


def addresses(*rows: tuple[Any, ...]) -> pd.DataFrame:
    """2023 rows (code_commune, code_departement, adresse, code_iris), in that order."""
    return pd.DataFrame(
        [[2023, c, f"Commune {c}", d, "84", a, i, 1, 2.5] for c, d, a, i in rows],
        columns=["annee", *ADDRESS_COLUMNS],
        dtype=object,
    )


# Rows in file order; whether the order is broken (the year then sorted in memory).
ORDERS = {
    "in key order, nulls first": (
        [("01001", "01", "a", None), ("01001", "01", "a", "1"), ("01001", "01", "b", None),
         ("01002", "01", "a", "0"), ("02001", "02", "a", "0")],
        False,
    ),
    "an IRIS back": (
        [("01001", "01", "a", "1"), ("01001", "01", "a", "0"), ("01002", "01", "a", "0")],
        True,
    ),
    "a null IRIS after another": (
        [("01001", "01", "a", "1"), ("01001", "01", "a", None), ("01002", "01", "a", "0")],
        True,
    ),
    "an address back": (
        [("01001", "01", "b", "1"), ("01001", "01", "a", "1"), ("01002", "01", "a", "0")],
        True,
    ),
    "a commune back": (
        [("01001", "01", "a", "1"), ("01002", "01", "a", "1"), ("01001", "01", "b", "0")],
        True,
    ),
    # the streamed file of département 02 holds no commune once sorted: deleted
    "a commune back, first found under another département": (
        [("01001", "02", "b", "0"), ("01002", "01", "a", "0"), ("01001", "01", "a", "0")],
        True,
    ),
    "a département back": (
        [("01001", "01", "a", "0"), ("01002", "02", "a", "0"), ("01003", "01", "a", "0")],
        True,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ORDERS))
@pytest.mark.parametrize(("cuts", "batch_rows"), [([], 100), ([], 1), ([1, 2, 3, 4], 100)])
def test_a_year_out_of_key_order_is_found_and_sorted(name, cuts, batch_rows):
    rows, broken = ORDERS[name]

    sorted_years = check_address_files(addresses(*rows), "as given", 0, cuts, 1, batch_rows)

    assert sorted_years == ([2023] if broken else [])


COMMUNE_ROWS = st.fixed_dictionaries(
    {
        "commune": st.sampled_from(COMMUNES),
        "other_departement": st.integers(0, 9),
        "name": st.integers(0, 1),
        "filiere": st.sampled_from(["Electricité", "Gaz", None]),
        "secteur": st.sampled_from(["RESIDENTIEL", "TERTIAIRE", None]),
        "nb_sites": st.one_of(st.none(), st.integers(0, 99)),
        "conso_totale_mwh": st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False)),
        "nb_lignes_masquees": st.integers(0, 3),
    }
)


def commune_frame(draws: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for draw in draws:
        commune, departement, region = draw["commune"]
        if draw["other_departement"] == 0:
            departement = "02"
        rows.append({
            "code_departement": departement, "code_region": region, "code_commune": commune,
            "nom_commune": f"{commune}-{draw['name']}", "filiere": draw["filiere"],
            "code_grand_secteur": draw["secteur"], "nb_sites": draw["nb_sites"],
            "conso_totale_mwh": draw["conso_totale_mwh"],
            "nb_lignes_masquees": draw["nb_lignes_masquees"],
        })  # fmt: skip
    return pd.DataFrame(rows, columns=COMMUNE_COLUMNS, dtype=object)


def expected_communes(frame: pd.DataFrame) -> tuple[dict[str, Any], dict[str, str]]:
    """A year's commune documents and regions by pandas: rows of a département by code_commune
    (nulls last), then as stored."""
    frame = frame[frame["code_departement"].map(safe).astype(bool)]
    keys = frame.assign(nkey=frame["code_commune"].isna(), ckey=frame["code_commune"].fillna(""))
    frame = frame.loc[keys.sort_values(["code_departement", "nkey", "ckey"], kind="stable").index]
    documents: dict[str, Any] = {}
    regions: dict[str, str] = {}
    for departement, rows in frame.groupby("code_departement", sort=True):
        names = {}
        for commune, name in zip(rows["code_commune"], rows["nom_commune"], strict=True):
            names.setdefault("null" if commune is None else commune, name)
        by_filiere = {}
        for filiere, group in rows.groupby(rows["filiere"].fillna("null"), sort=False):
            by_filiere[filiere] = [list(r) for r in group[["code_commune", *COMMUNE_COLUMNS[5:]]]
                                   .itertuples(index=False)]  # fmt: skip
        documents[departement] = {"names": names, "adresses": {}, "parties": {}, "rows": by_filiere}
        known = rows["code_region"].dropna()
        if len(known):
            regions[departement] = known.iloc[0]
    return documents, regions


@settings(max_examples=150, deadline=None)
@given(st.lists(COMMUNE_ROWS, max_size=50))
def test_commune_documents_equal_a_pandas_groupby(draws):
    frame = commune_frame(draws)
    table = pa.Table.from_pandas(frame, preserve_index=False, schema=pa.schema(
        [(n, pa.int64() if n in ("nb_sites", "nb_lignes_masquees")
          else pa.float64() if n == "conso_totale_mwh" else pa.string()) for n in frame.columns]
    ))  # fmt: skip

    regions, made = commune_documents(table)
    documents = dict(made)

    expected, expected_regions = expected_communes(frame)
    assert json.loads(lazy_file("x", documents)[len('window.__lazy__["x"] = ') : -2]) == expected
    assert regions == expected_regions


def test_lazy_files_are_json_that_cannot_end_a_script():
    payload = lazy_file("adresses/2023/75", {"75056": [["</script>\u2028x"], [None], [2], [1.5]]})

    assert payload.startswith(b'window.__lazy__["adresses/2023/75"] = ')
    assert b"<" not in payload and "\u2028".encode() not in payload
    document = json.loads(LAZY.fullmatch(payload.decode()).group(2))  # type: ignore[union-attr]
    assert document == {"75056": [["</script>\u2028x"], [None], [2], [1.5]]}


# --- a whole small dashboard ---------------------------------------------------------------

YEARS = [2022, 2023]


def small_lake(root: Path, ordered: bool) -> Path:
    """A gold lake of a few départements: every table the dashboard reads, addresses in key
    order (several files a year) or shuffled (one file a year); the same rows either way."""
    rng = np.random.default_rng(5)
    communes = [(c, d, r) for c, d, r in COMMUNES if safe(c) and safe(d) and r]
    words = ["RUE", "AVENUE", "allée", "Éden", "BD", "chemin", "<b>"]
    rows = {}
    for year in YEARS:
        for commune, departement, region in communes:
            for _ in range(400 if commune == "75056" else int(rng.integers(1, 30))):
                adresse = f"{rng.integers(1, 300)} {rng.choice(words)} {rng.choice(words)}"
                iris = f"{commune}{rng.integers(0, 3):04d}" if rng.random() < 0.9 else None
                dwellings = int(rng.integers(1, 80)) if rng.random() < 0.95 else None
                total = round(float(rng.lognormal(3, 1)), 3) if rng.random() < 0.95 else None
                values = [commune, f"Commune {commune}", departement, region, adresse, iris]
                rows.setdefault((year, commune, adresse, iris), [year, *values, dwellings, total])
    adresses = pd.DataFrame(list(rows.values()), columns=["annee", *ADDRESS_COLUMNS], dtype=object)
    for year in YEARS:
        year_rows = adresses[adresses["annee"] == year].drop(columns="annee")
        if ordered:
            write_year(root, "conso_adresse", year, key_order(year_rows), [50, 51, 300, 420], 37)
        else:
            shuffled = year_rows.sample(frac=1, random_state=3)
            write_year(root, "conso_adresse", year, shuffled, [], 10**6)
    ore = {"nb_sites": 10, "conso_moyenne_mwh": 1.25, "nb_lignes_masquees": 0}
    commune_rows = [
        {
            "code_commune": c,
            "nom_commune": f"Commune {c}",
            "code_departement": d,
            "code_region": r,
            "filiere": filiere,
            "code_grand_secteur": secteur,
            "conso_totale_mwh": float(rng.integers(1, 10**6)) / 8,
            **ore,
        }
        for c, d, r in communes
        for filiere in ("Electricité", "Gaz")
        for secteur in ("RESIDENTIEL", "TERTIAIRE")
    ]
    departement_rows = [
        {
            "code_departement": d,
            "nom_departement": f"Dép {d}",
            "code_region": r,
            "filiere": "Gaz",
            "code_grand_secteur": "RESIDENTIEL",
            "conso_totale_mwh": 12.5,
            **ore,
        }
        for d, r in sorted({(d, r) for _, d, r in communes})
    ]
    daily_rows = [
        {
            "date": date(2023, 1, 1) + timedelta(days=n),
            "code_region": region,
            "electricite_mwh": 10.0 + n,
            "gaz_mwh": 5.0,
            "nb_pas_electricite": 48,
            "nb_pas_gaz": 24,
        }
        for n in range(20)
        for region in ("FR", "84", "11")
    ]
    tables = {
        "conso_commune": pd.DataFrame(commune_rows),
        "conso_departement": pd.DataFrame(departement_rows),
        "conso_journaliere": pd.DataFrame(daily_rows),
        "conso_nationale": pd.DataFrame(
            [{"gaz_mwh": 1.0, "electricite_mwh": 2.0, "total_mwh": 3.0}]
        ),
    }
    for table, frame in tables.items():
        for year in YEARS if table == "conso_commune" else [2023]:
            folder = root / "gold" / table / f"annee={year}"
            folder.mkdir(parents=True)
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "p.parquet")
    return root


PER_FILE = 40  # addresses an address file holds, unless one commune has more


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[bool, tuple[dict[str, Any], dict[str, Any], Path]]:
    """The dashboard of the small lake in key order and shuffled: (page data, lazy files)."""
    built = {}
    for ordered in (True, False):
        root = small_lake(tmp_path_factory.mktemp("ordered" if ordered else "shuffled"), ordered)
        with fallbacks() as sorted_years, pytest.MonkeyPatch.context() as patch:
            patch.setattr(dashboard, "ADDRESSES_PER_FILE", PER_FILE)
            page = Path(build_dashboard(Lake(str(root))))
        assert sorted_years == ([] if ordered else YEARS)
        html = page.read_text(encoding="utf-8")
        data = json.loads(re.search(r"window.__dashboard__ = (.*);\n", html).group(1))  # type: ignore[union-attr]
        built[ordered] = (data, read_lazy(page.parent / data["data_dir"]), root)
    return built


def test_a_lake_in_key_order_and_the_same_rows_shuffled_give_the_same_dashboard(builds):
    (ordered, ordered_files, _), (shuffled, shuffled_files, _) = builds[True], builds[False]

    for data in (ordered, shuffled):
        for volatile in ("build", "data_dir", "generated_at", "datasets"):
            data.pop(volatile)
    assert ordered == shuffled
    assert ordered_files == shuffled_files
    kinds = defaultdict(list)
    for key in ordered_files:
        kinds[key.split("/")[0]].append(key)
    assert {"adresses/2023/971/0", "communes/2023/2A"} <= set(ordered_files)
    assert "adresses/2022/01/1" in ordered_files  # 01 has more addresses than PER_FILE in 2022
    assert list(ordered_files["adresses/2023/75/0"]) == ["75056"]  # more than PER_FILE alone


@pytest.mark.parametrize("ordered", [True, False])
def test_address_and_commune_files_equal_duckdb(builds, ordered):
    data, files, root = builds[ordered]
    gold = duckdb.connect()
    glob = root / "gold" / "conso_adresse" / "*" / "*.parquet"
    addresses = gold.sql(
        f"select annee, code_departement, code_commune, adresse, code_iris, "
        f"nombre_de_logements, conso_totale_mwh from read_parquet('{glob}', "
        f"hive_partitioning = true) order by annee, code_commune, adresse, code_iris nulls first"
    ).fetchall()
    expected: dict[str, Any] = defaultdict(lambda: defaultdict(lambda: [[], [], [], []]))
    for annee, departement, commune, *values in addresses:
        for column, value in zip(expected[f"{annee}/{departement}"][commune], values,
                                 strict=True):  # fmt: skip
            column.append(value)
    shown: dict[str, Any] = defaultdict(dict)  # the files of a year and département, merged
    for key, document in files.items():
        if key.startswith("adresses/"):
            _, annee, departement, part = key.split("/")
            communes = files[f"communes/{annee}/{departement}"]
            assert {communes["parties"][c] for c in document} == {int(part)}
            assert sum(len(v[0]) for v in document.values()) <= PER_FILE or len(document) == 1
            shown[f"{annee}/{departement}"].update(document)
            assert departement in data["lazy"]["communes"][annee]
    assert shown == json.loads(json.dumps(expected))
    for year_departement, document in shown.items():
        communes = files[f"communes/{year_departement}"]
        assert communes["adresses"] == {c: len(v[0]) for c, v in document.items()}
        parts = [communes["parties"][c] for c in sorted(document)]
        assert parts == sorted(parts)  # communes in code order
    counts = dict(gold.sql(
        f"select code_departement || '/' || filiere, count(*) from read_parquet("
        f"'{root / 'gold' / 'conso_commune' / '*' / '*.parquet'}', hive_partitioning = true) "
        f"where annee = 2023 group by 1"
    ).fetchall())  # fmt: skip
    assert {
        f"{key.split('/')[2]}/{filiere}": len(rows)
        for key, document in files.items()
        if key.startswith("communes/2023/")
        for filiere, rows in document["rows"].items()
    } == counts


@pytest.mark.s3
def test_s3_lakes_give_the_same_lazy_files(builds, s3_endpoint, s3_bucket, tmp_path):
    for ordered in (True, False):
        name = "ordered" if ordered else "shuffled"
        lake = Lake(f"s3://{s3_bucket}/{name}", s3_endpoint=s3_endpoint)
        lake.fs.put(f"{builds[ordered][2] / 'gold'}/", lake.path("gold"), recursive=True)
        with fallbacks() as sorted_years, pytest.MonkeyPatch.context() as patch:
            patch.setattr(dashboard, "ADDRESSES_PER_FILE", PER_FILE)
            build_dashboard(lake)
        assert sorted_years == ([] if ordered else YEARS)

    local = download_bucket(s3_endpoint, s3_bucket, tmp_path / "copy")
    for ordered in (True, False):
        (folder,) = (
            local / ("ordered" if ordered else "shuffled") / "dashboard" / "data"
        ).iterdir()
        assert read_lazy(folder) == builds[ordered][1]
