"""Prepare a Prefect server or Cloud workspace for energy-pipeline; idempotent.

Creates or updates: the lake's S3 blocks (`S3Bucket` with `AwsCredentials`, or with
`MinIOCredentials` when an endpoint is set), the core `SlackWebhook` block, the process and
Docker work pools, one global concurrency limit per portal, and the automations that send
failed, crashed and timed-out flow runs to Slack and mark runs whose heartbeat stopped as
Crashed. Every value comes from the environment (see `BootstrapConfig.from_env`).

    python -m deployments.bootstrap
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from prefect.automations import Automation
from prefect.blocks.core import Block
from prefect.blocks.notifications import SlackWebhook
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.exceptions import ObjectNotFound
from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.settings import (
    ENV_PREFIX,
    PREFECT_PREFIX,
    PrefectNames,
    Settings,
    env_name,
    portal_limit,
)
from flows.sources.catalog import PORTALS

FAILED_STATES = ("prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut")
NOTIFICATION = """Flow run {{ flow.name }}/{{ flow_run.name }} ended {{ flow_run.state.name }}.
Message: {{ flow_run.state.message }}
Run: {{ flow_run|ui_url }}"""


class BootstrapConfig(BaseSettings):
    """What to create: ENERGY_PIPELINE_* and the standard AWS variables, checked like the
    pipeline's own settings (a bad number fails naming its variable)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    prefect_prefix: str = PREFECT_PREFIX
    s3_bucket: str | None = None
    s3_folder: str = "lake"
    s3_endpoint: str | None = None
    aws_access_key_id: str | None = Field(None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: str | None = Field(None, validation_alias="AWS_SECRET_ACCESS_KEY")
    aws_region: str | None = Field(
        None, validation_alias=AliasChoices("AWS_DEFAULT_REGION", "AWS_REGION")
    )
    slack_webhook_url: str | None = None
    portal_concurrency: int = Field(Settings.model_fields["portal_concurrency"].default, ge=1)
    heartbeat_grace_s: int = Field(90, ge=30)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BootstrapConfig:
        """The configuration from the process environment, or from the given variables."""
        if env is None:
            return cls()
        values: dict[str, Any] = {}
        for field, info in cls.model_fields.items():
            names = [env_name(field)]
            alias = info.validation_alias
            if isinstance(alias, str):
                names = [alias]
            elif isinstance(alias, AliasChoices):
                names = [str(choice) for choice in alias.choices]
            found = next((env[name] for name in names if env.get(name)), None)
            if found is not None:
                values[field] = found
        return cls.model_validate(values, by_name=True)

    @property
    def names(self) -> PrefectNames:
        """Every Prefect resource name, from the prefix."""
        return PrefectNames(self.prefect_prefix)

    def name(self, suffix: str) -> str:
        """A resource name with the project prefix."""
        return self.names.resource(suffix)


def _plain(value: Any) -> Any:
    """A block's values with secrets, without its server-side identity (`_` keys)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not k.startswith("_")}
    return value


def _same(existing: Block, wanted: Block) -> bool:
    dump = {"mode": "json", "context": {"include_secrets": True}}
    return bool(_plain(existing.model_dump(**dump)) == _plain(wanted.model_dump(**dump)))


def save_block(block: Block, name: str) -> str:
    """Save a block under a name unless an identical one is there; returns what was done."""
    try:
        existing = type(block).load(name)
    except ValueError:
        block.save(name)
        return "created"
    if _same(existing, block):
        return "unchanged"
    block.save(name, overwrite=True)
    return "updated"


def lake_blocks(config: BootstrapConfig) -> dict[str, str]:
    """The S3 credentials and bucket blocks the flows load the lake from."""
    if not config.s3_bucket:
        return {}
    credentials: AwsCredentials | MinIOCredentials
    if config.s3_endpoint:
        credentials = MinIOCredentials(
            minio_root_user=config.aws_access_key_id or "",
            minio_root_password=SecretStr(config.aws_secret_access_key or ""),
            region_name=config.aws_region or "us-east-1",
            aws_client_parameters={"endpoint_url": config.s3_endpoint},
        )
    else:
        credentials = AwsCredentials(
            aws_access_key_id=config.aws_access_key_id,
            aws_secret_access_key=(
                SecretStr(config.aws_secret_access_key) if config.aws_secret_access_key else None
            ),
            region_name=config.aws_region,
        )
    done = {"credentials": save_block(credentials, config.names.s3_credentials_block)}
    bucket = S3Bucket(
        bucket_name=config.s3_bucket,
        bucket_folder=config.s3_folder,
        credentials=type(credentials).load(config.names.s3_credentials_block),
    )
    done["bucket"] = save_block(bucket, config.names.lake_block)
    return done


def slack_block(config: BootstrapConfig) -> str | None:
    """The core SlackWebhook block both the automations and the flow hook send through."""
    if not config.slack_webhook_url:
        return None
    return save_block(
        SlackWebhook(url=SecretStr(config.slack_webhook_url)), config.names.slack_block
    )


def work_pools(config: BootstrapConfig) -> dict[str, str]:
    """A process pool for local servers, a Docker pool for production."""
    done = {}
    with get_client(sync_client=True) as client:
        for kind in ("process", "docker"):
            name = config.names.work_pool(kind)
            try:
                client.read_work_pool(name)
                done[name] = "unchanged"
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=name, type=kind))
                done[name] = "created"
    return done


def concurrency_limits(config: BootstrapConfig) -> dict[str, str]:
    """One global concurrency limit per portal, shared by every worker."""
    done = {}
    with get_client(sync_client=True) as client:
        for portal in PORTALS:
            name = portal_limit(config.names.portal_limit_prefix, portal)
            try:
                limit = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=config.portal_concurrency)
                )
                done[name] = "created"
                continue
            if limit.limit == config.portal_concurrency:
                done[name] = "unchanged"
            else:
                from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(limit=config.portal_concurrency)
                )
                done[name] = "updated"
    return done


def _unordered(value: Any) -> Any:
    """A dump where lists of strings are sorted: a trigger's `expect` is a set, which dumps in
    the process's hash order, so the same automation would otherwise look changed."""
    if isinstance(value, dict):
        return {k: _unordered(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_unordered(v) for v in value]
        return sorted(items) if all(isinstance(v, str) for v in items) else items
    return value


def _upsert_automation(wanted: Automation) -> str:
    try:
        existing = Automation.read(name=wanted.name)
    except ValueError:
        wanted.create()
        return "created"
    keep = {"id", "created", "updated", "tags", "owner_resource"}
    if _unordered(existing.model_dump(mode="json", exclude=keep)) == _unordered(
        wanted.model_dump(mode="json", exclude=keep)
    ):
        return "unchanged"
    wanted.id = existing.id
    wanted.update()
    return "updated"


def automations(config: BootstrapConfig) -> dict[str, str]:
    """Failed/Crashed/TimedOut runs to Slack; runs that stopped beating marked Crashed."""
    done = {}
    if config.slack_webhook_url:
        slack = SlackWebhook.load(config.names.slack_block)
        failed = Automation(
            name=config.name("run-failed-to-slack"),
            description="Flow runs that end Failed, Crashed or TimedOut are posted to Slack.",
            trigger=EventTrigger(
                expect=set(FAILED_STATES),
                match={"prefect.resource.id": "prefect.flow-run.*"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[
                SendNotification(
                    block_document_id=slack._block_document_id,
                    subject="energy-pipeline: {{ flow_run.name }} {{ flow_run.state.name }}",
                    body=NOTIFICATION,
                )
            ],
        )
        done[failed.name] = _upsert_automation(failed)
    lost = Automation(
        name=config.name("lost-runs-crashed"),
        description="A running flow run whose heartbeat stops is marked Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match={"prefect.resource.id": "prefect.flow-run.*"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=config.heartbeat_grace_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {config.heartbeat_grace_s} s: the run was lost.",
            )
        ],
    )
    done[lost.name] = _upsert_automation(lost)
    return done


def bootstrap(config: BootstrapConfig) -> dict[str, Any]:
    """Everything a deployment needs, created or brought up to date."""
    return {
        "lake_blocks": lake_blocks(config),
        "slack_block": slack_block(config),
        "work_pools": work_pools(config),
        "concurrency_limits": concurrency_limits(config),
        "automations": automations(config),
    }


def main() -> int:
    """Print what was created, updated or left unchanged."""
    for step, outcome in bootstrap(BootstrapConfig.from_env()).items():
        print(f"{step}: {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
