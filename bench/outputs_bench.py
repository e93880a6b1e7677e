"""Outputs benchmark: the dashboard and the Tableau extracts of a production-sized gold lake.

Generates, with PyArrow and a fixed seed (no Spark), a gold lake laid out like the one the
aggregate step publishes: `gold/<table>/annee=<YYYY>/part-<NNNNN>-<uuid>.c000.snappy.parquet`
with `_SUCCESS` and `_current.json`, the columns of `flows.gold.tables` with the types the
Spark job writes. By default the rows are in each table's key order, cut into files of
PART_ROWS rows whose names sort in that order, as the Spark job writes them, so
`build_dashboard` streams `conso_adresse`; `--unordered` writes one file per year, rows in
shuffled order (the same rows), to measure its fallback (sorting each year in memory).
Sizes at `--scale 1`: `conso_adresse` 8M rows over 2021-2023 (35k communes, four of them
with 100k+ addresses), `conso_commune` 13 years x 35k communes x 2 filières x 5 grands
secteurs, the other tables to match, `conso_journaliere` 13 years x 19 regions ('FR' too).
Next to it, what the dashboard's data panel reads: the raw partitions' `_current.json`
pointers (ORE partitions with a one-column Parquet file, `conso_totale_mwh` with masked
rows, since the panel counts their nulls), a load manifest and a publish manifest. The
gold CSV files are not written (neither output reads them).

Then each step runs in a fresh process, so peak RSS is that step's own: `build_dashboard`,
`write_hyper_extracts` of the eight tables, and the built page opened from file:// in
headless Chromium (load until the charts are drawn, then region, département and the
commune with most addresses, a search and a sort in its addresses, then the smallest commune
of the largest address file of several communes, JS heap).

    uv run python bench/outputs_bench.py [--scale 1.0] [--out PATH] [--unordered]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows.gold.tables import GOLD_TABLES, PARTITION, TABLES  # noqa: E402
from flows.lake import layout  # noqa: E402
from flows.sources.catalog import FILIERES  # noqa: E402

SAMPLES = ROOT / "emulator" / "samples"
SEED = 7
YEARS = list(range(2011, 2024))  # 13 years of ORE, ODRE annual and daily data
ADDRESS_YEARS = [2021, 2022, 2023]
ADDRESS_ROWS = 8_000_000  # over ADDRESS_YEARS, at scale 1
PART_ROWS = 300_000  # rows per Parquet file of an ordered lake
COMMUNES = 35_000
# (code, name, addresses at scale 1): the few very large communes of the address table
BIG_COMMUNES = [
    ("75056", "Paris", 165_000),
    ("13055", "Marseille", 135_000),
    ("31555", "Toulouse", 112_000),
    ("06088", "Nice", 101_000),
]
DOM_COMMUNES = {"971": 32, "972": 34, "973": 22, "974": 24, "976": 17}
SECTEURS = ["AGRICULTURE", "INCONNU", "INDUSTRIE", "RESIDENTIEL", "TERTIAIRE"]
SETTLED = (
    "document.documentElement.dataset.ready === '1'"
    " && document.documentElement.dataset.pending === '0'"
)
STEP_TIMEOUT_MS = 600_000

# The gold schemas as the Spark job writes them: the contract's columns (annee is in the
# folder names only), text unless typed here.
TYPES = {
    "date": pa.date32(),
    "nombre_de_logements": pa.int64(),
    "nb_sites": pa.int64(),
    "nb_lignes_masquees": pa.int64(),
    "nb_pas_electricite": pa.int64(),
    "nb_pas_gaz": pa.int64(),
    "conso_totale_mwh": pa.float64(),
    "conso_moyenne_mwh": pa.float64(),
    "gaz_mwh": pa.float64(),
    "electricite_mwh": pa.float64(),
    "total_mwh": pa.float64(),
}
NOT_NULL = {"adresse", "nb_pas_electricite", "nb_pas_gaz"}
SCHEMAS = {
    name: pa.schema(
        pa.field(column, TYPES.get(column, pa.string()), nullable=column not in NOT_NULL)
        for column in table.columns
        if column != PARTITION
    )
    for name, table in TABLES.items()
}
S = pa.string()
I64 = pa.int64()
F64 = pa.float64()


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak RSS in MB of this process (or of its largest finished child).

    For this process, VmHWM rather than ru_maxrss: Linux carries the parent's high-water
    mark across fork/vfork + exec into ru_maxrss, so a child spawned by a large parent
    would report the parent's peak.
    """
    if who == resource.RUSAGE_SELF:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
    return resource.getrusage(who).ru_maxrss / 1024


def _cpu_seconds() -> float:
    """User and system CPU time of this process so far (all its threads): the time a step
    would take alone on a machine that others share."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _folder_size(folder: Path, pattern: str = "*") -> tuple[int, int]:
    """(files, bytes) of the files below a folder matching a pattern."""
    files = [p for p in folder.rglob(pattern) if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


# ---------- the synthetic lake ----------


class GoldLake:
    """Writes gold tables, raw pointers and manifests like the real pipeline."""

    def __init__(self, root: Path, rng: np.random.Generator, ordered: bool = True) -> None:
        self.root = root
        self.rng = rng
        self.ordered = ordered
        self.run_id = layout.new_load_id()
        self.load_id = self.run_id
        self.files: dict[str, list[str]] = {}
        self.rows: dict[str, int] = {}
        self.parts: dict[str, int] = {}  # files written so far, by table (Spark's task numbers)

    def write(self, table: str, year: int, data: pa.Table) -> None:
        """One year of a gold table as Snappy Parquet.

        Ordered (as the Spark job writes them): rows in the table's key order, cut into
        files of PART_ROWS rows whose names (task number first) sort in that order. Else one
        file, rows in shuffled order. The shuffle is drawn either way, so both lakes hold
        the same rows.
        """
        if data.num_rows > 1:
            data = data.take(pa.array(self.rng.permutation(data.num_rows)))
        data = data.select(SCHEMAS[table].names).cast(SCHEMAS[table])
        job = uuid.UUID(bytes=self.rng.bytes(16))
        pieces = [data]
        if self.ordered:
            keys = [key for key in TABLES[table].keys if key != PARTITION]
            if keys:
                data = data.sort_by([(key, "ascending") for key in keys])
            pieces = [data.slice(start, PART_ROWS) for start in range(0, data.num_rows, PART_ROWS)]
        for piece in pieces:
            part = self.parts.get(table, 0)
            self.parts[table] = part + 1
            name = f"{layout.YEAR_FOLDER}{year}/part-{part:05d}-{job}.c000.snappy.parquet"
            path = self.root / layout.gold_table(table) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(piece, path, compression="snappy")
            self.files.setdefault(table, []).append(name)
        self.rows[table] = self.rows.get(table, 0) + data.num_rows

    def finish_gold(self) -> dict[str, Any]:
        """Pointers, _SUCCESS markers and the publish manifest."""
        now = datetime.now(UTC).isoformat()
        for table, files in self.files.items():
            folder = self.root / layout.gold_table(table)
            (folder / "_SUCCESS").write_bytes(b"")
            pointer = {
                "run_id": self.run_id,
                "table": table,
                "rows": self.rows[table],
                "files": files,
                "published_at": now,
            }
            (self.root / layout.gold_pointer(table)).write_text(json.dumps(pointer, indent=2))
        checks = [
            (
                "communes_vs_departements",
                "warning",
                3,
                "Σ communes <= département total (secrecy only lowers commune sums)",
            ),
            ("departements_vs_regions", "ok", 0, "Σ départements = region"),
            ("ore_vs_odre_national", "ok", 0, "ORE national within 15 % of ODRE national"),
            ("daily_vs_annual", "ok", 0, "Σ daily national within 2 % of annual"),
            (
                "half_hour_completeness",
                "warning",
                15,
                "each local day has 46, 48 or 50 electricity half-hours (DST days 46 and 50)",
            ),
        ]
        manifest = {
            "run_id": self.run_id,
            "lake": str(self.root),
            "published_at": now,
            "years": YEARS,
            "tables": {t: {"rows": self.rows[t], "files": len(f)} for t, f in self.files.items()},
            "skipped": [],
            "checks": [
                {
                    "name": name,
                    "status": status,
                    "summary": summary,
                    "problems": problems,
                    "examples": [{"annee": 2023, "code_departement": "971"}] * min(problems, 3),
                }
                for name, status, problems, summary in checks
            ],
        }
        self._json(layout.publish_manifest(self.run_id), manifest)
        # The publish pointer, as a publish leaves it (here naming the plain views' files):
        # what `energy-pipeline outputs` starts from.
        pointer = {
            **{k: manifest[k] for k in ("run_id", "lake", "published_at", "years")},
            "tables": {
                table: {
                    "run_id": self.run_id,
                    "rows": self.rows[table],
                    "folder": layout.gold_table(table),
                    "files": files,
                }
                for table, files in self.files.items()
            },
            "views": True,
        }
        self._json(layout.PUBLISH_POINTER, pointer)
        return manifest

    def raw_partitions(self, rows: dict[str, dict[int, int]], masked: dict[str, float]) -> None:
        """Raw pointers by dataset and year, ORE files with masked rows, the load manifest."""
        from flows.sources.catalog import DATASETS

        partitions = []
        now = datetime.now(UTC).isoformat()
        for name, by_year in rows.items():
            dataset = DATASETS[name]
            for year, count in by_year.items():
                folder = self.root / layout.raw_partition(name, year)
                folder.mkdir(parents=True, exist_ok=True)
                files = []
                quarantined = int(self.rng.integers(0, 40)) if name in ("adresse", "commune") else 0
                if name in masked:  # the panel counts nulls of conso_totale_mwh in these
                    nulls = self.rng.random(count) < masked[name]
                    values = pa.array(self.rng.lognormal(5, 2, count), mask=nulls)
                    files = [f"part-{self.load_id}-00000.parquet"]
                    pq.write_table(
                        pa.table({"conso_totale_mwh": values}),
                        folder / files[0],
                        compression="zstd",
                    )
                signal = "2025-01-15T06:00:00+00:00"
                pointer = {
                    "load_id": self.load_id,
                    "dataset": name,
                    "year": year,
                    "source_signal": signal,
                    "source_count": count + quarantined,
                    "url": f"https://example.invalid/{dataset.source_id}?annee={year}",
                    "rows": count,
                    "files": files,
                    "committed_at": now,
                }
                (self.root / layout.raw_pointer(name, year)).write_text(
                    json.dumps(pointer, indent=2)
                )
                partitions.append(
                    {
                        "dataset": name,
                        "partition": layout.partition_label(name, year),
                        "year": year,
                        "status": "loaded",
                        "reason": "never loaded",
                        "source_signal": signal,
                        "url": pointer["url"],
                        "rows_expected": count + quarantined,
                        "rows_received": count + quarantined,
                        "rows_written": count,
                        "rows_quarantined": quarantined,
                        "exact_duplicates_dropped": 0,
                        "bytes_received": count * 180,
                        "bytes_written": count * 40,
                        "duration_s": round(count / 70_000, 3),
                        "extra_columns": [],
                        "files": files,
                    }
                )
        self._json(
            layout.load_manifest(self.load_id),
            {
                "load_id": self.load_id,
                "lake": str(self.root),
                "finished_at": now,
                "partitions": partitions,
            },
        )

    def _json(self, relative: str, document: dict[str, Any]) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False))


def _geography() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Départements (code, name, region) and regions (code, name) of the bundled sample."""
    columns = ["code_departement", "nom_departement", "code_region", "nom_region"]
    sample = pd.read_csv(
        SAMPLES / "conso_annuelle_electricite_gaz_departement.csv.gz", dtype=str, usecols=columns
    )
    departements = sample.drop_duplicates("code_departement").sort_values("code_departement")
    regions = departements[["code_region", "nom_region"]].drop_duplicates("code_region")
    return departements.reset_index(drop=True), regions.reset_index(drop=True)


def _communes(rng: np.random.Generator, departements: pd.DataFrame, total: int) -> pd.DataFrame:
    """`total` communes spread over the départements, with INSEE-like codes and sample names."""
    codes = departements["code_departement"].tolist()
    counts = {code: 0 for code in codes}
    for code, size in DOM_COMMUNES.items():
        if code in counts:
            counts[code] = max(1, round(size * total / COMMUNES))
    counts["75"] = 1
    metro = [c for c in codes if c not in DOM_COMMUNES and c != "75"]
    weights = rng.uniform(0.3, 1.7, len(metro))
    left = total - sum(counts.values())
    for code, n in zip(metro, rng.multinomial(left, weights / weights.sum()), strict=True):
        counts[code] = int(min(max(n, 1), 999))
    big = {code[:3] if code.startswith("97") else code[:2]: code for code, _, _ in BIG_COMMUNES}
    rows = []
    for departement in codes:
        width = 2 if departement.startswith("97") else 3
        generated = [f"{departement}{k:0{width}d}" for k in range(1, counts[departement] + 1)]
        wanted = big.get(departement)
        if wanted and wanted not in generated:
            generated[-1] = wanted
        rows.extend((code, departement) for code in sorted(generated))
    frame = pd.DataFrame(rows, columns=["code_commune", "code_departement"])
    frame = frame.merge(departements[["code_departement", "code_region"]], on="code_departement")
    names = (
        pd.read_csv(
            SAMPLES / "conso_annuelle_electricite_gaz_commune.csv.gz",
            dtype=str,
            usecols=["nom_commune"],
        )["nom_commune"]
        .dropna()
        .unique()
    )
    frame["nom_commune"] = names[rng.integers(0, len(names), len(frame))]
    for code, name, _ in BIG_COMMUNES:
        frame.loc[frame["code_commune"] == code, "nom_commune"] = name
    return frame


def _address_sizes(
    rng: np.random.Generator, communes: pd.DataFrame, per_year: int, scale: float
) -> np.ndarray:
    """Addresses per commune: the big communes fixed, the others lognormal (a long tail)."""
    sizes = np.zeros(len(communes), dtype=np.int64)
    codes = communes["code_commune"].to_numpy()
    for code, _, count in BIG_COMMUNES:
        sizes[codes == code] = max(1, round(count * scale))
    others = sizes == 0
    weights = rng.lognormal(0.0, 1.5, int(others.sum()))
    left = max(per_year - int(sizes.sum()), int(others.sum()))
    sizes[others] = np.maximum(1, np.floor(weights / weights.sum() * left)).astype(np.int64)
    return sizes


def _addresses(
    rng: np.random.Generator, communes: pd.DataFrame, sizes: np.ndarray
) -> tuple[pa.Table, np.ndarray]:
    """One year's addresses (strings, IRIS, dwellings, commune columns) and their mean use."""
    sample = pd.read_csv(SAMPLES / "conso_annuelle_electricite_gaz_adresse.csv.gz", dtype=str)
    rows = int(sizes.sum())
    owner = np.repeat(np.arange(len(communes)), sizes)

    def pick(column: str) -> pa.Array:
        pool = pa.array(sample[column], S, from_pandas=True)
        return pool.take(pa.array(rng.integers(0, len(pool), rows)))

    adresse = pc.binary_join_element_wise(
        pick("numero_de_voie"),
        pick("indice_de_repetition"),
        pick("type_de_voie"),
        pick("libelle_de_voie"),
        " ",
        null_handling="skip",
    )
    size_of_row = sizes[owner]
    iris = np.where(size_of_row < 1000, 0, 101 + np.floor(rng.random(rows) * (size_of_row // 800)))
    suffix = pc.utf8_lpad(pa.array(iris.astype(np.int64)).cast(S), 4, "0")
    code_commune = pa.array(communes["code_commune"].to_numpy()[owner], S)
    chosen = rng.integers(0, len(sample), rows)
    dwellings = sample["nombre_de_logements"].astype(np.int64).to_numpy()[chosen]
    means = sample["consommation_annuelle_moyenne_par_site_de_l_adresse_mwh"].astype(float)
    table = pa.table(
        {
            "adresse": adresse,
            "code_iris": pc.binary_join_element_wise(code_commune, suffix, ""),
            "code_commune": code_commune,
            "nom_commune": pa.array(communes["nom_commune"].to_numpy()[owner], S),
            "code_departement": pa.array(communes["code_departement"].to_numpy()[owner], S),
            "code_region": pa.array(communes["code_region"].to_numpy()[owner], S),
            "nombre_de_logements": pa.array(dwellings, I64),
        }
    )
    return table, means.to_numpy()[chosen]


def _with_energy(table: pa.Table, total: np.ndarray, count_column: str) -> pa.Table:
    """Add conso_totale_mwh (rounded) and conso_moyenne_mwh = total / count."""
    count = table.column(count_column)
    totals = pa.array(np.round(total, 3), F64)
    return table.append_column("conso_totale_mwh", totals).append_column(
        "conso_moyenne_mwh", pc.divide(totals, pc.cast(count, F64))
    )


def _ore(
    rng: np.random.Generator, keys: pa.Table, sites_base: np.ndarray, masked_share: float
) -> pa.Table:
    """ORE measures for key rows: some rows partly masked, a few wholly (null sums and mean)."""
    n = keys.num_rows
    sites = np.maximum(1, np.round(sites_base * rng.lognormal(0, 0.5, n))).astype(np.int64)
    total = sites * rng.lognormal(1.5, 1.0, n)
    masked_rows = rng.random(n) < masked_share
    all_masked = masked_rows & (rng.random(n) < 0.4)
    lines = np.where(masked_rows, rng.integers(1, 4, n), 0)
    sites_array = pa.array(sites, I64, mask=all_masked)
    totals = pa.array(np.round(total, 3), F64, mask=all_masked)
    return (
        keys.append_column("nb_sites", sites_array)
        .append_column("conso_totale_mwh", totals)
        .append_column("conso_moyenne_mwh", pc.divide(totals, pc.cast(sites_array, F64)))
        .append_column("nb_lignes_masquees", pa.array(lines, I64))
    )


def _grid(columns: dict[str, list[Any]]) -> pa.Table:
    """Every combination of the given column values, first column slowest."""
    index = pd.MultiIndex.from_product(list(columns.values()), names=list(columns))
    return pa.Table.from_pandas(index.to_frame(index=False), preserve_index=False)


def build_lake(root: Path, scale: float, ordered: bool = True) -> dict[str, Any]:
    """Write the synthetic lake; returns its sizes and the commune with most addresses."""
    rng = np.random.default_rng(SEED)
    lake = GoldLake(root, rng, ordered)
    departements, regions = _geography()
    communes = _communes(rng, departements, max(200, round(COMMUNES * scale)))
    per_year = round(ADDRESS_ROWS * scale / len(ADDRESS_YEARS))
    sizes = _address_sizes(rng, communes, per_year, scale)
    addresses, means = _addresses(rng, communes, sizes)
    dwellings = addresses.column("nombre_de_logements").to_numpy()
    for year in ADDRESS_YEARS:
        total = dwellings * means * rng.uniform(0.9, 1.1, len(means))
        lake.write("conso_adresse", year, _with_energy(addresses, total, "nombre_de_logements"))
    del addresses

    keys = _grid(
        {
            "code_commune": communes["code_commune"].tolist(),
            "filiere": FILIERES,
            "code_grand_secteur": SECTEURS,
        }
    )
    position = np.repeat(np.arange(len(communes)), len(FILIERES) * len(SECTEURS))
    for column in ["nom_commune", "code_departement", "code_region"]:
        keys = keys.append_column(column, pa.array(communes[column].to_numpy()[position], S))
    sites = np.maximum(sizes[position] * 0.6, 3)
    for year in YEARS:
        lake.write("conso_commune", year, _ore(rng, keys, sites, 0.08))

    deps = _grid(
        {
            "code_departement": departements["code_departement"].tolist(),
            "filiere": FILIERES,
            "code_grand_secteur": SECTEURS,
        }
    )
    position = np.repeat(np.arange(len(departements)), len(FILIERES) * len(SECTEURS))
    for column in ["nom_departement", "code_region"]:
        deps = deps.append_column(column, pa.array(departements[column].to_numpy()[position], S))
    regs = _grid(
        {
            "code_region": regions["code_region"].tolist(),
            "filiere": FILIERES,
            "code_grand_secteur": SECTEURS,
        }
    )
    position = np.repeat(np.arange(len(regions)), len(FILIERES) * len(SECTEURS))
    regs = regs.append_column("nom_region", pa.array(regions["nom_region"].to_numpy()[position]))
    naf = pd.read_csv(
        SAMPLES / "conso_annuelle_electricite_gaz_departement.csv.gz",
        dtype=str,
        usecols=["code_grand_secteur", "code_secteur_naf2"],
    ).drop_duplicates()
    secteurs = pa.Table.from_pandas(
        pd.concat([naf.assign(filiere=f) for f in FILIERES]), preserve_index=False
    )
    for year in YEARS:
        lake.write("conso_departement", year, _ore(rng, deps, np.full(deps.num_rows, 4e3), 0.02))
        lake.write("conso_region", year, _ore(rng, regs, np.full(regs.num_rows, 3e4), 0.0))
        lake.write("conso_secteur", year, _ore(rng, secteurs, np.full(len(secteurs), 5e3), 0.02))

    metro = regions[regions["code_region"].astype(int) >= 11]
    for year in YEARS:
        gaz, elec = rng.uniform(3.6e8, 4.6e8), rng.uniform(4.3e8, 4.8e8)
        lake.write(
            "conso_nationale",
            year,
            pa.table({"gaz_mwh": [gaz], "electricite_mwh": [elec], "total_mwh": [gaz + elec]}),
        )
        g = rng.uniform(5e6, 6e7, len(metro))
        e = rng.uniform(5e6, 6e7, len(metro))
        lake.write(
            "conso_regionale_brute",
            year,
            pa.table(
                {
                    "code_region": metro["code_region"].tolist(),
                    "nom_region": metro["nom_region"].tolist(),
                    "gaz_mwh": g,
                    "electricite_mwh": e,
                    "total_mwh": g + e,
                }
            ),
        )

    daily_regions = ["FR", *regions["code_region"].tolist()]
    for year in YEARS:
        days = np.arange(np.datetime64(f"{year}-01-01"), np.datetime64(f"{year + 1}-01-01"))
        n = len(days) * len(daily_regions)
        season = np.tile(
            1 + 0.4 * np.cos(2 * np.pi * np.arange(len(days)) / len(days)), len(daily_regions)
        )
        size = np.repeat(np.where(np.array(daily_regions) == "FR", 1.0, 0.06), len(days))
        half_hours = np.full(n, 48)
        lake.write(
            "conso_journaliere",
            year,
            pa.table(
                {
                    "date": pa.array(np.tile(days, len(daily_regions)), pa.date32()),
                    "code_region": np.repeat(daily_regions, len(days)).tolist(),
                    "electricite_mwh": np.round(
                        1.3e6 * size * season * rng.uniform(0.9, 1.1, n), 1
                    ),
                    "gaz_mwh": np.round(1.2e6 * size * season * rng.uniform(0.9, 1.1, n), 1),
                    "nb_pas_electricite": half_hours,
                    "nb_pas_gaz": np.full(n, 24),
                }
            ),
        )
    manifest = lake.finish_gold()

    ore_raw = {year: int(lake.rows["conso_commune"] / len(YEARS) * 2.5) for year in YEARS}
    lake.raw_partitions(
        {
            "adresse": {y: int(sizes.sum()) for y in ADDRESS_YEARS},
            "commune": ore_raw,
            "departement": {y: int(ore_raw[y] * 0.02) + 8000 for y in YEARS},
            "nationale_annuelle": dict.fromkeys(YEARS, 1),
            "regionale_annuelle": {y: len(metro) for y in YEARS},
            "nationale_quotidienne": dict.fromkeys(YEARS, 17_520),
            "regionale_quotidienne": dict.fromkeys(YEARS, 17_520 * len(metro)),
        },
        masked={"commune": 0.06, "departement": 0.01},
    )
    biggest = int(np.argmax(sizes))
    return {
        "ordered": ordered,
        "tables": manifest["tables"],
        "gold_bytes": _folder_size(root / layout.GOLD, "*.parquet")[1],
        "largest": {
            "year": max(ADDRESS_YEARS),
            "addresses": int(sizes[biggest]),
            **{
                k: str(communes[k].iloc[biggest])
                for k in ["code_commune", "nom_commune", "code_departement", "code_region"]
            },
        },
    }


# ---------- the measured steps (each in its own process) ----------


def build_step(lake_path: str, scale: str, ordered: str) -> dict[str, Any]:
    """The lake is built in a process of its own too, so the parent stays small."""
    return build_lake(Path(lake_path), float(scale), ordered == "ordered")


def dashboard_step(lake_path: str) -> dict[str, Any]:
    """build_dashboard on the lake: wall time, phases, peak RSS, page and lazy file sizes."""
    import flows.outputs.dashboard as dashboard
    from flows.lake.fs import Lake

    phases: dict[str, float] = {}
    peaks: dict[str, float] = {}  # peak RSS so far when each phase ended

    def timed(name: str) -> None:
        inner = getattr(dashboard, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                key = name.strip("_")
                phases[key] = phases.get(key, 0.0) + time.perf_counter() - started
                peaks[key] = _peak_rss_mb()

        setattr(dashboard, name, wrapper)

    for name in [
        "_annual_sections",
        "_address_files",
        "_commune_files",
        "_daily_files",
        "_dataset_panel",
        "render_page",
    ]:
        timed(name)
    sorted_years: list[str] = []  # years of conso_adresse the dashboard had to sort

    class Fallbacks(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "not in key order" in record.getMessage():
                sorted_years.append(str(record.args[1]) if record.args else "?")

    logging.getLogger(dashboard.__name__).addHandler(Fallbacks(logging.WARNING))
    started, cpu = time.perf_counter(), _cpu_seconds()
    dashboard.build_dashboard(Lake(lake_path))
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    build = sorted((Path(lake_path) / layout.dashboard_builds()).iterdir())[-1]
    files, size = _folder_size(build, "*.js")
    largest = max(build.rglob("*.js"), key=lambda p: p.stat().st_size)
    by_kind = {kind.name: _folder_size(kind, "*.js")[0] for kind in sorted(build.iterdir())}
    return {
        "densest": _densest(Path(lake_path), build),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "load_average": os.getloadavg()[0],
        "phases": {k: round(v, 2) for k, v in phases.items()},
        "peak_rss_after_mb": {k: round(v) for k, v in peaks.items()},
        "peak_rss_mb": _peak_rss_mb(),
        "index_bytes": (Path(lake_path) / layout.dashboard_page()).stat().st_size,
        "lazy_files": files,
        "lazy_files_by_kind": by_kind,
        "lazy_bytes": size,
        "largest_lazy_bytes": largest.stat().st_size,
        "largest_lazy_file": str(largest.relative_to(build)),
        "years_sorted_in_memory": sorted_years,
    }


def _lazy(path: Path) -> Any:
    """The document of a lazy file."""
    text = path.read_text(encoding="utf-8")
    return json.loads(text[text.index(" = ") + 3 : text.rindex(";")])


def _densest(lake: Path, build: Path) -> dict[str, Any]:
    """The smallest commune of the default year's largest address file of several communes
    (what a small commune costs the page), from the commune files of the build."""
    html = (lake / layout.dashboard_page()).read_text(encoding="utf-8")
    page = json.loads(html[html.index("window.__dashboard__ = ") + 23 :].split(";\n", 1)[0])
    year = str(page["default_year"])
    files: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for path in sorted((build / "communes" / year).glob("*.js")):
        document = _lazy(path)
        for commune, count in document["adresses"].items():
            part = document.get("parties", {}).get(commune, 0)
            files.setdefault((path.stem, part), []).append((count, commune))
    several = {key: communes for key, communes in files.items() if len(communes) > 1}
    if not several:
        return {}
    (departement, part), communes = max(several.items(), key=lambda f: sum(c for c, _ in f[1]))
    count, commune = min(communes)
    return {
        "annee": year,
        "code_departement": departement,
        "code_region": page["departements"][departement][1],
        "code_commune": commune,
        "addresses": count,
        "file_communes": len(communes),
        "file_addresses": sum(c for c, _ in communes),
    }


def hyper_step(lake_path: str) -> dict[str, Any]:
    """write_hyper_extracts of every gold table: wall time, rows/s, peak RSS, .hyper sizes."""
    from flows.lake.fs import Lake
    from flows.outputs.tableau import write_hyper_extracts

    started = time.perf_counter()
    written = write_hyper_extracts(Lake(lake_path), list(GOLD_TABLES))
    seconds = time.perf_counter() - started
    hyper_files = [Path(lake_path) / layout.gold_hyper(table) for table in written]
    return {
        "seconds": seconds,
        "rows": sum(w["rows"] for w in written.values()),
        "tables": {t: w["seconds"] for t, w in written.items()},
        "peak_rss_mb": _peak_rss_mb(),
        "hyperd_peak_rss_mb": _peak_rss_mb(resource.RUSAGE_CHILDREN),
        "hyper_bytes": sum(p.stat().st_size for p in hyper_files),
    }


def command_step(lake_path: str) -> dict[str, Any]:
    """`energy-pipeline outputs --lake PATH` as a user runs it (its own process: Prefect's
    ephemeral API, the lake's lease, the dashboard and the extracts), timed from outside."""
    command = [str(Path(sys.executable).parent / "energy-pipeline"), "outputs", "--lake", lake_path]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(_peak_rss_mb(resource.RUSAGE_CHILDREN), 1),
        "last_line": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "",
    }


def browser_step(index: str, targets_json: str) -> dict[str, Any]:
    """The page from file:// in headless Chromium: load, the largest commune, the smallest
    commune of the largest address file, heap."""
    import shutil

    from playwright.sync_api import sync_playwright

    targets = json.loads(targets_json)
    largest, densest = targets["largest"], targets["densest"]
    executable = shutil.which("chromium")
    if not executable:
        raise SystemExit("chromium is not on PATH: run scripts/chromium-setup.sh")
    timings: dict[str, float] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="fr-FR")
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        cdp = context.new_cdp_session(page)
        cdp.send("Performance.enable")

        def heap_mb() -> float:
            cdp.send("HeapProfiler.collectGarbage")
            metrics = cdp.send("Performance.getMetrics")["metrics"]
            return {m["name"]: m["value"] for m in metrics}["JSHeapUsedSize"] / 2**20

        def step(name: str, action: Any) -> None:
            started = time.perf_counter()
            action()
            page.wait_for_function(SETTLED, timeout=STEP_TIMEOUT_MS)
            timings[name] = time.perf_counter() - started

        step("load", lambda: page.goto(Path(index).as_uri(), timeout=STEP_TIMEOUT_MS))
        charts = page.eval_on_selector_all(
            "svg.chart",
            "cs => Object.fromEntries(cs.map(c => [c.id, c.querySelectorAll('.mark').length]))",
        )
        heap_loaded = heap_mb()
        step("region", lambda: page.select_option("#f-region", largest["code_region"]))
        step(
            "departement", lambda: page.select_option("#f-departement", largest["code_departement"])
        )
        step("commune", lambda: page.select_option("#f-commune", largest["code_commune"]))
        shown = page.evaluate(
            "() => { const t = document.getElementById('table-adresses');"
            " return t ? [Number(t.dataset.rows), t.tBodies[0].rows.length] : null; }"
        )
        heap_addresses = heap_mb()
        started = time.perf_counter()
        page.fill("#adresses-recherche", "avenue")
        found = page.evaluate(
            "() => Number(document.getElementById('table-adresses').dataset.rows)"
        )
        timings["search"] = time.perf_counter() - started
        page.fill("#adresses-recherche", "")
        started = time.perf_counter()
        page.click("#table-adresses th[data-key=conso_totale_mwh]")
        page.evaluate("() => document.getElementById('table-adresses').dataset.rows")
        timings["sort"] = time.perf_counter() - started
        dense_shown = None
        if densest:
            step("dense_region", lambda: page.select_option("#f-region", densest["code_region"]))
            step(
                "dense_departement",
                lambda: page.select_option("#f-departement", densest["code_departement"]),
            )
            step("dense_commune", lambda: page.select_option("#f-commune", densest["code_commune"]))
            dense_shown = page.evaluate(
                "() => { const t = document.getElementById('table-adresses');"
                " return t ? Number(t.dataset.rows) : null; }"
            )
        browser.close()
    return {
        "timings": timings,
        "charts": charts,
        "addresses_shown": shown,
        "dense_addresses_shown": dense_shown,
        "search_matches": found,
        "heap_loaded_mb": heap_loaded,
        "heap_addresses_mb": heap_addresses,
        "errors": errors[:5],
    }


def _child(mode: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, f"_{mode}", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------- the report ----------


def _mb(value: float) -> str:
    return f"{value / 1e6:,.1f} MB"


def report(
    built: dict[str, Any],
    dash: dict[str, Any],
    hyper: dict[str, Any],
    page: dict[str, Any],
    command: dict[str, Any] | None = None,
) -> str:
    """The figures as a markdown table."""
    largest, densest = built["largest"], dash["densest"]
    t = page["timings"]
    rows = [
        (
            "gold lake",
            f"{sum(v['rows'] for v in built['tables'].values()):,} rows, "
            f"{_mb(built['gold_bytes'])} of Parquet "
            f"(conso_adresse {built['tables']['conso_adresse']['rows']:,}, "
            f"conso_commune {built['tables']['conso_commune']['rows']:,}), "
            + ("in key order" if built["ordered"] else "rows shuffled"),
        ),
        (
            "build_dashboard: wall time",
            f"{dash['seconds']:.1f} s (CPU {dash['cpu_seconds']:.1f} s; "
            f"load average {dash['load_average']:.1f} at its end)",
        ),
        ("build_dashboard: peak RSS", f"{dash['peak_rss_mb']:,.0f} MB"),
        (
            "build_dashboard: where the time goes",
            ", ".join(f"{k} {v:.1f} s" for k, v in dash["phases"].items()),
        ),
        (
            "build_dashboard: conso_adresse years sorted in memory",
            ", ".join(dash["years_sorted_in_memory"]) or "none (streamed)",
        ),
        ("index.html", _mb(dash["index_bytes"])),
        (
            "lazy files",
            f"{dash['lazy_files']:,} files "
            f"({', '.join(f'{k} {v:,}' for k, v in dash['lazy_files_by_kind'].items())}), "
            f"{_mb(dash['lazy_bytes'])} "
            f"(largest {_mb(dash['largest_lazy_bytes'])}, {dash['largest_lazy_file']})",
        ),
        (
            "write_hyper_extracts: wall time",
            f"{hyper['seconds']:.1f} s "
            f"({hyper['rows']:,} rows, {hyper['rows'] / hyper['seconds']:,.0f} rows/s)",
        ),
        (
            "write_hyper_extracts: peak RSS",
            f"{hyper['peak_rss_mb']:,.0f} MB (Python), "
            f"{hyper['hyperd_peak_rss_mb']:,.0f} MB (hyperd)",
        ),
        (".hyper files", _mb(hyper["hyper_bytes"])),
        *(
            [
                (
                    "`energy-pipeline outputs` (own process: Prefect, lease, dashboard, extracts)",
                    f"{command['seconds']:.1f} s, peak RSS {command['peak_rss_mb']:.0f} MB",
                )
            ]
            if command
            else []
        ),
        ("browser: open index.html until charts drawn", f"{t['load']:.2f} s"),
        ("browser: choose region / département", f"{t['region']:.2f} s / {t['departement']:.2f} s"),
        (
            f"browser: choose {largest['nom_commune']} ({largest['code_commune']}, "
            f"{largest['addresses']:,} addresses), table drawn",
            f"{t['commune']:.2f} s",
        ),
        (
            "browser: search 'avenue' / sort by consumption in its addresses",
            f"{t['search']:.2f} s / {t['sort']:.2f} s",
        ),
        (
            "browser: JS heap used after load / with its addresses",
            f"{page['heap_loaded_mb']:,.0f} MB / {page['heap_addresses_mb']:,.0f} MB",
        ),
    ]
    if densest:
        rows.append(
            (
                "browser: then a small commune in the largest address file of several communes "
                f"({densest['code_commune']}, {densest['addresses']:,} addresses; département "
                f"{densest['code_departement']}, its file: {densest['file_communes']} communes, "
                f"{densest['file_addresses']:,} addresses): region / département / commune drawn",
                f"{t['dense_region']:.2f} s / {t['dense_departement']:.2f} s / "
                f"{t['dense_commune']:.2f} s",
            )
        )
    lines = ["| step | figure |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main() -> None:
    """Build the lake, measure each step in its own process, print the figures."""
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        mode, args = sys.argv[1][1:], sys.argv[2:]
        steps = {
            "build": build_step,
            "dashboard": dashboard_step,
            "hyper": hyper_step,
            "browser": browser_step,
            "command": command_step,
        }
        print(json.dumps(steps[mode](*args)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="sizes x scale (0.05: smoke)")
    parser.add_argument("--out", help="build the lake here and keep it (default: a temp dir)")
    parser.add_argument("--json", default="bench/out/outputs.json", help="where the figures go")
    parser.add_argument(
        "--unordered",
        action="store_true",
        help="write the gold rows shuffled, one file per year (the dashboard's fallback)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="outputs-bench-") as scratch:
        lake = Path(args.out).resolve() if args.out else Path(scratch) / "lake"
        if lake.exists() and any(lake.iterdir()):
            raise SystemExit(f"{lake} is not empty")
        started = time.perf_counter()
        order = "unordered" if args.unordered else "ordered"
        built = _child("build", str(lake), str(args.scale), order)
        print(
            f"gold lake at {lake}: {_mb(built['gold_bytes'])}, "
            f"built in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        for table, figures in built["tables"].items():
            print(f"  {table:<22} {figures['rows']:>12,} rows")
        dash = _child("dashboard", str(lake))
        print(
            f"dashboard built in {dash['seconds']:.1f} s; peak RSS (MB) when each phase "
            f"ended: {dash['peak_rss_after_mb']}",
            flush=True,
        )
        hyper = _child("hyper", str(lake))
        print(f"extracts written in {hyper['seconds']:.1f} s", flush=True)
        targets = {"largest": built["largest"], "densest": dash["densest"]}
        page = _child("browser", str(lake / layout.dashboard_page()), json.dumps(targets))
        if page["errors"]:
            print(f"browser errors: {page['errors']}")
        print(f"charts drawn (marks per chart): {page['charts']}")
        print(f"addresses table: {page['addresses_shown']} (rows, rows shown)")
        print(f"smallest commune of the largest file: {page['dense_addresses_shown']} rows")
        command = _child("command", str(lake))
        print(f"energy-pipeline outputs (dashboard + extracts, own process): "
              f"{command['seconds']:.1f} s, peak RSS {command['peak_rss_mb']:.0f} MB; "
              f"{command['last_line']}", flush=True)  # fmt: skip
        print()
        print(report(built, dash, hyper, page, command))
        result = {
            "scale": args.scale,
            "cores": os.cpu_count(),
            "lake": built,
            "dashboard": dash,
            "hyper": hyper,
            "browser": page,
            "command": command,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
