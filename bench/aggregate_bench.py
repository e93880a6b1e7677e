"""Aggregation benchmark: a raw lake of 10M+ rows, the Spark job vs DuckDB on the same files.

Builds the lake from the bundled samples' rows (addresses and ORE commune rows replicated
with new keys and jittered values, plus the emulator's other datasets), then prints the
Spark job's wall time with `local[2]` and on a local standalone cluster, the JVM start-up
time alone, and the same eight tables computed by DuckDB as a single-machine reference.

    uv run python bench/aggregate_bench.py [--adresse-rows 8400000] [--commune-rows 1500000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emulator import PortalEmulator  # noqa: E402
from flows.flow import ingest  # noqa: E402
from flows.gold.aggregate import run_aggregate  # noqa: E402
from flows.gold.spark_submit import run_spark_submit, spark_conf  # noqa: E402
from flows.gold.tables import GOLD_TABLES  # noqa: E402
from flows.lake import layout  # noqa: E402
from flows.lake.fs import Lake  # noqa: E402
from flows.runtime import scratch_dir  # noqa: E402
from flows.settings import Settings  # noqa: E402
from flows.sources.catalog import get_dataset  # noqa: E402
from flows.sources.spool import lake_schema  # noqa: E402
from tests.support.gold_reference import queries  # noqa: E402
from tests.support.spark_cluster import standalone_cluster  # noqa: E402

CHUNK = 500_000


def _commit(lake: Path, dataset: str, year: int, chunks: list[pd.DataFrame]) -> None:
    """Write chunks as one committed raw partition."""
    store = Lake(str(lake))
    schema = lake_schema(get_dataset(dataset), [])
    schema = schema.remove(schema.get_field_index("annee"))
    staged = Path(store.path(store.staging(dataset, year, "bench")))
    staged.mkdir(parents=True, exist_ok=True)
    names = []
    for number, chunk in enumerate(chunks):
        for field in schema:
            if field.name not in chunk:
                chunk[field.name] = None
        table = pa.Table.from_pandas(chunk[schema.names], schema=schema, preserve_index=False)
        name = f"part-bench-{number:05d}.parquet"
        pq.write_table(table, staged / name, compression="zstd")
        names.append(name)
    store.commit_partition(dataset, year, "bench", {"files": names})


def _scaled(base: pd.DataFrame, rows: int, rng: np.random.Generator,
            key: str, measures: list[str]) -> list[pd.DataFrame]:  # fmt: skip
    """`rows` rows drawn from `base`, each with a new key suffix and jittered measures."""
    chunks = []
    for start in range(0, rows, CHUNK):
        size = min(CHUNK, rows - start)
        chunk = base.iloc[rng.integers(0, len(base), size)].reset_index(drop=True)
        chunk[key] = (
            chunk[key].astype("str")
            + " #"
            + pd.Series(np.arange(start, start + size)).astype("str")
        )
        for measure in measures:
            chunk[measure] = chunk[measure] * rng.uniform(0.8, 1.2, size)
        chunks.append(chunk)
    return chunks


def build_lake(lake: Path, adresse_rows: int, commune_rows: int) -> int:
    """The emulator's datasets ingested, then adresse and commune scaled up; returns rows."""
    with PortalEmulator() as emulator:
        urls = {f"{portal}_url": url for portal, url in emulator.urls.items()}
        settings = Settings(lake=str(lake), **urls)
        ingest(settings=settings)
    rng = np.random.default_rng(7)
    adresse = pd.read_parquet(lake / layout.raw_partition("adresse", 2023))
    commune = pd.read_parquet(lake / layout.raw_partition("commune", 2023))
    adresse_years, commune_years = range(2018, 2024), range(2021, 2024)
    for year in adresse_years:
        chunks = _scaled(adresse, adresse_rows // len(adresse_years), rng, "libelle_de_voie",
                         ["consommation_annuelle_totale_de_l_adresse_mwh"])  # fmt: skip
        _commit(lake, "adresse", year, chunks)
    for year in commune_years:
        chunks = _scaled(commune, commune_rows // len(commune_years), rng, "operateur",
                         ["conso_totale_mwh"])  # fmt: skip
        _commit(lake, "commune", year, chunks)
    total = 0
    for dataset_dir in (lake / layout.RAW).iterdir():
        for part in dataset_dir.glob(f"{layout.YEAR_FOLDER}*/*.parquet"):
            total += pq.ParquetFile(part).metadata.num_rows
    return total


def jvm_startup_seconds(timeout_s: float = 120.0) -> float:
    """Seconds spark-submit takes to start a local JVM and run an empty PySpark app."""
    tmp = scratch_dir("spark-noop-")
    try:
        app = Path(tmp) / "noop.py"
        app.write_text(
            "from pyspark.sql import SparkSession\nSparkSession.builder.getOrCreate().stop()\n"
        )
        started = time.monotonic()
        run_spark_submit(
            app,
            [],
            master="local[1]",
            conf=spark_conf(tmp, None, "local[1]"),
            jars=[],
            env={},
            timeout_s=timeout_s,
            on_line=lambda _line: None,
        )
        return time.monotonic() - started
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def spark_seconds(lake: Path, master: str) -> float:
    """Wall time of the whole aggregate step (spark-submit, job, publish); prints its steps."""
    started = time.perf_counter()
    run_aggregate(
        Settings(lake=str(lake), spark_master=master, spark_driver_memory="4g"),
        on_line=lambda line: print(f"  [{master}] {line}") if "energy-pipeline:" in line else None,
    )
    return time.perf_counter() - started


def duckdb_seconds(lake: Path) -> float:
    """The same eight tables with DuckDB, each written to Parquet like the gold tables."""
    import duckdb

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        for table, sql in queries(lake).items():
            duckdb.sql(sql).write_parquet(f"{out}/{table}.parquet")
    return time.perf_counter() - started


def main() -> None:
    """Build the lake, time every engine, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adresse-rows", type=int, default=8_400_000)
    parser.add_argument("--commune-rows", type=int, default=1_500_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        lake = Path(folder) / "lake"
        started = time.perf_counter()
        rows = build_lake(lake, args.adresse_rows, args.commune_rows)
        print(f"raw lake: {rows:,} rows, built in {time.perf_counter() - started:.0f} s")
        jvm = jvm_startup_seconds()
        local = spark_seconds(lake, "local[2]")
        with standalone_cluster(cores=2, memory="4g") as master:
            cluster = spark_seconds(lake, master)
        reference = duckdb_seconds(lake)
        print(f"JVM start-up (empty Spark app, local[1]): {jvm:6.1f} s")
        print(f"Spark job, local[2]:                      {local:6.1f} s")
        print(f"Spark job, standalone cluster (2 cores):  {cluster:6.1f} s")
        print(f"DuckDB, same {len(GOLD_TABLES)} tables:                   {reference:6.1f} s")
        print(f"ratio Spark local[2] / DuckDB: {local / reference:.1f}x; "
              f"cluster / local[2]: {cluster / local:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
