"""The offline dashboard: the current gold tables as one self-contained HTML page.

`build_dashboard` reads the published gold tables (as any reader must: every Parquet file
below `gold/<table>/` outside `_`/`.` folders on a local lake, the files `_current.json`
lists on S3) and the lake's manifests, and writes `<lake>/dashboard/index.html`: inline
CSS and vanilla JS that draws inline SVG, nothing fetched from the network. What the
page needs up front is embedded in it, reduced to compact arrays (regions, départements,
NAF sectors, national and ODRE regional years, the data panel). The large tables are
cut into lazy files that the page loads on demand with a `<script>` tag, which works
from file:// as well as over HTTP:

    dashboard/index.html
    dashboard/data/<build>/communes/<annee>/<code_departement>.js   communes of a département
    dashboard/data/<build>/adresses/<annee>/<code_commune>.js       addresses of a commune
    dashboard/data/<build>/journaliere/<code_region>.js             daily series ('FR' too)

Each lazy file is `window.__lazy__["<its path without .js>"] = <JSON>;`. A build writes
its lazy files into a fresh `data/<build>/` folder, then replaces index.html as one
file, so a page never points at missing or half-written data; the previous build is
kept for pages still open, older ones are deleted.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from itertools import chain, groupby
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flows.lake.fs import Lake
from flows.lake.layout import POINTER
from flows.sources.catalog import DATASETS, FILIERES, Dataset

log = logging.getLogger(__name__)

DASHBOARD = "dashboard"
ASSETS = Path(__file__).resolve().parent / "dashboard_assets"
KEEP_BUILDS = 2  # the new build and the one pages opened before it may still load from
SLICE_ROWS = 200_000  # addresses turned into Python values at a time
SAFE_CODE = re.compile(r"^[0-9A-Za-z]+$")  # codes become file names
ORE_MEASURES = ["code_grand_secteur", "nb_sites", "conso_totale_mwh", "nb_lignes_masquees"]
PORTALS = {"odre": "ODRE", "ore": "Agence ORE", "enedis": "Enedis"}

Nested = dict[str, dict[str, list[list[Any]]]]


def build_dashboard(lake: Lake, manifest: dict[str, Any] | None = None) -> str:
    """Write `<lake>/dashboard/index.html` and its lazy data; returns the page's path or URI.

    `manifest` is the publish manifest to report on; by default the lake's latest one.
    """
    build = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    writer = LazyWriter(lake, f"{DASHBOARD}/data/{build}")
    page = page_data(lake, writer, manifest if manifest is not None else _latest_publish(lake))
    page.update(build=build, data_dir=f"data/{build}")
    html = render_page(page).encode()
    temporary = f"{DASHBOARD}/.index-{build}.html"
    if lake.is_local:
        lake.fs.makedirs(lake.path(DASHBOARD), exist_ok=True)
    with lake.fs.open(lake.path(temporary), "wb") as handle:
        handle.write(html)
    lake.replace_file(temporary, f"{DASHBOARD}/index.html")
    _purge_builds(lake)
    log.info(
        "dashboard: index.html %d bytes, %d lazy files (%d bytes) in %s",
        len(html), writer.files, writer.bytes, lake.path(writer.folder),
    )  # fmt: skip
    return f"{lake.uri}/{DASHBOARD}/index.html"


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


def gold_files(lake: Lake, table: str) -> dict[int, list[str]]:
    """The published version's Parquet files of a gold table by year, lake-relative
    (through the publish pointer: all tables of one publish, never a mix)."""
    from flows.lake.publish import table_files

    folder, names = table_files(lake, table)
    by_year: dict[int, list[str]] = defaultdict(list)
    for name in names:
        years = [p.split("=", 1)[1] for p in name.split("/") if p.startswith("annee=")]
        if years and years[0].isdigit():
            by_year[int(years[0])].append(f"{folder}/{name}")
    return dict(sorted(by_year.items()))


def gold_years(lake: Lake, table: str, columns: list[str]) -> Iterator[tuple[int, pa.Table]]:
    """A gold table year by year, with the chosen columns.

    The generator keeps no reference to the year it yields, so a consumer that drops it
    (e.g. after sorting) frees it before the next year is read.
    """
    for year, files in gold_files(lake, table).items():
        yield year, _read_files(lake, files, columns)


def _read_files(lake: Lake, files: list[str], columns: list[str]) -> pa.Table:
    parts = []
    for path in files:
        with lake.fs.open(lake.path(path), "rb") as handle:
            parts.append(pq.read_table(handle, columns=columns))
    return pa.concat_tables(parts)


def read_gold(lake: Lake, table: str, columns: list[str]) -> pa.Table | None:
    """A whole gold table with `annee` as a column, or None when it is not published."""
    parts = [
        part.append_column("annee", pa.array([year] * part.num_rows, pa.int32()))
        for year, part in gold_years(lake, table, columns)
    ]
    return pa.concat_tables(parts) if parts else None


def _columns(table: pa.Table, names: list[str]) -> Iterator[tuple[Any, ...]]:
    """Rows as tuples of plain Python values."""
    return zip(*(table.column(n).to_pylist() for n in names), strict=True)


def _nest(table: pa.Table | None, names: list[str]) -> Nested | None:
    """Rows nested by year then filière: {annee: {filiere: [[names...], ...]}}."""
    if table is None:
        return None
    nested: Nested = defaultdict(lambda: defaultdict(list))
    for annee, filiere, *row in _columns(table, ["annee", "filiere", *names]):
        nested[str(annee)][filiere].append(row)
    return {year: dict(by_filiere) for year, by_filiere in nested.items()}


def _by_year(table: pa.Table | None, names: list[str]) -> dict[str, list[list[Any]]] | None:
    if table is None:
        return None
    rows: dict[str, list[list[Any]]] = defaultdict(list)
    for annee, *row in _columns(table, ["annee", *names]):
        rows[str(annee)].append(row)
    return dict(rows)


def _annual_sections(lake: Lake) -> dict[str, Any]:
    """The small tables, embedded in the page: national, regional, départemental, NAF."""
    ore = ["filiere", *ORE_MEASURES]
    region = read_gold(lake, "conso_region", ["code_region", "nom_region", *ore])
    departement = read_gold(
        lake, "conso_departement", ["code_departement", "nom_departement", "code_region", *ore]
    )
    secteur = read_gold(lake, "conso_secteur", ["code_secteur_naf2", *ore])
    energy = ["electricite_mwh", "gaz_mwh", "total_mwh"]
    nationale = read_gold(lake, "conso_nationale", energy)
    brute = read_gold(lake, "conso_regionale_brute", ["code_region", "nom_region", *energy])
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
        "region": _nest(region, ["code_region", *ORE_MEASURES]),
        "departement": _nest(departement, ["code_departement", *ORE_MEASURES]),
        "secteur": _nest(secteur, ["code_secteur_naf2", *ORE_MEASURES]),
        "nationale": _by_year(nationale, energy),
        "regionale_brute": _by_year(brute, ["code_region", "nom_region", *energy]),
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
    columns = ["code_commune", "nom_commune", "code_departement", "code_region", "adresse",
               "code_iris", "nombre_de_logements", "conso_totale_mwh"]  # fmt: skip
    for year, table in gold_years(lake, "conso_adresse", columns):
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
    columns = ["code_departement", "code_region", "code_commune", "nom_commune", "filiere",
               *ORE_MEASURES]  # fmt: skip
    written: dict[str, list[str]] = {}
    empty = pa.table({name: pa.array([], pa.string()) for name in columns})
    ore = gold_years(lake, "conso_commune", columns)
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
    table = read_gold(lake, "conso_journaliere", ["date", "code_region", "electricite_mwh",
                                                  "gaz_mwh"])  # fmt: skip
    if table is None:
        return {}
    table = table.sort_by([("code_region", "ascending"), ("date", "ascending")])
    series: dict[str, dict[str, list[list[Any]]]] = defaultdict(lambda: defaultdict(list))
    names = ["code_region", "annee", "date", "electricite_mwh", "gaz_mwh"]
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


def _latest_publish(lake: Lake) -> dict[str, Any] | None:
    names = lake.files_below("_manifests/publish", ".json")
    return lake.read_json(f"_manifests/publish/{names[-1]}") if names else None


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


def _raw_pointers(lake: Lake, dataset: str) -> list[dict[str, Any]]:
    """The `_current.json` of every committed raw partition of a dataset."""
    pattern = lake.path(f"raw/{dataset}/annee=*/{POINTER}")
    return [json.loads(lake.fs.cat_file(path)) for path in sorted(lake.fs.glob(pattern))]


def _null_count(lake: Lake, path: str, column: str) -> int:
    """Nulls of a column in a Parquet file, from its footer statistics when it has them."""
    with lake.fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        position = parquet.schema_arrow.get_field_index(column)
        if position < 0:
            return 0
        metadata = parquet.metadata
        counts = []
        for group in range(metadata.num_row_groups):
            statistics = metadata.row_group(group).column(position).statistics
            counts.append(statistics.null_count if statistics and statistics.has_null_count
                          else None)  # fmt: skip
        if None not in counts:
            return sum(c or 0 for c in counts)
        return parquet.read(columns=[column]).column(0).null_count


def _quarantined(lake: Lake, pointers: Iterable[dict[str, Any]]) -> int | None:
    """Rows quarantined by the loads that committed these partitions: the load record each
    pointer carries (committed with the partition), or the load manifest of older lakes."""
    total = 0
    manifests: dict[str, Any] = {}
    for pointer in pointers:
        if isinstance(pointer.get("load"), dict):
            total += pointer["load"].get("rows_quarantined") or 0
            continue
        load_id = str(pointer.get("load_id"))
        if load_id not in manifests:
            manifests[load_id] = lake.read_json(f"_manifests/loads/{load_id}.json")
        manifest = manifests[load_id]
        if manifest is None:
            return None
        partition = f"{pointer['dataset']}/annee={pointer['year']}"
        total += sum(
            p.get("rows_quarantined") or 0
            for p in manifest.get("partitions", [])
            if p.get("partition") == partition and p.get("status") == "loaded"
        )
    return total


def _dataset_panel(lake: Lake, dataset: Dataset) -> dict[str, Any]:
    """One line of the data panel, from the raw partitions' pointers and the load manifests."""
    pointers = _raw_pointers(lake, dataset.name)
    masked = None
    if dataset.masked_measures:
        masked = sum(
            _null_count(lake, lake.path(lake.partition(dataset.name, p["year"]), name),
                        "conso_totale_mwh")
            for p in pointers
            for name in p.get("files", [])
        )  # fmt: skip
    return {
        "name": dataset.name,
        "portal": PORTALS.get(dataset.portal, dataset.portal),
        "source_id": dataset.source_id,
        "source_updated": max((p.get("source_signal") or "" for p in pointers), default="") or None,
        "years": sorted(p["year"] for p in pointers),
        "rows": sum(p.get("rows") or 0 for p in pointers),
        "masked": masked,
        "quarantined": _quarantined(lake, pointers),
        "committed_at": max((p.get("committed_at") or "" for p in pointers), default="") or None,
    }


def _purge_builds(lake: Lake) -> None:
    """Delete the lazy data of all builds but the last KEEP_BUILDS."""
    folder = lake.path(DASHBOARD, "data")
    if not lake.fs.exists(folder):
        return
    builds = sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in lake.fs.ls(folder))
    for build in builds[:-KEEP_BUILDS]:
        lake.remove(f"{DASHBOARD}/data/{build}")
