"""The same ingestion with the lake on S3, against a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

import boto3
import pytest

from flows.flow import ingest
from flows.sources.catalog import DATASETS
from tests.conftest import fast_settings
from tests.support.lakeview import counts_by_year, download_bucket, duplicate_keys

pytestmark = [pytest.mark.s3, pytest.mark.usefixtures("prefect_server")]


def keys(endpoint: str, bucket: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_full_ingest_to_s3_matches_the_portals(emulator, s3_endpoint, s3_bucket, tmp_path):
    settings = fast_settings(emulator, f"s3://{s3_bucket}/lake", s3_endpoint=s3_endpoint)

    report = ingest(settings=settings)

    assert not report.failed
    local = download_bucket(s3_endpoint, s3_bucket, tmp_path / "copy") / "lake"
    for dataset in DATASETS:
        expected = {y: len(emulator.table(dataset, y)) for y in emulator.years_of(dataset)}
        assert counts_by_year(local, dataset) == expected, dataset
        assert duplicate_keys(local, dataset) == 0, dataset
    stored = keys(s3_endpoint, s3_bucket)
    assert not [k for k in stored if "/_staging/" in k]
    assert f"lake/_manifests/loads/{report.load_id}.json" in stored
    assert "lake/raw/commune/annee=2023/_current.json" in stored


def test_reload_on_s3_replaces_the_partition_files(emulator, s3_endpoint, s3_bucket, tmp_path):
    settings = fast_settings(emulator, f"s3://{s3_bucket}/lake", s3_endpoint=s3_endpoint)
    ingest(["departement"], [2023], settings=settings)
    first = [k for k in keys(s3_endpoint, s3_bucket) if k.endswith(".parquet")]

    ingest(["departement"], [2023], force=True, settings=settings)

    second = [k for k in keys(s3_endpoint, s3_bucket) if k.endswith(".parquet")]
    assert len(second) == len(first) and set(second).isdisjoint(first)
    local = download_bucket(s3_endpoint, s3_bucket, tmp_path / "copy") / "lake"
    assert counts_by_year(local, "departement") == {2023: len(emulator.table("departement", 2023))}
