"""Prefect flows: ingestion with one task per partition, bounded concurrency, transient retries.

One pipeline flow, `energy_pipeline`: the deployments run it with settings from the
environment and blocks, the command line with its own settings. The ingest and aggregate
flows run one step each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, ParamSpec, TypeVar, cast

from prefect import State, Task, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff
from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from flows.alerts.notify import notify_failure
from flows.crashpoints import crashpoint
from flows.errors import PipelineError, is_transient
from flows.gold.aggregate import AggregateReport, run_aggregate
from flows.lake import layout
from flows.lake.fs import Lake, lake_error
from flows.lake.publish import PublishManifest, published
from flows.lake.storage import resolve_settings
from flows.lake.writer import writing
from flows.outputs.dashboard import build_dashboard
from flows.outputs.report import IngestProgress, RunSummary, create_run_artifacts, emit
from flows.outputs.tableau import HYPER_MISSING, hyper_available, write_hyper_extracts
from flows.settings import YEAR_MAX, YEAR_MIN, Settings
from flows.sources.catalog import DATASETS, DatasetName, get_dataset
from flows.sources.ingest import (
    IngestReport,
    PartitionPlan,
    PartitionResult,
    PartitionStatus,
    PlanAction,
    load_partition,
    plan_dataset,
)
from flows.sources.portals import client_for

T = TypeVar("T")
P = ParamSpec("P")
Year = Annotated[int, Field(ge=YEAR_MIN, le=YEAR_MAX)]
DEFAULT_PARTITION_CONCURRENCY: int = Settings.model_fields["partition_concurrency"].default
RunLogger = logging.Logger | logging.LoggerAdapter[logging.Logger]  # get_run_logger()'s


@dataclass(frozen=True)
class RunRequest:
    """What a run is asked for, whichever entry point it came through (CLI, deployment)."""

    datasets: tuple[str, ...]  # catalog names, no repeats
    years: tuple[int, ...] | None = None  # None: every year the portals hold
    force: bool = False  # pull partitions again even when the source has not changed

    @classmethod
    def of(
        cls,
        datasets: Sequence[str] | None = None,
        years: Sequence[int] | None = None,
        force: bool = False,
    ) -> RunRequest:
        """A request from a flow's parameters: every dataset when none is named (an unknown
        name is a ValueError), every year when none is."""
        names = tuple(dict.fromkeys(datasets or DATASETS))
        for name in names:
            get_dataset(name)
        return cls(names, tuple(years) if years else None, force)

    @property
    def year_list(self) -> list[int] | None:
        """The years as the steps take them (None: all)."""
        return list(self.years) if self.years else None


def _thread_pool(workers: int) -> TaskRunner[PrefectFuture[Any]]:
    """Tasks in threads of this process, at most `workers` at a time."""
    return cast(TaskRunner[PrefectFuture[Any]], ThreadPoolTaskRunner(max_workers=workers))


class IngestFailed(PipelineError):
    """One or more partitions failed; the others were committed."""

    report: IngestReport | None = None


def _retry_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
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
        plans = plan_dataset(dataset, years, force, client, Lake.from_settings(settings))
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
    name = settings.portal_limit(get_dataset(plan.dataset).portal)
    if name is None:
        yield
        return
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
    lake = Lake.from_settings(settings)
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
            "%s: %d rows quarantined under %s/",
            plan.label,
            result.rows_quarantined,
            layout.quarantine_partition(plan.dataset, plan.year),
        )
    return result


def _skipped(plan: PartitionPlan) -> PartitionResult:
    return PartitionResult(
        dataset=plan.dataset,
        partition=plan.label,
        year=plan.year,
        status=PartitionStatus.SKIPPED,
        reason=plan.reason,
        source_signal=plan.signal,
        rows_expected=plan.count,
    )


def _failed(plan: PartitionPlan, error: BaseException) -> PartitionResult:
    return PartitionResult(
        dataset=plan.dataset,
        partition=plan.label,
        year=plan.year,
        status=PartitionStatus.FAILED,
        reason=str(error),
        source_signal=plan.signal,
        url=getattr(error, "url", "") or "",
        rows_expected=plan.count,
    )


def run_ingest(request: RunRequest, settings: Settings) -> IngestReport:
    """Plan every dataset, then load partitions concurrently; write the load manifest."""
    with writing(settings, command="ingest"):
        return _run_ingest(request, settings)


def _run_ingest(request: RunRequest, settings: Settings) -> IngestReport:
    logger = get_run_logger()
    lake = Lake.from_settings(settings)
    report = IngestReport(load_id=layout.new_load_id(), lake=settings.lake)
    # A marker a killed run leaves behind: the next run rebuilds this load's manifest from
    # the pointers of what it committed (recover_loads).
    lake.write_json(layout.load_running_marker(report.load_id), {"load_id": report.load_id})
    names, years = request.datasets, request.year_list
    plan_futures = [plan_task.submit(name, years, request.force, settings) for name in names]
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
                    status=PartitionStatus.FAILED,
                    reason=str(exc),
                    url=getattr(exc, "url", "") or "",
                )
            )
    partition_task = ingest_partition_task.with_options(
        retries=settings.partition_retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.http_backoff_base),
        retry_jitter_factor=0.5,
    )
    to_load = [p for p in plans if p.action == PlanAction.LOAD]
    report.results.extend(_skipped(p) for p in plans if p.action != PlanAction.LOAD)
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
        f"load {report.load_id}: {report.count(PartitionStatus.LOADED)} loaded, "
        f"{report.count(PartitionStatus.SKIPPED)} skipped, "
        f"{report.count(PartitionStatus.FAILED)} failed"
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


def _spark_line(logger: RunLogger) -> Callable[[str], None]:
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
    for table, figures in report.manifest.tables.items():
        logger.info("published %s: %d rows", layout.gold_table(table), figures.rows)
    for check in report.warnings:
        logger.warning(
            "consistency check %s: %d finding(s), e.g. %s",
            check.name, check.problems, (check.examples or [])[:3],
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
    return run_ingest(RunRequest.of(datasets, years, force), settings or Settings())


@flow(name="aggregate", log_prints=True)
def aggregate_flow(
    years: list[int] | None = None, settings: Settings | None = None
) -> AggregateReport:
    """Build and publish the gold tables from the raw zone."""
    return aggregate_task(settings or Settings(), years)


@dataclass(frozen=True)
class Outputs:
    """What the outputs step wrote: the dashboard, and the Tableau extracts or why none."""

    dashboard: str
    hyper: dict[str, dict[str, Any]]
    hyper_message: str | None


@task(name="outputs", task_run_name="dashboard and Tableau extracts", cache_policy=NO_CACHE)
def outputs_task(settings: Settings, manifest: PublishManifest) -> Outputs:
    """Rebuild the dashboard from the published tables; write a Hyper extract per table."""
    logger = get_run_logger()
    lake = Lake.from_settings(settings)
    with writing(settings, command="outputs"):
        emit("step_started", step="dashboard")
        dashboard = build_dashboard(lake, manifest.to_dict())
        crashpoint("dashboard-written")
        logger.info("dashboard published: %s", dashboard)
        emit("step_started", step="tableau")
        if hyper_available():
            hyper = write_hyper_extracts(lake, list(manifest.tables))
            message = None
            logger.info("Tableau extracts: %s", ", ".join(f"{t}.hyper" for t in hyper))
        else:
            hyper, message = {}, HYPER_MISSING
            logger.warning(message)
    return Outputs(dashboard=dashboard, hyper=hyper, hyper_message=message)


@task(name="report", task_run_name="run report", cache_policy=NO_CACHE)
def report_task(summary: RunSummary) -> None:
    """The run's artifacts: summary, checks table, links to the dashboard and the tables."""
    create_run_artifacts(summary)


def _timed(
    timings: dict[str, float], step: str, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """Run one step, recording its wall time under `step`."""
    started = time.monotonic()
    try:
        return call(*args, **kwargs)
    finally:
        timings[step] = time.monotonic() - started


def _ingest_then_aggregate(request: RunRequest, settings: Settings) -> RunSummary:
    """Ingest → aggregate → publish → dashboard and extracts → report, under one lease."""
    with writing(settings, command="pipeline"):
        return _pipeline_steps(request, settings)


def _pipeline_steps(request: RunRequest, settings: Settings) -> RunSummary:
    timings: dict[str, float] = {}
    try:
        ingested = _timed(timings, "ingest", run_ingest, request, settings)
    except IngestFailed as failure:
        if failure.report is not None:  # the UI still gets what was and was not loaded
            report_task(RunSummary(settings.lake, failure.report.load_id,
                                   list(failure.report.results)))  # fmt: skip
        raise
    emit("step_started", step="aggregate")
    aggregated = _timed(timings, "aggregate and publish", aggregate_task, settings,
                        request.year_list)  # fmt: skip
    outputs = _timed(timings, "dashboard and extracts", outputs_task, settings,
                     aggregated.manifest)  # fmt: skip
    summary = RunSummary(
        lake=settings.lake,
        load_id=ingested.load_id,
        partitions=list(ingested.results),
        publish=aggregated.manifest,
        dashboard=outputs.dashboard,
        hyper=outputs.hyper,
        hyper_message=outputs.hyper_message,
        timings=timings,
    )
    report_task(summary)
    emit("run_done", summary=summary)
    return summary


@flow(
    name="energy_pipeline",
    log_prints=True,
    on_failure=[notify_failure],
    # Partitions load in parallel, bounded; each portal is also held to its own limit.
    task_runner=_thread_pool(DEFAULT_PARTITION_CONCURRENCY),
)
def energy_pipeline(
    datasets: list[DatasetName] | None = None,
    years: list[Year] | None = None,
    force: bool = False,
    settings: SkipJsonSchema[Settings | None] = None,
) -> RunSummary:
    """Ingest, then aggregate and publish; a failed ingest publishes nothing.

    Args:
        datasets: datasets to pull (every dataset of the catalog when empty).
        years: years to pull and rebuild (every year the portals hold when empty).
        force: pull partitions again even when the source has not changed.
        settings: the command line's settings; a deployment leaves it out (it is not in the
            parameter form) and gets them from the environment and blocks.
    """
    request = RunRequest.of(datasets, years, force)
    return _ingest_then_aggregate(request, settings or resolve_settings())


def ingest(
    datasets: list[str] | None = None,
    years: list[int] | None = None,
    force: bool = False,
    settings: Settings | None = None,
) -> IngestReport:
    """Run the ingest flow with the partition concurrency the settings ask for."""
    settings = settings or Settings()
    flow_ = ingest_flow.with_options(task_runner=_thread_pool(settings.partition_concurrency))
    return flow_(datasets, years, force, settings)


@flow(name="outputs", log_prints=True)
def outputs_flow(settings: Settings | None = None) -> Outputs:
    """Rebuild the dashboard and the Tableau extracts from the published gold tables, without
    ingesting or running Spark (after an upgrade that changes them, or to time them alone)."""
    settings = settings or Settings()
    lake = Lake.from_settings(settings)
    with writing(settings, command="outputs"):  # no publish in between (the lease re-enters)
        pointer = published(lake)
        if pointer is None:
            raise PipelineError(
                "no published gold tables: run `energy-pipeline aggregate` (or `run`) first",
                dataset="gold",
                partition="(outputs)",
                url=lake.path(layout.PUBLISH_POINTER),
            )
        # every table currently published, whichever run published it; its latest checks
        tables = {t: {"rows": e["rows"], "files": len(e["files"])}
                  for t, e in pointer["tables"].items()}  # fmt: skip
        manifest = PublishManifest.from_dict({**pointer, "tables": tables})
        return outputs_task(settings, manifest)


def outputs(settings: Settings | None = None) -> Outputs:
    """Run the outputs flow."""
    return outputs_flow(settings or Settings())


def aggregate(years: list[int] | None = None, settings: Settings | None = None) -> AggregateReport:
    """Run the aggregate flow."""
    return aggregate_flow(years, settings or Settings())


def pipeline(
    datasets: list[str] | None = None,
    years: list[int] | None = None,
    force: bool = False,
    settings: Settings | None = None,
) -> RunSummary:
    """Run the pipeline flow with the partition concurrency the settings ask for."""
    settings = settings or Settings()
    flow_ = energy_pipeline.with_options(task_runner=_thread_pool(settings.partition_concurrency))
    return flow_(datasets, years, force, settings)
