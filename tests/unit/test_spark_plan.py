"""How spark/aggregate.py lays its tables out: read in (year folder, file name) order, the
files of every staged table give its rows in the order of its keys, whatever the partitions.

The job's `run()` on a small raw lake and a local Spark session: with several range
partitions and AQE off, with AQE merging adjacent partitions, and after a carry-over of the
published years with --years. The flow streams gold/<table>.csv from these files without
sorting them: a row out of order here would stop its publish. Also: the plans (one shuffle
and one sort for conso_adresse), row counts taken as the tables are written, the checks'
figures, and the shuffle partitions following the cluster.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from flows.gold.tables import GOLD_TABLES, PARTITION, TABLES
from flows.lake import layout
from tests.support.sparkjob import load_job

job = load_job()

YEARS = (2021, 2022, 2023)
TUNED = (
    "spark.sql.shuffle.partitions",
    "spark.sql.adaptive.enabled",
    "spark.sql.adaptive.coalescePartitions.enabled",
    "spark.sql.adaptive.coalescePartitions.parallelismFirst",
    "spark.sql.adaptive.advisoryPartitionSizeInBytes",
    "spark.sql.adaptive.coalescePartitions.minPartitionSize",
)
LAYOUTS = {
    # as many range partitions as shuffle partitions: ranges cross the year folders
    "7 partitions, AQE off": {
        "spark.sql.shuffle.partitions": "7",
        "spark.sql.adaptive.enabled": "false",
    },
    # AQE merges adjacent ranges into fewer tasks (sizes for these small tables)
    "12 partitions, AQE merging": {
        "spark.sql.shuffle.partitions": "12",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.parallelismFirst": "false",
        "spark.sql.adaptive.advisoryPartitionSizeInBytes": "20k",
        "spark.sql.adaptive.coalescePartitions.minPartitionSize": "1k",
    },
}


@pytest.fixture
def layout_conf(spark: SparkSession, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The session's shuffle settings for one test, restored after it."""
    chosen = LAYOUTS[request.param]
    before = {key: spark.conf.get(key, None) for key in TUNED}
    for key in TUNED:
        spark.conf.unset(key)
    for key, value in chosen.items():
        spark.conf.set(key, value)
    yield chosen
    for key, value in before.items():
        if value is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, value)


# --- a small raw lake: every dataset, three years ----------------------------------------------

TEXT = pa.string()
RAW_SCHEMAS = {
    "adresse": pa.schema(
        [("code_iris", TEXT), ("numero_de_voie", TEXT), ("indice_de_repetition", TEXT),
         ("type_de_voie", TEXT), ("libelle_de_voie", TEXT), ("code_commune", TEXT),
         ("nom_commune", TEXT), ("code_departement", TEXT), ("code_region", TEXT),
         ("nombre_de_logements", pa.int64()),
         ("consommation_annuelle_totale_de_l_adresse_mwh", pa.float64())]
    ),
    "commune": pa.schema(
        [("code_commune", TEXT), ("nom_commune", TEXT), ("code_departement", TEXT),
         ("code_region", TEXT), ("operateur", TEXT), ("filiere", TEXT),
         ("code_grand_secteur", TEXT), ("nb_sites", pa.int64()), ("conso_totale_mwh", pa.float64())]
    ),
    "departement": pa.schema(
        [("code_departement", TEXT), ("nom_departement", TEXT), ("code_region", TEXT),
         ("nom_region", TEXT), ("filiere", TEXT), ("code_grand_secteur", TEXT),
         ("code_secteur_naf2", TEXT), ("nb_sites", pa.int64()), ("conso_totale_mwh", pa.float64())]
    ),
    "nationale_annuelle": pa.schema(
        [("consommation_brute_gaz_totale", pa.float64()),
         ("consommation_brute_electricite_rte", pa.float64()),
         ("consommation_brute_totale", pa.float64())]
    ),
    "regionale_annuelle": pa.schema(
        [("code_insee_region", pa.int32()), ("region", TEXT),
         ("consommation_brute_gaz_totale", pa.float64()),
         ("consommation_brute_electricite_rte", pa.float64()),
         ("consommation_brute_totale", pa.float64())]
    ),
    "nationale_quotidienne": pa.schema(
        [("date_heure", pa.timestamp("us", tz="UTC")),
         ("consommation_brute_electricite_rte", pa.float64()),
         ("consommation_brute_gaz_totale", pa.float64()), ("flag_ignore", TEXT)]
    ),
    "regionale_quotidienne": pa.schema(
        [("date_heure", pa.timestamp("us", tz="UTC")), ("code_insee_region", pa.int32()),
         ("consommation_brute_electricite_rte", pa.float64()),
         ("consommation_brute_gaz_totale", pa.float64()), ("flag_ignore", TEXT)]
    ),
}  # fmt: skip
# Communes with codes that sort as text (2A after 01, 2B after 2A), and a missing code.
COMMUNES = [None, "01004", "01053", "13055", "2A004", "2B033", "33063", "59350", "69123",
            "75056", "97411"]  # fmt: skip
DEPARTEMENTS = [("01", "84"), ("13", "93"), ("2A", "94"), ("2B", "94"), ("75", "11")]
WORDS = ["RUE", "AV", "BD", "DE LA PAIX", "DES  LILAS", " FOCH", "DU\tPORT", "", None, "ÉGLISE"]


def raw_rows(dataset: str, year: int, seed: int) -> list[dict[str, Any]]:
    """Rows of one raw partition; energies are whole numbers so any summing order gives
    the same doubles."""
    pick = random.Random(f"{dataset}-{year}-{seed}")
    if dataset == "adresse":
        rows = []
        for _ in range(360):
            commune = pick.choice(COMMUNES)
            rows.append({
                "code_iris": pick.choice([None, f"{commune}0101", f"{commune}0102"]),
                "numero_de_voie": pick.choice([None, "", "1", "2", "10", " 3 "]),
                "indice_de_repetition": pick.choice([None, "", "B", "T"]),
                "type_de_voie": pick.choice(WORDS[:3]),
                "libelle_de_voie": pick.choice(WORDS),
                "code_commune": commune,
                "nom_commune": f"Commune {commune}",
                "code_departement": (commune or "00")[:2],
                "code_region": "84",
                "nombre_de_logements": pick.choice([None, 0, 1, 4]),
                "consommation_annuelle_totale_de_l_adresse_mwh": float(pick.randint(0, 90)),
            })  # fmt: skip
        return rows
    if dataset in ("commune", "departement"):
        areas = COMMUNES[1:] if dataset == "commune" else [d for d, _ in DEPARTEMENTS]
        rows = []
        for area in areas:
            for filiere in ("Electricité", "Gaz"):
                for secteur in ("INDUSTRIE", "RESIDENTIEL"):
                    for detail in ("A", "B"):
                        energy = float(pick.randint(0, 99)) if pick.random() > 0.1 else None
                        row = {"filiere": filiere, "code_grand_secteur": secteur,
                               "nb_sites": pick.randint(0, 9),
                               "conso_totale_mwh": energy}  # fmt: skip
                        if dataset == "commune":
                            row |= {"code_commune": area, "nom_commune": f"Commune {area}",
                                    "code_departement": area[:2], "code_region": "84",
                                    "operateur": detail}  # fmt: skip
                        else:
                            region = dict(DEPARTEMENTS)[area]
                            row |= {"code_departement": area, "nom_departement": f"Dép {area}",
                                    "code_region": region, "nom_region": f"Région {region}",
                                    "code_secteur_naf2": detail}  # fmt: skip
                        rows.append(row)
        return rows
    if dataset == "nationale_annuelle":
        return [{"consommation_brute_gaz_totale": float(pick.randint(1, 9)),
                 "consommation_brute_electricite_rte": float(pick.randint(1, 9)),
                 "consommation_brute_totale": float(pick.randint(10, 19))}]  # fmt: skip
    if dataset == "regionale_annuelle":
        return [{"code_insee_region": code, "region": f"Région {code}",
                 "consommation_brute_gaz_totale": float(pick.randint(1, 9)),
                 "consommation_brute_electricite_rte": float(pick.randint(1, 9)),
                 "consommation_brute_totale": float(pick.randint(10, 19))}
                for code in (11, 84, 94)]  # fmt: skip
    # Half-hour steps of a few local days of the year (Europe/Paris, CET: UTC+1), the last
    # one at 23:30 local on 31 December: still the partition's year.
    starts = [datetime(year, 1, 14, 23, tzinfo=UTC), datetime(year, 6, 30, 22, tzinfo=UTC),
              datetime(year, 12, 30, 23, tzinfo=UTC)]  # fmt: skip
    regions = [None] if dataset == "nationale_quotidienne" else [11, 84]
    rows = []
    for region in regions:
        for start in starts:
            for step in range(48):
                gas = float(pick.randint(1, 9)) if step % 2 == 0 else None  # hourly
                row = {"date_heure": start + timedelta(minutes=30 * step),
                       "consommation_brute_electricite_rte": float(pick.randint(1, 9)),
                       "consommation_brute_gaz_totale": gas,
                       "flag_ignore": pick.choice(["non", "non", None, "oui"])}  # fmt: skip
                if region is not None:
                    row["code_insee_region"] = region
                rows.append(row)
    return rows


def write_raw(lake: Path, year: int, seed: int) -> None:
    """Every dataset's partition of a year, committed (its pointer names its files)."""
    for dataset, schema in RAW_SCHEMAS.items():
        folder = lake / layout.raw_partition(dataset, year)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        rows = raw_rows(dataset, year, seed)
        names = []
        for number, start in enumerate(range(0, len(rows), 150)):  # several files
            name = f"part-{seed}-{number:05d}.parquet"
            pq.write_table(pa.Table.from_pylist(rows[start : start + 150], schema), folder / name)
            names.append(name)
        (lake / layout.raw_pointer(dataset, year)).write_text(json.dumps({"files": names}))


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    for year in YEARS:
        write_raw(tmp_path, year, seed=1)
    return tmp_path


# --- reading the staged tables as the flow does --------------------------------------------


def staged_files(folder: Path) -> list[tuple[int, Path]]:
    """A staged table's Parquet files in the flow's order: year folder, then file name."""
    years = sorted(
        (int(d.name.removeprefix(layout.YEAR_FOLDER)), d)
        for d in folder.iterdir()
        if d.name.startswith(layout.YEAR_FOLDER)
    )
    return [
        (year, path)
        for year, d in years
        for path in sorted(d.iterdir(), key=lambda p: p.name)
        if path.name.endswith(".parquet") and not path.name.startswith((".", "_"))
    ]


def staged_rows(folder: Path) -> list[dict[str, Any]]:
    """Every row in file order, `annee` from the folder names, nothing sorted."""
    return [
        {**row, PARTITION: year}
        for year, path in staged_files(folder)
        for row in pq.read_table(path).to_pylist()
    ]


def assert_in_key_order(name: str, rows: list[dict[str, Any]]) -> None:
    """Each row strictly after the one before it in key order (nulls first, text by bytes)."""
    keys = [tuple((row[k] is not None, row[k]) for k in TABLES[name].keys) for row in rows]
    for number, (before, after) in enumerate(itertools.pairwise(keys)):
        assert before < after, f"{name}: row {number + 1} {after} after {before}"


def run_job(spark: SparkSession, lake: Path, staging: str, years: list[int] | None = None) -> dict:
    result: dict[str, Any] = job.run(spark, lake.as_uri(), staging, years, list(GOLD_TABLES))
    assert json.loads((lake / layout.job_result(staging)).read_text()) == json.loads(
        json.dumps(result, default=str)
    )
    return result


def assert_staged_in_order(lake: Path, staging: str, result: dict[str, Any]) -> None:
    assert set(result["tables"]) == set(GOLD_TABLES)
    for name in GOLD_TABLES:
        rows = staged_rows(lake / staging / name)
        assert rows, name
        assert len(rows) == result["tables"][name], f"{name}: rows counted as written"
        assert_in_key_order(name, rows)
    # no CSV any more: the flow writes it from these files
    assert not list((lake / staging).glob("*.csv*"))


def files_per_year(folder: Path) -> dict[int, int]:
    found: dict[int, int] = {}
    for year, _ in staged_files(folder):
        found[year] = found.get(year, 0) + 1
    return found


# --- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout_conf", list(LAYOUTS), indirect=True)
def test_every_staged_table_is_in_key_order(spark, lake, layout_conf):
    result = run_job(spark, lake, "gold/_versions/run1")

    assert_staged_in_order(lake, "gold/_versions/run1", result)
    # the big tables span several range partitions, within a year too: the order across
    # files is what is checked (conso_commune's rows all fit one merged partition per year
    # with AQE); the small ones are one file per year
    aqe = layout_conf["spark.sql.adaptive.enabled"] == "true"
    for name in ("conso_adresse",) if aqe else ("conso_adresse", "conso_commune"):
        counts = files_per_year(lake / "gold/_versions/run1" / name)
        assert max(counts.values()) > 1, (name, counts)
    assert set(files_per_year(lake / "gold/_versions/run1" / "conso_departement").values()) == {1}
    if aqe:
        plan = tree(write_plan(spark, lake / "gold/_versions/run1" / "conso_adresse"))
        assert "AQEShuffleRead" in plan and "coalesced" in plan, plan
        partitions = int(layout_conf["spark.sql.shuffle.partitions"])
        assert sum(files_per_year(lake / "gold/_versions/run1" / "conso_adresse").values()) < (
            partitions
        ), "AQE merged no partition: the test would not check merged ones"


@pytest.mark.parametrize("by_pointer", [False, True], ids=["plain view", "publish pointer"])
@pytest.mark.parametrize("layout_conf", ["12 partitions, AQE merging"], indirect=True)
def test_a_carry_over_keeps_the_order_and_equals_a_full_rebuild(
    spark, lake, layout_conf, by_pointer
):
    first = run_job(spark, lake, "gold/_versions/run1")
    publish(lake, "gold/_versions/run1", first, by_pointer=by_pointer)
    write_raw(lake, 2023, seed=2)  # 2023 reloaded with other rows

    carried = run_job(spark, lake, "gold/_versions/run2", years=[2023])
    assert_staged_in_order(lake, "gold/_versions/run2", carried)
    full = run_job(spark, lake, "gold/_versions/run3")

    assert carried["tables"] == full["tables"]
    for name in GOLD_TABLES:
        # the same rows, in the same order, file by file read as the flow reads them
        rows = staged_rows(lake / "gold/_versions/run2" / name)
        assert rows == staged_rows(lake / "gold/_versions/run3" / name), name
        kept = [row for row in rows if row[PARTITION] != 2023]
        published = [r for r in staged_rows(lake / "gold/_versions/run1" / name)
                     if r[PARTITION] != 2023]  # fmt: skip
        assert kept == published, name


def publish(lake: Path, staging: str, result: dict[str, Any], *, by_pointer: bool) -> None:
    """What a publish leaves for the next --years run: each table's plain view and pointer,
    or (`by_pointer`, plain views off) only its version named by gold/_publish.json.

    Each year in two files, in key order, the first one small: Spark reads a folder's files
    biggest first, so a carry-over that kept the published rows in the order it reads them
    would put them out of order."""
    entries = {}
    for name in result["tables"]:
        folder_of_table = f"{layout.VERSIONS}/published/{name}" if by_pointer else None
        target = lake / (folder_of_table or layout.gold_table(name))
        files = []
        for year in sorted(files_per_year(lake / staging / name)):
            folder = f"{layout.YEAR_FOLDER}{year}"
            (target / folder).mkdir(parents=True)
            rows = pa.concat_tables(
                pq.read_table(path) for y, path in staged_files(lake / staging / name) if y == year
            )
            for number, part in enumerate((rows.slice(0, 2), rows.slice(2))):
                if part.num_rows:
                    files.append(f"{folder}/part-{number:05d}-published.parquet")
                    pq.write_table(part, target / files[-1])
        if by_pointer:
            entries[name] = {"folder": folder_of_table, "files": files}
        else:
            (lake / layout.gold_pointer(name)).write_text(json.dumps({"files": files}))
    if by_pointer:
        (lake / layout.PUBLISH_POINTER).write_text(json.dumps({"tables": entries}))


def write_plan(spark: SparkSession, target: Path) -> str:
    """The physical plan of the last write to a folder, as Spark's SQL status store keeps it
    (AQE's final plan once it ran)."""
    store = spark._jsparkSession.sharedState().statusStore()
    executions = store.executionsList()
    plans = [executions.apply(i).physicalPlanDescription() for i in range(executions.size())]
    found = [plan for plan in plans if re.search(rf"{re.escape(str(target))}[,\]\s]", plan)]
    assert found, f"no write to {target}"
    return found[-1]


def tree(plan: str) -> str:
    """The plan's tree, without the node details; AQE's final plan only, once it ran."""
    return plan.split("\n\n")[0].split("+- == Initial Plan ==")[0]


def nodes(plan: str, name: str) -> int:
    """How many `name` nodes the plan's tree has."""
    return len(re.findall(rf"(?:^|[-+*] ){name} \(\d+\)", tree(plan), flags=re.MULTILINE))


@pytest.mark.parametrize("layout_conf", ["12 partitions, AQE merging"], indirect=True)
def test_conso_adresse_is_one_shuffle_and_one_sort_and_small_tables_sample_nothing(
    spark, lake, layout_conf, tmp_path
):
    files = job.LakeFiles(spark, lake.as_uri())
    adresse = job.conso_adresse(files.raw_table("adresse", None))
    departement = job.arrange(
        job.conso_departement(files.raw_table("departement", None)), TABLES["conso_departement"]
    )

    out = tmp_path / "out"
    assert job.write_table(adresse, (out / "conso_adresse").as_uri()) > 0
    assert job.write_table(departement, (out / "conso_departement").as_uri()) > 0

    plan = write_plan(spark, out / "conso_adresse")
    # the range partitioning, the sort within partitions, the group by on the sorted rows;
    # the write's own sort on `annee` is satisfied by the order already there
    assert (nodes(plan, "Exchange"), nodes(plan, "Sort")) == (1, 1), tree(plan)
    assert nodes(plan, "SortAggregate") == 1 and "rangepartitioning" in plan, tree(plan)
    # a small table: its group by's shuffle only, then one sorted partition; no sampling
    small = write_plan(spark, out / "conso_departement")
    assert nodes(small, "Exchange") == 1 and nodes(small, "Coalesce") == 1, tree(small)
    assert "rangepartitioning" not in small


def test_checks_report_twenty_examples_and_count_the_others(spark):
    few = spark.range(5).withColumnRenamed("id", "n")
    many = spark.range(57).withColumnRenamed("id", "n")

    assert job._check("few", few, "s")()["problems"] == 5
    assert len(job._check("few", few, "s")()["examples"]) == 5
    check = job._check("many", many.orderBy("n"), "s", extra=1)()
    assert (check["status"], check["problems"], check["extra"]) == ("warning", 57, 1)
    assert check["examples"] == [{"n": n} for n in range(20)]
    assert job._check("none", few.where("n < 0"), "s")() == {
        "name": "none", "status": "ok", "summary": "s", "problems": 0, "examples": []
    }  # fmt: skip
    assert job._check("skipped", None, "s")() == {"name": "skipped", "status": "skipped",
                                                 "summary": "s"}  # fmt: skip


def test_concurrent_work_keeps_its_order_and_a_failure_cancels_the_rest(spark):
    """Results come back in the work's order, whichever finishes first; the first failure is
    raised and the other threads' Spark jobs are cancelled, not left to run."""

    def slow(seconds: float) -> int:
        rows = spark.sparkContext.parallelize([seconds], 1).map(lambda s: time.sleep(s) or 1)
        return int(rows.sum())

    started = time.monotonic()
    done = job.concurrently(spark, {"late": lambda: slow(3) + 10, "early": lambda: 7})
    assert list(done) == ["late", "early"]
    assert [value for value, _ in done.values()] == [11, 7]
    assert done["late"][1] >= 3 > done["early"][1]

    def broken() -> int:
        time.sleep(2)  # the slow job is running by now
        raise RuntimeError("planned failure")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="planned failure"):
        job.concurrently(spark, {"slow": lambda: slow(120), "broken": broken})
    assert time.monotonic() - started < 60  # cancelled: not its 120 s
    assert spark.range(3).count() == 3  # the session is still usable


def test_shuffle_partitions_follow_the_cluster_unless_set(spark):
    key = "spark.sql.shuffle.partitions"
    before = spark.conf.get(key)
    try:
        spark.conf.set(key, "3")
        job.tune(spark)
        assert spark.conf.get(key) == "3"  # the user's
        spark.conf.unset(key)
        job.tune(spark)
        assert spark.conf.get(key) == str(spark.sparkContext.defaultParallelism)
        assert spark.conf.get("spark.sql.adaptive.enabled") == "true"
    finally:
        spark.conf.set(key, before)
