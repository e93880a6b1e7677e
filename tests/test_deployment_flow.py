"""The deployed flow's parameter form, and settings loaded from blocks inside the run."""

from __future__ import annotations

import os
import typing

import pytest
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema
from prefect_aws import MinIOCredentials, S3Bucket
from pydantic import SecretStr

from flows.blocks import resolve_settings
from flows.catalog import DATASETS
from flows.flow import DatasetName, energy_pipeline
from flows.settings import Settings


def test_dataset_choices_are_the_catalog():
    assert list(typing.get_args(DatasetName)) == list(DATASETS)


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
