"""Publishing gold tables: one publish, one commit.

The Spark job writes every table of a run into its own version folder,
`gold/_versions/<run_id>/<table>/` (with `<table>.csv.d/` beside it). Publishing writes one
document, `gold/_publish.json`, naming the version of every table (this run's, and the
previous publish's for tables this run did not rebuild) and the run's checks: writing it is
the commit (a rename locally, a single PUT on S3). A reader that follows it sees the tables of
exactly one publish, never a mix.

For plain readers (DuckDB, pandas, Spark, Tableau pointed at `gold/<table>/`), the committed
versions are then materialised at `gold/<table>/` and `gold/<table>.csv`, each swapped whole
(hard links locally, no byte copied; copies on S3), with a per-table `_current.json` written
from the publish pointer. A run killed between the commit and that step leaves plain views one
publish behind; the next run brings them up to date before doing anything else (`recover`).

Superseded versions are deleted once no reader can still be reading them (RETIRED_GRACE_S);
versions no pointer ever named (a killed run's) are deleted at the next run's start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from flows.crashpoints import crashpoint
from flows.errors import PipelineError
from flows.lake import layout
from flows.lake.fs import RETIRED_GRACE_S, Copied, Lake
from flows.lake.layout import PUBLISH_POINTER, VERSIONS, version_folder

log = logging.getLogger(__name__)


class PublishError(PipelineError):
    """A staged table could not be published."""


class CheckStatus(StrEnum):
    """What a check found: a consistency check of the gold tables (the Spark job's `status`:
    ok, warning or skipped), or a quality check of the run's ingestion (ok, warning or
    failed; flows.outputs.report)."""

    OK = "ok"
    WARNING = "warning"  # findings: they warn, never fail the run
    SKIPPED = "skipped"  # a table it compares was not built
    FAILED = "failed"  # ingestion only: partitions that could not be loaded


@dataclass(frozen=True)
class ConsistencyCheck:
    """One cross-table check of a publish, as the Spark job reported it."""

    name: str
    status: CheckStatus
    summary: str = ""
    problems: int | None = None  # rows found; absent from a skipped check
    examples: list[dict[str, Any]] | None = None  # a few of those rows
    figures: dict[str, Any] = field(default_factory=dict)  # any other figure it reported

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> ConsistencyCheck:
        """A check from its JSON form."""
        known = {"name", "status", "summary", "problems", "examples"}
        return cls(
            name=document["name"],
            status=CheckStatus(document["status"]),
            summary=document.get("summary", ""),
            problems=document.get("problems"),
            examples=document.get("examples"),
            figures={k: v for k, v in document.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, keys in the Spark job's order."""
        document: dict[str, Any] = {
            "name": self.name,
            "status": self.status.value,
            "summary": self.summary,
        }
        if self.problems is not None:
            document["problems"] = self.problems
        if self.examples is not None:
            document["examples"] = self.examples
        return document | self.figures


@dataclass(frozen=True)
class PublishedTable:
    """A table a publish rebuilt: its rows and Parquet files."""

    rows: int
    files: int


@dataclass(frozen=True)
class PublishManifest:
    """What one publish did; `to_dict` is `_manifests/publish/<run_id>.json`."""

    run_id: str
    lake: str
    published_at: str
    years: list[int] | None
    tables: dict[str, PublishedTable]  # the tables this publish rebuilt
    skipped: list[str] = field(default_factory=list)  # none of their sources is loaded
    checks: list[ConsistencyCheck] = field(default_factory=list)
    copied: Copied = field(default_factory=Copied)  # what the plain views cost (S3 copies)

    @property
    def warnings(self) -> list[ConsistencyCheck]:
        """Consistency checks that found something."""
        return [c for c in self.checks if c.status == CheckStatus.WARNING]

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> PublishManifest:
        """A manifest from its JSON form."""
        return cls(
            run_id=document["run_id"],
            lake=document["lake"],
            published_at=document["published_at"],
            years=document.get("years"),
            tables={
                t: PublishedTable(f["rows"], f["files"]) for t, f in document["tables"].items()
            },
            skipped=list(document.get("skipped", [])),
            checks=[ConsistencyCheck.from_dict(c) for c in document.get("checks", [])],
            copied=Copied(**document.get("copied", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "run_id": self.run_id,
            "lake": self.lake,
            "published_at": self.published_at,
            "years": self.years,
            "tables": {t: {"rows": f.rows, "files": f.files} for t, f in self.tables.items()},
            "skipped": self.skipped,
            "checks": [c.to_dict() for c in self.checks],
            "copied": {"objects": self.copied.objects, "bytes": self.copied.bytes},
        }


def publish_tables(
    lake: Lake, run_id: str, staging: str, result: dict[str, Any], *, views: bool = True
) -> PublishManifest:
    """Commit every table the job staged in one step, then refresh the plain views.

    `result` is the Spark job's `_result.json`: rows per staged table, skipped tables, years
    and consistency checks. Each staged table has its CSV beside its folder (the flow wrote
    it from the job's files). `views=False` publishes by pointer alone: nothing is copied,
    and the plain views are removed rather than left one publish behind.
    """
    now = datetime.now(UTC).isoformat()
    previous = lake.read_json(PUBLISH_POINTER) or {}
    tables: dict[str, Any] = dict(previous.get("tables", {}))
    published: dict[str, PublishedTable] = {}
    for table, rows in result["tables"].items():
        staged = f"{staging}/{table}"
        files = lake.files_below(staged, ".parquet")
        if not files and rows:
            raise PublishError(f"staged table {table} has {rows} rows but no Parquet file",
                               url=lake.path(staged))  # fmt: skip
        csv = layout.staged_csv(staged)
        if not lake.fs.exists(lake.path(csv)):
            raise PublishError(f"staged table {table} has no CSV", url=lake.path(csv))
        tables[table] = {
            "run_id": run_id,
            "rows": rows,
            "folder": staged,
            "files": files,
            "csv": csv,
        }
        published[table] = PublishedTable(rows=rows, files=len(files))
    manifest = PublishManifest(
        run_id=run_id,
        lake=lake.uri,
        published_at=now,
        years=result.get("years"),
        tables=published,
        skipped=result.get("skipped", []),
        checks=[ConsistencyCheck.from_dict(c) for c in result.get("checks", [])],
    )
    referenced = {_version_of(entry) for entry in tables.values()}
    retired = {
        version: stamp
        for version, stamp in previous.get("retired", {}).items()
        if version not in referenced
    }
    for entry in previous.get("tables", {}).values():
        if _version_of(entry) not in referenced:
            retired.setdefault(_version_of(entry), now)
    committed = {k: v for k, v in manifest.to_dict().items() if k != "copied"}
    pointer = {**committed, "tables": tables, "retired": retired, "views": views}
    lake.check_lease()
    lake.write_json(PUBLISH_POINTER, pointer)  # the commit
    crashpoint("publish-committed")
    refreshed = refresh_plain_views(lake, pointer)
    manifest = replace(manifest, copied=refreshed.copied)
    lake.write_json(layout.publish_manifest(run_id), manifest.to_dict())
    collect_versions(lake, pointer, keep=run_id)
    crashpoint("published")
    return manifest


def published(lake: Lake) -> dict[str, Any] | None:
    """The publish pointer: every table's current version, or None before the first publish."""
    return lake.read_json(PUBLISH_POINTER)


def table_files(lake: Lake, table: str) -> tuple[str, list[str]]:
    """A gold table's current version as (lake-relative folder, Parquet files relative to it).

    Follows the publish pointer; a lake published before it existed falls back to the plain
    view (`gold/<table>/` and its `_current.json`).
    """
    pointer = published(lake)
    if pointer is not None and table in pointer.get("tables", {}):
        entry = pointer["tables"][table]
        return entry["folder"], sorted(n for n in entry["files"] if n.endswith(".parquet"))
    folder = layout.gold_table(table)
    return folder, lake.current_files(folder)


@dataclass(frozen=True)
class Refreshed:
    """What bringing the plain views up to date did."""

    tables: list[str] = field(default_factory=list)
    copied: Copied = field(default_factory=Copied)


def refresh_plain_views(lake: Lake, pointer: dict[str, Any]) -> Refreshed:
    """Bring `gold/<table>/` and `gold/<table>.csv` to the versions the pointer names (or
    remove them, for a publish by pointer alone)."""
    refreshed: list[str] = []
    copied = Copied()
    for table, entry in pointer.get("tables", {}).items():
        current = lake.read_json(layout.gold_pointer(table))
        if not pointer.get("views", True):
            if current is not None or lake.fs.exists(lake.path(layout.gold_csv(table))):
                lake.remove(layout.gold_pointer(table))  # first: a reader stops following it
                lake.remove(layout.gold_table(table))
                lake.remove(layout.gold_csv(table))
                refreshed.append(table)
            continue
        current = current or {}
        if current.get("run_id") == entry["run_id"] and current.get("files") == entry["files"]:
            continue
        copied += _materialise(lake, pointer["run_id"], table, entry)
        refreshed.append(table)
        crashpoint("view-refreshed")
    return Refreshed(refreshed, copied)


def _materialise(lake: Lake, publish_id: str, table: str, entry: dict[str, Any]) -> Copied:
    view = {
        "run_id": entry["run_id"],
        "publish": publish_id,
        "table": table,
        "rows": entry["rows"],
        "files": entry["files"],
        "published_at": datetime.now(UTC).isoformat(),
    }
    csv_target = layout.gold_csv(table)
    if lake.is_local:  # hard links: no byte copied
        staged = layout.gold_staging(f"{publish_id}-{table}")
        lake.remove(staged)
        copied = Copied()
        for name in entry["files"]:
            copied += _link(lake.path(f"{entry['folder']}/{name}"), lake.path(f"{staged}/{name}"))
        lake.commit_folder(staged, layout.gold_table(table), view)
        csv_staged = layout.gold_staging(f"{publish_id}-{table}.csv")
        copied += _link(lake.path(entry["csv"]), lake.path(csv_staged))
        lake.replace_file(csv_staged, csv_target)
        return copied
    copied = lake.commit_folder(entry["folder"], layout.gold_table(table), view, keep_staged=True)
    return copied + lake.copy_files([entry["csv"]], [csv_target])


def _link(source: str, target: str) -> Copied:
    """A hard link (no byte copied); a copy where the filesystem has none."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(target)
    try:
        os.link(source, target)
        return Copied()
    except OSError:
        import shutil

        shutil.copyfile(source, target)
        return Copied(1, os.path.getsize(target))


def collect_versions(lake: Lake, pointer: dict[str, Any] | None, keep: str = "") -> list[str]:
    """Delete versions no reader can need: never published (a dead run's), or superseded
    longer than the grace period. Call while holding the lake's lease."""
    referenced = {_version_of(e) for e in (pointer or {}).get("tables", {}).values()}
    retired = (pointer or {}).get("retired", {})
    horizon = time.time() - RETIRED_GRACE_S
    removed = []
    for name in lake.listing(VERSIONS):
        version = version_folder(name)
        if version in referenced or name == keep:
            continue
        stamp = retired.get(version)
        if stamp is not None and datetime.fromisoformat(stamp).timestamp() > horizon:
            continue
        lake.remove(version)
        removed.append(version)
    return removed


def recover(lake: Lake) -> dict[str, Any]:
    """At a run's start, under the lease: finish what a killed publish left undone."""
    pointer = published(lake)
    refreshed: list[str] = []
    if pointer is not None:
        refreshed = refresh_plain_views(lake, pointer).tables
        path = layout.publish_manifest(pointer["run_id"])
        if lake.read_json(path) is None:
            manifest = {k: v for k, v in pointer.items() if k not in ("retired", "views")}
            manifest["tables"] = {t: {"rows": e["rows"], "files": len(e["files"])}
                                  for t, e in pointer["tables"].items()
                                  if e["run_id"] == pointer["run_id"]}  # fmt: skip
            lake.write_json(path, manifest)
    removed = collect_versions(lake, pointer)
    return {"views_refreshed": refreshed, "versions_removed": removed}


def _version_of(entry: dict[str, Any]) -> str:
    return str(entry["folder"]).rsplit("/", 1)[0]
