"""The deployed flow's parameter form, and settings loaded from blocks inside the run."""

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

pytestmark = pytest.mark.usefixtures("prefect_server")


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


def test_lake_and_credentials_come_from_the_s3_block(monkeypatch):
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


def _limit(name: str) -> typing.Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


def test_partitions_hold_the_portal_global_concurrency_limit(emulator, tmp_path):
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


def test_a_missing_portal_limit_fails_the_partition_naming_it(emulator, tmp_path):
    settings = fast_settings(emulator, str(tmp_path / "lake"), partition_retries=0,
                             portal_limit_prefix="no-such-limits")  # fmt: skip

    with pytest.raises(IngestFailed) as failure:
        ingest(["nationale_annuelle"], [2023], settings=settings)

    assert "no-such-limits-odre" in str(failure.value)
    assert "bootstrap" in str(failure.value)
