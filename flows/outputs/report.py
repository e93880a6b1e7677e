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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flows.sources.http import one_line

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
    artifact_id: Any = None
    rows: int = 0

    def __post_init__(self) -> None:
        emit("ingest_started", total=self.total, skipped=self.skipped)
        if _in_run():
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = create_progress_artifact(
                progress=100.0 if self.total == 0 else 0.0,
                description=f"Ingestion: {self.total} partition(s) to load, "
                f"{self.skipped} unchanged since the last load",
            )

    def advance(self, result: Any) -> None:
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
class RunSummary:
    """Everything the artifacts and the command line report at the end of a run."""

    lake: str
    load_id: str
    partitions: list[dict[str, Any]]
    publish: dict[str, Any] | None = None
    dashboard: str | None = None
    hyper: dict[str, Any] = field(default_factory=dict)
    hyper_message: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def count(self, status: str) -> int:
        """Partitions with a status."""
        return sum(p["status"] == status for p in self.partitions)

    def by_dataset(self) -> list[dict[str, Any]]:
        """Per dataset: partitions loaded/skipped/failed, rows written, quarantined, dropped."""
        rows: dict[str, dict[str, Any]] = {}
        for p in self.partitions:
            row = rows.setdefault(p["dataset"], {
                "dataset": p["dataset"], "loaded": 0, "skipped": 0, "failed": 0,
                "rows_written": 0, "rows_quarantined": 0, "duplicates_dropped": 0,
                "years": set(),
            })  # fmt: skip
            row[p["status"]] += 1
            row["rows_written"] += p.get("rows_written", 0)
            row["rows_quarantined"] += p.get("rows_quarantined", 0)
            row["duplicates_dropped"] += p.get("exact_duplicates_dropped", 0)
            if p.get("year"):
                row["years"].add(p["year"])
        for row in rows.values():
            row["years"] = sorted(row["years"])
        return list(rows.values())

    def check_rows(self) -> list[dict[str, Any]]:
        """The quality (ingestion) and consistency (gold) checks as one table."""
        rows = []
        for d in self.by_dataset():
            rows.append({
                "check": "quarantine", "scope": d["dataset"],
                "status": "ok" if d["rows_quarantined"] == 0 else "warning",
                "findings": d["rows_quarantined"],
                "detail": f"{d['rows_quarantined']} row(s) failed validation"
                if d["rows_quarantined"] else "every row passed validation",
            })  # fmt: skip
            rows.append({
                "check": "partitions", "scope": d["dataset"],
                "status": "failed" if d["failed"] else "ok",
                "findings": d["failed"],
                "detail": f"{d['loaded']} loaded, {d['skipped']} unchanged, {d['failed']} failed",
            })  # fmt: skip
        for check in (self.publish or {}).get("checks", []):
            rows.append({
                "check": check["name"], "scope": "gold", "status": check["status"],
                "findings": check.get("problems", 0), "detail": check.get("summary", ""),
            })  # fmt: skip
        return rows

    def markdown(self) -> str:
        """The run summary shown in the Prefect UI; every text interpolated is escaped
        (`md_text`, `md_code`), so none can break a table or add markup."""
        lines = [
            "# energy-pipeline run",
            "",
            f"- **Lake**: {md_code(self.lake)}",
            f"- **Load**: {md_code(self.load_id)}: {self.count('loaded')} partition(s) loaded, "
            f"{self.count('skipped')} skipped as unchanged, {self.count('failed')} failed",
        ]
        if self.publish:
            lines.append(f"- **Gold tables**: {md_code(self.lake + '/gold/')} (Parquet by year, "
                         "and `.csv`)")  # fmt: skip
        if self.dashboard:
            lines.append(f"- **Dashboard**: {md_code(self.dashboard)}")
        if self.hyper:
            lines.append(f"- **Tableau extracts**: {len(self.hyper)} `.hyper` file(s) in `gold/`")
        elif self.hyper_message:
            lines.append(f"- **Tableau extracts**: {md_text(self.hyper_message)}")
        lines += ["", "## Ingestion", "",
                  "| dataset | years | loaded | unchanged | failed | rows written "
                  "| quarantined | duplicates dropped |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for d in self.by_dataset():
            years = ", ".join(str(y) for y in d["years"])
            lines.append(
                f"| {md_text(d['dataset'])} | {md_text(years)} | {d['loaded']} | {d['skipped']} "
                f"| {d['failed']} | {d['rows_written']:,} | {d['rows_quarantined']:,} "
                f"| {d['duplicates_dropped']:,} |"
            )
        if self.publish:
            lines += ["", "## Gold tables", "", "| table | rows |", "|---|---:|"]
            for table, figures in self.publish["tables"].items():
                lines.append(f"| {md_text(table)} | {figures['rows']:,} |")
            warnings = [c for c in self.publish.get("checks", []) if c["status"] != "ok"]
            lines += ["", f"Consistency checks: {len(self.publish.get('checks', []))} run, "
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
        table=summary.check_rows(),
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
            link=_link(f"{summary.lake.rstrip('/')}/gold/"),
            link_text="Gold tables (Parquet, CSV, Hyper)",
            description="The published gold tables",
        )
