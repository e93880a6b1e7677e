"""Shared fixtures: the portal emulator, a real S3 server (SeaweedFS; moto only where a test
says why), a Prefect test server, settings."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from emulator import PortalEmulator
from flows.settings import Settings

if TYPE_CHECKING:
    from tests.support.seaweedfs import SeaweedFS

pytest_plugins = ["tests.support.emulator_http"]  # the emulator tests' `emu` and `client` fixtures

TEST_OUTPUT = Path(os.environ.get("TEST_OUTPUT_DIR", "test-output"))


NO_PREFECT_API = "http://127.0.0.1:9/api"


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A real, temporary Prefect server (SQLite), started once for the tests that need one."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def _prefect_api(request: pytest.FixtureRequest) -> Iterator[None]:
    """Only the modules that run flows in the test process, or point CLI processes at the
    session's server (tests/support/clienv.py), get a Prefect API: they say so with
    `pytestmark = pytest.mark.usefixtures("prefect_server")`. The CLI and deployment tests
    that need another start it themselves, in other processes. Unit tests run with the API
    pointed at a closed port (the setting reaches child processes too: no unit test starts
    the CLI), so one that starts using Prefect fails at once instead of starting a server."""
    if request.path.parent.name == "unit":
        with temporary_settings({PREFECT_API_URL: NO_PREFECT_API}):
            yield
    else:
        yield


@pytest.fixture(scope="session")
def emulator_session() -> Iterator[PortalEmulator]:
    """The local portal emulator, over real HTTP on loopback."""
    with PortalEmulator() as emulator:
        yield emulator


@pytest.fixture
def emulator(emulator_session: PortalEmulator) -> Iterator[PortalEmulator]:
    """The emulator with no faults, no data changes and an empty request log."""
    emulator_session.reset()
    yield emulator_session
    emulator_session.reset()


def fast_settings(emulator: PortalEmulator, lake: str, **overrides: object) -> Settings:
    """Settings pointing at the emulator, with retries short enough for tests."""
    urls = emulator.urls
    values: dict[str, object] = {
        "lake": lake,
        "odre_url": urls["odre"],
        "ore_url": urls["ore"],
        "enedis_url": urls["enedis"],
        "http_backoff_base": 0.05,
        "http_backoff_max": 2.0,
        "http_max_attempts": 4,
        "partition_retries": 2,
        "http_read_timeout": 10.0,
        "spool_bucket_rows": 20_000,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(emulator: PortalEmulator, tmp_path: Path) -> Settings:
    """Settings for a fresh local lake fed by the emulator."""
    return fast_settings(emulator, str(tmp_path / "lake"))


def _s3_environment() -> tuple[str, str]:
    """The test credentials in the environment, where s3fs, boto3 and S3A find them."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """A real S3 server, SeaweedFS (tests/support/seaweedfs.py), on free loopback ports, with
    signature checks on: it knows the environment's key (`credentials[0]`, AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY, "testing" by default) and one random spare (`credentials[1]`) for
    tests that hand a process credentials of their own. Built once by
    scripts/seaweedfs-setup.sh (or $SEAWEEDFS_BIN); starts in about 15 s."""
    from tests.support.seaweedfs import SeaweedFS

    spare = ("SPARE" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
    with SeaweedFS([_s3_environment(), spare]) as server:
        yield server


@pytest.fixture(scope="session")
def s3_endpoint(seaweedfs: SeaweedFS) -> str:
    """The S3 endpoint of the session's SeaweedFS server (http://127.0.0.1:PORT)."""
    return seaweedfs.endpoint


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server (the real S3 protocol, a mock behind it) on a free loopback port, for a
    test that needs what SeaweedFS cannot do; such a test says which in its docstring."""
    from moto.server import ThreadedMotoServer

    _s3_environment()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def bucket_name(test_name: str) -> str:
    """A fresh, valid bucket name for a test: `lake-<test name>-<random>` (3-63 characters of
    a-z, 0-9 and "-", ending with a letter or digit, as S3 and Java's URI parser want)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", test_name.lower().replace("_", "-")).strip("-")
    return f"lake-{slug[:44].rstrip('-')}-{secrets.token_hex(3)}"


@pytest.fixture
def s3_bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the session's S3 server."""
    name = bucket_name(request.node.name)
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def emulator_lake(
    emulator_session: PortalEmulator, tmp_path_factory, prefect_server: None
) -> Iterator[Path]:
    """All the emulator's data ingested, then aggregated once with local[2] (about 80 s).

    Shared, read-only: gold, dashboard and Tableau tests read it; tests that change a lake
    copy the tables they need first. Writing `dashboard/` or `gold/<table>.hyper` next to the
    tables is fine: no gold reader looks there.
    """
    from flows.flow import ingest
    from flows.gold.aggregate import run_aggregate

    emulator_session.reset()
    lake = tmp_path_factory.mktemp("emulator-gold") / "lake"
    settings = fast_settings(emulator_session, str(lake), spark_master="local[2]")
    ingest(settings=settings)
    run_aggregate(settings, on_line=lambda line: None)
    yield lake
    emulator_session.reset()
