"""The workspace bootstrap against a real Prefect server: everything once, twice changes nothing."""

from __future__ import annotations

import pytest
from prefect.automations import Automation
from prefect.blocks.notifications import SlackWebhook
from prefect.client.orchestration import get_client
from prefect_aws import MinIOCredentials, S3Bucket

from deployments.bootstrap import BootstrapConfig, bootstrap

pytestmark = pytest.mark.usefixtures("prefect_server")

ENV = {
    "ENERGY_PIPELINE_PREFECT_PREFIX": "bootstrap-test",
    "ENERGY_PIPELINE_S3_BUCKET": "lake-bucket",
    "ENERGY_PIPELINE_S3_FOLDER": "lake",
    "ENERGY_PIPELINE_S3_ENDPOINT": "http://127.0.0.1:9000",
    "AWS_ACCESS_KEY_ID": "bootstrap-user",
    "AWS_SECRET_ACCESS_KEY": "bootstrap-secret",
    "ENERGY_PIPELINE_SLACK_WEBHOOK_URL": "json://127.0.0.1:9/slack",
}


@pytest.fixture(scope="module")
def outcomes() -> tuple[dict, dict]:
    config = BootstrapConfig.from_env(ENV)
    return bootstrap(config), bootstrap(config)


def leaves(tree: object) -> list[str]:
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in leaves(value)]
    return [str(tree)]


def test_first_run_creates_everything(outcomes):
    first, _ = outcomes
    assert set(leaves(first)) == {"created"}
    assert len(leaves(first)) == 2 + 1 + 2 + 3 + 2


def test_second_run_changes_nothing(outcomes):
    _, second = outcomes
    assert set(leaves(second)) == {"unchanged"}


def test_exactly_one_of_each_resource_exists(outcomes):
    with get_client(sync_client=True) as client:
        pools = [p.name for p in client.read_work_pools() if p.name.startswith("bootstrap-test")]
        limits = [
            limit.name
            for limit in client.read_global_concurrency_limits(limit=100)
            if limit.name.startswith("bootstrap-test")
        ]
        automations = [a.name for a in client.read_automations() if a.name.startswith("bootstrap")]
    assert sorted(pools) == ["bootstrap-test-docker", "bootstrap-test-process"]
    assert sorted(limits) == [f"bootstrap-test-portal-{p}" for p in ("enedis", "odre", "ore")]
    assert sorted(automations) == [
        "bootstrap-test-lost-runs-crashed",
        "bootstrap-test-run-failed-to-slack",
    ]


def test_blocks_hold_the_environment_values(outcomes):
    bucket = S3Bucket.load("bootstrap-test-lake")
    assert bucket.bucket_name == "lake-bucket" and bucket.bucket_folder == "lake"
    assert isinstance(bucket.credentials, MinIOCredentials)
    assert bucket.credentials.minio_root_password.get_secret_value() == "bootstrap-secret"
    assert SlackWebhook.load("bootstrap-test-slack").url.get_secret_value() == (
        "json://127.0.0.1:9/slack"
    )
    failed = Automation.read(name="bootstrap-test-run-failed-to-slack")
    assert failed.trigger.expect == {  # type: ignore[union-attr]
        "prefect.flow-run.Failed",
        "prefect.flow-run.Crashed",
        "prefect.flow-run.TimedOut",
    }


def test_changed_value_is_updated_not_duplicated(outcomes):
    changed = dict(ENV, ENERGY_PIPELINE_PORTAL_CONCURRENCY="5")

    third = bootstrap(BootstrapConfig.from_env(changed))

    assert set(third["concurrency_limits"].values()) == {"updated"}
    assert set(leaves({k: v for k, v in third.items() if k != "concurrency_limits"})) == {
        "unchanged"
    }
