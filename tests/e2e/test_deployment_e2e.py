"""A deployment run for real: a Prefect server on PostgreSQL, bootstrap, `prefect deploy`, a
process worker, an S3 bucket; the automations (failed run to Slack, lost heartbeats to
Crashed) running on that server."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import boto3
import httpx
import psutil
import pytest

from flows.outputs.report import CHECKS_KEY, DASHBOARD_KEY, GOLD_KEY, SUMMARY_KEY
from tests.support.prefect_stack import ROOT, deployed_stack, prefect, worker

if TYPE_CHECKING:
    from tests.support.postgres import PostgresCluster

pytest_plugins = ["tests.support.postgres"]  # the session's PostgreSQL cluster: `postgres`

pytestmark = [pytest.mark.e2e, pytest.mark.s3, pytest.mark.spark]

# Flow runs beat every 30 s (PREFECT_FLOWS_HEARTBEAT_FREQUENCY in prefect.yaml, Prefect's
# minimum); the lost-run automation waits this long after the last beat.
HEARTBEAT_GRACE_S = 45


DATABASE = "prefect_e2e"


@pytest.fixture(scope="module")
def stack(emulator_session, s3_endpoint, tmp_path_factory, postgres) -> Iterator[dict]:
    """Server on PostgreSQL + bootstrap (blocks on the S3 server, Slack receiver) + deploy +
    process worker."""
    with deployed_stack(
        tmp_path_factory.mktemp("prefect"), s3_endpoint, "deployed-lake",
        "energy-pipeline-local", "energy-pipeline-process", "process",
        database_url=postgres.create_database(DATABASE),
        ENERGY_PIPELINE_PROJECT_DIR=str(ROOT),
        ENERGY_PIPELINE_SPARK_MASTER="local[2]",
        ENERGY_PIPELINE_HTTP_BACKOFF_BASE="0.05",
        ENERGY_PIPELINE_HTTP_MAX_ATTEMPTS="2",
        ENERGY_PIPELINE_PARTITION_RETRIES="1",
        ENERGY_PIPELINE_HEARTBEAT_GRACE_S=str(HEARTBEAT_GRACE_S),
        **{f"ENERGY_PIPELINE_{p.upper()}_URL": u for p, u in emulator_session.urls.items()},
    ) as stack:  # fmt: skip
        yield stack


def keys(endpoint: str, bucket: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_the_server_keeps_the_workspace_in_postgresql(stack, postgres: PostgresCluster):
    """Prefect's migrations ran on the empty database, and what the bootstrap and `prefect
    deploy` made (pool, blocks, limits, automations, deployment) are rows there."""
    tables = postgres.tables(DATABASE)
    for table in ("alembic_version", "flow_run", "task_run", "deployment", "work_pool",
                  "block_document", "automation", "concurrency_limit_v2"):  # fmt: skip
        assert table in tables, tables
    [migration] = postgres.fetch(DATABASE, "SELECT version_num FROM alembic_version")
    assert migration["version_num"]
    pools = postgres.fetch(DATABASE, "SELECT name, type FROM work_pool ORDER BY name")
    assert {"name": "energy-pipeline-process", "type": "process"} in pools, pools
    [deployment] = postgres.fetch(DATABASE, "SELECT name FROM deployment")
    assert deployment["name"] == "energy-pipeline-local"
    blocks = {r["name"] for r in postgres.fetch(DATABASE, "SELECT name FROM block_document")}
    assert {"energy-pipeline-lake", "energy-pipeline-slack"} <= blocks, blocks
    automations = postgres.fetch(DATABASE, "SELECT name, enabled FROM automation")
    assert len(automations) >= 2 and all(a["enabled"] for a in automations), automations
    limits = {r["name"] for r in postgres.fetch(DATABASE, "SELECT name FROM concurrency_limit_v2")}
    assert any(name.startswith("energy-pipeline-portal-") for name in limits), limits
    # No secret in the clients' environment: the database URL went to the server alone.
    assert stack["env"].get("PREFECT_API_DATABASE_CONNECTION_URL") is None
    assert postgres.password not in json.dumps(stack["env"])


def test_deployment_run_publishes_gold_tables_to_the_bucket(
    stack, emulator_session, postgres: PostgresCluster
):
    emulator_session.reset()
    params = json.dumps({"datasets": ["nationale_annuelle", "departement"], "years": [2023]})

    run = prefect(stack["env"], "deployment", "run", "energy_pipeline/energy-pipeline-local",
                  "--params", params, "--watch", "--watch-timeout", "600")  # fmt: skip

    log = (stack["home"] / "worker.log").read_text()[-4000:]
    assert run.returncode == 0, run.stdout + run.stderr + log
    assert "Completed" in run.stdout
    stored = keys(stack["s3"], stack["bucket"])
    for table in ("conso_nationale", "conso_departement", "conso_region", "conso_secteur"):
        assert f"lake/gold/{table}.csv" in stored
        assert f"lake/gold/{table}/_current.json" in stored
    assert "lake/raw/departement/annee=2023/_current.json" in stored
    assert "lake/dashboard/index.html" in stored
    assert "lake/gold/conso_region.hyper" in stored
    # The run's artifacts are on the server, under their keys, pointing at the bucket.
    response = httpx.post(
        f"{stack['env']['PREFECT_API_URL']}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [_flow_run_id(run.stdout)]}}}, timeout=30,
    )  # fmt: skip
    response.raise_for_status()
    artifacts = {a["key"]: a for a in response.json() if a["key"]}
    assert set(artifacts) == {SUMMARY_KEY, CHECKS_KEY, DASHBOARD_KEY, GOLD_KEY}
    assert "`s3://deployed-lake/lake`" in artifacts[SUMMARY_KEY]["data"]
    assert "(s3://deployed-lake/lake/dashboard/index.html)" in artifacts[DASHBOARD_KEY]["data"]
    progress = [a for a in response.json() if a["type"] == "progress"]
    assert [float(a["data"]) for a in progress] == [100.0]
    # The run's state, task runs and artifacts are rows in PostgreSQL.
    run_id = _flow_run_id(run.stdout)
    [row] = postgres.fetch(
        DATABASE,
        "SELECT f.state_type::text AS state, d.name AS deployment,"
        " (SELECT count(*) FROM task_run t WHERE t.flow_run_id = f.id) AS tasks,"
        " (SELECT count(*) FROM artifact a WHERE a.flow_run_id = f.id) AS artifacts"
        " FROM flow_run f JOIN deployment d ON d.id = f.deployment_id WHERE f.id = $1::uuid",
        run_id,
    )
    assert row["state"] == "COMPLETED" and row["deployment"] == "energy-pipeline-local", row
    assert row["tasks"] >= 2 and row["artifacts"] == len(response.json()), row


def test_failed_deployment_run_reaches_slack_from_automation_and_hook(stack, emulator_session):
    emulator_session.reset()
    emulator_session.inject(
        "status", dataset="departement", request="lines", status=500, times=None
    )
    stack["slack"].messages.clear()
    # force: the previous test committed this partition, unchanged at the source since
    params = json.dumps({"datasets": ["departement"], "years": [2023], "force": True})

    run = prefect(stack["env"], "deployment", "run", "energy_pipeline/energy-pipeline-local",
                  "--params", params, "--watch", "--watch-timeout", "600")  # fmt: skip

    assert run.returncode != 0
    assert "Failed" in run.stdout + run.stderr
    deadline = time.monotonic() + 60
    while len(stack["slack"].messages) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    text = json.dumps(stack["slack"].messages)
    assert "departement/annee=2023 failed" in text  # the flow hook's context
    assert "ended Failed" in text or "Failed" in text
    assert len(stack["slack"].messages) >= 2, text  # automation + hook
    emulator_session.reset()


def _flow_run_id(output: str) -> str:
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, output
    return match.group(1)


def _state(env: dict[str, str], run_id: str) -> str:
    response = httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{run_id}", timeout=10)
    response.raise_for_status()
    return response.json()["state"]["type"]


def _flow_run_process(run_id: str) -> psutil.Process | None:
    """The process a worker started for this flow run (it carries the run id in its env)."""
    for process in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if process.environ().get("PREFECT__FLOW_RUN_ID") == run_id:
                return process
    return None


def test_killed_flow_run_ends_crashed_and_reaches_slack(stack, emulator_session):
    emulator_session.reset()
    # The run stays busy in the download: every lines page of `departement` takes 5 min.
    emulator_session.inject("slow", dataset="departement", request="lines", delay=300, times=None)
    stack["slack"].messages.clear()
    params = json.dumps({"datasets": ["departement"], "years": [2023], "force": True})
    run_id = _start_run(stack["env"], params)
    process = _running_process(stack["env"], run_id)
    time.sleep(3)  # well inside the download
    process.send_signal(signal.SIGKILL)

    deadline = time.monotonic() + 90
    while _state(stack["env"], run_id) != "CRASHED" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _state(stack["env"], run_id) == "CRASHED"
    while not stack["slack"].messages and time.monotonic() < deadline:
        time.sleep(0.5)
    text = json.dumps(stack["slack"].messages)
    assert "Crashed" in text, text
    assert run_id in text, text  # the UI link names the run
    emulator_session.reset()


def _start_run(env: dict[str, str], params: str) -> str:
    """`prefect deployment run` without waiting; the flow run's id."""
    started = prefect(env, "deployment", "run", "energy_pipeline/energy-pipeline-local",
                      "--params", params)  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    return _flow_run_id(started.stdout)


def _running_process(env: dict[str, str], run_id: str) -> psutil.Process:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if _state(env, run_id) == "RUNNING":
            process = _flow_run_process(run_id)
            if process is not None:
                return process
        time.sleep(0.5)
    raise AssertionError(f"flow run {run_id} never ran: {_state(env, run_id)}")


def test_run_lost_with_its_worker_is_marked_crashed_by_the_heartbeat_automation(
    stack, emulator_session, postgres: PostgresCluster
):
    """Worker and flow run both SIGKILLed: no one reports; the missing heartbeats do."""
    emulator_session.reset()
    emulator_session.inject("slow", dataset="departement", request="lines", delay=300, times=None)
    stack["slack"].messages.clear()
    main_worker = stack["worker"]
    main_worker.send_signal(signal.SIGSTOP)  # the run must go to the worker we kill
    try:
        with worker(stack["env"], "energy-pipeline-process", "process",
                    stack["home"] / "doomed-worker.log") as doomed:  # fmt: skip
            params = json.dumps({"datasets": ["departement"], "years": [2023], "force": True})
            run_id = _start_run(stack["env"], params)
            process = _running_process(stack["env"], run_id)
            time.sleep(3)  # the first heartbeat is sent as the run starts
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
            process.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
    finally:
        main_worker.send_signal(signal.SIGCONT)

    deadline = killed_at + HEARTBEAT_GRACE_S + 120
    while _state(stack["env"], run_id) != "CRASHED" and time.monotonic() < deadline:
        time.sleep(1)
    run = httpx.get(f"{stack['env']['PREFECT_API_URL']}/flow_runs/{run_id}", timeout=10).json()
    assert run["state"]["type"] == "CRASHED", run["state"]
    assert "No heartbeat" in (run["state"]["message"] or ""), run["state"]
    # The automation's state change is stored in PostgreSQL too.
    states = postgres.fetch(
        DATABASE,
        "SELECT type::text AS type, message FROM flow_run_state WHERE flow_run_id = $1::uuid"
        " ORDER BY timestamp",
        run_id,
    )
    assert states[-1]["type"] == "CRASHED" and "No heartbeat" in states[-1]["message"], states
    print(f"\n[e2e] lost run marked Crashed {time.monotonic() - killed_at:.0f} s after the kill")
    while not stack["slack"].messages and time.monotonic() < deadline:
        time.sleep(0.5)
    text = json.dumps(stack["slack"].messages)
    assert "Crashed" in text and run_id in text, text
    emulator_session.reset()
