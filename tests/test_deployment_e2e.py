"""A deployment run for real: Prefect server, bootstrap, `prefect deploy`, process worker, S3."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import boto3
import pytest

from tests.prefect_stack import ROOT, prefect, prefect_server, process_worker
from tests.test_slack_hook import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.s3, pytest.mark.spark]


@pytest.fixture(scope="module")
def stack(emulator_session, s3_endpoint, tmp_path_factory) -> Iterator[dict]:
    """Server + bootstrap (blocks on moto, Slack receiver) + deploy + worker."""
    home = tmp_path_factory.mktemp("prefect")
    bucket = "deployed-lake"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    slack = Receiver()
    threading.Thread(target=slack.serve_forever, daemon=True).start()
    with prefect_server(home) as env:
        env.update(
            ENERGY_PIPELINE_PROJECT_DIR=str(ROOT),
            ENERGY_PIPELINE_S3_BUCKET=bucket,
            ENERGY_PIPELINE_S3_FOLDER="lake",
            ENERGY_PIPELINE_S3_ENDPOINT=s3_endpoint,
            ENERGY_PIPELINE_SLACK_WEBHOOK_URL=f"json://127.0.0.1:{slack.server_address[1]}/s",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            ENERGY_PIPELINE_SPARK_MASTER="local[2]",
            ENERGY_PIPELINE_HTTP_BACKOFF_BASE="0.05",
            ENERGY_PIPELINE_HTTP_MAX_ATTEMPTS="2",
            ENERGY_PIPELINE_PARTITION_RETRIES="1",
            **{f"ENERGY_PIPELINE_{p.upper()}_URL": u for p, u in emulator_session.urls.items()},
        )
        boot = prefect_run(env, [sys.executable, "-m", "deployments.bootstrap"])
        assert boot.returncode == 0, boot.stderr
        deploy = prefect(env, "deploy", "--name", "energy-pipeline-local")
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        with process_worker(env, "energy-pipeline-process", home / "worker.log"):
            yield {"env": env, "bucket": bucket, "slack": slack, "home": home,
                   "s3": s3_endpoint}  # fmt: skip
    slack.shutdown()


def prefect_run(env: dict[str, str], command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def keys(endpoint: str, bucket: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_deployment_run_publishes_gold_tables_to_the_bucket(stack, emulator_session):
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
