"""The offline dashboard: the current gold tables as one self-contained HTML page.

`build_dashboard` reads the published gold tables and the lake's manifests through
`flows.lake.readers`, the raw zone's figures through `flows.outputs.stats`, and writes
`<lake>/dashboard/index.html`: inline CSS and vanilla JS that draws inline SVG, nothing
fetched from the network. What the page needs up front is embedded in it, reduced to
compact arrays (regions, départements, NAF sectors, national and ODRE regional years, the
data panel). The large tables are cut into lazy files that the page loads on demand with a
`<script>` tag, which works from file:// as well as over HTTP:

    dashboard/index.html
    dashboard/data/<build>/communes/<annee>/<code_departement>.js   communes of a département
    dashboard/data/<build>/adresses/<annee>/<code_commune>.js       addresses of a commune
    dashboard/data/<build>/journaliere/<code_region>.js             daily series ('FR' too)

Each lazy file is `window.__lazy__["<its path without .js>"] = <JSON>;`. A build writes
its lazy files into a fresh `data/<build>/` folder, then replaces index.html as one
file, so a page never points at missing or half-written data; the previous build is
kept for pages still open, older ones are deleted.

The embedded arrays are positional: dashboard.js reads them in the order of the column
lists below, each checked against the gold tables' contract (`flows.gold.tables`) at import.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import chain, groupby
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.gold.tables import PARTITION, get_table
from flows.lake import layout
from flows.lake.fs import Lake
from flows.lake.readers import gold_years, latest_publish, read_gold
from flows.outputs.stats import dataset_stats
from flows.sources.catalog import DATASETS, FILIERES, PORTALS, Dataset

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "dashboard_assets"
KEEP_BUILDS = 2  # the new build and the one pages opened before it may still load from
SLICE_ROWS = 200_000  # addresses turned into Python values at a time
SAFE_CODE = re.compile(r"^[0-9A-Za-z]+$")  # codes become file names

Nested = dict[str, dict[str, list[list[Any]]]]


def _reads(table: str, *columns: str) -> str:
    """A gold table the page reads, once its columns are checked against the contract."""
    spec = get_table(table)
    missing = [column for column in columns if column not in spec.columns]
    if missing:
        raise ValueError(f"dashboard: gold table {table} has no column(s) {missing}")
    return spec.name


# What the page reads of each table, in the order dashboard.js reads its arrays (a page
# format: the names are checked against the contract below, the order is the page's). An
# ORE row carries no mean: the page computes it from the sums it shows (Σ total / Σ sites).
ORE_ROW = ["code_grand_secteur", "nb_sites", "conso_totale_mwh", "nb_lignes_masquees"]
ORE = ["filiere", *ORE_ROW]
ENERGY = ["electricite_mwh", "gaz_mwh", "total_mwh"]
REGION_COLUMNS = ["code_region", "nom_region", *ORE]
DEPARTEMENT_COLUMNS = ["code_departement", "nom_departement", "code_region", *ORE]
SECTEUR_COLUMNS = ["code_secteur_naf2", *ORE]
NATIONALE_COLUMNS = ENERGY
BRUTE_COLUMNS = ["code_region", "nom_region", *ENERGY]
ADDRESS_COLUMNS = ["code_commune", "nom_commune", "code_departement", "code_region", "adresse",
                   "code_iris", "nombre_de_logements", "conso_totale_mwh"]  # fmt: skip
COMMUNE_COLUMNS = ["code_departement", "code_region", "code_commune", "nom_commune", "filiere",
                   *ORE_ROW]  # fmt: skip
DAILY_COLUMNS = ["date", "code_region", "electricite_mwh", "gaz_mwh"]

REGION = _reads("conso_region", *REGION_COLUMNS)
DEPARTEMENT = _reads("conso_departement", *DEPARTEMENT_COLUMNS)
SECTEUR = _reads("conso_secteur", *SECTEUR_COLUMNS)
NATIONALE = _reads("conso_nationale", *NATIONALE_COLUMNS)
REGIONALE_BRUTE = _reads("conso_regionale_brute", *BRUTE_COLUMNS)
ADRESSE = _reads("conso_adresse", *ADDRESS_COLUMNS)
COMMUNE = _reads("conso_commune", *COMMUNE_COLUMNS)
JOURNALIERE = _reads("conso_journaliere", *DAILY_COLUMNS, PARTITION)


def build_dashboard(lake: Lake, manifest: dict[str, Any] | None = None) -> str:
    """Write `<lake>/dashboard/index.html` and its lazy data; returns the page's path or URI.

    `manifest` is the publish manifest to report on; by default the lake's latest one.
    """
    build = layout.new_load_id()
    writer = LazyWriter(lake, layout.dashboard_build(build))
    page = page_data(lake, writer, manifest if manifest is not None else latest_publish(lake))
    page.update(build=build, data_dir=posixpath.relpath(writer.folder, layout.DASHBOARD))
    html = render_page(page).encode()
    temporary = layout.dashboard_staged_page(build)
    if lake.is_local:
        lake.fs.makedirs(lake.path(layout.DASHBOARD), exist_ok=True)
    with lake.fs.open(lake.path(temporary), "wb") as handle:
        handle.write(html)
    lake.replace_file(temporary, layout.dashboard_page())
    _purge_builds(lake)
    log.info(
        "dashboard: index.html %d bytes, %d lazy files (%d bytes) in %s",
        len(html), writer.files, writer.bytes, lake.path(writer.folder),
    )  # fmt: skip
    return f"{lake.uri}/{layout.dashboard_page()}"


def page_data(lake: Lake, writer: LazyWriter, manifest: dict[str, Any] | None) -> dict[str, Any]:
    """What the page embeds; the large tables go to lazy files through `writer`."""
    page = _annual_sections(lake)
    parents: dict[str, str] = {}
    communes = _address_files(lake, writer, parents)
    page["lazy"] = {
        "communes": _commune_files(lake, writer, communes, parents),
        "journaliere": _daily_files(lake, writer),
    }
    for departement, region in parents.items():
        page["departements"].setdefault(departement, [None, region])
        page["regions"].setdefault(region, None)
    page["years"] = sorted(_years(page), reverse=True)
    page["default_year"] = _default_year(page)
    page["publication"] = _publication(manifest)
    page["datasets"] = [_dataset_panel(lake, dataset) for dataset in DATASETS.values()]
    page["generated_at"] = datetime.now(UTC).isoformat()
    return page


def render_page(page: dict[str, Any]) -> str:
    """The HTML page with its CSS, data and script inlined."""
    template = (ASSETS / "index.html").read_text(encoding="utf-8")
    css = (ASSETS / "dashboard.css").read_text(encoding="utf-8")
    script = (ASSETS / "dashboard.js").read_text(encoding="utf-8")
    return (
        template.replace("/*@@CSS@@*/", css)
        .replace("/*@@JS@@*/", script)
        .replace("/*@@DATA@@*/", f"window.__dashboard__ = {to_js(page)};")
    )


def to_js(value: Any) -> str:
    """A JSON value that is also safe inside an HTML <script> element."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


class LazyWriter:
    """Writes the lazy `window.__lazy__[...]` files of one build."""

    def __init__(self, lake: Lake, folder: str) -> None:
        self.lake = lake
        self.folder = folder
        self.files = 0
        self.bytes = 0

    def write(self, documents: dict[str, Any]) -> None:
        """One file per key: `<folder>/<key>.js` holding that document."""
        payloads = {
            self.lake.path(f"{self.folder}/{key}.js"): (
                f"window.__lazy__[{json.dumps(key)}] = {to_js(document)};\n".encode()
            )
            for key, document in documents.items()
        }
        if self.lake.is_local:
            for folder in {path.rsplit("/", 1)[0] for path in payloads}:
                self.lake.fs.makedirs(folder, exist_ok=True)
        if payloads:
            self.lake.fs.pipe(payloads)
        self.files += len(payloads)
        self.bytes += sum(len(p) for p in payloads.values())


def _columns(table: pa.Table, names: list[str]) -> Iterator[tuple[Any, ...]]:
    """Rows as tuples of plain Python values."""
    return zip(*(table.column(n).to_pylist() for n in names), strict=True)


def _nest(table: pa.Table | None, names: list[str]) -> Nested | None:
    """Rows nested by year then filière: {annee: {filiere: [[names...], ...]}}."""
    if table is None:
        return None
    nested: Nested = defaultdict(lambda: defaultdict(list))
    for annee, filiere, *row in _columns(table, [PARTITION, "filiere", *names]):
        nested[str(annee)][filiere].append(row)
    return {year: dict(by_filiere) for year, by_filiere in nested.items()}


def _by_year(table: pa.Table | None, names: list[str]) -> dict[str, list[list[Any]]] | None:
    if table is None:
        return None
    rows: dict[str, list[list[Any]]] = defaultdict(list)
    for annee, *row in _columns(table, [PARTITION, *names]):
        rows[str(annee)].append(row)
    return dict(rows)


def _annual_sections(lake: Lake) -> dict[str, Any]:
    """The small tables, embedded in the page: national, regional, départemental, NAF."""
    region = read_gold(lake, REGION, REGION_COLUMNS)
    departement = read_gold(lake, DEPARTEMENT, DEPARTEMENT_COLUMNS)
    secteur = read_gold(lake, SECTEUR, SECTEUR_COLUMNS)
    nationale = read_gold(lake, NATIONALE, NATIONALE_COLUMNS)
    brute = read_gold(lake, REGIONALE_BRUTE, BRUTE_COLUMNS)
    regions: dict[str, str] = {}
    for table in (brute, region):
        if table is not None:
            regions.update(_columns(table, ["code_region", "nom_region"]))
    departements = {}
    if departement is not None:
        for code, name, parent in _columns(
            departement, ["code_departement", "nom_departement", "code_region"]
        ):
            departements[code] = [name, parent]
    secteurs = set()
    for table in (region, departement, secteur):
        if table is not None:
            secteurs.update(table.column("code_grand_secteur").to_pylist())
    return {
        "regions": regions,
        "departements": departements,
        "filieres": list(FILIERES),
        "secteurs": sorted(s for s in secteurs if s is not None),
        "region": _nest(region, ["code_region", *ORE_ROW]),
        "departement": _nest(departement, ["code_departement", *ORE_ROW]),
        "secteur": _nest(secteur, ["code_secteur_naf2", *ORE_ROW]),
        "nationale": _by_year(nationale, NATIONALE_COLUMNS),
        "regionale_brute": _by_year(brute, BRUTE_COLUMNS),
    }


def _safe(code: Any) -> bool:
    return isinstance(code, str) and bool(SAFE_CODE.match(code))


def _runs(codes: list[Any]) -> Iterator[tuple[Any, int, int]]:
    """(value, start, end) of each run of equal values in a sorted list."""
    start = 0
    for value, run in groupby(codes):
        length = sum(1 for _ in run)
        yield value, start, start + length
        start += length


def _whole_groups(table: pa.Table, key: str, rows: int) -> Iterator[pa.Table]:
    """Slices of about `rows` rows of a table sorted by `key`, never splitting a key's run."""
    codes = table.column(key).combine_chunks().fill_null("")
    count = len(codes)
    if count == 0:
        return
    changes = pc.not_equal(codes.slice(1), codes.slice(0, count - 1))
    ends = [*(np.flatnonzero(changes.to_numpy(zero_copy_only=False)) + 1).tolist(), count]
    start = 0
    for end in ends:
        if end - start >= rows or end == count:
            yield table.slice(start, end - start)
            start = end


AddressIndex = dict[int, dict[str, dict[str, tuple[str, int]]]]


def _address_files(lake: Lake, writer: LazyWriter, parents: dict[str, str]) -> AddressIndex:
    """One lazy file per commune and year; returns {annee: {dep: {commune: (nom, count)}}}.

    A year is sorted by commune, then turned into Python values a slice at a time, so
    memory stays bounded with millions of addresses. `parents` gets the département regions.
    """
    index: AddressIndex = {}
    columns = ADDRESS_COLUMNS
    for year, table in gold_years(lake, ADRESSE, columns):
        ordered = table.sort_by([("code_commune", "ascending"), ("adresse", "ascending")])
        del table
        communes: dict[str, dict[str, tuple[str, int]]] = defaultdict(dict)
        for part in _whole_groups(ordered, "code_commune", SLICE_ROWS):
            values = {name: part.column(name).to_pylist() for name in columns}
            rows = list(zip(*(values[n] for n in columns[4:]), strict=True))
            documents = {}
            for code, start, end in _runs(values["code_commune"]):
                departement = values["code_departement"][start]
                if not (_safe(code) and _safe(departement)):
                    log.warning("dashboard: %d addresses of commune %r left out (code)",
                                end - start, code)  # fmt: skip
                    continue
                documents[f"adresses/{year}/{code}"] = rows[start:end]
                communes[departement][code] = (values["nom_commune"][start], end - start)
                if values["code_region"][start] is not None:
                    parents.setdefault(departement, values["code_region"][start])
            writer.write(documents)
        index[year] = dict(communes)
    return index


def _commune_files(
    lake: Lake, writer: LazyWriter, addresses: AddressIndex, parents: dict[str, str]
) -> dict[str, list[str]]:
    """One lazy file per département and year: its communes' ORE rows and address counts.

    Returns the départements that have a file, by year; `parents` gets their regions.
    """
    columns = COMMUNE_COLUMNS
    written: dict[str, list[str]] = {}
    empty = pa.table({name: pa.array([], pa.string()) for name in columns})
    ore = gold_years(lake, COMMUNE, columns)
    only_addresses = ((year, empty) for year in sorted(addresses))
    for year, table in chain(ore, only_addresses):
        if str(year) in written:
            continue
        documents: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"names": {}, "adresses": {}, "rows": defaultdict(list)}
        )
        ordered = table.sort_by([("code_departement", "ascending"), ("code_commune", "ascending")])
        for departement, region, commune, name, filiere, *measures in _columns(ordered, columns):
            if _safe(departement):
                if region is not None:
                    parents.setdefault(departement, region)
                document = documents[departement]
                document["names"].setdefault(commune, name)
                document["rows"][filiere].append([commune, *measures])
        for departement, communes in addresses.get(year, {}).items():
            for commune, (name, count) in communes.items():
                documents[departement]["names"].setdefault(commune, name)
                documents[departement]["adresses"][commune] = count
        writer.write({f"communes/{year}/{dep}": doc for dep, doc in documents.items()})
        written[str(year)] = sorted(documents)
    return written


def _daily_files(lake: Lake, writer: LazyWriter) -> dict[str, list[int]]:
    """One lazy file per region ('FR' for France): {annee: [[date, électricité, gaz], ...]}.

    Returns the years each region's file holds.
    """
    table = read_gold(lake, JOURNALIERE, DAILY_COLUMNS)
    if table is None:
        return {}
    table = table.sort_by([("code_region", "ascending"), ("date", "ascending")])
    series: dict[str, dict[str, list[list[Any]]]] = defaultdict(lambda: defaultdict(list))
    names = ["code_region", PARTITION, "date", "electricite_mwh", "gaz_mwh"]
    for region, annee, day, electricite, gaz in _columns(table, names):
        if _safe(region):
            series[region][str(annee)].append([day.isoformat(), electricite, gaz])
    writer.write({f"journaliere/{region}": years for region, years in series.items()})
    return {region: sorted(int(y) for y in years) for region, years in sorted(series.items())}


def _years(page: dict[str, Any]) -> set[int]:
    years: set[int] = set()
    for key in ("region", "departement", "secteur", "nationale", "regionale_brute"):
        years.update(int(y) for y in page[key] or {})
    years.update(int(y) for y in page["lazy"]["communes"])
    for daily in page["lazy"]["journaliere"].values():
        years.update(daily)
    return years


def _default_year(page: dict[str, Any]) -> int | None:
    """The latest year of the ORE views, else the latest year of anything."""
    ore = {int(y) for key in ("region", "departement") for y in page[key] or {}}
    ore.update(int(y) for y in page["lazy"]["communes"])
    candidates = ore or set(page["years"])
    return max(candidates) if candidates else None


def _publication(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the page says of the publish run: when, which tables, the consistency checks."""
    if manifest is None:
        return None
    return {
        "run_id": manifest.get("run_id"),
        "published_at": manifest.get("published_at"),
        "tables": {name: t.get("rows") for name, t in (manifest.get("tables") or {}).items()},
        "skipped": manifest.get("skipped") or [],
        "checks": [
            {key: check.get(key) for key in ("name", "status", "summary", "problems")}
            for check in manifest.get("checks") or []
        ],
    }


def _dataset_panel(lake: Lake, dataset: Dataset) -> dict[str, Any]:
    """One line of the data panel: the dataset's catalog entry, then its raw zone's figures."""
    portal = PORTALS.get(dataset.portal)
    return {
        "name": dataset.name,
        "title": dataset.title or dataset.name,
        "portal": portal.title if portal is not None else dataset.portal,
        "source_id": dataset.source_id,
        **dataset_stats(lake, dataset),
    }


def _purge_builds(lake: Lake) -> None:
    """Delete the lazy data of all builds but the last KEEP_BUILDS."""
    folder = lake.path(layout.dashboard_builds())
    if not lake.fs.exists(folder):
        return
    builds = sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in lake.fs.ls(folder))
    for build in builds[:-KEEP_BUILDS]:
        lake.remove(layout.dashboard_build(build))
