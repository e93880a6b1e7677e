"""The offline dashboard: the current gold tables as one self-contained HTML page.

`build_dashboard` reads the published gold tables and the lake's manifests through
`flows.lake.readers`, the raw zone's figures through `flows.outputs.stats`, and writes
`<lake>/dashboard/index.html`: inline CSS and vanilla JS that draws inline SVG, nothing
fetched from the network. What the page needs up front is embedded in it, reduced to
compact arrays (regions, départements, NAF sectors, national and ODRE regional years, the
data panel). The large tables are cut into lazy files that the page loads on demand with a
`<script>` tag, which works from file:// as well as over HTTP:

    dashboard/index.html
    dashboard/data/<build>/communes/<annee>/<code_departement>.js      communes of a département
    dashboard/data/<build>/adresses/<annee>/<code_departement>/<n>.js  its communes' addresses
    dashboard/data/<build>/journaliere/<code_region>.js                daily series ('FR' too)

A département's addresses go in one file, `0`, or in several when it has more than
ADDRESSES_PER_FILE: a file takes communes in code order up to that many addresses, and a
larger commune has one of its own, so a small commune never comes with much more than itself.
Its commune file says which (`parties`). An address file holds each commune's addresses as
columns (addresses, IRIS, dwellings, totals), in key order.

Each lazy file is `window.__lazy__["<its path without .js>"] = <JSON>;` (encoded with
orjson). A build writes its lazy files into a fresh `data/<build>/` folder, then replaces
index.html as one file, so a page never points at missing or half-written data; the previous
build is kept for pages still open, older ones are deleted.

The addresses are streamed: the Spark job writes `conso_adresse` in key order (annee,
code_commune, adresse, code_iris) across its files, so reading a year's files in name order
gives each commune's addresses together and the communes of a département one after the
other. They are cut as they come, a département at a time, so memory stays that of one
département and one batch whatever the size of a year. A year found out of order (a key
going backwards, or a département coming back) is sorted in memory instead, with the same
result.

The embedded arrays are positional: dashboard.js reads them in the order of the column
lists below, each checked against the gold tables' contract (`flows.gold.tables`) at import.
"""

from __future__ import annotations

import gc
import json
import logging
import posixpath
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from flows.gold.tables import PARTITION, get_table
from flows.lake import layout
from flows.lake.fs import Lake
from flows.lake.readers import (
    gold_files,
    latest_publish,
    read_batches,
    read_files,
    read_gold,
)
from flows.outputs.stats import dataset_stats
from flows.sources.catalog import DATASETS, FILIERES, PORTALS, Dataset

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "dashboard_assets"
KEEP_BUILDS = 2  # the new build and the one pages opened before it may still load from
BATCH_ROWS = 65_536  # addresses read from Parquet at a time
ADDRESSES_PER_FILE = 20_000  # addresses in a file at most, unless one commune has more
SAFE_CODE = re.compile(r"^[0-9A-Za-z]+$")  # codes become file names
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
UNSAFE = [(c.encode(), f"\\u{ord(c):04x}".encode()) for c in "\u2028\u2029"]  # and "<"

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
ADDRESS_ROW = ADDRESS_COLUMNS[4:]  # an address file's columns, per commune
ADDRESS_KEY = ["code_commune", "adresse", "code_iris"]  # conso_adresse's key within a year
ADDRESS_NAMES = ["nom_commune", "code_departement", "code_region"]  # read dictionary-encoded
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
if [*ADDRESS_KEY] != [k for k in get_table(ADRESSE).keys if k != PARTITION]:
    raise ValueError(f"dashboard: {ADRESSE}'s key is not {ADDRESS_KEY}: its cutting relies on it")


def build_dashboard(lake: Lake, manifest: dict[str, Any] | None = None) -> str:
    """Write `<lake>/dashboard/index.html` and its lazy data; returns the page's path or URI.

    `manifest` is the publish manifest to report on; by default the lake's latest one.
    """
    build = layout.new_load_id()
    writer = LazyWriter(lake, layout.dashboard_build(build))
    with _gc_paused():
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


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while millions of small objects are made (rows as tuples
    and lists, none in a cycle): the collector would walk them over and over for nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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


def lazy_file(key: str, document: Any) -> bytes:
    """A lazy file's bytes: `window.__lazy__["<key>"] = <JSON>;`, safe as <script> content."""
    return b"".join(_lazy_parts(key, document))


def _lazy_parts(key: str, document: Any) -> tuple[bytes, bytes, bytes]:
    text = orjson.dumps(document, option=JSON_OPTIONS)
    if b"<" in text:  # as in the page, though a <script src> would not need it
        text = text.replace(b"<", b"\\u003c")
    if b"\xe2" in text:  # a one-byte search first: searching for three bytes is slow
        for character, escaped in UNSAFE:
            text = text.replace(character, escaped)
    return b"window.__lazy__[" + orjson.dumps(key) + b"] = ", text, b";\n"


class LazyWriter:
    """Writes the lazy `window.__lazy__[...]` files of one build."""

    def __init__(self, lake: Lake, folder: str) -> None:
        self.lake = lake
        self.folder = folder
        self.sizes: dict[str, int] = {}  # bytes of each file written, by key
        self._folders: set[str] = set()

    @property
    def files(self) -> int:
        return len(self.sizes)

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())

    def write(self, key: str, document: Any) -> None:
        """`<folder>/<key>.js` holding that document (replaced if this build wrote it)."""
        parts = _lazy_parts(key, document)
        path = self.lake.path(f"{self.folder}/{key}.js")
        if self.lake.is_local:
            folder = path.rsplit("/", 1)[0]
            if folder not in self._folders:
                self.lake.fs.makedirs(folder, exist_ok=True)
                self._folders.add(folder)
        with self.lake.fs.open(path, "wb") as handle:
            for part in parts:
                handle.write(part)
        self.sizes[key] = sum(len(part) for part in parts)

    def remove(self, key: str) -> None:
        """Delete `<folder>/<key>.js`, written by this build but no longer wanted."""
        self.lake.remove(f"{self.folder}/{key}.js")
        self.sizes.pop(key, None)


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


def _text(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A code or name column as plain strings (a file may store them otherwise)."""
    return column if column.type == pa.string() else column.cast(pa.string())


def _runs(codes: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of equal values of a column (nulls equal to one another)."""
    count = len(codes)
    if count == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    filled = pc.fill_null(codes, "")
    changes = pc.not_equal(filled.slice(1), filled.slice(0, count - 1))
    inner = np.flatnonzero(changes.to_numpy(zero_copy_only=False)) + 1
    return np.concatenate(([0], inner)), np.concatenate((inner, [count]))


# --- addresses -----------------------------------------------------------------------------

Communes = dict[str, dict[str, tuple[str, int, int]]]  # {dep: {commune: (nom, count, file)}}
AddressIndex = dict[int, Communes]
Emit = Callable[[str, list[list[Any]], pa.Table], None]


class OrderBroken(Exception):
    """A year of conso_adresse is not in key order: it is sorted in memory instead."""


class AddressCutter:
    """Cuts one year of addresses, fed in key order in batches, into one part per département.

    A commune's rows go together, to the département of its first row; a département's
    communes go together, in the order fed. Each département is emitted as soon as the next
    one starts: `emit(code_departement, [[code_commune, nom_commune, addresses], ...], rows)`
    with the rows of those communes, in the same order. Communes whose codes cannot be file
    names are left out, as in the commune files. Checked (the default), the batches must
    come in key order, a département's communes one after the other: OrderBroken otherwise.
    """

    def __init__(self, emit: Emit, checked: bool = True) -> None:
        self.emit = emit
        self.checked = checked
        self.parents: dict[str, str] = {}  # région of each département (its first commune's)
        self.skipped: dict[Any, int] = defaultdict(int)  # rows left out, by commune
        self._last: tuple[str, str, str] | None = None  # the last key fed (checked only)
        self._commune: str | None = None  # the commune being cut
        self._keep = False  # whether its rows are kept
        self._departement: str | None = None  # the département being collected
        self._pieces: list[pa.RecordBatch] = []
        self._communes: list[list[Any]] = []
        self._done: set[str] = set()

    def feed(self, batch: pa.RecordBatch) -> None:
        """The next rows, in key order."""
        count = batch.num_rows
        if count == 0:
            return
        if self.checked:
            self._check(batch)
        starts, ends = _runs(_text(batch.column("code_commune")))
        first = batch.select(["code_commune", "nom_commune", "code_departement", "code_region"])
        first = first.take(pa.array(starts))
        rows = batch.select(ADDRESS_ROW)
        span: int | None = None  # where this batch's rows of the current département begin
        for code, name, departement, region, start, end in zip(
            pc.fill_null(_text(first.column(0)), "").to_pylist(),
            first.column(1).to_pylist(),
            first.column(2).to_pylist(),
            first.column(3).to_pylist(),
            starts.tolist(),
            ends.tolist(),
            strict=True,
        ):
            if not (start == 0 and code == self._commune):  # a new commune
                self._commune = code
                self._keep = _safe(code) and _safe(departement)
                if self._keep and departement != self._departement:
                    if span is not None:
                        self._pieces.append(rows.slice(span, start - span))
                        span = None
                    self._flush()
                    if departement in self._done:
                        raise OrderBroken(f"département {departement} comes back at {code}")
                    self._departement = departement
                if self._keep:
                    self._communes.append([code, name, 0])
                    if region is not None:
                        self.parents.setdefault(departement, region)
            if self._keep:
                self._communes[-1][2] += end - start
                span = start if span is None else span
            else:
                self.skipped[code] += end - start
                if span is not None:
                    self._pieces.append(rows.slice(span, start - span))
                    span = None
        if span is not None:
            self._pieces.append(rows.slice(span, count - span))

    def close(self) -> None:
        """Emit the last département."""
        self._flush()
        for code, rows in self.skipped.items():
            log.warning("dashboard: %d addresses of commune %r left out (code)", rows, code)

    def _flush(self) -> None:
        if self._departement is None or not self._communes:
            return
        rows = pa.concat_tables(
            [pa.Table.from_batches([piece]) for piece in self._pieces],
            promote_options="permissive",
        )
        self.emit(self._departement, self._communes, rows)
        self._done.add(self._departement)
        self._departement, self._pieces, self._communes = None, [], []

    def _check(self, batch: pa.RecordBatch) -> None:
        """OrderBroken unless the batch's keys go on from the last one without going back."""
        keys = [pc.fill_null(_text(batch.column(name)), "") for name in ADDRESS_KEY]
        head = tuple(key[0].as_py() for key in keys)
        if self._last is not None and head < self._last:
            raise OrderBroken(f"key {head} after {self._last}")
        count = batch.num_rows
        if count > 1:
            commune, adresse, iris = ((k.slice(1), k.slice(0, count - 1)) for k in keys)
            ahead = pc.or_(
                pc.greater(*commune),
                pc.and_(
                    pc.equal(*commune),
                    pc.or_(
                        pc.greater(*adresse),
                        pc.and_(pc.equal(*adresse), pc.greater_equal(*iris)),
                    ),
                ),
            )
            if not pc.all(ahead).as_py():
                wrong = int(np.argmin(ahead.to_numpy(zero_copy_only=False))) + 1
                raise OrderBroken(f"key {tuple(k[wrong].as_py() for k in keys)} after "
                                  f"{tuple(k[wrong - 1].as_py() for k in keys)}")  # fmt: skip
        commune_, adresse_, iris_ = (key[count - 1].as_py() for key in keys)
        self._last = (commune_, adresse_, iris_)


def cut_addresses(
    batches: Iterable[pa.RecordBatch], emit: Emit, checked: bool = True
) -> dict[str, str]:
    """Feed batches to an AddressCutter; returns the départements' régions it found."""
    cutter = AddressCutter(emit, checked)
    for batch in batches:
        cutter.feed(batch)
    cutter.close()
    return cutter.parents


def in_key_order(table: pa.Table, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """A year of addresses as batches in key order, each département's communes together.

    The fallback for a year whose files are not in key order: sorted in memory, then the
    communes grouped by the département of their first row (a stable sort), as a checked
    cutter would have found them.
    """
    keys = pa.table({name: pc.fill_null(_text(table.column(name)), "") for name in ADDRESS_KEY})
    order = pc.sort_indices(keys, sort_keys=[(name, "ascending") for name in ADDRESS_KEY])
    del keys
    starts, ends = _runs(pc.take(_text(table.column("code_commune")), order))
    departements = pc.fill_null(
        pc.take(_text(table.column("code_departement")), pc.take(order, pa.array(starts))), ""
    )
    runs = pc.sort_indices(departements).to_numpy()  # stable: communes stay in order
    lengths = (ends - starts)[runs]
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    positions = np.repeat(starts[runs] - offsets, lengths) + np.arange(len(table))
    order = pc.take(order, pa.array(positions))
    for start in range(0, len(table), batch_rows):
        yield from table.take(order.slice(start, batch_rows)).to_batches()


def _numbers(column: pa.ChunkedArray) -> Any:
    """A numeric column for orjson: a NumPy array (no Python objects) unless it has nulls."""
    if column.null_count == 0 and column.type in (pa.int64(), pa.float64()):
        return column.to_numpy()
    return column.to_pylist()


def file_parts(counts: list[int], most: int) -> list[int]:
    """The file (0, 1, ...) of each commune of a département, given their addresses in order:
    a file takes communes while it holds at most `most` addresses; a larger commune gets a
    file of its own."""
    parts: list[int] = []
    part = held = 0
    for count in counts:
        if held and held + count > most:
            part, held = part + 1, 0
        parts.append(part)
        held += count
    return parts


def address_document(communes: list[list[Any]], rows: pa.Table) -> dict[str, list[Any]]:
    """An address file: {code_commune: [[adresse, ...], [code_iris, ...],
    [nombre_de_logements, ...], [conso_totale_mwh, ...]]}, the columns of its communes' rows
    (`communes`: [code, name, rows] in the order of `rows`)."""
    adresse, iris = (rows.column(name).to_pylist() for name in ADDRESS_ROW[:2])
    dwellings, total = (_numbers(rows.column(name)) for name in ADDRESS_ROW[2:])
    document = {}
    start = 0
    for code, _, count in communes:
        end = start + count
        document[code] = [adresse[start:end], iris[start:end], dwellings[start:end],
                          total[start:end]]  # fmt: skip
        start = end
    return document


def _address_year(
    writer: LazyWriter,
    year: int,
    batches: Iterable[pa.RecordBatch],
    checked: bool,
    written: list[str],
    per_file: int,
) -> tuple[Communes, dict[str, str]]:
    """Cut and write one year of addresses; returns its communes by département and the
    départements' regions. `written` gets the keys of the files written."""
    communes: Communes = {}

    def emit(departement: str, found: list[list[Any]], rows: pa.Table) -> None:
        parts = file_parts([count for _, _, count in found], per_file)
        start = 0
        for part in range(parts[-1] + 1):
            group = [commune for commune, p in zip(found, parts, strict=True) if p == part]
            size = sum(count for _, _, count in group)
            key = f"adresses/{year}/{departement}/{part}"
            writer.write(key, address_document(group, rows.slice(start, size)))
            written.append(key)
            start += size
        communes[departement] = {
            code: (name, count, part)
            for (code, name, count), part in zip(found, parts, strict=True)
        }

    regions = cut_addresses(batches, emit, checked)
    return communes, regions


def _address_files(
    lake: Lake,
    writer: LazyWriter,
    parents: dict[str, str],
    batch_rows: int = BATCH_ROWS,
    per_file: int | None = None,
) -> AddressIndex:
    """The address files of each year and département (several for a département of more
    than `per_file` addresses, ADDRESSES_PER_FILE by default); returns {annee: {dep:
    {commune: (nom, count, file)}}}.

    Streams each year in key order (memory: a département and a batch); a year that is not
    in key order is sorted in memory instead, and the files streamed before that was found
    are written again or deleted. `parents` gets the département regions.
    """
    per_file = per_file or ADDRESSES_PER_FILE
    index: AddressIndex = {}
    for year, files in gold_files(lake, ADRESSE).items():
        written: list[str] = []
        batches = read_batches(lake, files, ADDRESS_COLUMNS, batch_rows, ADDRESS_NAMES)
        try:
            communes, regions = _address_year(writer, year, batches, True, written, per_file)
        except OrderBroken as broken:
            log.warning("dashboard: %s %d is not in key order (%s): sorting it in memory",
                        ADRESSE, year, broken)  # fmt: skip
            streamed, written = set(written), []
            table = read_files(lake, files, ADDRESS_COLUMNS)
            batches = in_key_order(table, batch_rows)
            communes, regions = _address_year(writer, year, batches, False, written, per_file)
            del table, batches
            for key in sorted(streamed - set(written)):
                writer.remove(key)
        index[year] = communes
        for departement, region in regions.items():
            parents.setdefault(departement, region)
        pa.default_memory_pool().release_unused()
    return index


# --- communes ------------------------------------------------------------------------------


def _ranks(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Each value's rank among the column's distinct values in ascending (byte) order, nulls
    last, and the number of ranks: sorting by rank sorts by value, without sorting strings."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(column)
    distinct = len(encoded.dictionary)
    rank = np.empty(distinct + 1, np.int64)
    rank[pc.sort_indices(encoded.dictionary).to_numpy()] = np.arange(distinct)
    rank[distinct] = distinct  # null
    return rank[pc.fill_null(encoded.indices, distinct).to_numpy()], distinct + 1


def _starts(keys: np.ndarray) -> np.ndarray:
    """Where each run of equal keys begins."""
    return np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1]))) if len(keys) else keys


Document = dict[str, Any]


def commune_documents(table: pa.Table) -> tuple[dict[str, str], Iterator[tuple[str, Document]]]:
    """A year of conso_commune as one document per département, from whole columns.

    Returns the départements' regions, and their documents in code order, {"names":
    {commune: nom}, "adresses": {}, "parties": {}, "rows": {filiere: [[commune, secteur,
    nb_sites, total, masquées], ...]}}, each made when asked for (Python values for one
    département at a time). A département's communes come in code order (null last), each
    commune's rows in stored order; a commune's name and a département's region (not null)
    are the first found in that order.
    """
    departement = _text(table.column("code_departement"))
    table = table.set_column(table.schema.get_field_index("code_departement"),
                             "code_departement", departement)  # fmt: skip
    safe = pc.fill_null(pc.match_substring_regex(departement, SAFE_CODE.pattern), False)
    table = table.filter(safe)
    if table.num_rows == 0:
        return {}, iter(())
    departements, _ = _ranks(table.column("code_departement"))
    communes, count = _ranks(table.column("code_commune"))
    filieres, filiere_count = _ranks(table.column("filiere"))
    # (département, commune) order, rows of a commune as stored (stable sorts)
    by_commune = departements * count + communes
    order = np.argsort(by_commune, kind="stable")
    by_commune = by_commune[order]
    named = order[_starts(by_commune)]  # each commune's first row
    names = table.select(["code_departement", "code_commune", "nom_commune"])
    codes, named_communes, named_names = (c.to_pylist() for c in names.take(named).columns)
    regions: dict[str, str] = {}
    known = order[table.column("code_region").is_valid().to_numpy(zero_copy_only=False)[order]]
    if len(known):
        first = table.select(["code_departement", "code_region"])
        first = first.take(pa.array(known[_starts(departements[known])]))
        regions = dict(_columns(first, first.column_names))
    # rows: (département, filière) order, then the order above (a stable sort)
    by_filiere = (departements * filiere_count + filieres)[order]
    regroup = np.argsort(by_filiere, kind="stable")
    order, by_filiere = order[regroup], by_filiere[regroup]
    rows = table.select(["code_commune", *ORE_ROW, "filiere"]).take(pa.array(order))
    row_starts = _starts(departements[order])  # where each département's rows begin
    name_starts = _starts(departements[named])

    def documents() -> Iterator[tuple[str, Document]]:
        bounds = zip(row_starts.tolist(), [*row_starts[1:].tolist(), len(order)],
                     name_starts.tolist(), [*name_starts[1:].tolist(), len(named)],
                     strict=True)  # fmt: skip
        for start, end, first_name, end_name in bounds:
            *values, filiere = (c.to_pylist() for c in rows.slice(start, end - start).columns)
            runs = _starts(by_filiere[start:end]).tolist()
            by = {
                filiere[a]: list(zip(*(column[a:b] for column in values), strict=True))
                for a, b in zip(runs, [*runs[1:], end - start], strict=True)
            }
            names = zip(named_communes[first_name:end_name], named_names[first_name:end_name],
                        strict=True)  # fmt: skip
            yield codes[first_name], {"names": dict(names), "adresses": {}, "parties": {},
                                      "rows": by}  # fmt: skip

    return regions, documents()


def _commune_files(
    lake: Lake, writer: LazyWriter, addresses: AddressIndex, parents: dict[str, str]
) -> dict[str, list[str]]:
    """One lazy file per département and year: its communes' ORE rows, address counts and
    address file (`parties`: its number below `adresses/<annee>/<dep>/`).

    Returns the départements that have a file, by year; `parents` gets their regions.
    """
    written: dict[str, list[str]] = {}
    ore = ((year, _read_year(lake, files)) for year, files in gold_files(lake, COMMUNE).items())
    only_addresses = ((year, None) for year in sorted(addresses))
    for year, table in chain(ore, only_addresses):
        if str(year) in written:
            continue
        regions, documents = commune_documents(table) if table is not None else ({}, iter(()))
        del table
        for departement, region in regions.items():
            parents.setdefault(departement, region)
        with_addresses = addresses.get(year, {})
        done: dict[str, None] = {}
        for departement, document in chain(
            documents,
            ((d, {"names": {}, "adresses": {}, "parties": {}, "rows": {}}) for d in with_addresses),
        ):
            if departement in done:
                continue
            for commune, (name, count, part) in with_addresses.get(departement, {}).items():
                document["names"].setdefault(commune, name)
                document["adresses"][commune] = count
                document["parties"][commune] = part
            writer.write(f"communes/{year}/{departement}", document)
            done[departement] = None
        written[str(year)] = sorted(done)
        pa.default_memory_pool().release_unused()
    return written


def _read_year(lake: Lake, files: list[str]) -> pa.Table:
    """A year of conso_commune, read a batch at a time by one thread: the same table as
    `read_files` makes, with less memory kept by the allocator's per-thread heaps."""
    batches = list(read_batches(lake, files, COMMUNE_COLUMNS, BATCH_ROWS))
    return pa.Table.from_batches(batches) if batches else read_files(lake, files, COMMUNE_COLUMNS)


def _daily_files(lake: Lake, writer: LazyWriter) -> dict[str, list[int]]:
    """One lazy file per region ('FR' for France): {annee: [[date, électricité, gaz], ...]}.

    Returns the years each region's file holds.
    """
    table = read_gold(lake, JOURNALIERE, DAILY_COLUMNS)
    if table is None:
        return {}
    region = _text(table.column("code_region"))
    table = table.set_column(table.schema.get_field_index("code_region"), "code_region", region)
    table = table.filter(pc.fill_null(pc.match_substring_regex(region, SAFE_CODE.pattern), False))
    table = table.sort_by([("code_region", "ascending"), ("date", "ascending")])
    pairs = pc.binary_join_element_wise(
        _text(table.column("code_region")), table.column(PARTITION).cast(pa.string()), "\x00"
    )
    starts, ends = _runs(pairs)
    heads = table.select(["code_region", PARTITION]).take(pa.array(starts))
    days = table.column("date").cast(pa.string()).to_pylist()
    electricite, gaz = (table.column(n).to_pylist() for n in ("electricite_mwh", "gaz_mwh"))
    series: dict[str, dict[str, list[Any]]] = defaultdict(dict)
    for (code, annee), start, end in zip(
        _columns(heads, heads.column_names), starts.tolist(), ends.tolist(), strict=True
    ):
        rows = zip(days[start:end], electricite[start:end], gaz[start:end], strict=True)
        series[code].setdefault(str(annee), []).extend(rows)
    for code, years in series.items():
        writer.write(f"journaliere/{code}", years)
    return {code: sorted(int(y) for y in years) for code, years in sorted(series.items())}


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
