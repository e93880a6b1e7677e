"""A real Prefect server (on PostgreSQL, or SQLite) and workers, as subprocesses stopped by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx

from tests.support.spark_cluster import free_ports

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Wait until `url` answers 200, failing with the log's tail if the process dies first."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} never answered:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def deployed_stack(
    home: Path,
    s3_endpoint: str,
    bucket: str,
    deployment: str,
    pool: str,
    pool_type: str,
    *,
    database_url: str | None,
    **env_overrides: str,
) -> Iterator[dict[str, Any]]:
    """Server (its database at `database_url`) + bootstrap (blocks on the S3 server, a Slack
    receiver) + `prefect deploy` + a worker."""
    from tests.support.slack_receiver import SlackReceiver

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    slack = SlackReceiver()
    threading.Thread(target=slack.serve_forever, daemon=True).start()
    try:
        with prefect_server(home, database_url) as env:
            env.update(
                ENERGY_PIPELINE_S3_BUCKET=bucket,
                ENERGY_PIPELINE_S3_FOLDER="lake",
                ENERGY_PIPELINE_S3_ENDPOINT=s3_endpoint,
                ENERGY_PIPELINE_SLACK_WEBHOOK_URL=f"json://127.0.0.1:{slack.server_address[1]}/s",
                AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing",
                **env_overrides,
            )
            boot = subprocess.run(
                [sys.executable, "-m", "deployments.bootstrap"],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert boot.returncode == 0, boot.stderr
            deploy = prefect(env, "deploy", "--name", deployment, timeout=2400)
            assert deploy.returncode == 0, (deploy.stdout + deploy.stderr)[-6000:]
            log = home / "worker.log"
            with worker(env, pool, pool_type, log) as process:
                yield {"env": env, "bucket": bucket, "slack": slack, "home": home, "log": log,
                       "s3": s3_endpoint, "deploy": deploy.stdout, "worker": process,
                       "database_url": database_url}  # fmt: skip
    finally:
        slack.shutdown()


@contextlib.contextmanager
def prefect_server(home: Path, database_url: str | None = None) -> Iterator[dict[str, str]]:
    """`prefect server start` on a free loopback port; yields the clients' env.

    Its database: `database_url` (`postgresql+asyncpg://...`, an empty database: the server
    runs its migrations as it starts), else a SQLite file of its own in `home`. The URL goes
    to the server process only, not to the clients' env.
    """
    (port,) = free_ports(1)
    env = dict(os.environ)
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    server_env = dict(env)
    if database_url is not None:
        server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    home.mkdir(parents=True, exist_ok=True)
    with (home / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
            env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        started = time.monotonic()
        wait_http(f"{env['PREFECT_API_URL']}/health", server, home / "server.log", 300)
        print(f"\n[prefect] server on {'PostgreSQL' if database_url else 'SQLite'} healthy in "
              f"{time.monotonic() - started:.1f} s")  # fmt: skip
        yield env
    finally:
        _stop(server)


@contextlib.contextmanager
def worker(
    env: dict[str, str], pool: str, pool_type: str, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`prefect worker start` on a pool, polling often."""
    process = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", pool, "--type", pool_type,
         "--prefetch-seconds", "5"],
        env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, cwd=ROOT,
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield process
    finally:
        _stop(process)


def prefect(
    env: dict[str, str], *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run a prefect CLI command against the server, from the project root."""
    return subprocess.run(
        [PREFECT, "--no-prompt", *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
