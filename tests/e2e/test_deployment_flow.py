"""The deployed flow's parameter form, and settings loaded from blocks inside the run, against
a Prefect server on PostgreSQL (blocks and global concurrency limits are rows there)."""

from __future__ import annotations

import os
import threading
import time
import typing

import pytest
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema
from prefect_aws import MinIOCredentials, S3Bucket
from pydantic import SecretStr

from flows.flow import IngestFailed, energy_pipeline, ingest
from flows.lake.storage import resolve_settings
from flows.settings import Settings
from flows.sources.catalog import DATASETS
from tests.conftest import fast_settings

if typing.TYPE_CHECKING:
    from tests.support.postgres import PostgresCluster

pytest_plugins = ["tests.support.postgres"]  # `postgres`, `prefect_on_postgres`
pytestmark = pytest.mark.usefixtures("prefect_on_postgres")


def test_dataset_choices_are_the_catalog():
    schema = parameter_schema(energy_pipeline.fn).model_dump_for_openapi()
    choices = schema["properties"]["datasets"]["anyOf"][0]["items"]["enum"]
    assert choices == list(DATASETS)


def test_parameter_form_offers_datasets_years_and_force():
    schema = parameter_schema(energy_pipeline.fn).model_dump_for_openapi()
    properties = schema["properties"]

    assert set(properties) == {"datasets", "years", "force"}
    text = str(properties["datasets"]) + str(schema.get("definitions", {}))
    assert all(name in text for name in DATASETS)
    assert "2000" in str(properties["years"]) and "2100" in str(properties["years"])
    assert properties["force"]["default"] is False


def test_unknown_dataset_is_refused_before_anything_runs():
    with pytest.raises(ParameterTypeError):
        energy_pipeline(datasets=["communes"])


def test_lake_and_credentials_come_from_the_s3_block(
    monkeypatch, postgres: PostgresCluster, prefect_on_postgres: dict
):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    credentials = MinIOCredentials(
        minio_root_user="block-user",
        minio_root_password=SecretStr("block-secret"),
        aws_client_parameters={"endpoint_url": "http://127.0.0.1:9000"},
    )
    credentials.save("flow-test-credentials", overwrite=True)
    S3Bucket(bucket_name="energy", bucket_folder="lake", credentials=credentials).save(
        "flow-test-lake", overwrite=True
    )

    settings = resolve_settings(Settings(s3_block="flow-test-lake"))

    assert settings.lake == "s3://energy/lake"
    assert settings.s3_endpoint == "http://127.0.0.1:9000"
    assert os.environ["AWS_ACCESS_KEY_ID"] == "block-user"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "block-secret"
    assert "block-secret" not in settings.model_dump_json()
    # The blocks are rows of the server's PostgreSQL database.
    rows = postgres.fetch(
        prefect_on_postgres["database"],
        "SELECT d.name, t.slug FROM block_document d JOIN block_type t ON t.id = d.block_type_id"
        " WHERE d.name LIKE 'flow-test-%' ORDER BY d.name",
    )
    assert [(r["name"], r["slug"]) for r in rows] == [
        ("flow-test-credentials", "minio-credentials"), ("flow-test-lake", "s3-bucket")
    ]  # fmt: skip


def _limit(name: str) -> typing.Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


def test_partitions_hold_the_portal_global_concurrency_limit(
    emulator, tmp_path, postgres: PostgresCluster, prefect_on_postgres: dict
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name="limit-test-portal-odre", limit=1)
        )
    emulator.inject("slow", dataset="regionale_annuelle", delay=1.0, times=None)
    settings = fast_settings(emulator, str(tmp_path / "lake"),
                             portal_limit_prefix="limit-test-portal")  # fmt: skip
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(_limit("limit-test-portal-odre").active_slots)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        report = ingest(["regionale_annuelle"], [2023], settings=settings)
    finally:
        done.set()
        watcher.join()

    assert [r.status for r in report.results] == ["loaded"]
    assert max(seen) == 1, seen  # the slot was held during the load...
    assert _limit("limit-test-portal-odre").active_slots == 0  # ...and given back
    [row] = postgres.fetch(
        prefect_on_postgres["database"],
        'SELECT "limit", active_slots FROM concurrency_limit_v2 WHERE name = $1',
        "limit-test-portal-odre",
    )
    assert row == {"limit": 1, "active_slots": 0}, row


def test_a_missing_portal_limit_fails_the_partition_naming_it(emulator, tmp_path):
    settings = fast_settings(emulator, str(tmp_path / "lake"), partition_retries=0,
                             portal_limit_prefix="no-such-limits")  # fmt: skip

    with pytest.raises(IngestFailed) as failure:
        ingest(["nationale_annuelle"], [2023], settings=settings)

    assert "no-such-limits-odre" in str(failure.value)
    assert "bootstrap" in str(failure.value)
