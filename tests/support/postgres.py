"""A throwaway PostgreSQL cluster on loopback, for the Prefect servers of the deployment tests.

`postgres_cluster()` runs Debian's server binaries (scripts/postgres-setup.sh installs them
when missing): `initdb` into a temporary folder, `pg_ctl start` on a free 127.0.0.1 port with
the socket in that folder, a login role with a password made up for the run, and stops the
server (`pg_ctl stop -m fast`, then SIGKILL by PID) and removes the folder when done. As root
the server runs as the `postgres` user (`runuser`), as PostgreSQL refuses to run as root.

The session fixture `postgres` (register it with `pytest_plugins = ["tests.support.postgres"]`
in a test module, and import this module there only under TYPE_CHECKING, or pytest cannot
rewrite its asserts) yields one cluster; `create_database()` gives each Prefect server a fresh
database, as it had a fresh SQLite file before. The module fixture `prefect_on_postgres` is
the PostgreSQL counterpart of the session's `prefect_server` (SQLite): a `prefect server`
subprocess on a database of its own, made this process's (and its threads') Prefect API.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.spark_cluster import free_ports, log_tail

ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = ROOT / "scripts" / "postgres-setup.sh"
SUPERUSER = "postgres"
ROLE = "prefect"
START_TIMEOUT_S = 60
# Durability off: a test cluster lives for one session; it changes no SQL behaviour.
SERVER_OPTIONS = (
    "-c listen_addresses=127.0.0.1 -c max_connections=200 "
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
)


def server_bindir() -> Path:
    """The folder holding initdb, pg_ctl and psql (installed by the setup script if missing)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    setup = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True,
                           timeout=900)  # fmt: skip
    if setup.returncode != 0:
        raise RuntimeError(f"{SETUP_SCRIPT.name} failed:\n{setup.stderr[-3000:]}")
    return Path(setup.stdout.strip().splitlines()[-1])


def _as_owner() -> list[str]:
    """The command prefix that runs a server binary as `postgres` when we are root."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", SUPERUSER, "--"]


@dataclass
class PostgresCluster:
    """A running cluster: connect over TCP with `url()`, or as the superuser on its socket."""

    bindir: Path
    root: Path
    port: int
    password: str = field(repr=False)
    started_in_s: float = 0.0
    databases: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str, driver: str = "postgresql+asyncpg") -> str:
        """The role's URL for `database` (SQLAlchemy form; `driver="postgresql"` for asyncpg)."""
        return f"{driver}://{ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    def run(self, binary: str, *args: str, stdin: str | None = None) -> str:
        """Run a server binary as the cluster's owner; its stdout (raises with its stderr)."""
        done = subprocess.run(
            [*_as_owner(), str(self.bindir / binary), *args], input=stdin, cwd=self.root,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{binary} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def psql(self, sql: str, database: str = "postgres") -> str:
        """SQL as the superuser over the private socket (the statement goes on stdin)."""
        return self.run("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                        "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER,
                        "-d", database, "-f", "-", stdin=sql)  # fmt: skip

    def create_database(self, name: str) -> str:
        """A new empty database owned by the login role; its asyncpg URL."""
        self.run("createdb", "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER,
                 "-O", ROLE, name)  # fmt: skip
        self.databases.append(name)
        return self.url(name)

    def fetch(self, database: str, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Rows of a query, over TCP as the login role, with asyncpg (Prefect's own driver)."""
        import asyncpg

        async def query() -> list[dict[str, Any]]:
            connection = await asyncpg.connect(self.url(database, driver="postgresql"))
            try:
                return [dict(row) for row in await connection.fetch(sql, *args)]
            finally:
                await connection.close()

        return asyncio.run(query())

    def tables(self, database: str) -> list[str]:
        """The tables of `database`'s public schema."""
        rows = self.fetch(
            database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )
        return [row["tablename"] for row in rows]


def _postmaster_pid(data: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data / "postmaster.pid").read_text().splitlines()[0])
    return None


def _kill(pid: int) -> None:
    """SIGKILL the postmaster and the backends it started."""
    import psutil

    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(pid)
        for process in [*parent.children(recursive=True), parent]:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGKILL)


def _stop(cluster: PostgresCluster) -> None:
    pid = _postmaster_pid(cluster.data)
    if pid is None:
        return
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        cluster.run("pg_ctl", "-D", str(cluster.data), "-m", "fast", "-w", "-t", "30", "stop")
        return
    _kill(pid)


@contextlib.contextmanager
def postgres_cluster(attempts: int = 3) -> Iterator[PostgresCluster]:
    """initdb + pg_ctl start on a free loopback port; a role `prefect` with a fresh password."""
    bindir = server_bindir()
    root = Path(tempfile.mkdtemp(prefix="energy-pg-"))
    cluster: PostgresCluster | None = None
    try:
        (root / "socket").mkdir()
        if os.geteuid() == 0:
            owner = pwd.getpwnam(SUPERUSER)
            for path in (root, root / "socket"):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        started = time.monotonic()
        cluster = PostgresCluster(bindir, root, 0, secrets.token_hex(16))
        cluster.run("initdb", "-D", str(cluster.data), "-U", SUPERUSER, "-E", "UTF8",
                    "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256",
                    "--no-sync")  # fmt: skip
        for attempt in range(attempts):  # a free port may be taken before the server binds it
            (cluster.port,) = free_ports(1)
            options = f"-p {cluster.port} -k {cluster.socket_dir} {SERVER_OPTIONS}"
            try:
                cluster.run("pg_ctl", "-D", str(cluster.data), "-l", str(cluster.log), "-w",
                            "-t", str(START_TIMEOUT_S), "-o", options, "start")  # fmt: skip
                break
            except RuntimeError as error:
                _stop(cluster)
                if attempt == attempts - 1:
                    tail = log_tail(cluster.log)
                    raise RuntimeError(f"PostgreSQL never started:\n{tail}") from error
        cluster.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{cluster.password}';")
        cluster.started_in_s = time.monotonic() - started
        yield cluster
    finally:
        if cluster is not None:
            _stop(cluster)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One PostgreSQL cluster for the session; each Prefect server takes a database of it."""
    with postgres_cluster() as cluster:
        print(f"\n[postgres] cluster on 127.0.0.1:{cluster.port} ready in "
              f"{cluster.started_in_s:.1f} s")  # fmt: skip
        yield cluster


@pytest.fixture(scope="module")
def prefect_on_postgres(
    postgres: PostgresCluster,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[dict[str, Any]]:
    """A Prefect server on a fresh database of the cluster, this module's Prefect API.

    Flows run in the test process, and CLI processes given `PREFECT_API_URL.value()`
    (tests/support/clienv.py), reach it. Yields `{"env", "database", "url"}`.
    """
    import prefect.context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.support.prefect_stack import prefect_server

    database = "prefect_" + request.module.__name__.rsplit(".", 1)[-1].lower()
    url = postgres.create_database(database)
    with (
        prefect_server(tmp_path_factory.mktemp("prefect-pg"), url) as env,
        temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}),
        # threads start in an empty context: give them this API too, as the harness does
        prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()),
    ):
        try:
            yield {"env": env, "database": database, "url": url}
        finally:
            _drain_prefect_workers()


def _drain_prefect_workers() -> None:
    """Send the logs and events still queued in this process while the server is up (as
    `prefect_test_harness` does), so none is sent to a stopped server or the next one."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        with contextlib.suppress(RuntimeError):  # the log worker may never have started
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())
