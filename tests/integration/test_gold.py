"""Gold tables from Spark, compared value by value with an independent DuckDB computation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest

from flows.flow import aggregate, ingest
from flows.gold.aggregate import run_aggregate
from flows.gold.spark_submit import SparkJobFailed
from flows.gold.tables import GOLD_TABLES
from flows.settings import Settings
from tests.conftest import fast_settings
from tests.support.gold_reference import reference
from tests.support.goldview import KEYS, assert_same_table, canonical, read_gold, required
from tests.support.lakeview import download_bucket
from tests.support.s3_counter import S3Counter

pytestmark = pytest.mark.usefixtures("prefect_server")


def quiet(line: str) -> None:
    """Spark's log is not needed by these tests."""


@pytest.mark.parametrize("table", GOLD_TABLES)
def test_gold_table_equals_independent_duckdb_computation(emulator_lake, table):
    gold = read_gold(emulator_lake, table)

    assert len(gold) > 0
    assert_same_table(gold, reference(emulator_lake, table), table)


@pytest.mark.parametrize("table", GOLD_TABLES)
def test_csv_is_the_whole_table_with_header_and_text_codes(emulator_lake, table):
    csv = pd.read_csv(emulator_lake / "gold" / f"{table}.csv", dtype=str, keep_default_na=False)

    assert list(csv.columns[: len(required(table))]) == required(table)
    assert len(csv) == len(read_gold(emulator_lake, table))
    for code in ("code_departement", "code_commune"):
        if code in csv and table != "conso_adresse":  # Enedis' sample has no Corsican address
            assert csv[code].str.startswith("0").any()
            assert csv[code].str.startswith("2A").any()

    # In key order, row by row, with the values of the independent computation to six places.
    expected = canonical(reference(emulator_lake, table), table)
    for column in KEYS[table]:
        text = expected[column].map(lambda v: "" if pd.isna(v) else str(v))
        assert csv[column].tolist() == text.tolist(), f"{table}.{column}: not in key order"
    for column in (c for c in required(table) if c.endswith("_mwh")):
        shown = pd.to_numeric(csv[column].replace("", None)).to_numpy(dtype=float)
        wanted = expected[column].to_numpy(dtype=float)
        assert (np.isnan(shown) == np.isnan(wanted)).all()
        assert np.allclose(shown, wanted, rtol=1e-9, atol=5.1e-7, equal_nan=True), column
        assert csv[column].str.fullmatch(r"(-?\d+\.\d{6})?").all(), f"{column}: six places"


def test_publish_manifest_records_tables_and_checks(emulator_lake):
    manifests = sorted((emulator_lake / "_manifests" / "publish").glob("*.json"))
    manifest = pd.read_json(manifests[-1], typ="series")

    assert set(manifest["tables"]) == set(GOLD_TABLES)
    assert {c["name"] for c in manifest["checks"]} == {
        "communes_vs_departements",
        "departements_vs_regions",
        "ore_vs_odre_national",
        "daily_vs_annual",
        "half_hour_completeness",
    }
    regions = next(c for c in manifest["checks"] if c["name"] == "departements_vs_regions")
    assert regions["status"] == "ok"
    assert not (emulator_lake / "gold" / "_staging").exists() or not any(
        (emulator_lake / "gold" / "_staging").iterdir()
    )


def copy_raw(source: Path, target: Path) -> Path:
    """A new lake holding only the raw zone of another."""
    shutil.copytree(source / "raw", target / "raw")
    return target


@pytest.mark.spark
def test_standalone_cluster_gives_identical_tables(emulator_lake, tmp_path):
    from tests.support.spark_cluster import standalone_cluster

    lake = copy_raw(emulator_lake, tmp_path / "lake")
    with standalone_cluster() as master:
        run_aggregate(Settings(lake=str(lake), spark_master=master), on_line=quiet)

    for table in GOLD_TABLES:
        assert_same_table(read_gold(lake, table), read_gold(emulator_lake, table), table)


@pytest.mark.spark
@pytest.mark.s3
def test_s3_lake_ingest_then_aggregate_through_s3a(
    emulator, emulator_lake, s3_endpoint, s3_bucket, tmp_path
):
    """Byte-identical tables on S3 and locally; the job copies nothing (magic committer),
    the plain views cost exactly the copies the manifest reports, and a publish by pointer
    alone copies nothing at all and removes the plain views. Bytes copied are counted by a
    proxy in front of the S3 server, not by the code under test."""
    settings = fast_settings(
        emulator, f"s3://{s3_bucket}/lake", s3_endpoint=s3_endpoint, spark_master="local[2]"
    )
    ingest(settings=settings)

    with S3Counter(s3_endpoint) as counter:
        through = settings.model_copy(update={"s3_endpoint": counter.url})
        report = run_aggregate(through, on_line=quiet)
        job, flow = counter.tally("java"), counter.tally("python")

    assert job.objects_written > 0 and (job.objects_copied, job.bytes_copied) == (0, 0)
    published = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    view_bytes = 0
    for table in GOLD_TABLES:
        for prefix in (f"lake/gold/{table}/", f"lake/gold/{table}.csv"):
            listing = published.list_objects_v2(Bucket=s3_bucket, Prefix=prefix)
            view_bytes += sum(o["Size"] for o in listing.get("Contents", [])
                              if not o["Key"].endswith("_current.json"))  # fmt: skip
    assert flow.bytes_copied == view_bytes == report.manifest.copied.bytes > 0
    assert flow.objects_copied == report.manifest.copied.objects

    local = download_bucket(s3_endpoint, s3_bucket, tmp_path / "copy") / "lake"
    for table in GOLD_TABLES:
        assert_same_table(read_gold(local, table), read_gold(emulator_lake, table), table)
        assert (local / "gold" / f"{table}.csv").read_bytes() == (
            emulator_lake / "gold" / f"{table}.csv"
        ).read_bytes()
    assert not [p for p in (local / "gold").rglob("*") if "_staging" in p.parts and p.is_file()]

    with S3Counter(s3_endpoint) as counter:
        by_pointer = settings.model_copy(update={"s3_endpoint": counter.url, "plain_views": False})
        report = run_aggregate(by_pointer, on_line=quiet)
        total = counter.tally()
    assert (total.objects_copied, total.bytes_copied) == (0, 0)
    assert (report.manifest.copied.objects, report.manifest.copied.bytes) == (0, 0)
    local = download_bucket(s3_endpoint, s3_bucket, tmp_path / "again") / "lake"
    pointer = json.loads((local / "gold" / "_publish.json").read_text())
    for table in GOLD_TABLES:
        assert (
            not (local / "gold" / table).exists() and not (local / "gold" / f"{table}.csv").exists()
        )
        entry = pointer["tables"][table]
        files = [local / entry["folder"] / name for name in entry["files"]]
        followed = pd.concat([pd.read_parquet(f).assign(annee=_year(f)) for f in files])
        assert_same_table(followed, read_gold(emulator_lake, table), table)
        assert (local / entry["csv"]).read_bytes() == (
            emulator_lake / "gold" / f"{table}.csv"
        ).read_bytes()


def _year(file: Path) -> int:
    return int(file.parent.name.removeprefix("annee="))


def snapshot(lake: Path) -> dict[str, bytes]:
    """Every file of the gold zone, by path."""
    return {
        str(p.relative_to(lake)): p.read_bytes() for p in (lake / "gold").rglob("*") if p.is_file()
    }


def test_failed_job_exits_non_zero_with_log_tail_and_leaves_gold_unchanged(emulator_lake, tmp_path):
    lake = tmp_path / "lake"
    shutil.copytree(emulator_lake, lake)
    before = snapshot(lake)
    victim = next((lake / "raw" / "departement" / "annee=2022").glob("*.parquet"))
    victim.write_bytes(b"this is not a parquet file" * 100)

    with pytest.raises(SparkJobFailed) as failure:
        aggregate(settings=Settings(lake=str(lake), spark_master="local[2]"))

    message = str(failure.value)
    assert failure.value.exit_code not in (None, 0)
    assert "Traceback" in message or "Exception" in message
    assert len(failure.value.log_tail) > 5
    assert snapshot(lake) == before
    assert not (lake / "gold" / "_staging").exists() or not any(
        (lake / "gold" / "_staging").iterdir()
    )
