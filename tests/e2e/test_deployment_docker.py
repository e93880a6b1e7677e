"""The Docker work pool for real: `prefect deploy` builds the flow-run image from
docker/Dockerfile through Podman's Docker-compatible socket, tags it with the git commit and
pushes it to a local registry (CNCF Distribution); a Docker worker on that socket runs the
deployment in a container that writes the gold tables to the S3 bucket. The Prefect server
keeps its state in PostgreSQL (tests/support/postgres.py), as a self-hosted one does.

Podman, the socket, the registry binary and its insecure-registry entry come from
scripts/podman-setup.sh (root, Debian bookworm); nothing here is mocked.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.test_deployment_e2e import keys
from tests.e2e.test_docker_image import BASE_IMAGE, ca_bundle, podman  # noqa: F401  (fixture)
from tests.support.prefect_stack import ROOT, deployed_stack, prefect, wait_http
from tests.support.spark_cluster import stop_process

pytest_plugins = ["tests.support.postgres"]  # the session's PostgreSQL cluster: `postgres`

pytestmark = [pytest.mark.docker, pytest.mark.e2e, pytest.mark.s3, pytest.mark.spark]

REGISTRY_ADDR = "127.0.0.1:5055"  # the insecure entry scripts/podman-setup.sh writes
SOCKET = "unix:///run/energy-pipeline/podman.sock"


def _registry_binary() -> Path:
    res = subprocess.run(["bash", str(ROOT / "scripts" / "podman-setup.sh")],
                         capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("REGISTRY="))
    binary, addr = line.removeprefix("REGISTRY=").split()
    assert addr == REGISTRY_ADDR, addr
    return Path(binary)


@pytest.fixture(scope="module")
def registry(podman: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    """A real OCI registry on loopback, plain HTTP, its storage in a temporary folder."""
    home = tmp_path_factory.mktemp("registry")
    config = home / "config.yml"
    config.write_text(yaml.safe_dump({
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(home / "data")}},
        "http": {"addr": REGISTRY_ADDR},
    }))  # fmt: skip
    process = subprocess.Popen(
        [str(_registry_binary()), "serve", str(config)],
        stdout=(home / "registry.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_http(f"http://{REGISTRY_ADDR}/v2/", process, home / "registry.log", 30)
        yield REGISTRY_ADDR
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def docker_stack(
    registry, emulator_session, s3_endpoint, tmp_path_factory, postgres
) -> Iterator[dict]:
    with deployed_stack(
        tmp_path_factory.mktemp("prefect-docker"), s3_endpoint, "docker-lake",
        "energy-pipeline-docker", "energy-pipeline-docker", "docker",
        database_url=postgres.create_database("prefect_docker"),
        DOCKER_HOST=SOCKET,
        ENERGY_PIPELINE_IMAGE=f"{registry}/energy-pipeline",
        ENERGY_PIPELINE_BASE_IMAGE=BASE_IMAGE,
        ENERGY_PIPELINE_PULL_BASE_IMAGE="false",  # built by debootstrap, in no registry
        ENERGY_PIPELINE_CA_BUNDLE=ca_bundle(),
    ) as stack:  # fmt: skip
        yield {**stack, "registry": registry}


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip


def _api(env: dict[str, str], method: str, path: str, **kw: object) -> object:
    response = httpx.request(method, f"{env['PREFECT_API_URL']}{path}", timeout=30, **kw)
    response.raise_for_status()
    return response.json()


def test_deploy_builds_and_pushes_the_image_tagged_with_the_commit(docker_stack):
    tags = httpx.get(f"http://{docker_stack['registry']}/v2/energy-pipeline/tags/list").json()
    assert _commit() in tags["tags"], tags
    deployment = _api(docker_stack["env"], "GET",
                      "/deployments/name/energy_pipeline/energy-pipeline-docker")  # fmt: skip
    variables = deployment["job_variables"]
    assert variables["image"] == f"{docker_stack['registry']}/energy-pipeline:{_commit()}"
    assert variables["image_pull_policy"] == "IfNotPresent"
    assert deployment["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {
        "directory": "/opt/energy-pipeline"}}]  # fmt: skip
    assert deployment["global_concurrency_limit"]["limit"] == 1
    assert [s["slug"] for s in _api(docker_stack["env"], "GET",
            f"/deployments/{deployment['id']}/schedules")] == ["monthly"]  # fmt: skip
    # No secret reached the deployment: credentials stay in the blocks.
    assert "testing" not in json.dumps(deployment)


def test_docker_deployment_run_completes_in_a_container(docker_stack, emulator_session):
    emulator_session.reset()
    env = docker_stack["env"]
    # The container shares the host's network (loopback emulator, S3, Prefect API); the
    # portal URLs point at the emulator. Everything else comes from the blocks.
    job_env = {
        "ENERGY_PIPELINE_S3_BLOCK": "energy-pipeline-lake",
        "ENERGY_PIPELINE_SLACK_BLOCK": "energy-pipeline-slack",
        "ENERGY_PIPELINE_PORTAL_LIMIT_PREFIX": "energy-pipeline-portal",
        "ENERGY_PIPELINE_SPARK_MASTER": "local[2]",
        **{f"ENERGY_PIPELINE_{p.upper()}_URL": u for p, u in emulator_session.urls.items()},
    }
    params = json.dumps({"datasets": ["nationale_annuelle", "regionale_annuelle"],
                         "years": [2023]})  # fmt: skip
    run = prefect(env, "deployment", "run", "energy_pipeline/energy-pipeline-docker",
                  "--params", params, "--job-variable", "network_mode=host",
                  "--job-variable", f"env={json.dumps(job_env)}",
                  "--watch", "--watch-timeout", "900", timeout=1000)  # fmt: skip

    worker_log = docker_stack["log"].read_text()[-6000:]
    assert run.returncode == 0, run.stdout + run.stderr + worker_log
    assert "Completed" in run.stdout
    # It ran in a container of the pushed image: the worker records the container id.
    runs = _api(env, "POST", "/flow_runs/filter", json={"limit": 5, "sort": "START_TIME_DESC"})
    ran = next(r for r in runs if r["state"]["type"] == "COMPLETED")
    assert ran["infrastructure_pid"], ran
    container_id = ran["infrastructure_pid"].rsplit(":", 1)[-1]
    assert len(container_id) == 64, ran["infrastructure_pid"]
    stored = keys(docker_stack["s3"], docker_stack["bucket"])
    for table in ("conso_nationale", "conso_regionale_brute"):
        assert f"lake/gold/{table}.csv" in stored
        assert f"lake/gold/{table}/_current.json" in stored
    assert "lake/raw/regionale_annuelle/annee=2023/_current.json" in stored
