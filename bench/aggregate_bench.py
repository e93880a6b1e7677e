"""Aggregation benchmark: a raw lake of 10M+ rows, the Spark job vs DuckDB writing the same outputs.

Builds the lake from the bundled samples' rows (addresses and ORE commune rows replicated
with new keys and jittered values, plus the emulator's other datasets), then, in one run:

- the JVM start-up alone (an empty PySpark app, `local[1]`);
- the aggregate step (`run_aggregate`: spark-submit, the job, the flow's CSV files if it
  writes them, the publish) with Spark `local[2]` and on a local standalone cluster (one
  worker, 2 cores), the driver memory left at the Settings default; the job's own
  per-table times (its `energy-pipeline: staged ...` lines and its `_result.json`);
- DuckDB writing the same outputs: per table, Parquet partitioned by `annee` in key order,
  then one CSV sorted by the table's keys (UTF-8, comma, header, doubles as decimal(38, 6),
  nulls as empty fields), read back from that Parquet as the job does;

and prints a per-table table (Spark local[2] | cluster | DuckDB), the step's other costs and
the ratio Spark local[2] / DuckDB. The 10M-row lake is the default; `--full` is 20M address
rows and 3.5M ORE commune rows. A built lake can be kept (`--keep PATH`, reused when PATH
already holds one) or given (`--lake PATH`).

    uv run python bench/aggregate_bench.py [--full | --adresse-rows N --commune-rows N]
        [--engines local,cluster,duckdb] [--keep PATH | --lake PATH]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import math
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the ingest's per-task lines

import flows.gold.aggregate as aggregate_module  # noqa: E402
from emulator import PortalEmulator  # noqa: E402
from flows.flow import ingest  # noqa: E402
from flows.gold.spark_submit import class_archive_dir, run_spark_submit, spark_conf  # noqa: E402
from flows.gold.tables import GOLD_TABLES, TABLES  # noqa: E402
from flows.lake import layout  # noqa: E402
from flows.lake.fs import Lake  # noqa: E402
from flows.runtime import scratch_dir  # noqa: E402
from flows.settings import Settings  # noqa: E402
from flows.sources.catalog import get_dataset  # noqa: E402
from flows.sources.spool import lake_schema  # noqa: E402
from tests.support.gold_reference import queries  # noqa: E402
from tests.support.spark_cluster import standalone_cluster  # noqa: E402

CHUNK = 500_000
ADRESSE_YEARS = range(2018, 2024)
COMMUNE_YEARS = range(2021, 2024)
DEFAULT_ROWS = (8_400_000, 1_500_000)  # with the emulator's datasets: about 10M rows
FULL_ROWS = (20_000_000, 3_500_000)
ENGINES = ("local", "cluster", "duckdb")
LABELS = {"local": "Spark local[2]", "cluster": "Spark cluster", "duckdb": "DuckDB"}

# --- the lake ------------------------------------------------------------------------------


def _commit(lake: Path, dataset: str, year: int, chunks: Iterator[pd.DataFrame]) -> int:
    """Write chunks (as they come) as one committed raw partition; returns its rows."""
    store = Lake(str(lake))
    schema = lake_schema(get_dataset(dataset), [])
    schema = schema.remove(schema.get_field_index("annee"))
    staged = Path(store.path(store.staging(dataset, year, "bench")))
    staged.mkdir(parents=True, exist_ok=True)
    names, rows = [], 0
    for number, chunk in enumerate(chunks):
        for column in schema:
            if column.name not in chunk:
                chunk[column.name] = None
        table = pa.Table.from_pandas(chunk[schema.names], schema=schema, preserve_index=False)
        name = f"part-bench-{number:05d}.parquet"
        pq.write_table(table, staged / name, compression="zstd")
        names.append(name)
        rows += len(chunk)
    store.commit_partition(dataset, year, "bench", {"files": names})
    return rows


def _scaled(base: pd.DataFrame, rows: int, rng: np.random.Generator,
            key: str, measures: list[str]) -> Iterator[pd.DataFrame]:  # fmt: skip
    """`rows` rows drawn from `base`, each with a new key suffix and jittered measures."""
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
        yield chunk


def build_lake(lake: Path, adresse_rows: int, commune_rows: int) -> int:
    """The emulator's datasets ingested, then adresse and commune scaled up (at least the
    rows asked for, spread evenly over their years); returns the lake's rows."""
    with PortalEmulator() as emulator:
        urls: dict[str, Any] = {f"{portal}_url": url for portal, url in emulator.urls.items()}
        ingest(settings=Settings(lake=str(lake), **urls))
    rng = np.random.default_rng(7)
    adresse = pd.read_parquet(lake / layout.raw_partition("adresse", 2023))
    commune = pd.read_parquet(lake / layout.raw_partition("commune", 2023))
    per_year = math.ceil(adresse_rows / len(ADRESSE_YEARS))
    for year in ADRESSE_YEARS:
        chunks = _scaled(adresse, per_year, rng, "libelle_de_voie",
                         ["consommation_annuelle_totale_de_l_adresse_mwh"])  # fmt: skip
        _commit(lake, "adresse", year, chunks)
    per_year = math.ceil(commune_rows / len(COMMUNE_YEARS))
    for year in COMMUNE_YEARS:
        chunks = _scaled(commune, per_year, rng, "operateur", ["conso_totale_mwh"])
        _commit(lake, "commune", year, chunks)
    return sum(lake_rows(lake).values())


def lake_rows(lake: Path) -> dict[str, int]:
    """Rows of each raw dataset (Parquet footers of its committed partitions)."""
    rows: dict[str, int] = {}
    for dataset_dir in sorted((lake / layout.RAW).iterdir()):
        parts = dataset_dir.glob(f"{layout.YEAR_FOLDER}*/*.parquet")
        rows[dataset_dir.name] = sum(pq.ParquetFile(part).metadata.num_rows for part in parts)
    return rows


def describe_lake(lake: Path) -> str:
    rows = lake_rows(lake)
    size = sum(p.stat().st_size for p in (lake / layout.RAW).rglob("*.parquet"))
    return (
        f"{sum(rows.values()):,} rows ({rows.get('adresse', 0):,} adresse, "
        f"{rows.get('commune', 0):,} commune), {size / 2**20:,.0f} MiB of Parquet"
    )


# --- Spark ---------------------------------------------------------------------------------


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
            class_archive=class_archive_dir(Settings().spark_class_archive_dir),  # as a run does
        )
        return time.monotonic() - started
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class EngineRun:
    """One engine's figures: per-table seconds by step, rows, and the whole step's costs."""

    label: str
    tables: dict[str, dict[str, float]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)  # ordered: printed as they come
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    total_s: float = math.nan


STAGED = re.compile(r"energy-pipeline: staged (\w+): (\d+) rows (\{.*\})")
WROTE_CSV = re.compile(r"energy-pipeline: wrote (\w+)\.csv: (\d+) rows, .* in ([\d.]+) s")
CHECKS = re.compile(r"energy-pipeline: consistency checks (\{.*\})")


def _literal(text: str) -> dict[str, Any]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {}
    return value if isinstance(value, dict) else {}


def _seconds(figures: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a timings dict, as floats."""
    return {k: float(v) for k, v in figures.items() if isinstance(v, int | float)}


@contextlib.contextmanager
def watching_calls(
    names: tuple[str, ...], record: Callable[[str, float, float], None]
) -> Iterator[None]:
    """While in the block, every call of these functions of the aggregate module (those it
    has) is reported to `record(name, started, ended)` (time.monotonic)."""
    originals = {name: getattr(aggregate_module, name, None) for name in names}

    def watched(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return function(*args, **kwargs)
            finally:
                record(name, started, time.monotonic())

        return call

    for name, function in originals.items():
        if function is not None:
            setattr(aggregate_module, name, watched(name, function))
    try:
        yield
    finally:
        for name, function in originals.items():
            if function is not None:
                setattr(aggregate_module, name, function)


def timing_calls(times: dict[str, float], names: tuple[str, ...]) -> Any:
    """Seconds spent in some functions of the aggregate module while in the block."""

    def add(name: str, started: float, ended: float) -> None:
        times[name] = times.get(name, 0.0) + ended - started

    return watching_calls(names, add)


def spark_run(lake: Path, master: str, label: str, verbose: bool) -> EngineRun:
    """The whole aggregate step with the driver memory left at its default; its figures."""
    run = EngineRun(label)
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        if verbose or "energy-pipeline:" in line:
            print(f"  [{label}] {line}", flush=True)

    calls: dict[str, float] = {}
    started = time.perf_counter()
    report = None
    try:
        with timing_calls(calls, ("run_spark_submit", "write_csvs", "publish_tables")):
            report = aggregate_module.run_aggregate(
                Settings(lake=str(lake), spark_master=master), on_line=on_line
            )
    except Exception as exc:  # the other engines still run; the figures say it failed
        summary = getattr(exc, "summary", None) or "".join(traceback.format_exception_only(exc))
        run.error = f"{type(exc).__name__}: {summary.strip()}"
        print(f"  [{label}] FAILED: {run.error}", flush=True)
        tail = [line for line in lines[-12:] if line.strip()]
        if tail and not verbose:
            print(f"  [{label}] last lines:", *tail, sep="\n    ", flush=True)
    run.total_s = time.perf_counter() - started

    # Per table: the job's printed lines, then its result document (the same figures, or
    # more), then the flow's CSV files (its printed lines, or the report's).
    for line in lines:
        if match := STAGED.search(line):
            name = match.group(1)
            run.rows[name] = int(match.group(2))
            run.tables.setdefault(name, {}).update(_seconds(_literal(match.group(3))))
        elif match := WROTE_CSV.search(line):
            run.tables.setdefault(match.group(1), {})["flow_csv_s"] = float(match.group(3))
        elif (match := CHECKS.search(line)) and "seconds" in _literal(match.group(1)):
            run.costs["job: consistency checks"] = float(_literal(match.group(1))["seconds"])
        elif "energy-pipeline:" in line and "total" in line.lower():
            run.notes.append(line.strip())
    if report is not None:
        result = _result_document(lake, report.run_id)
        for name, figures in (result.get("timings") or {}).items():
            if name in TABLES and isinstance(figures, dict):
                run.tables.setdefault(name, {}).update(_seconds(figures))
            elif name == "checks" and isinstance(figures, dict) and "seconds" in figures:
                run.costs["job: consistency checks"] = float(figures["seconds"])
            elif isinstance(figures, int | float):
                run.costs[f"job: {name}"] = float(figures)
        for name, rows in (result.get("tables") or {}).items():
            run.rows.setdefault(name, int(rows))
        for name, csv in (getattr(report, "csv", None) or {}).items():
            if hasattr(csv, "seconds"):
                run.tables.setdefault(name, {})["flow_csv_s"] = float(csv.seconds)
        timings = getattr(report, "timings", None)  # if the report ever exposes its own
        if isinstance(timings, dict):
            for name, value in _seconds(timings).items():
                run.costs[f"report: {name}"] = value

    if "run_spark_submit" in calls:
        run.costs["spark-submit (JVM start-up + job)"] = calls["run_spark_submit"]
    flow_csv = sum(t.get("flow_csv_s", 0.0) for t in run.tables.values())
    if "write_csvs" in calls:
        run.costs["flow: CSV files (write_csvs)"] = calls["write_csvs"]
    elif flow_csv:
        run.costs["flow: CSV files (sum of tables)"] = flow_csv
    if "publish_tables" in calls:
        run.costs["flow: publish_tables"] = calls["publish_tables"]
    accounted = sum(calls.values())
    if calls:
        run.costs["flow: the rest (result, cleanup)"] = run.total_s - accounted
    return run


def _result_document(lake: Path, run_id: str) -> dict[str, Any]:
    """The job's `_result.json` in the published version folder, if still there."""
    try:
        return Lake(str(lake)).read_json(layout.job_result(layout.version_folder(run_id))) or {}
    except Exception:  # moved, renamed: the printed lines are enough
        return {}


# --- DuckDB --------------------------------------------------------------------------------


def duckdb_run(lake: Path, out: Path) -> EngineRun:
    """The same tables with DuckDB, written as the job and the flow write them."""
    import duckdb

    run = EngineRun(LABELS["duckdb"])
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET temp_directory = '{out / '_spill'}'")
    try:
        for name, sql in queries(lake).items():
            run.tables[name] = duckdb_table(con, name, sql, out)
            run.rows[name] = int(run.tables[name].pop("rows"))
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        print(f"  [DuckDB] FAILED: {run.error}", flush=True)
    finally:
        con.close()
    run.total_s = time.perf_counter() - started
    run.costs["connection, other"] = run.total_s - sum(sum(t.values()) for t in run.tables.values())
    return run


def duckdb_table(con: Any, name: str, sql: str, out: Path) -> dict[str, float]:
    """One table: Parquet by year in key order, then its sorted CSV read back from it."""
    table = TABLES[name]
    columns = ", ".join(table.columns)
    keys = ", ".join(f"{key} NULLS FIRST" for key in table.keys)  # Spark's ascending order
    folder, csv = out / name, out / f"{name}.csv"
    started = time.perf_counter()
    con.execute(
        f"COPY (SELECT {columns} FROM ({sql}) ORDER BY {keys}) TO '{folder}' "
        f"(FORMAT parquet, PARTITION_BY ({layout.YEAR_FOLDER.rstrip('=')}), OVERWRITE)"
    )
    parquet_s = time.perf_counter() - started
    source = f"read_parquet('{folder}/**/*.parquet', hive_partitioning = true)"
    types = {row[0]: row[1] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    plain = [
        f"CAST({c} AS DECIMAL(38, 6)) AS {c}"
        if types.get(c) == "DOUBLE"
        else f"CAST({c} AS INTEGER) AS {c}"
        if c == "annee"
        else c
        for c in table.columns
    ]
    started = time.perf_counter()
    con.execute(
        f"COPY (SELECT {', '.join(plain)} FROM {source} ORDER BY {keys}) TO '{csv}' "
        "(FORMAT csv, HEADER, DELIMITER ',', NULLSTR '')"
    )
    csv_s = time.perf_counter() - started
    (rows,) = con.execute(f"SELECT count(*) FROM {source}").fetchone()
    return {"parquet_s": parquet_s, "csv_s": csv_s, "rows": rows}


# --- the report ----------------------------------------------------------------------------


def _cell(value: float | None, width: int = 8) -> str:
    return f"{'-':>{width}s}" if value is None else f"{value:{width}.2f}"


def print_tables(runs: list[EngineRun]) -> None:
    """Per table: each engine's seconds by step (the keys its timings have), and rows."""
    names = [n for n in GOLD_TABLES if any(n in r.tables or n in r.rows for r in runs)]
    steps = {
        r.label: list(dict.fromkeys(k for n in names for k in r.tables.get(n, {}))) for r in runs
    }
    width = {r.label: max(8 * len(steps[r.label]) + len(steps[r.label]) - 1, 12) for r in runs}
    print("\nper-table seconds (parquet_s: build + Parquet; csv_s: CSV; flow_csv_s: by the flow)")
    print(f"  {'':22s} {'rows':>11s}  " + "  ".join(f"{r.label:^{width[r.label]}s}" for r in runs))
    heads = {r.label: " ".join(f"{s.removesuffix('_s'):>8.8s}" for s in steps[r.label])
             for r in runs}  # fmt: skip
    print(
        f"  {'':22s} {'':>11s}  " + "  ".join(f"{heads[r.label]:>{width[r.label]}s}" for r in runs)
    )
    totals = {r.label: dict.fromkeys(steps[r.label], 0.0) for r in runs}
    mismatched = []
    for name in names:
        counts = {r.rows[name] for r in runs if name in r.rows}
        if len(counts) > 1:
            mismatched.append(name)
        row = f"  {name:22s} {max(counts, default=0):11,d}  "
        cells = []
        for r in runs:
            figures = r.tables.get(name, {})
            for step in steps[r.label]:
                totals[r.label][step] += figures.get(step, 0.0)
            cell = " ".join(_cell(figures.get(step)) for step in steps[r.label])
            cells.append(f"{cell:>{width[r.label]}s}")
        print(row + "  ".join(cells))
    cells = [
        f"{' '.join(_cell(totals[r.label][s]) for s in steps[r.label]):>{width[r.label]}s}"
        for r in runs
    ]
    print(f"  {'sum':22s} {'':>11s}  " + "  ".join(cells))
    if mismatched:
        print(f"  ROWS DIFFER between engines for: {', '.join(mismatched)}")
        for name in mismatched:
            print(f"    {name}: " + ", ".join(f"{r.label} {r.rows.get(name)}" for r in runs))


def print_costs(runs: list[EngineRun], jvm_s: float | None) -> None:
    """Each engine's whole step and where its time went."""
    print("\nthe whole step, seconds")
    if jvm_s is not None:
        print(f"  JVM start-up (empty Spark app, local[1]): {jvm_s:8.1f}")
    for run in runs:
        status = f"  FAILED: {run.error.splitlines()[0]}" if run.error else ""
        print(f"  {run.label + ' total':42s} {run.total_s:8.1f}{status}")
        for name, seconds in run.costs.items():
            print(f"    {name:40s} {seconds:8.2f}")
        if jvm_s is not None and "spark-submit (JVM start-up + job)" in run.costs:
            job = run.costs["spark-submit (JVM start-up + job)"] - jvm_s
            print(f"    {'spark-submit minus the JVM start-up':40s} {job:8.2f}")
        for note in run.notes:
            print(f"    {note}")


def print_summary(runs: dict[str, EngineRun], jvm_s: float | None) -> None:
    """Ratios: Spark local[2] / DuckDB (same outputs), cluster / local[2]."""
    ok = {engine: run for engine, run in runs.items() if run.error is None}
    print("\nsummary")
    for run in runs.values():
        print(f"  {run.label:16s} {run.total_s:8.1f} s{'  (FAILED)' if run.error else ''}")
    if "local" in ok and "duckdb" in ok:
        local, duck = ok["local"].total_s, ok["duckdb"].total_s
        line = f"  ratio Spark local[2] / DuckDB, same outputs: {local / duck:.1f}x"
        if jvm_s is not None:
            line += f" ({(local - jvm_s) / duck:.1f}x without the JVM start-up)"
        print(line)
        submit = ok["local"].costs.get("spark-submit (JVM start-up + job)")
        if submit is not None:
            print(f"  ratio spark-submit alone (local[2]) / DuckDB: {submit / duck:.1f}x")
    if "local" in ok and "cluster" in ok:
        print(
            f"  ratio Spark cluster / local[2]: {ok['cluster'].total_s / ok['local'].total_s:.2f}x"
        )


# --- main ----------------------------------------------------------------------------------


@contextlib.contextmanager
def the_lake(args: argparse.Namespace) -> Iterator[Path]:
    """The lake to run on: given (--lake), kept (--keep: reused if there), or temporary."""
    if args.lake:
        lake = Path(args.lake).expanduser().resolve()
        if not (lake / layout.RAW).is_dir():
            raise SystemExit(f"--lake {lake}: no {layout.RAW}/ zone there")
        print(f"raw lake {lake} (given): {describe_lake(lake)}")
        yield lake
        return
    if args.keep and (Path(args.keep).expanduser() / layout.RAW).is_dir():
        lake = Path(args.keep).expanduser().resolve()
        print(f"raw lake {lake} (kept from an earlier run): {describe_lake(lake)}")
        yield lake
        return
    with tempfile.TemporaryDirectory(prefix="aggregate-bench-") as folder:
        lake = Path(args.keep).expanduser().resolve() if args.keep else Path(folder) / "lake"
        started = time.perf_counter()
        build_lake(lake, args.adresse_rows, args.commune_rows)
        print(f"raw lake {lake}: {describe_lake(lake)}, built in "
              f"{time.perf_counter() - started:.0f} s{' (kept)' if args.keep else ''}")  # fmt: skip
        yield lake


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adresse-rows", type=int, help=f"default {DEFAULT_ROWS[0]:,}")
    parser.add_argument("--commune-rows", type=int, help=f"default {DEFAULT_ROWS[1]:,}")
    parser.add_argument(
        "--full", action="store_true", help=f"{FULL_ROWS[0]:,} adresse, {FULL_ROWS[1]:,} commune"
    )
    parser.add_argument("--engines", default=",".join(ENGINES), help="of local,cluster,duckdb")
    parser.add_argument("--keep", metavar="PATH", help="build the lake there and keep it "
                        "(reused as is when PATH already holds one)")  # fmt: skip
    parser.add_argument("--lake", metavar="PATH", help="an existing lake (not rebuilt)")
    parser.add_argument("--duckdb-out", metavar="PATH", help="keep DuckDB's outputs there")
    parser.add_argument("--worker-memory", default="4g", help="the cluster worker's memory")
    parser.add_argument("--verbose", action="store_true", help="print every Spark log line")
    args = parser.parse_args()
    base = FULL_ROWS if args.full else DEFAULT_ROWS
    args.adresse_rows = base[0] if args.adresse_rows is None else args.adresse_rows
    args.commune_rows = base[1] if args.commune_rows is None else args.commune_rows
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown or not args.engines:
        parser.error(f"--engines: unknown {unknown}; choose among {', '.join(ENGINES)}")
    if args.keep and args.lake:
        parser.error("--keep and --lake are exclusive")
    return args


def main() -> None:
    """Build or reuse the lake, time every engine asked for, print the figures."""
    args = parse_args()
    print(f"driver memory: the Settings default ({Settings().spark_driver_memory}); "
          f"engines: {', '.join(args.engines)}")  # fmt: skip
    with the_lake(args) as lake:
        runs: dict[str, EngineRun] = {}
        jvm = None
        if {"local", "cluster"} & set(args.engines):
            jvm = jvm_startup_seconds()
            print(f"JVM start-up: {jvm:.1f} s", flush=True)
        for engine in args.engines:
            print(f"\n{LABELS[engine]}", flush=True)
            if engine == "local":
                runs[engine] = spark_run(lake, "local[2]", LABELS[engine], args.verbose)
            elif engine == "cluster":
                try:
                    with standalone_cluster(cores=2, memory=args.worker_memory) as master:
                        runs[engine] = spark_run(lake, master, LABELS[engine], args.verbose)
                except RuntimeError as exc:  # the cluster did not start
                    runs[engine] = EngineRun(LABELS[engine], error=str(exc))
                    print(f"  [{LABELS[engine]}] FAILED: {exc}", flush=True)
            else:
                with tempfile.TemporaryDirectory(prefix="duckdb-gold-", dir=lake.parent) as out:
                    target = Path(args.duckdb_out).expanduser() if args.duckdb_out else Path(out)
                    shutil.rmtree(target, ignore_errors=True)
                    runs[engine] = duckdb_run(lake, target)
                    print(f"  DuckDB: {runs[engine].total_s:.1f} s", flush=True)
        ordered = [runs[e] for e in ENGINES if e in runs]
        print_tables(ordered)
        print_costs(ordered, jvm)
        print_summary(runs, jvm)


if __name__ == "__main__":
    main()
