"""Tableau Hyper extracts: each gold table's current version as `gold/<table>.hyper`.

Each extract holds one table, `"Extract"."<table>"` (schema `Extract`, named after the gold
table), with the Parquet columns followed by the partition column `annee`. Hyper reads the
Parquet files of the published version (`flows.lake.readers.gold_version`) itself
(`external(...)`), from the lake's folder when it is local and from a scratch copy when it is
on S3. The finished file replaces the previous extract in one step.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq

from flows.errors import PipelineError
from flows.lake import layout
from flows.lake.fs import Lake
from flows.lake.readers import gold_version
from flows.runtime import scratch_dir

if TYPE_CHECKING:
    from tableauhyperapi import HyperProcess, SqlType

log = logging.getLogger(__name__)

HYPER_MISSING = (
    "Tableau Hyper extracts skipped: the tableauhyperapi package is not installed "
    "(install the 'tableau' extra: uv sync --extra tableau)"
)
SCHEMA = "Extract"
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
INTEGER = re.compile(r"-?\d{1,18}")
# Wider decimals need 128-bit numerics, which Hyper's default (most compatible) file format lacks.
MAX_NUMERIC_PRECISION = 18


class HyperExtractError(PipelineError):
    """A gold table could not be written as a Tableau Hyper extract."""


def hyper_available() -> bool:
    """Whether the optional tableauhyperapi package can be imported."""
    try:
        import tableauhyperapi  # noqa: F401
    except ImportError:
        return False
    return True


def write_hyper_extracts(lake: Lake, tables: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Write `gold/<table>.hyper` from the current version of each table: rows, path, seconds."""
    if not hyper_available():
        log.warning(HYPER_MISSING)
        return {}
    from tableauhyperapi import HyperException, HyperProcess, Telemetry

    staging = layout.gold_staging(f"hyper-{uuid.uuid4().hex}")
    written = {}
    # Under the run's scratch root: swept by the next run if this process is killed.
    scratch = scratch_dir("hyper-")
    try:
        try:
            hyper = HyperProcess(
                Telemetry.DO_NOT_SEND_USAGE_DATA_TO_TABLEAU, parameters={"log_dir": scratch}
            )
        except HyperException as exc:
            raise HyperExtractError(
                f"the Tableau Hyper process did not start: {exc.main_message}; "
                "reinstall the 'tableau' extra (uv sync --extra tableau)",
                url=f"{lake.uri}/{layout.GOLD}",
            ) from exc
        try:
            with hyper:
                for table in tables:
                    written[table] = _write_extract(lake, hyper, table, Path(scratch), staging)
        finally:
            lake.remove(staging)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return written


def _write_extract(
    lake: Lake, hyper: HyperProcess, table: str, scratch: Path, staging: str
) -> dict[str, Any]:
    """Build one extract in the scratch folder, then swap it into the lake."""
    from tableauhyperapi import HyperException

    started = time.perf_counter()
    target = layout.gold_hyper(table)
    uri = f"{lake.uri}/{target}"
    files = _parquet_files(lake, table, scratch / table)
    database = scratch / f"{table}.hyper"
    try:
        rows = _build(hyper, database, table, files)
    except (HyperException, pa.ArrowException) as exc:
        raise HyperExtractError(
            f"Tableau Hyper could not build the extract of gold table {table}: "
            f"{getattr(exc, 'main_message', exc)}; "
            f"check that {layout.gold_table(table)}/ holds readable Parquet files, "
            "or rebuild it (aggregate)",
            dataset=table,
            url=uri,
        ) from exc
    lake.fs.makedirs(lake.path(staging), exist_ok=True)
    lake.fs.put_file(str(database), lake.path(f"{staging}/{table}.hyper"))
    lake.replace_file(f"{staging}/{table}.hyper", target)
    database.unlink()
    shutil.rmtree(scratch / table, ignore_errors=True)
    seconds = round(time.perf_counter() - started, 2)
    log.info("Tableau extract %s: %d rows in %.1f s", uri, rows, seconds)
    return {"rows": rows, "path": uri, "seconds": seconds}


def _parquet_files(lake: Lake, table: str, scratch: Path) -> dict[str, Path]:
    """Local paths of the table's current files, downloaded to scratch when the lake is S3."""
    folder, names = gold_version(lake, table)  # the published version: one publish, never a mix
    if not names:
        raise HyperExtractError(
            f"gold table {table} has no Parquet file to extract; run the aggregate step first",
            dataset=table,
            url=f"{lake.uri}/{folder}",
        )
    if lake.is_local:
        return {name: Path(lake.path(folder, name)) for name in names}
    local = {name: scratch / name for name in names}
    for path in local.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    lake.fs.get([lake.path(folder, name) for name in names], [str(p) for p in local.values()])
    return local


def _build(hyper: HyperProcess, database: Path, table: str, files: dict[str, Path]) -> int:
    """Create the Hyper file and insert every partition's files; the table's row count."""
    from tableauhyperapi import Connection, CreateMode, TableDefinition, TableName

    fields = pa.unify_schemas([pq.read_schema(path) for path in files.values()])
    partitions = {name: _partition_values(name) for name in files}
    keys = [key for key in next(iter(partitions.values())) if key not in fields.names]
    integer = {key: _all_integers([p.get(key) for p in partitions.values()]) for key in keys}
    columns = [_column(table, field) for field in fields]
    columns += [TableDefinition.Column(key, _partition_type(integer[key])) for key in keys]
    groups: dict[tuple[str, ...], list[Path]] = {}
    for file, values in partitions.items():
        literals = tuple(_literal(values.get(key), integer[key]) for key in keys)
        groups.setdefault(literals, []).append(files[file])
    name = TableName(SCHEMA, table)
    with Connection(hyper.endpoint, str(database), CreateMode.CREATE_AND_REPLACE) as connection:
        connection.catalog.create_schema(SCHEMA)
        connection.catalog.create_table(TableDefinition(name, columns))
        for literals, paths in groups.items():
            connection.execute_command(_insert(name, fields.names, keys, literals, paths))
        return int(connection.execute_scalar_query(f"SELECT COUNT(*) FROM {name}"))


def _insert(
    name: Any, names: list[str], keys: list[str], literals: tuple[str, ...], paths: list[Path]
) -> str:
    """INSERT ... SELECT from Hyper's own Parquet reader, partition values as literals."""
    from tableauhyperapi import escape_name, escape_string_literal

    target = ", ".join(escape_name(n) for n in [*names, *keys])
    selected = ", ".join([escape_name(n) for n in names] + list(literals))
    sources = ", ".join(escape_string_literal(str(p)) for p in paths)
    return (
        f"INSERT INTO {name} ({target}) SELECT {selected} "
        f"FROM external(ARRAY[{sources}], FORMAT => 'parquet')"
    )


def _literal(value: str | None, integer: bool) -> str:
    """A partition value as SQL: NULL, an integer, or a string literal."""
    from tableauhyperapi import escape_string_literal

    if value is None:
        return "NULL"
    return value if integer else escape_string_literal(value)


def _partition_values(name: str) -> dict[str, str | None]:
    """Hive partition values from a file's path (`annee=2023/part-0.parquet` -> annee: 2023)."""
    values: dict[str, str | None] = {}
    for part in name.split("/")[:-1]:
        key, sep, value = part.partition("=")
        if sep:
            values[unquote(key)] = None if value == HIVE_NULL else unquote(value)
    return values


def _all_integers(values: list[str | None]) -> bool:
    """Whether a partition key holds integers only (as Spark reads `annee`)."""
    present = [v for v in values if v is not None]
    return bool(present) and all(INTEGER.fullmatch(v) for v in present)


def _partition_type(integer: bool) -> SqlType:
    """big_int for integer partition keys, text for the others."""
    from tableauhyperapi import SqlType

    return SqlType.big_int() if integer else SqlType.text()


def _column(table: str, field: pa.Field) -> Any:
    """A Hyper column for a Parquet field, or an error naming the table and column."""
    from tableauhyperapi import NOT_NULLABLE, NULLABLE, TableDefinition

    sql_type = hyper_type(field.type)
    if sql_type is None:
        raise HyperExtractError(
            f"gold table {table} column {field.name} has type {field.type}, "
            "which has no Tableau Hyper equivalent here; cast it in the Spark job",
            dataset=table,
        )
    return TableDefinition.Column(
        field.name, sql_type, NULLABLE if field.nullable else NOT_NULLABLE
    )


def hyper_type(arrow: pa.DataType) -> SqlType | None:
    """The Hyper SQL type for an Arrow type, None when there is none."""
    from tableauhyperapi import SqlType

    types = pa.types
    if types.is_dictionary(arrow):
        return hyper_type(arrow.value_type)
    simple = [
        (types.is_string(arrow) or types.is_large_string(arrow), SqlType.text),
        (types.is_boolean(arrow), SqlType.bool),
        (types.is_int8(arrow) or types.is_int16(arrow) or types.is_uint8(arrow), SqlType.small_int),
        (types.is_int32(arrow) or types.is_uint16(arrow), SqlType.int),
        (types.is_int64(arrow) or types.is_uint32(arrow), SqlType.big_int),
        (types.is_floating(arrow), SqlType.double),
        (types.is_date(arrow), SqlType.date),
    ]
    for matches, make in simple:
        if matches:
            return make()
    if types.is_timestamp(arrow):
        return SqlType.timestamp_tz() if arrow.tz else SqlType.timestamp()
    if types.is_decimal(arrow):
        if arrow.precision <= MAX_NUMERIC_PRECISION:
            return SqlType.numeric(arrow.precision, arrow.scale)
        return SqlType.double()
    return None
