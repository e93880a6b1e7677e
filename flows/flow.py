"""Prefect flows: ingestion with one task per partition, bounded concurrency, transient retries."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar, cast

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff
from pydantic import Field

from flows.alerts.notify import notify_failure
from flows.crashpoints import crashpoint
from flows.errors import PipelineError, is_transient
from flows.gold.aggregate import AggregateReport, run_aggregate
from flows.lake import layout
from flows.lake.blocks import resolve_settings
from flows.lake.fs import Lake, lake_error
from flows.lake.writer import writing
from flows.outputs.dashboard import build_dashboard
from flows.outputs.report import IngestProgress, RunSummary, create_run_artifacts, emit
from flows.outputs.tableau import HYPER_MISSING, hyper_available, write_hyper_extracts
from flows.settings import YEAR_MAX, YEAR_MIN, Settings
from flows.sources.catalog import DATASETS, get_dataset
from flows.sources.ingest import (
    LOAD,
    PartitionPlan,
    PartitionResult,
    load_partition,
    plan_dataset,
)
from flows.sources.portals import client_for

T = TypeVar("T")


@dataclass
class IngestReport:
    """What an ingestion run did, partition by partition."""

    load_id: str
    lake: str
    results: list[PartitionResult] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def failed(self) -> list[PartitionResult]:
        """Partitions that could not be loaded."""
        return [r for r in self.results if r.status == "failed"]

    def count(self, status: str) -> int:
        """How many partitions ended with a status."""
        return sum(r.status == status for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        """The load manifest."""
        return {
            "load_id": self.load_id,
            "lake": self.lake,
            "status": "failed" if self.failed else "completed",
            "started_at": self.started_at,
            "finished_at": datetime.now(UTC).isoformat(),
            "partitions": [r.to_dict() for r in self.results],
        }


class IngestFailed(PipelineError):
    """One or more partitions failed; the others were committed."""

    report: IngestReport | None = None


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a partition only when its failure was transient."""
    return is_transient(state.result(raise_on_failure=False))


@task(name="plan", task_run_name="plan {dataset_name}", cache_policy=NO_CACHE)
def plan_task(
    dataset_name: str, years: list[int] | None, force: bool, settings: Settings
) -> list[PartitionPlan]:
    """Read a dataset's metadata and per-year counts; decide what to load."""
    dataset = get_dataset(dataset_name)
    client = client_for(dataset, settings)
    try:
        plans = plan_dataset(
            dataset, years, force, client, Lake(settings.lake, s3_endpoint=settings.s3_endpoint)
        )
    except PipelineError as exc:
        raise exc.with_context(dataset=dataset_name, partition="(plan)") from exc.__cause__
    finally:
        client.close()
    logger = get_run_logger()
    for plan in plans:
        logger.info("%s: %s (%s)", plan.label, plan.action, plan.reason)
    return plans


@contextmanager
def _portal_slot(plan: PartitionPlan, settings: Settings) -> Iterator[None]:
    """Hold one slot of the portal's global concurrency limit (deployments) while loading."""
    if not settings.portal_limit_prefix:
        yield
        return
    name = f"{settings.portal_limit_prefix}-{get_dataset(plan.dataset).portal}"
    try:
        with concurrency(name, occupy=1, strict=True):
            yield
    except ConcurrencySlotAcquisitionError as exc:
        raise PipelineError(
            f"global concurrency limit {name} is missing: run `python -m deployments.bootstrap`",
            dataset=plan.dataset,
            partition=plan.label,
        ) from exc


@task(
    name="ingest-partition",
    task_run_name="ingest {plan.dataset} {plan.year}",
    cache_policy=NO_CACHE,
    retry_condition_fn=_retry_transient,
)
def ingest_partition_task(plan: PartitionPlan, settings: Settings, load_id: str) -> PartitionResult:
    """Load one partition end to end; transient failures are retried, nothing half-committed."""
    logger = get_run_logger()
    lake = Lake(settings.lake, s3_endpoint=settings.s3_endpoint)
    with _portal_slot(plan, settings):
        result = load_partition(plan, settings, lake, load_id)
    logger.info(
        "%s: fetched %d rows (%.1f MB) from %s, wrote %d, quarantined %d, "
        "dropped %d exact duplicates in %.1fs",
        plan.label,
        result.rows_received,
        result.bytes_received / 1e6,
        result.url,
        result.rows_written,
        result.rows_quarantined,
        result.exact_duplicates_dropped,
        result.duration_s,
    )
    if result.rows_quarantined:
        logger.warning(
            "%s: %d rows quarantined under quarantine/%s/annee=%d/",
            plan.label,
            result.rows_quarantined,
            plan.dataset,
            plan.year,
        )
    return result


def _skipped(plan: PartitionPlan) -> PartitionResult:
    return PartitionResult(
        dataset=plan.dataset,
        partition=plan.label,
        year=plan.year,
        status="skipped",
        reason=plan.reason,
        source_signal=plan.signal,
        rows_expected=plan.count,
    )


def _failed(plan: PartitionPlan, error: BaseException) -> PartitionResult:
    return PartitionResult(
        dataset=plan.dataset,
        partition=plan.label,
        year=plan.year,
        status="failed",
        reason=str(error),
        source_signal=plan.signal,
        url=getattr(error, "url", "") or "",
        rows_expected=plan.count,
    )


def run_ingest(
    datasets: list[str] | None, years: list[int] | None, force: bool, settings: Settings
) -> IngestReport:
    """Plan every dataset, then load partitions concurrently; write the load manifest."""
    names = list(dict.fromkeys(datasets or DATASETS))
    for name in names:
        get_dataset(name)
    with writing(settings, command="ingest"):
        return _run_ingest(names, years, force, settings)


def _run_ingest(
    names: list[str], years: list[int] | None, force: bool, settings: Settings
) -> IngestReport:
    logger = get_run_logger()
    lake = Lake(settings.lake, s3_endpoint=settings.s3_endpoint)
    report = IngestReport(load_id=layout.new_load_id(), lake=settings.lake)
    # A marker a killed run leaves behind: the next run rebuilds this load's manifest from
    # the pointers of what it committed (recover_loads).
    lake.write_json(layout.load_running_marker(report.load_id), {"load_id": report.load_id})
    plan_futures = [plan_task.submit(name, years, force, settings) for name in names]
    plans: list[PartitionPlan] = []
    for name, future in zip(names, plan_futures, strict=True):
        try:
            plans.extend(future.result())
        except Exception as exc:  # a dataset whose plan fails is reported, the others go on
            report.results.append(
                PartitionResult(
                    dataset=name,
                    partition=f"{name}/(plan)",
                    year=0,
                    status="failed",
                    reason=str(exc),
                    url=getattr(exc, "url", "") or "",
                )
            )
    partition_task = ingest_partition_task.with_options(
        retries=settings.partition_retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.http_backoff_base),
        retry_jitter_factor=0.5,
    )
    to_load = [p for p in plans if p.action == LOAD]
    report.results.extend(_skipped(p) for p in plans if p.action != LOAD)
    progress = IngestProgress(total=len(to_load), skipped=len(plans) - len(to_load))
    loads = {partition_task.submit(p, settings, report.load_id): p for p in to_load}
    for load in as_completed(list(loads)):
        plan = loads[load]
        try:
            result = load.result()
        except Exception as exc:
            logger.error("%s failed: %s", plan.label, exc)
            result = _failed(plan, exc)
        report.results.append(result)
        progress.advance(result)
    summary = (
        f"load {report.load_id}: {report.count('loaded')} loaded, {report.count('skipped')} "
        f"skipped, {report.count('failed')} failed"
    )
    try:
        lake.write_json(layout.load_manifest(report.load_id), report.to_dict())
        crashpoint("ingest-manifest-written")
        lake.remove(layout.load_running_marker(report.load_id))
    except OSError as exc:  # the failure summary must survive a manifest that cannot be written
        problem = lake_error(exc, dataset="(all)", partition=f"load manifest {report.load_id}")
        if not report.failed:
            raise problem from exc
        logger.error("%s; %s", summary, problem)
        summary += f"; the load manifest could not be written: {problem}"
    else:
        logger.info("%s; manifest %s", summary, layout.load_manifest(report.load_id))
    if report.failed:
        first = report.failed[0]
        error = IngestFailed(f"{len(report.failed)} partition(s) failed; first: {first.reason}")
        error.report = report
        raise error
    return report


def _spark_line(logger: Any) -> Any:
    """Stream the Spark driver's log: its INFO chatter at debug level, the rest at info."""

    def emit(line: str) -> None:
        if " INFO " in line:
            logger.debug(line)
        else:
            logger.info(line)

    return emit


@task(name="aggregate", task_run_name="aggregate gold tables", cache_policy=NO_CACHE)
def aggregate_task(settings: Settings, years: list[int] | None) -> AggregateReport:
    """spark-submit the gold-table job, then publish its tables atomically."""
    logger = get_run_logger()
    with writing(settings, command="aggregate"):
        report = run_aggregate(settings, years, on_line=_spark_line(logger))
    for table, figures in report.manifest["tables"].items():
        logger.info("published gold/%s: %d rows", table, figures["rows"])
    for check in report.warnings:
        logger.warning(
            "consistency check %s: %d finding(s), e.g. %s",
            check["name"], check["problems"], check["examples"][:3],
        )  # fmt: skip
    return report


@flow(name="ingest", log_prints=True)
def ingest_flow(
    datasets: list[str] | None = None,
    years: list[int] | None = None,
    force: bool = False,
    settings: Settings | None = None,
) -> IngestReport:
    """Pull every partition of the chosen datasets into the lake's raw zone."""
    return run_ingest(datasets, years, force, settings or Settings())


@flow(name="aggregate", log_prints=True)
def aggregate_flow(
    years: list[int] | None = None, settings: Settings | None = None
) -> AggregateReport:
    """Build and publish the gold tables from the raw zone."""
    return aggregate_task(settings or Settings(), years)


@flow(name="energy-pipeline", log_prints=True, on_failure=[notify_failure])
def pipeline_flow(
    datasets: list[str] | None = None,
    years: list[int] | None = None,
    force: bool = False,
    settings: Settings | None = None,
) -> RunSummary:
    """Ingest, then aggregate and publish; a failed ingest publishes nothing."""
    return _ingest_then_aggregate(datasets, years, force, settings or Settings())


@task(name="outputs", task_run_name="dashboard and Tableau extracts", cache_policy=NO_CACHE)
def outputs_task(settings: Settings, manifest: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the dashboard from the published tables; write a Hyper extract per table."""
    logger = get_run_logger()
    lake = Lake(settings.lake, s3_endpoint=settings.s3_endpoint)
    with writing(settings, command="outputs"):
        emit("step_started", step="dashboard")
        dashboard = build_dashboard(lake, manifest)
        crashpoint("dashboard-written")
        logger.info("dashboard published: %s", dashboard)
        emit("step_started", step="tableau")
        if hyper_available():
            hyper = write_hyper_extracts(lake, list(manifest["tables"]))
            message = None
            logger.info("Tableau extracts: %s", ", ".join(f"{t}.hyper" for t in hyper))
        else:
            hyper, message = {}, HYPER_MISSING
            logger.warning(message)
    return {"dashboard": dashboard, "hyper": hyper, "hyper_message": message}


@task(name="report", task_run_name="run report", cache_policy=NO_CACHE)
def report_task(summary: RunSummary) -> None:
    """The run's artifacts: summary, checks table, links to the dashboard and the tables."""
    create_run_artifacts(summary)


def _timed(timings: dict[str, float], step: str, call: Callable[..., T], *args: Any) -> T:
    """Run one step, recording its wall time under `step`."""
    started = time.monotonic()
    try:
        return call(*args)
    finally:
        timings[step] = time.monotonic() - started


def _ingest_then_aggregate(
    datasets: list[str] | None, years: list[int] | None, force: bool, settings: Settings
) -> RunSummary:
    """Ingest → aggregate → publish → dashboard and extracts → report, under one lease."""
    with writing(settings, command="pipeline"):
        return _pipeline_steps(datasets, years, force, settings)


def _pipeline_steps(
    datasets: list[str] | None, years: list[int] | None, force: bool, settings: Settings
) -> RunSummary:
    timings: dict[str, float] = {}
    try:
        ingested = _timed(timings, "ingest", run_ingest, datasets, years, force, settings)
    except IngestFailed as failure:
        if failure.report is not None:  # the UI still gets what was and was not loaded
            report_task(RunSummary(settings.lake, failure.report.load_id,
                                   [r.to_dict() for r in failure.report.results]))  # fmt: skip
        raise
    emit("step_started", step="aggregate")
    aggregated = _timed(timings, "aggregate and publish", aggregate_task, settings, years)
    outputs = _timed(timings, "dashboard and extracts", outputs_task, settings,
                     aggregated.manifest)  # fmt: skip
    summary = RunSummary(
        lake=settings.lake,
        load_id=ingested.load_id,
        partitions=[r.to_dict() for r in ingested.results],
        publish=aggregated.manifest,
        timings=timings,
        **outputs,
    )
    report_task(summary)
    emit("run_done", summary=summary)
    return summary


DatasetName = Literal[
    "adresse",
    "commune",
    "departement",
    "nationale_annuelle",
    "regionale_annuelle",
    "nationale_quotidienne",
    "regionale_quotidienne",
]
Year = Annotated[int, Field(ge=YEAR_MIN, le=YEAR_MAX)]
DEFAULT_PARTITION_CONCURRENCY: int = Settings.model_fields["partition_concurrency"].default


@flow(
    name="energy_pipeline",
    log_prints=True,
    on_failure=[notify_failure],
    # Partitions load in parallel, bounded; each portal is also held to its own limit.
    task_runner=cast(Any, ThreadPoolTaskRunner(max_workers=DEFAULT_PARTITION_CONCURRENCY)),
)
def energy_pipeline(
    datasets: list[DatasetName] | None = None,
    years: list[Year] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """The deployed pipeline: ingest, aggregate, publish; settings from env and blocks.

    Args:
        datasets: datasets to pull (all seven when empty).
        years: years to pull and rebuild (every year the portals hold when empty).
        force: pull partitions again even when the source has not changed.
    """
    chosen: list[str] | None = [str(d) for d in datasets] if datasets else None
    return asdict(_ingest_then_aggregate(chosen, years, force, resolve_settings()))


def _runner(settings: Settings) -> Any:
    return ThreadPoolTaskRunner(max_workers=settings.partition_concurrency)


def ingest(
    datasets: list[str] | None = None,
    years: list[int] | None = None,
    force: bool = False,
    settings: Settings | None = None,
) -> IngestReport:
    """Run the ingest flow with the partition concurrency the settings ask for."""
    settings = settings or Settings()
    return ingest_flow.with_options(task_runner=_runner(settings))(datasets, years, force, settings)


def aggregate(years: list[int] | None = None, settings: Settings | None = None) -> AggregateReport:
    """Run the aggregate flow."""
    return aggregate_flow(years, settings or Settings())


def pipeline(
    datasets: list[str] | None = None,
    years: list[int] | None = None,
    force: bool = False,
    settings: Settings | None = None,
) -> RunSummary:
    """Run the whole pipeline flow."""
    settings = settings or Settings()
    flow_ = pipeline_flow.with_options(task_runner=_runner(settings))
    return flow_(datasets, years, force, settings)
