"""Settings completed from Prefect blocks: the lake's bucket and credentials, loaded in the run."""

from __future__ import annotations

import os
from typing import Any

from prefect_aws import MinIOCredentials, S3Bucket

from flows.settings import Settings


def resolve_settings(settings: Settings | None = None) -> Settings:
    """Settings from the environment; with ENERGY_PIPELINE_S3_BLOCK, the lake from that block.

    Credentials go into this process's environment only, where s3fs and spark-submit's
    S3A provider chain read them; they never reach a command line, a job variable or a log.
    """
    settings = settings or Settings()
    if not settings.s3_block:
        return settings
    bucket: Any = S3Bucket.load(settings.s3_block)
    credentials = bucket.credentials
    if isinstance(credentials, MinIOCredentials):
        key, secret = credentials.minio_root_user, credentials.minio_root_password
    else:
        key, secret = credentials.aws_access_key_id, credentials.aws_secret_access_key
    if key and secret:
        os.environ["AWS_ACCESS_KEY_ID"] = key
        os.environ["AWS_SECRET_ACCESS_KEY"] = secret.get_secret_value()
    if credentials.region_name:
        os.environ.setdefault("AWS_DEFAULT_REGION", credentials.region_name)
    endpoint = credentials.aws_client_parameters.endpoint_url
    folder = bucket.bucket_folder.strip("/")
    lake = f"s3://{bucket.bucket_name}/{folder}" if folder else f"s3://{bucket.bucket_name}"
    return settings.model_copy(
        update={"lake": lake, "s3_endpoint": str(endpoint) if endpoint else settings.s3_endpoint}
    )
