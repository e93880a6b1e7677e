"""Reading the lake back with DuckDB, an engine independent of the code under test."""

from __future__ import annotations

from pathlib import Path

import boto3
import duckdb
import pandas as pd

from flows.sources.catalog import get_dataset


def raw_glob(lake: Path, dataset: str) -> str:
    """Every committed Parquet file of a raw dataset (hidden folders excluded)."""
    return str(lake / "raw" / dataset / "annee=*" / "*.parquet")


def read_raw(lake: Path, dataset: str, where: str = "true") -> pd.DataFrame:
    """A raw dataset as DuckDB reads it, with `annee` from the folder names."""
    return duckdb.sql(
        f"select * from read_parquet('{raw_glob(lake, dataset)}', hive_partitioning = true, "
        f"union_by_name = true) where {where}"
    ).df()


def counts_by_year(lake: Path, dataset: str) -> dict[int, int]:
    """Rows per partition."""
    rows = duckdb.sql(
        f"select annee, count(*) from read_parquet('{raw_glob(lake, dataset)}', "
        "hive_partitioning = true, union_by_name = true) group by annee"
    ).fetchall()
    return {int(year): int(n) for year, n in rows}


def duplicate_keys(lake: Path, dataset: str) -> int:
    """How many natural keys occur more than once."""
    key = ", ".join(
        f"coalesce(cast({c} as varchar), '∅')" for c in get_dataset(dataset).natural_key
    )
    return int(
        duckdb.sql(
            f"select count(*) from (select {key} from read_parquet('{raw_glob(lake, dataset)}', "
            f"hive_partitioning = true, union_by_name = true) group by all having count(*) > 1)"
        ).fetchall()[0][0]
    )


def download_bucket(endpoint: str, bucket: str, target: Path) -> Path:
    """Copy a whole bucket to a local folder (DuckDB's S3 extension needs a network)."""
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/"):  # a directory marker (S3A writes some): no file
                continue
            local = target / item["Key"]
            local.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(local))
    return target
