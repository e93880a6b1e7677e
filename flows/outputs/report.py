"""What a run tells people: progress events, Prefect artifacts, and the run summary.

One event stream feeds two audiences: the Prefect UI (a progress artifact that moves during
ingestion, then a markdown summary, a checks table and links) and the command line (progress
bars and a final table, in flows/cli.py). Listeners are plain callables registered for the
duration of a run; tasks run in threads of the same process, so events arrive in order of
completion.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, cast
from uuid import UUID

from flows.lake import layout
from flows.lake.publish import CheckStatus, PublishManifest
from flows.sources.http import one_line
from flows.sources.ingest import PartitionResult, PartitionStatus

log = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, Any]], None]
_listeners: list[Listener] = []
_lock = threading.Lock()

# Artifact keys: stable, so the Prefect UI shows each one's history across runs.
SUMMARY_KEY = "energy-pipeline-summary"
CHECKS_KEY = "energy-pipeline-checks"
DASHBOARD_KEY = "energy-pipeline-dashboard"
GOLD_KEY = "energy-pipeline-gold"


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send every event of the block's runs to `listener` too."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def emit(event: str, **data: Any) -> None:
    """Tell the listeners; a listener that fails is logged, never fatal to the run."""
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(event, data)
        except Exception:  # a broken progress bar must not break a pipeline
            log.exception("progress listener failed on %s", event)


def _in_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


@dataclass
class IngestProgress:
    """Partitions done out of those to load: events, and a Prefect progress artifact."""

    total: int
    skipped: int
    done: int = 0
    artifact_id: UUID | None = None
    rows: int = 0

    def __post_init__(self) -> None:
        emit("ingest_started", total=self.total, skipped=self.skipped)
        if _in_run():
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = cast(  # sync here: its async twin is acreate_progress_artifact
                UUID,
                create_progress_artifact(
                    progress=100.0 if self.total == 0 else 0.0,
                    description=f"Ingestion: {self.total} partition(s) to load, "
                    f"{self.skipped} unchanged since the last load",
                ),
            )

    def advance(self, result: PartitionResult) -> None:
        """One partition finished (loaded or failed)."""
        self.done += 1
        self.rows += result.rows_written
        emit("partition_done", result=result, done=self.done, total=self.total)
        if self.artifact_id is not None:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.artifact_id, progress=100.0 * self.done / self.total)


# What lets text in a Markdown table cell end the cell (`|`, and `\` which could escape our
# escapes), open a code span, a link or image (`[`), an autolink or raw HTML (`<`, `>`) or an
# entity (`&`). A backslash makes each literal (CommonMark escapes). Emphasis characters
# (`*`, `_`) are left: at worst they restyle a cell, and names such as conso_region stay as
# they are in the raw Markdown.
_MARKDOWN_SPECIAL = re.compile(r"([\\`|<>\[\]&])")


def md_text(value: Any, limit: int = 300) -> str:
    """Any text (a portal may have supplied it) as literal Markdown on one line: line breaks
    and control characters become spaces, `|` and markup characters are escaped, so it can
    neither end a table row or cell nor add code, links, images or HTML; at most `limit`
    characters of it are kept."""
    text = one_line(str(value))
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def md_code(value: Any, limit: int = 300) -> str:
    """Text as an inline code span on one line, whatever backticks it holds."""
    text = one_line(str(value))
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"  # list items only: a `|` would split a table cell


def human_bytes(count: float) -> str:
    """1234567 -> '1.2 MB'."""
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


@dataclass
class DatasetTally:
    """One dataset's partitions in a run: loaded, skipped, failed, and their rows."""

    dataset: str
    loaded: int = 0
    skipped: int = 0
    failed: int = 0
    rows_written: int = 0
    rows_quarantined: int = 0
    duplicates_dropped: int = 0
    years: list[int] = field(default_factory=list)


def by_dataset(partitions: Iterable[PartitionResult]) -> list[DatasetTally]:
    """Per dataset, in order of appearance: partitions loaded/skipped/failed, rows written,
    quarantined and dropped as exact duplicates, and the years."""
    tallies: dict[str, DatasetTally] = {}
    years: dict[str, set[int]] = {}
    for p in partitions:
        tally = tallies.setdefault(p.dataset, DatasetTally(p.dataset))
        if p.status == PartitionStatus.LOADED:
            tally.loaded += 1
        elif p.status == PartitionStatus.SKIPPED:
            tally.skipped += 1
        else:
            tally.failed += 1
        tally.rows_written += p.rows_written
        tally.rows_quarantined += p.rows_quarantined
        tally.duplicates_dropped += p.exact_duplicates_dropped
        if p.year:
            years.setdefault(p.dataset, set()).add(p.year)
    for tally in tallies.values():
        tally.years = sorted(years.get(tally.dataset, ()))
    return list(tallies.values())


@dataclass(frozen=True)
class CheckRow:
    """A row of the run's checks table: a quality check (ingestion) or a consistency check
    (gold)."""

    check: str
    scope: str  # a dataset, or "gold"
    status: CheckStatus
    findings: int
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """The row as the table artifact shows it."""
        return {**asdict(self), "status": self.status.value}


@dataclass
class RunSummary:
    """Everything the artifacts and the command line report at the end of a run."""

    lake: str
    load_id: str
    partitions: list[PartitionResult]
    publish: PublishManifest | None = None
    dashboard: str | None = None
    hyper: dict[str, dict[str, Any]] = field(default_factory=dict)
    hyper_message: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "lake": self.lake,
            "load_id": self.load_id,
            "partitions": [p.to_dict() for p in self.partitions],
            "publish": self.publish.to_dict() if self.publish else None,
            "dashboard": self.dashboard,
            "hyper": self.hyper,
            "hyper_message": self.hyper_message,
            "timings": self.timings,
        }

    def count(self, status: PartitionStatus) -> int:
        """Partitions with a status."""
        return sum(p.status == status for p in self.partitions)

    def by_dataset(self) -> list[DatasetTally]:
        """Per dataset: partitions loaded/skipped/failed, rows written, quarantined, dropped."""
        return by_dataset(self.partitions)

    def check_rows(self) -> list[CheckRow]:
        """The quality (ingestion) and consistency (gold) checks as one table."""
        rows = []
        for d in self.by_dataset():
            rows.append(CheckRow(
                check="quarantine", scope=d.dataset,
                status=CheckStatus.OK if d.rows_quarantined == 0 else CheckStatus.WARNING,
                findings=d.rows_quarantined,
                detail=f"{d.rows_quarantined} row(s) failed validation"
                if d.rows_quarantined else "every row passed validation",
            ))  # fmt: skip
            rows.append(CheckRow(
                check="partitions", scope=d.dataset,
                status=CheckStatus.FAILED if d.failed else CheckStatus.OK,
                findings=d.failed,
                detail=f"{d.loaded} loaded, {d.skipped} unchanged, {d.failed} failed",
            ))  # fmt: skip
        for check in self.publish.checks if self.publish else []:
            rows.append(CheckRow(
                check=check.name, scope="gold", status=check.status,
                findings=check.problems or 0, detail=check.summary,
            ))  # fmt: skip
        return rows

    def markdown(self) -> str:
        """The run summary shown in the Prefect UI; every text interpolated is escaped
        (`md_text`, `md_code`), so none can break a table or add markup."""
        lines = [
            "# energy-pipeline run",
            "",
            f"- **Lake**: {md_code(self.lake)}",
            f"- **Load**: {md_code(self.load_id)}: {self.count(PartitionStatus.LOADED)} "
            f"partition(s) loaded, {self.count(PartitionStatus.SKIPPED)} skipped as unchanged, "
            f"{self.count(PartitionStatus.FAILED)} failed",
        ]
        if self.publish:
            gold = md_code(f"{self.lake}/{layout.GOLD}/")
            lines.append(f"- **Gold tables**: {gold} (Parquet by year, and `.csv`)")
        if self.dashboard:
            lines.append(f"- **Dashboard**: {md_code(self.dashboard)}")
        if self.hyper:
            lines.append(
                f"- **Tableau extracts**: {len(self.hyper)} `.hyper` file(s) in `{layout.GOLD}/`"
            )
        elif self.hyper_message:
            lines.append(f"- **Tableau extracts**: {md_text(self.hyper_message)}")
        lines += ["", "## Ingestion", "",
                  "| dataset | years | loaded | unchanged | failed | rows written "
                  "| quarantined | duplicates dropped |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for d in self.by_dataset():
            years = ", ".join(str(y) for y in d.years)
            lines.append(
                f"| {md_text(d.dataset)} | {md_text(years)} | {d.loaded} | {d.skipped} "
                f"| {d.failed} | {d.rows_written:,} | {d.rows_quarantined:,} "
                f"| {d.duplicates_dropped:,} |"
            )
        if self.publish:
            lines += ["", "## Gold tables", "", "| table | rows |", "|---|---:|"]
            for table, figures in self.publish.tables.items():
                lines.append(f"| {md_text(table)} | {figures.rows:,} |")
            checks = self.publish.checks
            warnings = [c for c in checks if c.status != CheckStatus.OK]
            lines += ["", f"Consistency checks: {len(checks)} run, "
                      f"{len(warnings)} with findings (see the `{CHECKS_KEY}` table)."]  # fmt: skip
        if self.timings:
            lines += ["", "## Timings", "", "| step | seconds |", "|---|---:|"]
            lines += [
                f"| {md_text(step)} | {seconds:.1f} |" for step, seconds in self.timings.items()
            ]
        return "\n".join(lines) + "\n"


def _link(uri: str) -> str:
    return uri if "://" in uri else f"file://{uri}"


def create_run_artifacts(summary: RunSummary) -> None:
    """The markdown summary, the checks table and the links, on the current flow run."""
    from prefect.artifacts import (
        create_link_artifact,
        create_markdown_artifact,
        create_table_artifact,
    )

    create_markdown_artifact(
        key=SUMMARY_KEY, markdown=summary.markdown(), description="What this run did"
    )
    create_table_artifact(
        key=CHECKS_KEY,
        table=[row.to_dict() for row in summary.check_rows()],
        description="Quality (ingestion) and consistency (gold) checks",
    )
    if summary.dashboard:
        create_link_artifact(
            key=DASHBOARD_KEY,
            link=_link(summary.dashboard),
            link_text="Tableau de bord (dashboard)",
            description="The offline dashboard published with this run",
        )
    if summary.publish:
        create_link_artifact(
            key=GOLD_KEY,
            link=_link(f"{summary.lake.rstrip('/')}/{layout.GOLD}/"),
            link_text="Gold tables (Parquet, CSV, Hyper)",
            description="The published gold tables",
        )
