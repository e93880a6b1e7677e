"""Runtime settings: environment (ENERGY_PIPELINE_*), a .env file, or explicit values.

Every value is checked when the settings are built, so a bad one fails at the edge (the CLI
exits 2 naming it) instead of halfway through a run that has already written to the lake.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "ENERGY_PIPELINE_"
YEAR_MIN = 2000  # the years a run may ask for: the CLI's and the deployed flow's bound
YEAR_MAX = 2100
DATAFAIR_MAX_PAGE_SIZE = 10_000  # Data Fair refuses a larger `size`

S3_SCHEMES = ("s3", "s3a", "s3n")
LAKE_FORMS = "a local path, file:///path, or s3://bucket[/prefix] (also s3a://, s3n://)"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def check_lake_uri(uri: str) -> str:
    """The lake URI if it is one of the supported forms; ValueError naming them otherwise."""
    if not uri.strip():
        raise ValueError(f"the lake must not be empty; use {LAKE_FORMS}")
    match = _SCHEME.match(uri)
    if not match:
        return uri  # a plain local path
    scheme, rest = match.group(1), uri[match.end() :]
    if scheme in S3_SCHEMES:
        if not rest.split("/", 1)[0].strip():
            raise ValueError(f"{scheme}:// needs a bucket name: {scheme}://bucket[/prefix]")
        return uri
    if scheme == "file":
        if not rest.strip():
            raise ValueError("file:// needs a path: file:///path/to/lake")
        return uri
    raise ValueError(f"unsupported scheme {scheme}://; use {LAKE_FORMS}")


def check_http_url(url: str) -> str:
    """The URL if it is http(s)://host[...]; ValueError otherwise."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host: http(s)://host[:port][/path]")
    return url


class Settings(BaseSettings):
    """Every knob of the pipeline, with the embedded defaults of CONTRACT.md."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        allow_inf_nan=False,
        populate_by_name=True,
    )

    lake: str = Field("./lake", description="Lake root: a path, file://..., or s3://bucket/prefix")
    odre_url: str = "https://odre.opendatasoft.com"
    ore_url: str = "https://opendata.agenceore.fr"
    enedis_url: str = "https://opendata.enedis.fr"
    spark_master: str = "local[*]"
    s3_endpoint: str | None = Field(
        None, description="S3-compatible endpoint URL (MinIO, test servers); empty means AWS"
    )
    s3_block: str | None = Field(None, description="S3Bucket block holding the lake (deployments)")

    http_connect_timeout: float = Field(10.0, gt=0)
    http_read_timeout: float = Field(120.0, gt=0)
    http_max_attempts: int = Field(6, ge=1)
    http_backoff_base: float = Field(1.0, ge=0)
    http_backoff_max: float = Field(60.0, ge=0)
    portal_concurrency: int = Field(2, ge=1)
    portal_limit_prefix: str | None = Field(
        None,
        description="Deployments: hold the global concurrency limit <prefix>-<portal> "
        "(odre, ore, enedis) while loading a partition, across every worker",
    )
    rate_limit_window_s: float = Field(
        60.0,
        gt=0,
        description="Data Fair limits per minute: a 429 without a hint waits this long "
        "(at least one window) before the same request is tried again",
    )
    rate_limit_patience_s: float = Field(
        900.0,
        ge=0,
        description="Longest wait for a portal's quota to reset (ODS reset_time); a quota "
        "that resets later fails the partition with 'daily quota of <portal> spent until <time>'",
    )
    quarantine_max_share: float = Field(
        0.001,
        ge=0,
        le=1,
        description="A partition whose quarantined rows pass this share of its rows (and "
        "quarantine_max_rows) fails as a systematic rejection instead of committing",
    )
    quarantine_max_rows: int = Field(
        5, ge=0, description="Quarantined rows a partition may always have, whatever its size"
    )
    partition_concurrency: int = Field(4, ge=1)
    partition_retries: int = Field(3, ge=0)
    datafair_page_size: int = Field(10_000, ge=1, le=DATAFAIR_MAX_PAGE_SIZE)
    validation_chunk_rows: int = Field(100_000, ge=1)
    spool_bucket_rows: int = Field(100_000, ge=1)
    spark_timeout_s: float = Field(3600.0, gt=0)
    spark_driver_memory: str = "2g"
    user_agent: str = "energy-pipeline/0.1 (open-data pipeline: French electricity and gas use)"
    lease_ttl_s: float = Field(
        60.0,
        gt=0,
        description="S3 lake lease: a holder that has not renewed it for this long is presumed "
        "dead and can be taken over",
    )
    demo_lake: str = Field(
        "./lake-demo", description="The lake of `energy-pipeline demo` (never ENERGY_PIPELINE_LAKE)"
    )
    jars_dir: str | None = Field(
        None,
        description="Folder of the S3A jars (scripts/fetch-spark-jars.sh); empty means "
        "~/.cache/energy-pipeline/jars",
    )
    s3_region: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "s3_region", f"{ENV_PREFIX}S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"
        ),
        description="Region S3A signs for (also read from AWS_REGION, AWS_DEFAULT_REGION); "
        "a custom endpoint without one signs for us-east-1",
    )
    slack_block: str = Field(
        "energy-pipeline-slack", description="SlackWebhook block that failed runs are sent to"
    )
    lease_wait_s: float = Field(
        3600.0,
        ge=0,
        description="How long a second run waits for the lake's lease before failing with the "
        "holder's name; 0 fails at once",
    )

    @field_validator("lake")
    @classmethod
    def _lake_form(cls, value: str) -> str:
        return check_lake_uri(value)

    @field_validator("odre_url", "ore_url", "enedis_url")
    @classmethod
    def _portal_url(cls, value: str) -> str:
        return check_http_url(value)

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # ENERGY_PIPELINE_S3_ENDPOINT= (empty) means no endpoint: AWS
        return check_http_url(value)

    def portal_url(self, portal: str) -> str:
        """Base URL of a portal by its short name (odre, ore, enedis)."""
        return str(getattr(self, f"{portal}_url"))


def env_name(field: str) -> str:
    """The environment variable of a setting: lake -> ENERGY_PIPELINE_LAKE."""
    return f"{ENV_PREFIX}{field.upper()}"


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
