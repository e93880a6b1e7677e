"""Runtime settings: environment (ENERGY_PIPELINE_*), a .env file, or explicit values."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the pipeline, with the embedded defaults of CONTRACT.md."""

    model_config = SettingsConfigDict(
        env_prefix="ENERGY_PIPELINE_", env_file=".env", extra="ignore"
    )

    lake: str = Field("./lake", description="Lake root: a path, file://..., or s3://bucket/prefix")
    odre_url: str = "https://odre.opendatasoft.com"
    ore_url: str = "https://opendata.agenceore.fr"
    enedis_url: str = "https://opendata.enedis.fr"
    spark_master: str = "local[*]"
    s3_endpoint: str | None = None
    s3_block: str | None = Field(None, description="S3Bucket block holding the lake (deployments)")

    http_connect_timeout: float = 10.0
    http_read_timeout: float = 120.0
    http_max_attempts: int = 6
    http_backoff_base: float = 1.0
    http_backoff_max: float = 60.0
    portal_concurrency: int = 2
    portal_limit_prefix: str | None = Field(
        None,
        description="Deployments: hold the global concurrency limit <prefix>-<portal> "
        "(odre, ore, enedis) while loading a partition, across every worker",
    )
    rate_limit_window_s: float = Field(
        60.0,
        description="Data Fair limits per minute: a 429 without a hint waits this long "
        "(at least one window) before the same request is tried again",
    )
    rate_limit_patience_s: float = Field(
        900.0,
        description="Longest wait for a portal's quota to reset (ODS reset_time); a quota "
        "that resets later fails the partition with 'daily quota of <portal> spent until <time>'",
    )
    quarantine_max_share: float = Field(
        0.001,
        description="A partition whose quarantined rows pass this share of its rows (and "
        "quarantine_max_rows) fails as a systematic rejection instead of committing",
    )
    quarantine_max_rows: int = Field(
        5, description="Quarantined rows a partition may always have, whatever its size"
    )
    partition_concurrency: int = 4
    partition_retries: int = 3
    datafair_page_size: int = 10_000
    validation_chunk_rows: int = 100_000
    spool_bucket_rows: int = 100_000
    spark_timeout_s: float = 3600.0
    spark_driver_memory: str = "2g"
    user_agent: str = "energy-pipeline/0.1 (open-data pipeline: French electricity and gas use)"

    def portal_url(self, portal: str) -> str:
        """Base URL of a portal by its short name (odre, ore, enedis)."""
        return str(getattr(self, f"{portal}_url"))


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
