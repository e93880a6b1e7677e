"""`docker compose up` for real: docker/compose.yaml on Podman's Docker-compatible socket, with
the real compose binary (Docker Compose v5 as a docker CLI plugin, scripts/compose-setup.sh).

docker/compose.test.yaml swaps the two official images no registry here serves (postgres,
SeaweedFS) for stand-ins built from the local Debian base image (docker/standins/) and points the
worker's flow runs at the portal emulator. Everything else runs as a user would run it: `up -d
--build --wait` builds the project image, the one-shot `setup` creates the bucket, the Prefect
blocks, pools and automations and deploys energy-pipeline-local; the test then runs that
deployment with `prefect deployment run --watch` against the stack's API, reads the gold tables
and the dashboard from the stack's S3 port, makes a run fail and sees the Slack receiver get it,
and `down -v` leaves no container, volume or network of the project.

The emulator and the Slack receiver run in this process, on every address of the host, and the
containers reach them at `host.containers.internal` (Podman's name for the host on a bridge
network). One substitute, because this host has no systemd: Podman schedules health checks with
systemd timers, so here a thread runs `podman healthcheck run` on the project's containers
every few seconds (the checks themselves are compose.yaml's, run by Podman in the containers).

Needs root on Debian bookworm (scripts/podman-setup.sh, compose-setup.sh, seaweedfs-setup.sh).

    uv run pytest -q -s tests/e2e/test_compose.py -p no:cacheprovider   # -s: the timings
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import httpx
import pytest

from emulator import PortalEmulator
from tests.e2e.test_docker_image import BASE_IMAGE, ca_bundle
from tests.support.prefect_stack import ROOT, prefect
from tests.support.slack_receiver import SlackReceiver
from tests.support.spark_cluster import free_ports

pytestmark = [
    pytest.mark.docker,
    pytest.mark.e2e,
    pytest.mark.s3,
    pytest.mark.spark,
    pytest.mark.timeout(2400),  # the first test also pays for `up --build` (cold: a full build)
]

COMPOSE = ROOT / "docker" / "compose.yaml"
COMPOSE_TEST = ROOT / "docker" / "compose.test.yaml"
HOST = "host.containers.internal"  # the host, from a container on a Podman bridge network
DEPLOYMENT = "energy_pipeline/energy-pipeline-local"
LONG_RUNNING = {"postgres", "seaweedfs", "prefect-server", "spark-master", "spark-worker", "worker"}
TABLES = ("conso_nationale", "conso_departement", "conso_region", "conso_secteur")
TIMINGS: dict[str, float] = {}


def _script(name: str, timeout: float = 1800) -> list[str]:
    """Run scripts/<name> (idempotent setup); its stdout lines."""
    res = subprocess.run(["bash", str(ROOT / "scripts" / name)], capture_output=True, text=True,
                         timeout=timeout)  # fmt: skip
    assert res.returncode == 0, f"{name}:\n{res.stderr[-3000:]}"
    return res.stdout.splitlines()


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    """Podman's socket, `docker compose` (v5 plugin) and the SeaweedFS binary."""
    socket = next(x for x in _script("podman-setup.sh") if x.startswith("DOCKER_HOST="))
    compose_bin = _script("compose-setup.sh", timeout=2400)[-1]
    weed = _script("seaweedfs-setup.sh", timeout=2400)[-1]
    docker = shutil.which("docker")
    assert docker, "the docker CLI is needed (docker compose runs as its plugin)"
    assert Path(compose_bin).is_file() and Path(weed).is_file(), (compose_bin, weed)
    return {"DOCKER_HOST": socket.removeprefix("DOCKER_HOST="), "docker": docker, "weed": weed}


class HostSlackReceiver(SlackReceiver):
    """The Slack stand-in on every address: containers post to it through the bridge."""

    def server_bind(self) -> None:
        self.server_address = ("0.0.0.0", 0)
        super().server_bind()


class HealthTicker:
    """Runs `podman healthcheck run` on the project's running containers every few seconds:
    what Podman's systemd timers do on a host with systemd (this one has none)."""

    def __init__(self, project: str, every: float = 2.0) -> None:
        self.project, self.every = project, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                ids = subprocess.run(
                    ["podman", "ps", "-q", "--filter",
                     f"label=com.docker.compose.project={self.project}"],
                    capture_output=True, text=True, timeout=30,
                ).stdout.split()  # fmt: skip
                for cid in ids:
                    subprocess.run(["podman", "healthcheck", "run", cid],
                                   capture_output=True, timeout=60)  # fmt: skip

    def __enter__(self) -> HealthTicker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=120)


class Stack:
    """One compose project: its .env, its CLI, its host ports."""

    def __init__(self, tools: dict[str, str], home: Path, emulator: PortalEmulator,
                 slack_port: int) -> None:  # fmt: skip
        self.project = f"ep-compose-{secrets.token_hex(3)}"
        self.docker = tools["docker"]
        prefect_port, s3_port, spark_port = free_ports(3)
        self.bucket = "compose-lake"
        self.key, self.secret = f"key-{secrets.token_hex(4)}", secrets.token_hex(16)
        values = {
            "ENERGY_PIPELINE_IMAGE": "localhost/energy-pipeline:compose-test",
            "BASE_IMAGE": BASE_IMAGE,
            "CA_BUNDLE": ca_bundle(),
            "BIND_ADDRESS": "127.0.0.1",
            "POSTGRES_PASSWORD": secrets.token_hex(16),
            "PREFECT_PORT": str(prefect_port),
            "PREFECT_UI_API_URL": f"http://127.0.0.1:{prefect_port}/api",
            "ENERGY_PIPELINE_SLACK_WEBHOOK_URL": f"json://{HOST}:{slack_port}/s",
            "SEAWEEDFS_ACCESS_KEY": self.key,
            "SEAWEEDFS_SECRET_KEY": self.secret,
            "S3_PORT": str(s3_port),
            "ENERGY_PIPELINE_S3_BUCKET": self.bucket,
            "SPARK_UI_PORT": str(spark_port),
            "SPARK_WORKER_MEMORY": "1g",
            "ENERGY_PIPELINE_SPARK_DRIVER_MEMORY": "1g",
            "SEAWEEDFS_BIN_DIR": str(Path(tools["weed"]).parent),
            "STANDINS_DIR": str(ROOT / "docker" / "standins"),
            **{
                f"ENERGY_PIPELINE_{portal.upper()}_URL": f"http://{HOST}:{emulator.port}/{portal}"
                for portal in emulator.urls
            },
        }
        self.env_file = home / "compose.env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        self.env_file.chmod(0o600)
        # Only what the CLI needs: compose would take any variable of this process (say the
        # tests' PREFECT_API_URL or AWS_* values) over the .env file's.
        self.env = {
            **{k: os.environ[k] for k in ("PATH", "HOME", "DOCKER_CONFIG") if k in os.environ},
            "DOCKER_HOST": tools["DOCKER_HOST"],
            "DOCKER_BUILDKIT": "0",  # Podman serves the classic build API (no buildx here)
            "COMPOSE_PROGRESS": "plain",
        }
        self.s3_url = f"http://127.0.0.1:{s3_port}"
        self.spark_url = f"http://127.0.0.1:{spark_port}"
        self.prefect_env = {
            **os.environ,
            "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
            "PREFECT_HOME": str(home / "prefect-home"),
        }

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.docker, "compose", "-f", str(COMPOSE), "-f", str(COMPOSE_TEST),
             "--env-file", str(self.env_file), "-p", self.project, *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, volumes and networks still labelled with the project."""
        label = f"label=com.docker.compose.project={self.project}"
        found = {}
        for kind, cmd in (("containers", ["ps", "-a"]), ("volumes", ["volume", "ls"]),
                          ("networks", ["network", "ls"])):  # fmt: skip
            res = subprocess.run([self.docker, *cmd, "-q", "--filter", label], env=self.env,
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
            assert res.returncode == 0, res.stderr
            found[kind] = res.stdout.split()
        return found

    def s3(self, key: str | None = None, secret: str | None = None) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.s3_url, region_name="us-east-1",
            aws_access_key_id=key or self.key, aws_secret_access_key=secret or self.secret,
        )  # fmt: skip

    def keys(self) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture(scope="module")
def host_emulator() -> Iterator[PortalEmulator]:
    """The portal emulator on every address of the host (containers reach it via HOST)."""
    with PortalEmulator(host="0.0.0.0") as emulator:
        yield emulator


@pytest.fixture(scope="module")
def slack() -> Iterator[HostSlackReceiver]:
    receiver = HostSlackReceiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    yield receiver
    receiver.shutdown()


@pytest.fixture(scope="module")
def stack(tools, host_emulator, slack, tmp_path_factory) -> Iterator[Stack]:
    """`up -d --build --wait`, then (always) `down -v --remove-orphans` and nothing left."""
    stack = Stack(tools, tmp_path_factory.mktemp("compose"), host_emulator,
                  slack.server_address[1])  # fmt: skip
    with HealthTicker(stack.project):
        try:
            started = time.monotonic()
            up = stack.compose("up", "-d", "--build", "--wait", "--wait-timeout", "900",
                               timeout=2400)  # fmt: skip
            TIMINGS["up_to_healthy_s"] = time.monotonic() - started
            TIMINGS["up_started"] = started
            if up.returncode != 0:
                logs = stack.compose("logs", "--no-color", "--tail", "40").stdout
                pytest.fail(f"compose up failed:\n{up.stderr[-4000:]}\n{logs[-8000:]}")
            yield stack
        finally:
            down = stack.compose("down", "-v", "--remove-orphans", "--timeout", "20")
            left = stack.leftovers()
            shown = {k: round(v, 1) for k, v in TIMINGS.items() if not k.endswith("started")}
            print(f"\ncompose timings: {json.dumps(shown)}")
            assert down.returncode == 0, down.stderr[-3000:]
            assert left == {"containers": [], "volumes": [], "networks": []}, left


def _ps(stack: Stack) -> dict[str, dict[str, Any]]:
    res = stack.compose("ps", "-a", "--format", "json")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    return {row["Service"]: row for row in rows}


def test_every_service_is_healthy_and_setup_completed(stack: Stack) -> None:
    services = _ps(stack)
    assert set(services) == LONG_RUNNING | {"setup"}, sorted(services)
    for name in LONG_RUNNING:
        assert services[name]["State"] == "running", services[name]
        assert services[name]["Health"] == "healthy", services[name]
    assert services["setup"]["State"] == "exited" and services["setup"]["ExitCode"] == 0
    setup_log = stack.compose("logs", "--no-color", "setup").stdout
    assert f"bucket {stack.bucket}: created" in setup_log, setup_log[-3000:]
    assert "energy-pipeline-process" in setup_log and "run-failed-to-slack" in setup_log
    # The server keeps its state in PostgreSQL (no SQLite file), and the deployment exists.
    deployment = httpx.get(
        f"{stack.prefect_env['PREFECT_API_URL']}/deployments/name/{DEPLOYMENT}", timeout=30
    ).json()
    assert deployment["work_pool_name"] == "energy-pipeline-process", deployment
    assert deployment["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {
        "directory": "/opt/energy-pipeline"}}]  # fmt: skip
    # Spark: the worker registered with the master.
    master = httpx.get(f"{stack.spark_url}/json/", timeout=10).json()
    assert master["status"] == "ALIVE" and master["aliveworkers"] == 1, master
    # SeaweedFS enforces the key from the .env: a wrong one is refused.
    with pytest.raises(botocore.exceptions.ClientError):
        stack.s3(key="intruder", secret="wrong-secret").list_objects_v2(Bucket=stack.bucket)


def test_setup_again_changes_nothing(stack: Stack) -> None:
    """The one-shot is idempotent: run again, it finds the bucket and the workspace as they are."""
    again = stack.compose("run", "--rm", "--no-deps", "setup", timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert f"bucket {stack.bucket}: unchanged" in again.stdout, again.stdout[-3000:]
    steps = {"lake_blocks", "slack_block", "work_pools", "concurrency_limits", "automations"}
    lines = [line for line in again.stdout.splitlines() if line.split(":")[0] in steps]
    assert {line.split(":")[0] for line in lines} == steps, again.stdout[-3000:]
    for line in lines:  # every outcome, a word or a dict of them, is "unchanged"
        assert "created" not in line and "updated" not in line, line
    assert "'energy-pipeline-process': 'unchanged'" in again.stdout, again.stdout[-3000:]


def test_deployment_run_completes_on_the_stack(stack: Stack, host_emulator) -> None:
    host_emulator.reset()
    params = json.dumps({"datasets": ["nationale_annuelle", "departement"], "years": [2023]})
    started = time.monotonic()
    run = prefect(stack.prefect_env, "deployment", "run", DEPLOYMENT, "--params", params,
                  "--watch", "--watch-timeout", "900", timeout=1000)  # fmt: skip
    TIMINGS["run_s"] = time.monotonic() - started
    TIMINGS["up_to_completed_run_s"] = time.monotonic() - TIMINGS["up_started"]
    worker_log = stack.compose("logs", "--no-color", "--tail", "60", "worker").stdout
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + worker_log
    assert "Completed" in run.stdout

    stored = set(stack.keys())
    for table in TABLES:
        assert f"lake/gold/{table}.csv" in stored, sorted(stored)[:50]
        assert f"lake/gold/{table}/_current.json" in stored
    assert "lake/raw/departement/annee=2023/_current.json" in stored
    assert "lake/dashboard/index.html" in stored
    s3 = stack.s3()
    csv = s3.get_object(Bucket=stack.bucket, Key="lake/gold/conso_nationale.csv")["Body"].read()
    lines = csv.decode().splitlines()
    assert len(lines) >= 2 and any("2023" in line for line in lines[1:]), lines[:5]
    page = s3.get_object(Bucket=stack.bucket, Key="lake/dashboard/index.html")["Body"].read()
    assert b"<html" in page.lower()
    # The aggregation ran on the stack's Spark cluster, not in local mode.
    master = httpx.get(f"{stack.spark_url}/json/", timeout=10).json()
    assert len(master["completedapps"]) >= 1, master


def test_failed_run_reaches_slack(stack: Stack, host_emulator, slack: HostSlackReceiver) -> None:
    host_emulator.reset()
    host_emulator.inject("status", dataset="departement", request="lines", status=500, times=None)
    slack.messages.clear()
    params = json.dumps({"datasets": ["departement"], "years": [2023], "force": True})
    run = prefect(stack.prefect_env, "deployment", "run", DEPLOYMENT, "--params", params,
                  "--watch", "--watch-timeout", "600", timeout=700)  # fmt: skip
    assert run.returncode != 0, run.stdout[-3000:]
    assert "Failed" in run.stdout + run.stderr
    deadline = time.monotonic() + 90
    while len(slack.messages) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    text = json.dumps(slack.messages)
    # From the server's automation (prefect-server container) and from the flow's hook
    # (the flow run's process in the worker container): both reached the host.
    assert len(slack.messages) >= 2, text
    assert "departement/annee=2023 failed" in text, text
    assert "Failed" in text, text
    host_emulator.reset()
