"""Where a lake can live: one table of URI schemes, and everything each one needs.

The one owner of scheme knowledge. Each entry of `SCHEMES` gives the URI schemes that name
it (with their aliases), how it is checked, the fsspec protocol and options the flows open
it with, the URI and the Hadoop settings the Spark job reads it through, the jars Spark
needs for it, and how a Prefect block resolves a lake of that kind. Everything else asks
this module (`scheme_of`, `is_s3`, `to_spark_uri`, `storage_options`, `spark_conf`, `jars`,
`resolve_settings`) instead of looking at a URI's prefix. A new kind of storage (gs://,
abfss://) is one more entry, plus its jars.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from flows.errors import PipelineError
from flows.settings import Settings

DEFAULT_JARS_DIR = Path.home() / ".cache" / "energy-pipeline" / "jars"
JARS_HINT = "run `make jars` (or `bash scripts/fetch-spark-jars.sh`) to fetch them"

# S3A looks credentials up through the AWS SDK's default chain: the AWS_ACCESS_KEY_ID /
# AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN variables, then ~/.aws profiles (AWS_PROFILE),
# web identity, container and instance roles. Keys never appear in the Spark configuration.
CREDENTIALS_PROVIDER = "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
# A custom S3 endpoint has no AWS region to infer: S3A signs for this one.
DEFAULT_S3_REGION = "us-east-1"

_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
PLAIN_PATH = ""  # the scheme of a URI without one: a local path


@dataclass(frozen=True)
class Scheme:
    """One kind of lake storage.

    `uri_schemes`: how a lake URI names it, the canonical one first ("" is a plain path).
    `form`: the forms a lake URI of this kind takes, for error messages.
    `check`: raises ValueError when what follows `<scheme>://` is not a lake root.
    `protocol`: the fsspec protocol the flows open it with; `options(endpoint)` its
    storage options. `spark_scheme`: the URI scheme the Spark job reads it through;
    `spark_conf(endpoint, region)` the Hadoop settings that needs (never a secret);
    `jars(jars_dir)` the jars it needs on Spark's classpath. `block_setting`: the setting
    naming a Prefect block that holds such a lake, and `from_block(settings, name)` the
    settings completed from that block (lake URI, endpoint, credentials).
    """

    name: str
    uri_schemes: tuple[str, ...]
    form: str
    check: Callable[[str, str], None]
    protocol: str
    options: Callable[[str | None], dict[str, Any]]
    spark_scheme: str
    spark_conf: Callable[[str | None, str | None], dict[str, str]]
    jars: Callable[[str | None], list[Path]]
    block_setting: str | None = None
    from_block: Callable[[Settings, str], Settings] | None = None


# --- local files ---------------------------------------------------------------------------


def _check_path(scheme: str, rest: str) -> None:
    if not rest.strip():
        raise ValueError(f"{scheme}:// needs a path: {scheme}:///path/to/lake")


def _no_options(_endpoint: str | None) -> dict[str, Any]:
    return {}


def _no_conf(_endpoint: str | None, _region: str | None) -> dict[str, str]:
    return {}


def _no_jars(_jars_dir: str | None) -> list[Path]:
    return []


# --- S3 (AWS or an S3-compatible endpoint) -------------------------------------------------


def _check_bucket(scheme: str, rest: str) -> None:
    if not rest.split("/", 1)[0].strip():
        raise ValueError(f"{scheme}:// needs a bucket name: {scheme}://bucket[/prefix]")


def _s3_options(endpoint: str | None) -> dict[str, Any]:
    """s3fs options: the endpoint; credentials come from the environment or a profile."""
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def _s3a_conf(endpoint: str | None, region: str | None) -> dict[str, str]:
    """The S3A settings: path-style access, the SDK's credential chain, endpoint, region."""
    conf = {
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.aws.credentials.provider": CREDENTIALS_PROVIDER,
        # The magic committer: tasks upload their files to where they stay, as multipart
        # uploads completed at job commit; no rename, so no byte copied (FileOutputCommitter
        # renames = copies every byte on S3, twice with its v1 algorithm).
        "spark.hadoop.fs.s3a.committer.name": "magic",
        "spark.hadoop.fs.s3a.committer.magic.enabled": "true",
        "spark.hadoop.mapreduce.outputcommitter.factory.scheme.s3a": (
            "org.apache.hadoop.fs.s3a.commit.S3ACommitterFactory"
        ),
        "spark.sql.sources.commitProtocolClass": (
            "org.apache.spark.internal.io.cloud.PathOutputCommitProtocol"
        ),
        "spark.sql.parquet.output.committer.class": (
            "org.apache.spark.internal.io.cloud.BindingParquetOutputCommitter"
        ),
    }
    if endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = endpoint
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(
            urlparse(endpoint).scheme != "http"
        ).lower()
        region = region or DEFAULT_S3_REGION
    if region:
        conf["spark.hadoop.fs.s3a.endpoint.region"] = region
    return conf


def jars_dir(configured: str | None = None) -> Path:
    """The folder scripts/fetch-spark-jars.sh fills: the `jars_dir` setting, or ~/.cache."""
    return Path(configured).expanduser() if configured else DEFAULT_JARS_DIR


def s3a_jars(directory: Path | str | None = None) -> list[Path]:
    """The S3A jars (hadoop-aws, AWS SDK v2 modules) from the jars folder, sorted by name.

    `directory` defaults to the `jars_dir` setting (ENERGY_PIPELINE_JARS_DIR).
    """
    # The runner knows which Spark (and so which Hadoop) pyspark installed.
    from flows.gold.spark_submit import bundled_hadoop_version

    folder = jars_dir(str(directory) if directory else Settings().jars_dir)
    found = sorted(folder.glob("*.jar")) if folder.is_dir() else []
    aws = [jar for jar in found if jar.name.startswith("hadoop-aws-")]
    if not aws:
        raise PipelineError(f"S3A jars missing: no hadoop-aws-*.jar in {folder}; {JARS_HINT}")
    hadoop = bundled_hadoop_version()
    if hadoop and aws[0].name != f"hadoop-aws-{hadoop}.jar":
        raise PipelineError(
            f"{aws[0].name} in {folder} does not match the Hadoop {hadoop} bundled with "
            f"pyspark; {JARS_HINT}"
        )
    return found


def _s3_from_block(settings: Settings, block: str) -> Settings:
    """The lake of an S3Bucket block (AwsCredentials or MinIOCredentials inside).

    Credentials go into this process's environment only, where s3fs and spark-submit's
    S3A provider chain read them; they never reach a command line, a job variable or a log.
    """
    from prefect_aws import MinIOCredentials, S3Bucket  # deployments only: not at import

    bucket: Any = S3Bucket.load(block)
    credentials = bucket.credentials
    if isinstance(credentials, MinIOCredentials):
        key, secret = credentials.minio_root_user, credentials.minio_root_password
    else:
        key, secret = credentials.aws_access_key_id, credentials.aws_secret_access_key
    if key and secret:
        os.environ["AWS_ACCESS_KEY_ID"] = key
        os.environ["AWS_SECRET_ACCESS_KEY"] = secret.get_secret_value()
    if credentials.region_name:  # for s3fs and boto3, which read it from the environment
        os.environ.setdefault("AWS_DEFAULT_REGION", credentials.region_name)
    endpoint = credentials.aws_client_parameters.endpoint_url
    folder = bucket.bucket_folder.strip("/")
    root = f"{bucket.bucket_name}/{folder}" if folder else bucket.bucket_name
    return settings.model_copy(
        update={
            "lake": f"{S3.uri_schemes[0]}://{root}",
            "s3_endpoint": str(endpoint) if endpoint else settings.s3_endpoint,
            "s3_region": settings.s3_region or credentials.region_name or None,
        }
    )


# --- the table -----------------------------------------------------------------------------

LOCAL = Scheme(
    name="local",
    uri_schemes=(PLAIN_PATH, "file"),
    form="a local path, file:///path",
    check=_check_path,
    protocol="file",
    options=_no_options,
    spark_scheme="file",
    spark_conf=_no_conf,
    jars=_no_jars,
)
S3 = Scheme(
    name="s3",
    uri_schemes=("s3", "s3a", "s3n"),
    form="s3://bucket[/prefix] (also s3a://, s3n://)",
    check=_check_bucket,
    protocol="s3",
    options=_s3_options,
    spark_scheme="s3a",
    spark_conf=_s3a_conf,
    jars=s3a_jars,
    block_setting="s3_block",
    from_block=_s3_from_block,
)
SCHEMES: tuple[Scheme, ...] = (LOCAL, S3)
_BY_URI_SCHEME = {name: scheme for scheme in SCHEMES for name in scheme.uri_schemes}


def lake_forms() -> str:
    """Every form a lake URI may take, for error messages."""
    forms = [scheme.form for scheme in SCHEMES]
    return f"{', '.join(forms[:-1])}, or {forms[-1]}" if len(forms) > 1 else forms[0]


def uri_scheme(uri: str) -> str:
    """The scheme a URI is spelt with (`s3a` for s3a://b/k), "" for a plain path."""
    match = _URI_SCHEME.match(uri)
    return match.group(1) if match else PLAIN_PATH


def scheme_of(uri: str) -> Scheme:
    """The storage of a lake URI; ValueError naming the supported forms otherwise."""
    name = uri_scheme(uri)
    try:
        return _BY_URI_SCHEME[name]
    except KeyError:
        raise ValueError(f"unsupported scheme {name}://; use {lake_forms()}") from None


def check_lake_uri(uri: str) -> str:
    """The lake URI if it is one of the supported forms; ValueError naming them otherwise."""
    if not uri.strip():
        raise ValueError(f"the lake must not be empty; use {lake_forms()}")
    scheme = scheme_of(uri)
    name = uri_scheme(uri)
    if name != PLAIN_PATH:
        scheme.check(name, uri[len(name) + len("://") :])
    return uri


def _rest(uri: str) -> str:
    """What follows `<scheme>://` (the whole URI for a plain path)."""
    name = uri_scheme(uri)
    return uri[len(name) + len("://") :] if name != PLAIN_PATH else uri


def is_s3(uri: str) -> bool:
    """Whether a lake URI points at S3 (s3://, s3a:// or s3n://)."""
    return scheme_of(uri) is S3


def fsspec_uri(uri: str) -> str:
    """The URI fsspec opens: the scheme's fsspec protocol (s3a://b/k becomes s3://b/k)."""
    scheme = scheme_of(uri)
    if scheme is LOCAL:
        return uri
    return f"{scheme.protocol}://{_rest(uri)}"


def storage_options(uri: str, s3_endpoint: str | None) -> dict[str, Any]:
    """fsspec options for a lake URI; S3 credentials come from the environment or profile."""
    return scheme_of(uri).options(s3_endpoint)


def to_spark_uri(uri: str) -> str:
    """The URI Spark reads: s3:// becomes s3a://, a local path an absolute file:// URI."""
    scheme = scheme_of(uri)
    if uri_scheme(uri) == PLAIN_PATH:
        return Path(uri).expanduser().resolve().as_uri()
    return f"{scheme.spark_scheme}://{_rest(uri)}"


def spark_conf(uri: str, s3_endpoint: str | None, region: str | None = None) -> dict[str, str]:
    """The Spark/Hadoop settings reading this lake needs (none for a local lake)."""
    return scheme_of(uri).spark_conf(s3_endpoint, region)


def jars(uri: str, configured_dir: str | None = None) -> list[Path]:
    """The jars Spark needs to read this lake (none for a local lake), from the jars folder
    (`configured_dir`, by default the `jars_dir` setting)."""
    return scheme_of(uri).jars(configured_dir)


def resolve_settings(settings: Settings | None = None) -> Settings:
    """Settings from the environment; with a block setting (ENERGY_PIPELINE_S3_BLOCK), the
    lake (URI, endpoint, credentials in this process's environment) from that block."""
    settings = settings or Settings()
    for scheme in SCHEMES:
        block = getattr(settings, scheme.block_setting) if scheme.block_setting else None
        if block and scheme.from_block is not None:
            return scheme.from_block(settings, block)
    return settings
