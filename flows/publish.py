"""Publishing staged gold tables: each table swapped in whole, its CSV replaced as one file."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flows.errors import PipelineError
from flows.lake import Lake


class PublishError(PipelineError):
    """A staged table could not be published."""


def publish_tables(lake: Lake, run_id: str, staging: str, result: dict[str, Any]) -> dict[str, Any]:
    """Swap every staged table into gold/ and write the publish manifest."""
    published = {}
    for table, rows in result["tables"].items():
        staged = f"{staging}/{table}"
        files = lake.files_below(staged, ".parquet")
        if not files and rows:
            raise PublishError(f"staged table {table} has {rows} rows but no Parquet file",
                               url=lake.path(staged))  # fmt: skip
        csv = lake.files_below(f"{staged}.csv.d", ".csv")
        if len(csv) != 1:
            raise PublishError(f"staged table {table} has {len(csv)} CSV parts, expected one",
                               url=lake.path(f"{staged}.csv.d"))  # fmt: skip
        pointer = {
            "run_id": run_id,
            "table": table,
            "rows": rows,
            "files": files,
            "published_at": datetime.now(UTC).isoformat(),
        }
        lake.commit_folder(staged, f"gold/{table}", pointer)
        lake.replace_file(f"{staged}.csv.d/{csv[0]}", f"gold/{table}.csv")
        published[table] = {"rows": rows, "files": len(files)}
    manifest = {
        "run_id": run_id,
        "lake": lake.uri,
        "published_at": datetime.now(UTC).isoformat(),
        "years": result.get("years"),
        "tables": published,
        "skipped": result.get("skipped", []),
        "checks": result.get("checks", []),
    }
    lake.write_json(f"_manifests/publish/{run_id}.json", manifest)
    lake.remove(staging)
    return manifest
