"""Gold tables from the raw lake: the standalone PySpark program that spark-submit runs.

Reads each raw partition through its `_current.json` pointer, computes the eight tables
of docs/CONTRACT.md section 3, writes each one as Parquet partitioned by `annee` under a
staging folder of the lake, with the consistency checks as JSON. Publishing the staged
tables (and writing their CSV from the Parquet files) is the caller's job, once this
program has exited 0. No Prefect import: the only project modules it imports,
`flows.gold.tables` (what each table is: sources, keys, columns, layout) and
`flows.lake.layout` (every lake path), are pure Python that the runner ships with
`--py-files`.

The builders (`conso_*`) are plain functions of their source frames, with no I/O: `run()`
reads the sources, checks what each builder returns against the table's contract, adds the
other published years back with --years, and writes the tables and `_result.json`.

Every table is written in the order of its keys: its files read by year folder, then by
file name, give its rows sorted (`arrange`). A big table (`GoldTable.cluster`) is
range-partitioned on its leading keys and sorted by its keys before its group by, which
then needs no other shuffle nor sort (its builder arranges its rows itself); a small one is
sorted in one partition. The shuffle partitions follow the cluster's cores (`tune`).

    spark-submit --py-files flows.zip spark/aggregate.py --lake s3a://bucket/lake
        --staging gold/_versions/RUN [--years 2022,2023] [--tables conso_commune,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import operator
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from functools import partial, reduce
from typing import Any
from urllib.parse import unquote, urlparse

from pyspark.sql import Column, DataFrame, Observation, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from flows.gold.tables import ORE_MEASURES, PARTITION, TABLES, GoldTable
from flows.lake import layout

PARIS = "Europe/Paris"
GWH_TO_MWH = 1000.0
ELECTRICITY_STEP_H = 0.5
GAS_STEP_H = 1.0
ADDRESS_PARTS = ("numero_de_voie", "indice_de_repetition", "type_de_voie", "libelle_de_voie")
EXAMPLES = 20  # problem rows a consistency check reports
CONCURRENT_JOBS = 4  # tables (then checks) built at once: see `concurrently`
EXECUTOR_WAIT_S = 30.0  # on a cluster, for the first executor before sizing the shuffles


class ContractError(RuntimeError):
    """A builder returned other columns than flows.gold.tables says the table has."""


class LakeFiles:
    """The lake as the job's Hadoop FileSystem sees it: small text files, raw partitions
    read through their pointers, published tables."""

    def __init__(self, spark: SparkSession, lake: str) -> None:
        self.spark = spark
        self.lake = lake.rstrip("/")
        self._jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[attr-defined]

    def uri(self, relative: str) -> str:
        """The URI of a lake-relative path."""
        return f"{self.lake}/{relative}"

    def _fs(self, uri: str) -> Any:
        path = self._jvm.org.apache.hadoop.fs.Path(uri)
        return path.getFileSystem(self._conf), path

    def read_text(self, uri: str) -> str:
        """A small text file of the lake."""
        fs, path = self._fs(uri)
        stream = fs.open(path)
        try:
            reader = self._jvm.java.io.BufferedReader(
                self._jvm.java.io.InputStreamReader(stream, "UTF-8")
            )
            lines = []
            line = reader.readLine()
            while line is not None:
                lines.append(line)
                line = reader.readLine()
            return "\n".join(lines)
        finally:
            stream.close()

    def write_text(self, uri: str, text: str) -> None:
        """Write a small text file (overwriting)."""
        fs, path = self._fs(uri)
        stream = fs.create(path, True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def raw_files(self, dataset: str, years: set[int] | None) -> list[str]:
        """The Parquet files of every committed partition of a dataset, for the chosen years."""
        fs, pattern = self._fs(self.uri(layout.raw_pointer(dataset, "*")))
        statuses = fs.globStatus(pattern) or []
        found: list[str] = []
        for status in statuses:
            folder = status.getPath().getParent()
            year = layout.year_of(folder.getName())
            if year is None or (years is not None and year not in years):
                continue
            pointer = json.loads(self.read_text(status.getPath().toString()))
            found.extend(f"{folder.toString()}/{name}" for name in pointer["files"])
        return found

    def raw_table(self, dataset: str, years: set[int] | None) -> DataFrame | None:
        """A raw dataset with `annee` from the folder names, or None when nothing is loaded."""
        files = self.raw_files(dataset, years)
        if not files:
            return None
        return (
            self.spark.read.option("basePath", self.uri(layout.raw_dataset(dataset)))
            .parquet(*files)
            .withColumn("annee", F.col("annee").cast(T.IntegerType()))
        )

    def published(self, table: str) -> DataFrame | None:
        """The published version of a gold table, None when there is none yet: the version
        `gold/_publish.json` names (plain views may be off), else the plain view's (a lake
        published before the pointer existed)."""
        for pointer_path, base_of in (
            (layout.PUBLISH_POINTER, lambda p: self.uri(p["tables"][table]["folder"])),
            (layout.gold_pointer(table), lambda p: self.uri(layout.gold_table(table))),
        ):
            try:
                pointer = json.loads(self.read_text(self.uri(pointer_path)))
            except Exception:  # nothing there: any filesystem error means none
                continue
            entry = pointer.get("tables", {}).get(table) if "tables" in pointer else pointer
            if not entry or not entry.get("files"):
                continue
            base = base_of(pointer)
            return self.spark.read.option("basePath", base).parquet(
                *[f"{base}/{name}" for name in entry["files"]]
            )
        return None


# --- the builders: source frames in, a gold table out ---------------------------------------


def _sum_unmasked(total: str = "conso_totale_mwh", sites: str = "nb_sites") -> list[Column]:
    """ORE aggregates: sums over unmasked rows, masked rows counted."""
    masked = F.col(total).isNull()
    return [
        F.sum(F.when(~masked, F.col(sites))).cast(T.LongType()).alias("nb_sites"),
        F.sum(F.when(~masked, F.col(total))).alias("conso_totale_mwh"),
        F.sum(F.when(masked, 1).otherwise(0)).cast(T.LongType()).alias("nb_lignes_masquees"),
    ]


def _mean(total: str, count: str) -> Column:
    """Σ energy / Σ sites, null when there are no sites."""
    return F.when(F.col(count) > 0, F.col(total) / F.col(count))


def _with_mean(frame: DataFrame) -> DataFrame:
    return frame.withColumn("conso_moyenne_mwh", _mean("conso_totale_mwh", "nb_sites"))


def _code(name: str) -> Column:
    return F.col(name).cast(T.StringType()).alias(name)


def partition(frame: DataFrame, table: GoldTable) -> DataFrame:
    """The frame's rows in the partitions of the table's write: a big table (`cluster`)
    range-partitioned on its cluster keys (as many ranges as shuffle partitions, adjacent
    ones merged by AQE when small), a small one in one partition (no shuffle, no sampling
    of the keys)."""
    return frame.repartitionByRange(*table.cluster) if table.cluster else frame.coalesce(1)


def arrange(frame: DataFrame, table: GoldTable) -> DataFrame:
    """The frame laid out for the table's write: partitioned, each partition sorted by the
    table's keys. Task i writes the i-th partition, in key order, so the files in (year
    folder, file name) order hold the rows in key order. A big table's builder arranges its
    rows before its group by on the same keys, which then needs no other shuffle nor sort.
    """
    return partition(frame, table).sortWithinPartitions(*table.write_order)


def _squeezed(text: Column) -> Column:
    """Runs of whitespace (Java's `\\s`: space, tab, LF, VT, FF, CR) as one space; the regex
    only runs on the values it would change."""
    changes = reduce(operator.or_, [text.contains(run) for run in ("  ", *"\t\n\x0b\f\r")])
    return F.when(changes, F.regexp_replace(text, r"\s+", " ")).otherwise(text)


def conso_adresse(adresse: DataFrame) -> DataFrame:
    """Year x address (Enedis residential)."""
    parts = [F.when(F.trim(F.col(p)) != "", _squeezed(F.trim(F.col(p)))) for p in ADDRESS_PARTS]
    table = TABLES["conso_adresse"]
    # Range-partitioned on the raw rows: the addresses are built after the shuffle, once
    # (the sampling of the range bounds reads the raw rows again).
    rows = partition(adresse.withColumn("code_commune", _code("code_commune")), table).select(
        F.col("annee"),
        F.concat_ws(" ", *parts).alias("adresse"),
        _code("code_iris"),
        _code("code_commune"),
        F.col("nom_commune"),
        _code("code_departement"),
        _code("code_region"),
        F.col("nombre_de_logements").cast(T.LongType()).alias("nombre_de_logements"),
        F.col("consommation_annuelle_totale_de_l_adresse_mwh").alias("conso_totale_mwh"),
    )
    # Sorted, then grouped by the keys in their order: no other shuffle nor sort.
    groups = rows.sortWithinPartitions(*table.write_order).groupBy(*table.keys)
    grouped = groups.agg(
        F.max("nom_commune").alias("nom_commune"),
        F.max("code_departement").alias("code_departement"),
        F.max("code_region").alias("code_region"),
        F.sum("nombre_de_logements").alias("nombre_de_logements"),
        F.sum("conso_totale_mwh").alias("conso_totale_mwh"),
    )
    return grouped.select(
        "annee",
        "adresse",
        "code_iris",
        "code_commune",
        "nom_commune",
        "code_departement",
        "code_region",
        "nombre_de_logements",
        "conso_totale_mwh",
        _mean("conso_totale_mwh", "nombre_de_logements").alias("conso_moyenne_mwh"),
    )


def _ore_area(source: DataFrame, area: str, attributes: Sequence[str],
              table: GoldTable | None = None) -> DataFrame:  # fmt: skip
    """ORE rows summed per year x area x filière x grand secteur, area attributes kept;
    the rows arranged for `table` before the group by when it is a big one."""
    keys = ("annee", area, "filiere", "code_grand_secteur")
    rows = source.withColumn(area, _code(area))
    if table is not None and table.cluster:
        rows = arrange(rows, table)  # keys in the table's order: no other shuffle nor sort
    grouped = rows.groupBy(*keys).agg(
        *[F.max(_code(name) if name.startswith("code_") else name).alias(name)
          for name in attributes],
        *_sum_unmasked(),
    )  # fmt: skip
    return _with_mean(grouped).select(
        "annee", area, *attributes, "filiere", "code_grand_secteur", *ORE_MEASURES
    )


def conso_commune(commune: DataFrame) -> DataFrame:
    """Year x commune x filière x grand secteur (ORE commune, over operators and NAF codes)."""
    return _ore_area(commune, "code_commune", ("nom_commune", "code_departement", "code_region"),
                     TABLES["conso_commune"])  # fmt: skip


def conso_departement(departement: DataFrame) -> DataFrame:
    """Year x département x filière x grand secteur (ORE département)."""
    return _ore_area(departement, "code_departement", ("nom_departement", "code_region"))


def conso_region(departement: DataFrame) -> DataFrame:
    """Year x region x filière x grand secteur (ORE département rolled up)."""
    return _ore_area(departement, "code_region", ("nom_region",))


def conso_secteur(departement: DataFrame) -> DataFrame:
    """Year x filière x grand secteur x NAF code, national (ORE département)."""
    grouped = departement.groupBy(
        "annee", "filiere", "code_grand_secteur", _code("code_secteur_naf2")
    ).agg(*_sum_unmasked())
    return _with_mean(grouped).select(
        "annee", "filiere", "code_grand_secteur", "code_secteur_naf2", *ORE_MEASURES
    )


def _odre_energy() -> list[Column]:
    return [
        (F.col("consommation_brute_gaz_totale") * GWH_TO_MWH).alias("gaz_mwh"),
        (F.col("consommation_brute_electricite_rte") * GWH_TO_MWH).alias("electricite_mwh"),
        (F.col("consommation_brute_totale") * GWH_TO_MWH).alias("total_mwh"),
    ]


def conso_nationale(nationale_annuelle: DataFrame) -> DataFrame:
    """Year (ODRE national annual, GWh to MWh)."""
    return nationale_annuelle.select("annee", *_odre_energy())


def conso_regionale_brute(regionale_annuelle: DataFrame) -> DataFrame:
    """Year x region (ODRE regional annual, GWh to MWh)."""
    return regionale_annuelle.select(
        "annee",
        F.col("code_insee_region").cast(T.StringType()).alias("code_region"),
        F.col("region").alias("nom_region"),
        *_odre_energy(),
    )


def _daily(source: DataFrame, region: Column) -> DataFrame:
    """Local-day energy from MW steps: electricity x 0.5 h, gas x 1 h, flagged rows left out."""
    kept = source.where(F.coalesce(F.col("flag_ignore"), F.lit("non")) != "oui")
    steps = kept.select(
        F.to_date(F.from_utc_timestamp(F.col("date_heure"), PARIS)).alias("date"),
        region.alias("code_region"),
        F.col("consommation_brute_electricite_rte").alias("electricite_mw"),
        F.col("consommation_brute_gaz_totale").alias("gaz_mw"),
    )
    daily = steps.groupBy("date", "code_region").agg(
        (F.sum("electricite_mw") * ELECTRICITY_STEP_H).alias("electricite_mwh"),
        (F.sum("gaz_mw") * GAS_STEP_H).alias("gaz_mwh"),
        F.count("electricite_mw").cast(T.LongType()).alias("nb_pas_electricite"),
        F.count("gaz_mw").cast(T.LongType()).alias("nb_pas_gaz"),
    )
    return daily.select(
        "date",
        F.year("date").cast(T.IntegerType()).alias("annee"),
        "code_region",
        "electricite_mwh",
        "gaz_mwh",
        "nb_pas_electricite",
        "nb_pas_gaz",
    )


def conso_journaliere(national: DataFrame | None, regional: DataFrame | None) -> DataFrame:
    """Local day x region, 'FR' for the national series (ODRE quotidienne); either series
    may be missing, not both."""
    parts = []
    if national is not None:
        parts.append(_daily(national, F.lit("FR")))
    if regional is not None:
        parts.append(_daily(regional, F.col("code_insee_region").cast(T.StringType())))
    if not parts:
        raise ValueError("conso_journaliere needs the national or the regional daily series")
    result = parts[0]
    for part in parts[1:]:
        result = result.unionByName(part)
    return result


# The builder of each table of flows.gold.tables, called with its sources' frames in the
# order of `GoldTable.sources` (None for a source with nothing loaded).
BUILDERS: dict[str, Callable[..., DataFrame]] = {
    "conso_adresse": conso_adresse,
    "conso_commune": conso_commune,
    "conso_departement": conso_departement,
    "conso_region": conso_region,
    "conso_secteur": conso_secteur,
    "conso_nationale": conso_nationale,
    "conso_regionale_brute": conso_regionale_brute,
    "conso_journaliere": conso_journaliere,
}


def check_columns(table: GoldTable, frame: DataFrame) -> DataFrame:
    """The frame if its columns are the table's, in order; ContractError naming it otherwise."""
    built = tuple(frame.columns)
    if built != table.columns:
        raise ContractError(
            f"gold table {table.name}: the builder returned columns {list(built)}, "
            f"but flows.gold.tables says {list(table.columns)}"
        )
    return frame


# --- I/O: carry-over, layout, writing -------------------------------------------------------


def carry_over(fresh: DataFrame, published: DataFrame | None, years: set[int]) -> DataFrame:
    """With --years, the other years of the published table are kept as they are."""
    if published is None:
        return fresh
    kept = published.where(~F.col(PARTITION).isin(sorted(years)))
    return fresh.unionByName(kept.select(*fresh.columns))


def laid_out(table: GoldTable, built: DataFrame, published: DataFrame | None,
             years: set[int] | None) -> DataFrame:  # fmt: skip
    """What is written for a table: its built rows, with the other published years kept
    (--years), arranged in the order of its keys. A big table's builder arranged its rows
    already (before its group by): only a union with published years is arranged again."""
    if years is not None and published is not None:
        return arrange(carry_over(built, published, years), table)
    return built if table.cluster else arrange(built, table)


def tune(spark: SparkSession, wait_s: float = EXECUTOR_WAIT_S) -> None:
    """Shuffle partitions follow the cluster: as many as its executors' cores (Spark's default
    parallelism, once they registered), adjacent ones merged by AQE when small; a value the
    user set is kept."""
    settings = spark._jsparkSession.sessionState().conf()  # type: ignore[attr-defined]
    context = spark.sparkContext
    if not context.master.startswith("local"):  # executors register after the session starts
        status = context._jsc.sc().getExecutorMemoryStatus  # type: ignore[attr-defined]
        deadline = time.monotonic() + wait_s
        while status().size() < 2 and time.monotonic() < deadline:  # the driver counts as one
            time.sleep(0.2)
    chosen = {
        "spark.sql.shuffle.partitions": str(context.defaultParallelism),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
    }
    for key, value in chosen.items():
        if not settings.contains(key):  # set by --conf, spark-defaults.conf or the session
            spark.conf.set(key, value)
    shuffles = spark.conf.get("spark.sql.shuffle.partitions")
    print(f"energy-pipeline: {shuffles} shuffle partitions ({context.master})", flush=True)


def write_table(frame: DataFrame, target: str) -> int:
    """Parquet partitioned by year (an integer column: raw partitions and dates give one),
    in the order the frame is laid out, no other sort; returns its rows, counted while
    writing (no other Spark job)."""
    rows = Observation()
    written = frame.observe(rows, F.count(F.lit(1)).alias("rows"))
    written.write.mode("overwrite").partitionBy(PARTITION).parquet(target)
    return int(rows.get.get("rows", 0))


def _rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [
        {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.asDict().items()}
        for row in rows
    ]


def _check(name: str, problems: DataFrame | None, summary: str,
           **figures: Any) -> Callable[[], dict[str, Any]]:  # fmt: skip
    """One check, to run: its first problem rows in one Spark job, counted by another only
    when there are more than it reports."""
    return partial(_run_check, name, problems, summary, **figures)


def _run_check(name: str, problems: DataFrame | None, summary: str,
               **figures: Any) -> dict[str, Any]:  # fmt: skip
    if problems is None:
        return {"name": name, "status": "skipped", "summary": summary}
    first = problems.limit(EXAMPLES + 1).collect()
    count = len(first) if len(first) <= EXAMPLES else problems.count()
    return {
        "name": name,
        "status": "ok" if count == 0 else "warning",
        "summary": summary,
        "problems": count,
        "examples": _rows(first[:EXAMPLES]),
        **figures,
    }


def _off(ratio: str, tolerance: float) -> Column:
    """A ratio further than `tolerance` from 1."""
    return F.abs(F.col(ratio) - 1) > tolerance


def consistency_checks(spark: SparkSession, tables: dict[str, DataFrame]) -> list[dict[str, Any]]:
    """Cross-table checks that warn with figures; they never fail the job. Run concurrently,
    reported in their order."""
    commune = tables.get("conso_commune")
    departement = tables.get("conso_departement")
    region = tables.get("conso_region")
    nationale = tables.get("conso_nationale")
    journaliere = tables.get("conso_journaliere")
    checks: list[Callable[[], dict[str, Any]]] = []

    communes_over = None
    if commune is not None and departement is not None:
        keys = ["annee", "code_departement", "filiere"]
        c = commune.groupBy(*keys).agg(F.sum("conso_totale_mwh").alias("communes_mwh"))
        d = departement.groupBy(*keys).agg(F.sum("conso_totale_mwh").alias("departement_mwh"))
        communes_over = c.join(d, on=keys, how="inner").where(
            F.col("communes_mwh") > F.col("departement_mwh") * 1.000001
        )
    checks.append(
        _check(
            "communes_vs_departements",
            communes_over,
            "Σ communes <= département total (secrecy only lowers commune sums)",
        )
    )

    regions_off = None
    if departement is not None and region is not None:
        keys = ["annee", "code_region", "filiere", "code_grand_secteur"]
        d = departement.groupBy(*keys).agg(F.sum("conso_totale_mwh").alias("departements_mwh"))
        r = region.select(*keys, F.col("conso_totale_mwh").alias("region_mwh"))
        regions_off = d.join(r, on=keys, how="full_outer").where(
            F.abs(F.coalesce(F.col("departements_mwh"), F.lit(0.0))
                  - F.coalesce(F.col("region_mwh"), F.lit(0.0))) > 1e-6
        )  # fmt: skip
    checks.append(_check("departements_vs_regions", regions_off, "Σ départements = region"))

    ore_vs_odre = None
    if departement is not None and nationale is not None:
        ore = (
            departement.groupBy("annee")
            .pivot("filiere", ["Electricité", "Gaz"])
            .agg(F.sum("conso_totale_mwh"))
        )
        ore_vs_odre = (
            ore.join(nationale, on="annee", how="inner")
            .select(
                "annee",
                F.col("Electricité").alias("ore_electricite_mwh"),
                "electricite_mwh",
                (F.col("Electricité") / F.col("electricite_mwh")).alias("ratio_electricite"),
                F.col("Gaz").alias("ore_gaz_mwh"),
                "gaz_mwh",
                (F.col("Gaz") / F.col("gaz_mwh")).alias("ratio_gaz"),
            )
            .where(
                (F.abs(F.col("ratio_electricite") - 1) > 0.15)
                | (F.abs(F.col("ratio_gaz") - 1) > 0.15)
            )
        )
    checks.append(
        _check("ore_vs_odre_national", ore_vs_odre, "ORE national within 15 % of ODRE national")
    )

    daily_vs_annual = None
    if journaliere is not None and nationale is not None:
        daily = (
            journaliere.where(F.col("code_region") == "FR")
            .groupBy("annee")
            .agg(
                F.sum("electricite_mwh").alias("daily_electricite_mwh"),
                F.sum("gaz_mwh").alias("daily_gaz_mwh"),
                F.count("*").alias("days"),
            )
        )
        daily_vs_annual = (
            daily.join(nationale, on="annee", how="inner")
            .withColumn(
                "ratio_electricite", F.col("daily_electricite_mwh") / F.col("electricite_mwh")
            )
            .withColumn("ratio_gaz", F.col("daily_gaz_mwh") / F.col("gaz_mwh"))
            .where(_off("ratio_electricite", 0.02) | _off("ratio_gaz", 0.02))
        )
    checks.append(
        _check("daily_vs_annual", daily_vs_annual, "Σ daily national within 2 % of annual")
    )

    incomplete = None
    if journaliere is not None:
        start = F.to_utc_timestamp(F.col("date").cast(T.TimestampType()), PARIS)
        end = F.to_utc_timestamp(F.date_add("date", 1).cast(T.TimestampType()), PARIS)
        expected = ((F.unix_timestamp(end) - F.unix_timestamp(start)) / 1800).cast(T.LongType())
        incomplete = (
            journaliere.withColumn("pas_attendus", expected)
            .where(F.col("nb_pas_electricite") != F.col("pas_attendus"))
            .select("date", "code_region", "nb_pas_electricite", "pas_attendus")
            .orderBy("date", "code_region")
        )
    checks.append(
        _check(
            "half_hour_completeness",
            incomplete,
            "each local day has 46, 48 or 50 electricity half-hours (DST days 46 and 50)",
        )
    )
    done = concurrently(spark, {str(number): check for number, check in enumerate(checks)})
    return [result for result, _ in done.values()]


def concurrently(spark: SparkSession, work: dict[str, Callable[[], Any]],
                 threads: int = CONCURRENT_JOBS) -> dict[str, tuple[Any, float]]:  # fmt: skip
    """Run each named piece of Spark work in its own thread, so that the cores one job
    leaves idle (its last tasks, a one-task table) run the others' tasks; returns each
    result with its seconds, in `work`'s order. The first failure cancels the others' jobs
    and is raised."""
    results: dict[str, tuple[Any, float]] = {}

    def timed(name: str) -> tuple[Any, float]:
        started = time.perf_counter()
        value = work[name]()
        return value, round(time.perf_counter() - started, 2)

    pool = ThreadPoolExecutor(max_workers=max(1, min(threads, len(work))))
    try:
        futures = {name: pool.submit(timed, name) for name in work}
        finished, _ = wait(futures.values(), return_when=FIRST_EXCEPTION)
        for future in finished:  # the first failure, whichever piece of work it is
            failure = future.exception()
            if failure is not None:
                raise failure
        for name, future in futures.items():
            results[name] = future.result()
    except BaseException:
        spark.sparkContext.cancelAllJobs()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def read_staged(spark: SparkSession, target: str, schema: T.StructType) -> DataFrame:
    """A staged table read back with the schema it was written with (no job to infer it)."""
    fields = [
        T.StructField(f.name, T.IntegerType() if f.name == PARTITION else f.dataType)
        for f in schema.fields
    ]
    return spark.read.schema(T.StructType(fields)).parquet(target).select(*schema.names)


def run(spark: SparkSession, lake: str, staging: str, years: Sequence[int] | None,
        tables: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """Build, stage and check the chosen tables; returns the result document.

    All the job's I/O: each source read once through its partitions' pointers (a table is
    skipped when none of its sources is loaded; a source feeding several tables is cached
    for them), each built table checked against its contract, the other published years
    kept with --years, each table written below the staging folder in the order of its keys
    and counted as it is written, then the checks on the staged tables and the result
    document.
    """
    tune(spark)
    files = LakeFiles(spark, lake)
    chosen = set(years) if years else None
    uses = Counter(dataset for name in tables for dataset in TABLES[name].sources)
    sources: dict[str, DataFrame | None] = {}
    cached: list[DataFrame] = []
    skipped: list[str] = []
    schemas: dict[str, T.StructType] = {}
    writes: dict[str, Callable[[], int]] = {}
    for name in tables:
        table = TABLES[name]
        for dataset in table.sources:
            if dataset not in sources:
                source = files.raw_table(dataset, chosen)
                if source is not None and uses[dataset] > 1:
                    source = source.cache()  # département: three tables, one read
                    cached.append(source)
                sources[dataset] = source
        frames = [sources[dataset] for dataset in table.sources]
        if all(frame is None for frame in frames):
            skipped.append(name)
            continue
        built = check_columns(table, BUILDERS[name](*frames))
        published = files.published(name) if chosen is not None else None
        frame = laid_out(table, built, published, chosen)
        schemas[name] = built.schema
        writes[name] = partial(write_table, frame, files.uri(f"{staging}/{name}"))
    written = concurrently(spark, writes)  # in `tables` order, the biggest first
    counts = {name: rows for name, (rows, _) in written.items()}
    timings: dict[str, dict[str, float]] = {
        name: {"parquet_s": seconds} for name, (_, seconds) in written.items()
    }
    for name in written:
        print(f"energy-pipeline: staged {name}: {counts[name]} rows {timings[name]}", flush=True)
    for source in cached:
        source.unpersist()
    staged = {
        name: read_staged(spark, files.uri(f"{staging}/{name}"), schemas[name]) for name in written
    }
    started = time.perf_counter()
    checks = consistency_checks(spark, staged)
    timings["checks"] = {"seconds": round(time.perf_counter() - started, 2)}
    print(f"energy-pipeline: consistency checks {timings['checks']}", flush=True)
    result = {
        "tables": counts,
        "skipped": skipped,
        "years": sorted(years) if years else None,
        "checks": checks,
        "timings": timings,
    }
    files.write_text(files.uri(layout.job_result(staging)), json.dumps(result, default=str))
    return result


# --- the job ends with the program that started it ----------------------------------------

PARENT_ENV = "ENERGY_PIPELINE_PARENT_PID"  # "<pid>:<start ticks>", set by flows.gold.spark_submit
WATCH_INTERVAL_S = 1.0
JVM_DELETE_TIMEOUT_S = 30.0
JVM_EXIT_WAIT_S = 10.0


def _start_ticks(pid: int) -> int | None:
    """Start time of a running process (clock ticks since boot); None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X", b"x"):
        return None
    return int(fields[19])


def _parse_marker(marker: str | None) -> tuple[int, int] | None:
    pid, sep, start = (marker or "").partition(":")
    return (int(pid), int(start)) if sep and pid.isdigit() and start.isdigit() else None


def _say(message: str) -> None:
    """A line on stderr, which may lead nowhere any more (the JVM relaying it is gone)."""
    with contextlib.suppress(Exception):
        print(f"energy-pipeline: {message}", file=sys.stderr, flush=True)


def _safe_staging(staging: str) -> bool:
    """A lake-relative folder below the lake root (never the lake, never above it)."""
    parts = [part for part in staging.split("/") if part]
    return bool(parts) and not any(part in (".", "..") for part in parts)


class Watchdog:
    """Ends the job, its staging folder deleted, once the program that started it is gone.

    Every second it checks that the process named by ENERGY_PIPELINE_PARENT_PID (pid and
    start ticks) still runs and that this driver's parent, the spark-submit JVM, is the same.
    When either is gone nobody will publish or remove what the job stages: the JVM is
    stopped, the staging folder deleted (locally from here; on S3 through the JVM's Hadoop
    FileSystem while it lives, then with boto3), and the job's process group killed.
    """

    def __init__(self, staging_uri: str, interval_s: float = WATCH_INTERVAL_S) -> None:
        self.staging_uri = staging_uri.rstrip("/")
        self.interval_s = interval_s
        self.parent = _parse_marker(os.environ.get(PARENT_ENV))
        self.launcher = os.getppid()
        self.launcher_start = _start_ticks(self.launcher)
        self.spark: SparkSession | None = None
        self.s3: dict[str, str] = {}
        self._lock = threading.Lock()

    def start(self) -> Watchdog:
        """Watch from a daemon thread."""
        threading.Thread(target=self._watch, name="parent-watchdog", daemon=True).start()
        return self

    def attach(self, spark: SparkSession) -> None:
        """The session, whose JVM can delete the staging folder; its S3A settings are kept for
        a deletion from Python once the JVM is gone."""
        conf = spark.sparkContext.getConf()
        for key in ("endpoint", "endpoint.region", "path.style.access"):
            value = conf.get(f"spark.hadoop.fs.s3a.{key}", None)
            if value:
                self.s3[key] = value
        self.spark = spark

    def gone(self) -> str | None:
        """Why the job is orphaned; None while the program that started it runs."""
        if os.getppid() != self.launcher:
            return f"the spark-submit JVM (pid {self.launcher}) is gone"
        if self.parent is not None and _start_ticks(self.parent[0]) != self.parent[1]:
            return f"the process that started the job (pid {self.parent[0]}) is gone"
        return None

    def _launcher_running(self) -> bool:
        """Whether the JVM this driver started under still runs (not a later pid reuse)."""
        return (
            self.launcher_start is not None and _start_ticks(self.launcher) == self.launcher_start
        )

    def _launcher_is_jvm(self) -> bool:
        """Only a JVM launcher (spark-submit execs into `java`) is ever killed from here: a
        driver started some other way (by hand, from a test) never kills its parent."""
        try:
            with open(f"/proc/{self.launcher}/comm", "rb") as comm:
                return comm.read().strip() == b"java"
        except OSError:
            return False

    def _watch(self) -> None:
        while True:
            time.sleep(self.interval_s)
            reason = self.gone()
            if reason:
                self.abort(reason)

    def settle(self, wait_s: float = 5.0) -> None:
        """On a failure of the job: when it failed because the JVM died with its parent,
        clean up and exit here (the interpreter's exit would end the watchdog thread)."""
        deadline = time.monotonic() + wait_s
        while True:
            reason = self.gone()
            if reason:
                self.abort(reason)
            if self._launcher_running() or time.monotonic() >= deadline:
                return
            time.sleep(0.1)  # the JVM is exiting: this process is about to be reparented

    def abort(self, reason: str) -> None:
        """Stop the JVM, delete the staging folder, kill the job's process group, exit."""
        with self._lock:  # once, from whichever thread gets here first
            _say(f"{reason}: stopping the job and deleting {self.staging_uri}")
            local = urlparse(self.staging_uri).scheme in ("", "file")
            if self._launcher_running() and self._launcher_is_jvm():
                if not local:
                    self._delete_through_jvm()
                self._kill_launcher()  # no task writes anything after this
            self._delete_from_python()
            if os.getpgrp() == self.launcher:  # the job's own group (spark-submit's session)
                with contextlib.suppress(OSError):
                    os.killpg(os.getpgrp(), signal.SIGKILL)
            os._exit(3)

    def _delete_through_jvm(self) -> None:
        """Cancel the jobs, delete the staging folder through the job's Hadoop FileSystem."""
        spark = self.spark
        if spark is None:
            return

        def delete() -> None:
            try:
                context = spark.sparkContext
                context.cancelAllJobs()
                jvm = context._jvm  # type: ignore[attr-defined]
                hadoop_conf = context._jsc.hadoopConfiguration()  # type: ignore[attr-defined]
                path = jvm.org.apache.hadoop.fs.Path(self.staging_uri)
                path.getFileSystem(hadoop_conf).delete(path, True)
            except Exception as exc:
                _say(f"deleting {self.staging_uri} through the JVM failed: {exc}")

        worker = threading.Thread(target=delete, daemon=True)
        worker.start()
        worker.join(JVM_DELETE_TIMEOUT_S)

    def _kill_launcher(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.launcher, signal.SIGKILL)
        deadline = time.monotonic() + JVM_EXIT_WAIT_S
        while self._launcher_running() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _delete_from_python(self) -> None:
        parsed = urlparse(self.staging_uri)
        try:
            if parsed.scheme in ("", "file"):
                path = unquote(parsed.path) if parsed.scheme else self.staging_uri
                shutil.rmtree(path, ignore_errors=True)
            elif parsed.scheme in ("s3a", "s3", "s3n"):
                _delete_s3_prefix(parsed.netloc, parsed.path.strip("/"), self.s3)
            else:
                _say(f"{self.staging_uri}: left for the next run to sweep")
        except Exception as exc:
            _say(f"deleting {self.staging_uri} failed ({exc}): left for the next run to sweep")


def _delete_s3_prefix(bucket: str, key: str, s3: dict[str, str]) -> None:
    """Delete every object below s3://bucket/key/ with boto3 (AWS credentials from the
    environment, endpoint and region as the job's S3A settings)."""
    import boto3
    from botocore.config import Config

    endpoint = s3.get("endpoint")
    if endpoint and "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=s3.get("endpoint.region") or None,
        config=Config(
            s3={"addressing_style": "path" if s3.get("path.style.access") == "true" else "auto"},
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 3},
        ),
    )
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{key}/"):
        objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if objects:
            client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})


def start_watchdog(lake: str, staging: str) -> Watchdog | None:
    """Watch the program that started this job; None when the staging folder is not one this
    job may delete."""
    if not _safe_staging(staging):
        _say(f"no watchdog: --staging {staging!r} is not a folder below the lake")
        return None
    return Watchdog(f"{lake.rstrip('/')}/{staging.strip('/')}").start()


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build the gold tables from the raw lake.")
    parser.add_argument("--lake", required=True, help="lake URI as Spark sees it (file://, s3a://)")
    parser.add_argument("--staging", required=True, help="lake-relative staging folder")
    parser.add_argument("--years", default="", help="comma list; default: every loaded year")
    parser.add_argument("--tables", default=",".join(TABLES), help="comma list of gold tables")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """spark-submit entry point."""
    args = _parse(argv)
    years = [int(y) for y in args.years.split(",") if y.strip()] or None
    tables = [t for t in args.tables.split(",") if t.strip()]
    unknown = [t for t in tables if t not in TABLES or t not in BUILDERS]
    if unknown:
        print(f"unknown gold table(s): {unknown}", file=sys.stderr)
        return 2
    # Before anything is staged: the job must not outlive the program that started it.
    watchdog = start_watchdog(args.lake, args.staging)
    spark = SparkSession.builder.appName("energy-pipeline-aggregate").getOrCreate()
    if watchdog is not None:
        watchdog.attach(spark)
    try:
        run(spark, args.lake, args.staging, years, tables)
    except BaseException:
        if watchdog is not None:
            watchdog.settle()
        raise
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
