"""The aggregation step: spark-submit the gold-table job, then publish what it staged."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.crashpoints import crashpoint
from flows.gold.csv_export import CsvReport, write_csv
from flows.gold.spark_submit import class_archive_dir, run_spark_submit, spark_conf
from flows.gold.tables import GOLD_TABLES, TABLES
from flows.lake import layout, storage
from flows.lake.fs import Lake, lake_error
from flows.lake.layout import PUBLISH_POINTER, new_load_id, version_folder
from flows.lake.publish import ConsistencyCheck, PublishError, PublishManifest, publish_tables
from flows.settings import Settings

log = logging.getLogger(__name__)

APP = Path(__file__).resolve().parents[2] / "spark" / "aggregate.py"
# The project modules the job imports (pure Python): shipped to it with --py-files.
JOB_MODULES = ("flows.gold.tables", "flows.lake.layout")


@dataclass
class AggregateReport:
    """What a publish did: tables and rows, skipped tables, consistency checks."""

    run_id: str
    manifest: PublishManifest
    csv: dict[str, CsvReport] = field(default_factory=dict)

    @property
    def warnings(self) -> list[ConsistencyCheck]:
        """Consistency checks that found something."""
        return self.manifest.warnings

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "run_id": self.run_id,
            "manifest": self.manifest.to_dict(),
            "csv": {t: {"rows": r.rows, "bytes": r.bytes, "seconds": r.seconds}
                    for t, r in self.csv.items()},
        }  # fmt: skip


def run_aggregate(
    settings: Settings,
    years: Sequence[int] | None = None,
    tables: Sequence[str] | None = None,
    on_line: Callable[[str], None] = log.info,
) -> AggregateReport:
    """Build every gold table with Spark and publish them; gold is untouched on failure."""
    lake = Lake.from_settings(settings)
    run_id = new_load_id()
    staging = version_folder(run_id)  # the job writes where the tables will stay
    committed = False
    arguments = ["--lake", storage.to_spark_uri(settings.lake), "--staging", staging,
                 "--tables", ",".join(tables or GOLD_TABLES)]  # fmt: skip
    if years:
        arguments += ["--years", ",".join(str(y) for y in years)]
    try:
        run_spark_submit(
            APP,
            arguments,
            master=settings.spark_master,
            conf=spark_conf(
                settings.lake,
                settings.s3_endpoint,
                settings.spark_master,
                region=settings.s3_region,
                driver_memory=settings.spark_driver_memory,
            ),
            jars=storage.jars(settings.lake, settings.jars_dir),
            env={},
            timeout_s=settings.spark_timeout_s,
            on_line=on_line,
            py_modules=JOB_MODULES,
            class_archive=class_archive_dir(settings.spark_class_archive_dir),
        )
        result = lake.read_json(layout.job_result(staging))
        if result is None:
            raise PublishError("the Spark job left no result", url=lake.path(staging))
        csv = write_csvs(lake, staging, result, on_line)
        crashpoint("gold-staged")
        manifest = publish_tables(lake, run_id, staging, result, views=settings.plain_views)
        committed = True
    except OSError as exc:
        raise lake_error(exc, dataset="gold", partition=f"publish {run_id}") from exc
    finally:
        if not committed:  # unless it failed after its commit: the version is then published
            committed = (lake.read_json(PUBLISH_POINTER) or {}).get("run_id") == run_id
        if not committed:
            lake.remove(staging)
    return AggregateReport(run_id=run_id, manifest=manifest, csv=csv)


def write_csvs(lake: Lake, staging: str, result: dict[str, Any],
               on_line: Callable[[str], None]) -> dict[str, CsvReport]:  # fmt: skip
    """Each staged table's CSV beside its folder, streamed from the job's sorted files."""
    reports = {}
    for table, rows in result["tables"].items():
        folder = f"{staging}/{table}"
        reports[table] = write_csv(lake, folder, TABLES[table], layout.staged_csv(folder), rows)
        on_line(f"energy-pipeline: wrote {table}.csv: {rows} rows, "
                f"{reports[table].bytes} bytes in {reports[table].seconds} s")  # fmt: skip
    return reports
