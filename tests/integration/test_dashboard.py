"""The offline dashboard in a real headless Chromium, from file:// and over HTTP, against gold.

The browser is Debian's `chromium` (scripts/chromium-setup.sh) driven by Playwright; the
expected figures are read from the gold Parquet files with DuckDB, not through the code
under test.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from flows.gold.tables import GOLD_TABLES
from flows.lake.fs import Lake
from flows.outputs.dashboard import build_dashboard
from flows.sources.catalog import DATASETS
from tests.conftest import TEST_OUTPUT
from tests.support.lakeview import counts_by_year, download_bucket, read_raw

pytestmark = [pytest.mark.spark]

SCREENSHOTS = TEST_OUTPUT / "dashboard"
CHARTS = {"chart-nationale", "chart-secteurs", "chart-journaliere-fr", "chart-journaliere-region"}
SETTLED = (
    "document.documentElement.dataset.ready === '1'"
    " && document.documentElement.dataset.pending === '0'"
)
READ_TABLE = """id => {
  const table = document.getElementById(id);
  if (!table) return null;
  const cells = tr =>
    Object.fromEntries([...tr.cells].map(td => [td.dataset.col, td.dataset.value]));
  return {
    count: Number(table.dataset.rows),
    rows: Object.fromEntries([...table.tBodies[0].rows].map(tr => [tr.dataset.key, cells(tr)])),
    order: [...table.tBodies[0].rows].map(tr => tr.dataset.key),
    footer: table.tFoot ? cells(table.tFoot.rows[0]) : null,
  };
}"""


def quiet(line: str) -> None:
    """Spark's log is not needed by these tests."""


@pytest.fixture(scope="module")
def dashboard(emulator_lake: Path) -> Path:
    """The dashboard of the emulator lake."""
    return Path(build_dashboard(Lake(str(emulator_lake))))


@pytest.fixture(scope="module")
def gold(emulator_lake: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The gold tables as DuckDB views, read as any plain Parquet reader would."""
    connection = duckdb.connect()
    for table in GOLD_TABLES:
        glob = emulator_lake / "gold" / table / "annee=*" / "*.parquet"
        connection.sql(
            f"create view {table} as select * from read_parquet('{glob}', hive_partitioning = true)"
        )
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium, the system's (scripts/chromium-setup.sh installs it)."""
    executable = shutil.which("chromium")
    assert executable, "chromium is not on PATH: run scripts/chromium-setup.sh"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield launched
        launched.close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""


@pytest.fixture(scope="module")
def http_root(dashboard: Path) -> Iterator[str]:
    """The dashboard folder served over HTTP on loopback."""
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(QuietHandler, directory=str(dashboard.parent))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@dataclass
class Visit:
    """An open page, with the errors it logged and the URLs it requested."""

    page: Page
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def settle(self) -> None:
        """Wait until the first render and every lazy load are done."""
        self.page.wait_for_function(SETTLED, timeout=20_000)

    def choose(self, select: str, value: str) -> None:
        self.page.select_option(f"#f-{select}", value)
        self.settle()

    def table(self, table_id: str) -> dict[str, Any]:
        found = self.page.evaluate(READ_TABLE, table_id)
        assert found is not None, f"no table #{table_id}"
        return found

    def options(self, select: str) -> list[str]:
        return self.page.eval_on_selector_all(
            f"#f-{select} option", "options => options.map(o => o.value).filter(v => v)"
        )

    def marks(self) -> dict[str, int]:
        return self.page.eval_on_selector_all(
            "svg.chart",
            "charts => Object.fromEntries("
            "charts.map(c => [c.id, c.querySelectorAll('.mark').length]))",
        )

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector).replace("\u202f", " ").replace("\xa0", " ")

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@contextmanager
def visit(browser: Browser, url: str) -> Iterator[Visit]:
    """Open the dashboard in a fresh browser context and wait for it to settle."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="fr-FR")
    page = context.new_page()
    opened = Visit(page)
    page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: opened.errors.append(str(error)))
    page.on("request", lambda request: opened.requests.append(request.url))
    page.goto(url)
    opened.settle()
    try:
        yield opened
    finally:
        context.close()


@pytest.fixture
def view(browser: Browser, dashboard: Path) -> Iterator[Visit]:
    """The dashboard opened from file://."""
    with visit(browser, dashboard.as_uri()) as opened:
        yield opened
        assert opened.errors == []


def rows_of(gold: duckdb.DuckDBPyConnection, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return gold.execute(sql, list(params)).fetchall()


def same(shown: str, expected: Any, exact: bool = True) -> bool:
    """A cell's data-value against a gold value: empty for null, the same float otherwise."""
    if expected is None or (isinstance(expected, float) and expected != expected):
        return shown == ""
    if exact:
        return float(shown) == float(expected)
    return float(shown) == pytest.approx(float(expected), rel=1e-9, abs=1e-9)


def latest_ore_year(gold: duckdb.DuckDBPyConnection) -> int:
    return rows_of(gold, "select max(annee) from conso_region")[0][0]


def address_commune(gold: duckdb.DuckDBPyConnection, year: int) -> tuple[str, str, str]:
    """(region, département, commune) of the commune with most addresses among the regions
    that also have a daily series."""
    return rows_of(
        gold,
        "select code_region, code_departement, code_commune from conso_adresse "
        "where annee = ? and code_region in (select code_region from conso_journaliere "
        "where annee = ? and code_region <> 'FR') "
        "group by all order by count(*) desc, code_commune limit 1",
        year,
        year,
    )[0]


def assert_area_table(
    shown: dict[str, Any], expected: list[tuple[Any, ...]], exact: bool, name: str
) -> None:
    """Rows (code, nb_sites, total, masked) against the table; the mean is total / sites."""
    assert set(shown["rows"]) == {row[0] for row in expected}, name
    for code, sites, total, masked in expected:
        cells = shown["rows"][code]
        mean = total / sites if total is not None and sites else None
        assert same(cells["nb_sites"], sites), (name, code, cells)
        assert same(cells["conso_totale_mwh"], total, exact), (name, code, cells)
        assert same(cells["conso_moyenne_mwh"], mean, exact), (name, code, cells)
        assert same(cells["nb_lignes_masquees"], masked), (name, code, cells)


def area_totals(
    gold: duckdb.DuckDBPyConnection,
    table: str,
    year: int,
    filiere: str,
    secteur: str = "",
    departement: str | None = None,
) -> list[tuple[Any, ...]]:
    """(code, nb_sites, total, masked) per area of an ORE gold table, summed over sectors
    unless one grand secteur is chosen; communes of one département if one is given."""
    code = {
        "conso_region": "code_region",
        "conso_departement": "code_departement",
        "conso_commune": "code_commune",
    }[table]
    where, params = "", [year, filiere, secteur, secteur]
    if departement is not None:
        where, params = "and code_departement = ?", [*params, departement]
    return rows_of(
        gold,
        f"select {code}, sum(nb_sites), sum(conso_totale_mwh), sum(nb_lignes_masquees) "
        f"from {table} where annee = ? and filiere = ? and (? = '' or code_grand_secteur = ?) "
        f"{where} group by 1",
        *params,
    )


def test_page_is_one_self_contained_file(dashboard):
    html = dashboard.read_text(encoding="utf-8")

    assert re.search(r"<(script|img|iframe)[^>]*\ssrc=", html) is None
    assert re.search(r"<link[^>]*stylesheet", html) is None
    assert "@import" not in html and "url(" not in html
    assert re.search(r"""(src|href)\s*=\s*["']?https?:""", html) is None
    assert html.count("<svg") == 0  # charts are drawn by the page's own script
    assert len(html.encode()) < 400_000
    lazy = sorted(p.relative_to(dashboard.parent).parts[:3] for p in dashboard.parent.rglob("*.js"))
    assert {parts[2] for parts in lazy} == {"adresses", "communes", "journaliere"}


@pytest.mark.parametrize("origin", ["file", "http"])
def test_page_opens_without_errors_and_draws_every_chart(
    browser, dashboard, http_root, gold, origin
):
    url = dashboard.as_uri() if origin == "file" else f"{http_root}index.html"
    region, departement, commune = address_commune(gold, latest_ore_year(gold))

    with visit(browser, url) as opened:
        opened.choose("region", region)
        opened.choose("departement", departement)
        opened.choose("commune", commune)

        marks = opened.marks()
        opened.screenshot(f"{origin}-commune-{commune}")
        addresses = opened.table("table-adresses")
        errors, requests = opened.errors, opened.requests

    assert errors == []
    assert set(marks) == CHARTS
    assert all(count > 0 for count in marks.values()), marks
    assert addresses["count"] > 0
    base = dashboard.parent.as_uri() if origin == "file" else http_root
    assert [url for url in requests if not url.startswith((base, "data:"))] == []
    assert any("/adresses/" in url for url in requests)


def test_year_and_filiere_default_to_the_latest_ore_year_and_electricity(view, gold):
    assert view.page.input_value("#f-annee") == str(latest_ore_year(gold))
    assert view.page.input_value("#f-filiere") == "Electricité"
    assert view.options("annee") == [
        str(y)
        for (y,) in rows_of(gold, "select distinct annee from conso_nationale order by 1 desc")
    ]


def test_choosing_a_region_narrows_the_departements_and_changes_the_figures(view, gold):
    region, count = rows_of(
        gold,
        "select code_region, count(distinct code_departement) from conso_departement "
        "group by 1 order by 2 desc, 1 limit 1",
    )[0]
    everywhere = view.options("departement")
    france = view.page.get_attribute("[data-kpi=conso_totale_mwh]", "data-value")

    view.choose("region", region)

    narrowed = view.options("departement")
    expected = {
        code
        for (code,) in rows_of(
            gold,
            "select distinct code_departement from conso_departement where code_region = ?",
            region,
        )
    }
    assert set(narrowed) == expected and len(narrowed) == count < len(everywhere)
    shown = view.page.get_attribute("[data-kpi=conso_totale_mwh]", "data-value")
    total = rows_of(
        gold,
        "select sum(conso_totale_mwh) from conso_region where annee = ? and filiere = ? "
        "and code_region = ?",
        latest_ore_year(gold),
        "Electricité",
        region,
    )[0][0]
    assert shown != france and same(shown, total, exact=False)
    assert set(view.table("table-departements")["rows"]) == expected
    assert view.table("table-regions")["rows"][region] is not None
    name = rows_of(
        gold, "select any_value(nom_region) from conso_region where code_region = ?", region
    )
    assert name[0][0] in view.text("#kpi-scope")


@pytest.mark.parametrize(
    ("year_offset", "filiere", "secteur"),
    [(0, "Electricité", ""), (1, "Gaz", "TERTIAIRE"), (2, "Electricité", "RESIDENTIEL")],
)
def test_region_and_departement_tables_equal_gold(view, gold, year_offset, filiere, secteur):
    year = latest_ore_year(gold) - year_offset
    exact = secteur != ""  # one gold row per line; otherwise a sum over grand secteurs
    view.choose("annee", str(year))
    view.choose("filiere", filiere)
    if secteur:
        view.choose("secteur", secteur)

    for table in ("conso_region", "conso_departement"):
        expected = area_totals(gold, table, year, filiere, secteur)
        shown = view.table(table.replace("conso_", "table-") + "s")
        assert_area_table(shown, expected, exact, table)
        assert same(shown["footer"]["conso_totale_mwh"], sum(r[2] or 0 for r in expected), False)
    if exact:
        means = rows_of(
            gold,
            "select code_region, conso_moyenne_mwh from conso_region where annee = ? "
            "and filiere = ? and code_grand_secteur = ?",
            year,
            filiere,
            secteur,
        )
        cells = view.table("table-regions")["rows"]
        assert all(same(cells[code]["conso_moyenne_mwh"], mean) for code, mean in means)


def test_commune_table_of_a_departement_equals_gold(view, gold):
    year = latest_ore_year(gold)
    departement, region = rows_of(
        gold,
        "select code_departement, any_value(code_region) from conso_commune where annee = ? "
        "group by 1 order by count(distinct code_commune) desc, 1 limit 1",
        year,
    )[0]
    view.choose("region", region)
    view.choose("departement", departement)

    shown = view.table("table-communes")

    expected = area_totals(gold, "conso_commune", year, "Electricité", departement=departement)
    assert len(expected) > 10
    assert_area_table(shown, expected, exact=False, name="conso_commune")
    communes = {
        code
        for (code,) in rows_of(
            gold,
            "select code_commune from conso_commune where annee = ? and code_departement = ? "
            "union select code_commune from conso_adresse where annee = ? "
            "and code_departement = ?",
            year,
            departement,
            year,
            departement,
        )
    }
    assert set(view.options("commune")) == communes


def test_address_view_lists_the_communes_addresses_with_gold_totals(view, gold):
    year = latest_ore_year(gold)
    region, departement, commune = address_commune(gold, year)
    view.choose("region", region)
    view.choose("departement", departement)
    view.choose("commune", commune)

    shown = view.table("table-adresses")

    expected = rows_of(
        gold,
        "select adresse, code_iris, nombre_de_logements, conso_totale_mwh, conso_moyenne_mwh "
        "from conso_adresse where annee = ? and code_commune = ?",
        year,
        commune,
    )
    assert view.page.get_attribute("#adresses-commune", "data-code") == commune
    assert shown["count"] == len(expected) == len(shown["rows"])
    by_address = {(c["adresse"], c["code_iris"]): c for c in shown["rows"].values()}
    assert len(by_address) == len(expected)
    for adresse, iris, dwellings, total, mean in expected:
        cells = by_address[(adresse, iris)]
        assert same(cells["nombre_de_logements"], dwellings)
        assert same(cells["conso_totale_mwh"], total)
        assert same(cells["conso_moyenne_mwh"], mean)
    assert same(shown["footer"]["conso_totale_mwh"], sum(r[3] for r in expected), exact=False)
    assert same(shown["footer"]["nombre_de_logements"], sum(r[2] for r in expected))

    view.page.fill("#adresses-recherche", expected[0][0])
    filtered = view.table("table-adresses")
    assert 0 < filtered["count"] < len(expected)
    assert all(expected[0][0].lower() in c["adresse"].lower() for c in filtered["rows"].values())


def test_sector_view_matches_conso_secteur(view, gold):
    year = latest_ore_year(gold)

    bars = view.page.eval_on_selector_all(
        "#chart-secteurs .mark", "marks => marks.map(m => [m.dataset.category, m.dataset.value])"
    )
    naf = view.table("table-naf")

    expected = rows_of(
        gold,
        "select code_grand_secteur, sum(conso_totale_mwh) from conso_secteur "
        "where annee = ? and filiere = 'Electricité' group by 1",
        year,
    )
    assert {code for code, _ in bars} == {code for code, _ in expected}
    totals = dict(expected)
    assert all(same(value, totals[code], exact=False) for code, value in bars)
    lines = rows_of(
        gold,
        "select code_grand_secteur, code_secteur_naf2, nb_sites, conso_totale_mwh, "
        "conso_moyenne_mwh, nb_lignes_masquees from conso_secteur "
        "where annee = ? and filiere = 'Electricité'",
        year,
    )
    assert naf["count"] == len(lines) == len(naf["rows"])
    for sector, code, sites, total, mean, masked in lines:
        cells = naf["rows"][f"{sector}|{code if code is not None else ''}"]
        assert same(cells["nb_sites"], sites) and same(cells["nb_lignes_masquees"], masked)
        assert same(cells["conso_totale_mwh"], total) and same(cells["conso_moyenne_mwh"], mean)


def test_national_and_daily_charts_draw_the_gold_values(view, gold):
    year = latest_ore_year(gold)

    bars = view.page.eval_on_selector_all(
        "#chart-nationale .mark",
        "marks => marks.map(m => [m.dataset.series, Number(m.dataset.category), m.dataset.value])",
    )
    lines = view.page.eval_on_selector_all(
        "#chart-journaliere-fr path.mark",
        "marks => Object.fromEntries(marks.map(m => [m.dataset.series, Number(m.dataset.points)]))",
    )

    national = rows_of(gold, "select annee, electricite_mwh, gaz_mwh from conso_nationale")
    assert len(bars) == 2 * len(national)
    expected = {("electricite", y): e for y, e, _ in national} | {
        ("gaz", y): g for y, _, g in national
    }
    assert all(same(value, expected[(series, y)]) for series, y, value in bars)
    days = rows_of(
        gold,
        "select count(electricite_mwh), count(gaz_mwh) from conso_journaliere "
        "where code_region = 'FR' and annee = ?",
        year,
    )[0]
    assert lines == {"electricite": days[0], "gaz": days[1]}


def test_clicking_a_header_sorts_the_rows(view):
    view.page.click("#table-regions th[data-key=nb_sites]")
    descending = view.table("table-regions")
    view.page.click("#table-regions th[data-key=nb_sites]")
    ascending = view.table("table-regions")

    def sites(table: dict[str, Any]) -> list[float]:
        return [float(table["rows"][k]["nb_sites"] or "nan") for k in table["order"]]

    assert sites(descending) == sorted(sites(descending), reverse=True)
    assert sites(ascending) == sorted(sites(ascending))
    assert view.page.get_attribute("#table-regions th[data-key=nb_sites]", "aria-sort") == (
        "ascending"
    )


def test_numbers_are_french_with_units(view, gold):
    year = latest_ore_year(gold)
    electricity = rows_of(gold, "select electricite_mwh from conso_nationale where annee = ?", year)

    cell = view.text(f"#table-nationale tr[data-key='{year}'] td[data-col=electricite_mwh]")
    header = view.text("#table-nationale th[data-key=electricite_mwh]")

    assert cell == f"{electricity[0][0]:,.0f}".replace(",", " ")
    assert "(MWh)" in header
    assert re.fullmatch(
        r"\d{1,3}( \d{3})*(,\d)?", view.text("#kpis [data-kpi=conso_totale_mwh] .value")
    )


def test_data_panel_lists_the_seven_datasets_and_the_checks(view, emulator_lake):
    datasets = view.table("table-datasets")
    checks = view.table("table-checks")

    assert set(datasets["rows"]) == set(DATASETS)
    for name, cells in datasets["rows"].items():
        rows = counts_by_year(emulator_lake, name)
        assert cells["years"] == ",".join(str(y) for y in sorted(rows)), name
        assert cells["rows"] == str(sum(rows.values())), name
        assert cells["quarantined"] == "0", name
        assert cells["source_updated"], name
    masked = len(read_raw(emulator_lake, "commune", "conso_totale_mwh is null"))
    assert masked > 0 and datasets["rows"]["commune"]["masked"] == str(masked)
    assert datasets["rows"]["nationale_annuelle"]["masked"] == ""
    manifest = json.loads(
        max((emulator_lake / "_manifests" / "publish").glob("*.json")).read_text()
    )
    assert {name: cells["status"] for name, cells in checks["rows"].items()} == {
        check["name"]: check["status"] for check in manifest["checks"]
    }
    assert manifest["run_id"] in view.text("#publication")


def copy_lake(source: Path, target: Path, tables: list[str]) -> Path:
    """A lake with the raw zone, the manifests and only some gold tables of another."""
    for folder in ("raw", "_manifests"):
        shutil.copytree(source / folder, target / folder)
    for table in tables:
        shutil.copytree(source / "gold" / table, target / "gold" / table)
    return target


def test_views_of_missing_tables_say_aucune_donnee(browser, emulator_lake, tmp_path):
    lake = copy_lake(emulator_lake, tmp_path / "lake", ["conso_nationale"])
    page = Path(build_dashboard(Lake(str(lake))))

    with visit(browser, page.as_uri()) as opened:
        opened.screenshot("only-conso_nationale")
        marks = opened.marks()
        texts = {view: opened.text(f"#view-{view}") for view in ("territoires", "secteurs")}
        daily = opened.text("#journaliere-fr-body")
        errors = opened.errors

    assert errors == []
    assert marks == {"chart-nationale": 6}
    assert all("Aucune donnée" in text for text in texts.values())
    assert "Aucune donnée" in daily


def test_a_new_build_replaces_the_page_and_keeps_one_previous_data_folder(emulator_lake, tmp_path):
    lake = copy_lake(emulator_lake, tmp_path / "lake", ["conso_nationale", "conso_journaliere"])

    builds = []
    for _ in range(3):
        page = Path(build_dashboard(Lake(str(lake))))
        builds.append(re.search(r'"data_dir":"(data/[^"]+)"', page.read_text()).group(1))

    kept = sorted(p.name for p in (lake / "dashboard" / "data").iterdir())
    assert kept == [b.split("/")[1] for b in builds[1:]]
    assert sorted(p.name for p in (lake / "dashboard").iterdir()) == ["data", "index.html"]


@pytest.mark.s3
def test_s3_lake_reads_gold_through_pointers(emulator_lake, s3_endpoint, s3_bucket, tmp_path):
    lake = Lake(f"s3://{s3_bucket}/lake", s3_endpoint=s3_endpoint)
    source = copy_lake(emulator_lake, tmp_path / "source", ["conso_region", "conso_nationale"])
    lake.fs.put(f"{source}/", lake.path(), recursive=True)
    stray = next((source / "gold" / "conso_region").rglob("*.parquet"))
    lake.fs.put(str(stray), lake.path("gold/conso_region/annee=1999/not-published.parquet"))

    uri = build_dashboard(lake)

    assert uri == f"s3://{s3_bucket}/lake/dashboard/index.html"
    local = download_bucket(s3_endpoint, s3_bucket, tmp_path / "copy") / "lake"
    html = (local / "dashboard" / "index.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r"window.__dashboard__ = (.*);\n", html).group(1))
    assert set(data["region"]) == {str(y) for y in counts_by_year(emulator_lake, "departement")}
    assert {d["name"]: d["rows"] for d in data["datasets"]} == {
        name: sum(counts_by_year(emulator_lake, name).values()) for name in DATASETS
    }
