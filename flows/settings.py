"""Runtime settings: environment (ENERGY_PIPELINE_*), a .env file, or explicit values.

Every value is checked when the settings are built, so a bad one fails at the edge (the CLI
exits 2 naming it) instead of halfway through a run that has already written to the lake.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.sources.catalog import PORTALS

ENV_PREFIX = "ENERGY_PIPELINE_"
YEAR_MIN = 2000  # the years a run may ask for: the CLI's and the deployed flow's bound
YEAR_MAX = 2100
DATAFAIR_MAX_PAGE_SIZE = 10_000  # Data Fair refuses a larger `size`

PREFECT_PREFIX = "energy-pipeline"  # the Prefect resources the bootstrap creates


@dataclass(frozen=True)
class PrefectNames:
    """The names of the Prefect resources: one prefix, read by the bootstrap that creates
    them and by the settings' defaults the flows look them up with."""

    prefix: str = PREFECT_PREFIX

    def resource(self, suffix: str) -> str:
        """A resource name with the prefix: energy-pipeline-<suffix>."""
        return f"{self.prefix}-{suffix}"

    @property
    def lake_block(self) -> str:
        """The S3Bucket block of the lake."""
        return self.resource("lake")

    @property
    def s3_credentials_block(self) -> str:
        """The credentials block the lake's S3Bucket block nests."""
        return self.resource("s3-credentials")

    @property
    def slack_block(self) -> str:
        """The SlackWebhook block of failed runs."""
        return self.resource("slack")

    @property
    def portal_limit_prefix(self) -> str:
        """Prefix of the per-portal global concurrency limits."""
        return self.resource("portal")

    def work_pool(self, kind: str) -> str:
        """The work pool of a kind (process, docker)."""
        return self.resource(kind)


def portal_limit(prefix: str, portal: str) -> str:
    """The global concurrency limit of one portal: <prefix>-<portal>."""
    return f"{prefix}-{portal}"


def check_lake_uri(uri: str) -> str:
    """The lake URI if a storage scheme of flows.lake.storage takes it (a local path, file://,
    s3://...); ValueError naming the supported forms otherwise."""
    from flows.lake.storage import check_lake_uri as check  # storage reads these settings

    return check(uri)


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
    """Every knob of the pipeline, with the embedded defaults of docs/CONTRACT.md."""

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
    plain_views: bool = Field(
        True,
        description="Keep gold/<table>/ and gold/<table>.csv as plain copies of the published "
        "tables (hard links locally; server-side copies on S3). False publishes by pointer "
        "alone (gold/_publish.json): no byte copied, readers follow the pointer",
    )
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
    spark_class_archive_dir: str | None = Field(
        None,
        description="Folder of the Spark driver's class archive (AppCDS: about 3 s off every "
        "spark-submit); unset means ~/.cache/energy-pipeline/jvm-classes, 'off' turns it off",
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
        PrefectNames().slack_block, description="SlackWebhook block that failed runs go to"
    )
    alert_blocks: list[str] = Field(
        default_factory=list,
        description="More notification blocks failed runs go to, as <block-type-slug>/<name> "
        "(ms-teams-webhook/ops, email/oncall), a JSON list in the environment",
    )
    lease_wait_s: float = Field(
        3600.0,
        ge=0,
        description="How long a second run waits for the lake's lease before failing with the "
        "holder's name; 0 fails at once",
    )

    @field_validator("lake", "demo_lake")
    @classmethod
    def _lake_form(cls, value: str) -> str:
        return check_lake_uri(value)

    @field_validator(*(f"{portal}_url" for portal in PORTALS))
    @classmethod
    def _portal_url(cls, value: str) -> str:
        return check_http_url(value)

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # ENERGY_PIPELINE_S3_ENDPOINT= (empty) means no endpoint: AWS
        return check_http_url(value)

    def portal_limit(self, portal: str) -> str | None:
        """The global concurrency limit a partition of this portal holds (deployments)."""
        return portal_limit(self.portal_limit_prefix, portal) if self.portal_limit_prefix else None

    def portal_url(self, portal: str) -> str:
        """Base URL of a portal by its short name (odre, ore, enedis)."""
        return str(getattr(self, f"{portal}_url"))


def env_name(field: str) -> str:
    """The environment variable of a setting: lake -> ENERGY_PIPELINE_LAKE."""
    return f"{ENV_PREFIX}{field.upper()}"


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
