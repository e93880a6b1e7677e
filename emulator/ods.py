"""Opendatasoft Explore API v2.1: catalog metadata, records (with aggregates) and exports."""

from __future__ import annotations

import hashlib
import io
import math
import time
import zoneinfo
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from functools import partial
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .conformance import GEO_FIELD, GEO_KEY
from .odsql import (
    BoolOp,
    Item,
    Not,
    OdsqlError,
    Ref,
    Resolver,
    evaluate,
    parse_items,
    parse_where,
    refine_mask,
    year_values,
)
from .protocol import ApiError, Catalog, Request, Response, Route, iso_seconds
from .render import csv_bytes, json_objects, json_rows_buffer, json_rows_bytes
from .sources import ARROW_TYPES
from .specs import ODS_TYPES, Field
from .store import DatasetState, Partition, Selection, select_rows

PREFIX = "api/explore/v2.1/"
MAX_LIMIT = 100
MAX_WINDOW = 10_000
EXPORT_FORMATS = ("csv", "json", "jsonl", "parquet")
BOM = b"\xef\xbb\xbf"
STREAM_MESSAGE = "Streaming interrupted: an internal error occurred while exporting the data."


def error(status: int, message: str, code: str = "InvalidRESTParameterError") -> Response:
    """An Opendatasoft JSON error response."""
    payload = {"error_code": code, "message": message}
    return Response(status, body=orjson.dumps(payload))


def quota_error(retry_after: float) -> Response:
    """429 with the quota headers and JSON body of a domain's API call limit."""
    reset = math.ceil(time.time() + retry_after)
    payload = {
        "error_code": "TooManyRequests",
        "message": "Too many requests on the domain. Please contact the domain administrator.",
        "call_limit": 5000,
        "limit_time_unit": "day",
        "reset_time": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(reset)),
    }
    headers = [
        ("Retry-After", str(math.ceil(retry_after))),
        ("X-RateLimit-Limit", "5000"),
        ("X-RateLimit-Remaining", "0"),
        ("X-RateLimit-Reset", str(reset)),
    ]
    return Response(429, body=orjson.dumps(payload), headers=headers)


def route(cat: Catalog, portal: str, rest: str, native: bool = True) -> Route | None:
    """Map a path below `{portal}/` to an ODS handler (native=False: Data Fair compat layer)."""
    if not rest.startswith(PREFIX):
        return None
    parts = [p for p in rest[len(PREFIX) :].split("/") if p]
    if parts[:2] != ["catalog", "datasets"]:
        return None
    if len(parts) == 2:
        return Route("metadata", None, lambda req: _catalog(cat, portal) if native else _gone())
    state = cat.find(portal, parts[2])
    short = state.spec.short if state else None
    if state is None:
        kind = {3: "metadata", 4: "records"}.get(len(parts), "export")
        return Route(kind, None, lambda req: error(404, f"Unknown dataset: {parts[2]}", "NotFound"))
    if len(parts) == 3:
        handler = (lambda req: _metadata_response(state)) if native else (lambda req: _gone())
        return Route("metadata", short, handler)
    if len(parts) == 4 and parts[3] == "records":
        return Route("records", short, lambda req: records(cat, state, req))
    if len(parts) == 5 and parts[3] == "exports":
        fmt = parts[4]
        return Route("export", short, lambda req: export(cat, state, req, fmt))
    if not native:
        return Route("metadata", short, lambda req: _gone())
    return None


def _gone() -> Response:
    text = "Cette API de compatibilité Opendatasoft n'est pas disponible pour cette ressource."
    return Response(410, "text/plain; charset=utf-8", text.encode())


def declared_type(state: DatasetState, f: Field) -> str:
    """The ODS type declared for a field (conformance mode may declare `annee` int or text)."""
    conf = state.conformance
    if conf is not None and conf.annee_type and f.name == "annee" and f.kind == "year":
        return str(conf.annee_type)
    return ODS_TYPES[f.kind]


def _render_kind(state: DatasetState, f: Field) -> str:
    """The kind used to print a field's values (a year declared `int` prints as a number)."""
    if f.kind == "year" and declared_type(state, f) == "int":
        return "int"
    return f.kind


def _check_year(state: DatasetState, refs: Sequence[Ref], where: str) -> None:
    """year(field) needs a field declared date or datetime: 400 otherwise."""
    fields = {f.name: f for f in state.fields()}
    for ref in refs:
        if ref.func != "year":
            continue
        base = state.base_name(ref.name)
        if base is None or base not in fields:
            continue
        typ = declared_type(state, fields[base])
        if typ not in ("date", "datetime"):
            raise ApiError(
                400,
                f"ODSQL query is malformed: function year() expects a date or datetime "
                f"argument but field {ref.name!r} is of type {typ} ({where}).",
                "ODSQLError",
            )


def _where_refs(node: object) -> list[Ref]:
    if isinstance(node, BoolOp):
        return [r for item in node.items for r in _where_refs(item)]
    if isinstance(node, Not):
        return _where_refs(node.item)
    ref = getattr(node, "ref", None)
    return [ref] if isinstance(ref, Ref) else []


def _patch_geo(state: DatasetState, table: pa.Table) -> pa.Table:
    """Conformance mode: multi-MB geo_shape_region texts, chosen by region code."""
    conf = state.conformance
    if conf is None or not conf.geo or GEO_FIELD not in table.column_names:
        return table
    if GEO_KEY not in table.column_names:
        return table
    codes = table[GEO_KEY].to_pylist()
    values = pa.array([conf.geo.get(str(c)) if c is not None else None for c in codes])
    idx = table.column_names.index(GEO_FIELD)
    return table.set_column(idx, GEO_FIELD, values)


def field_meta(state: DatasetState, f: Field) -> dict:
    """One entry of the `fields` list."""
    annotations: dict = {}
    declared = declared_type(state, f)
    if f.kind in ("text", "year", "date", "datetime"):
        annotations["facet"] = True
    if f.kind == "year" and declared == "date":
        annotations["timeserie_precision"] = "year"
    if f.kind == "datetime":
        annotations["timeserie_precision"] = "minute"
    return {
        "name": state.out_name(f.name),
        "label": f.title,
        "type": declared,
        "annotations": annotations,
        "description": None,
    }


def metadata(state: DatasetState) -> dict:
    """The dataset's catalog entry (fields and metas.default)."""
    spec = state.spec
    return {
        "dataset_id": spec.dataset_id,
        "dataset_uid": "da_" + hashlib.sha1(spec.dataset_id.encode()).hexdigest()[:6],
        "has_records": state.count > 0,
        "data_visible": True,
        "features": ["timeserie", "analyze"],
        "fields": [field_meta(state, f) for f in state.fields()],
        "metas": {
            "default": {
                "title": spec.title,
                "records_count": state.count,
                "modified": iso_seconds(state.modified),
                "data_processed": iso_seconds(state.data_processed),
                "metadata_processed": iso_seconds(state.modified),
                "publisher": "RTE, NaTran, Teréga",
                "license": "Licence Ouverte v2.0 (Etalab)",
                "language": "fr",
                "timezone": "Europe/Paris",
            }
        },
        "visibility": "domain",
    }


def _metadata_response(state: DatasetState) -> Response:
    return Response(200, body=orjson.dumps(metadata(state)))


def _catalog(cat: Catalog, portal: str) -> Response:
    results = [metadata(s) for s in cat.states(portal)]
    return Response(200, body=orjson.dumps({"total_count": len(results), "results": results}))


def timezone(req: Request) -> str:
    """The request's `timezone` (default UTC), validated."""
    tz = req.get("timezone") or "UTC"
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ApiError(400, f"Unknown timezone: {tz}") from exc
    return tz


def _resolver(state: DatasetState, part: Partition) -> Resolver:
    kinds = {f.name: f.kind for f in state.fields()}
    have = set(part.column_names())

    def resolve(name: str) -> tuple[pa.Array, str]:
        base = state.base_name(name)
        if base is None:
            raise OdsqlError(f"Unknown field: {name}")
        kind = kinds[base]
        if base not in have:
            return pa.nulls(part.num_rows, ARROW_TYPES[kind]), kind
        return part.column(base), kind

    return resolve


def selection(
    cat: Catalog, state: DatasetState, req: Request, tz: str, sort: Sequence[tuple[str, bool]] = ()
) -> Selection:
    """Rows matching `where` and `refine`, ordered by `sort` (cached per query)."""
    where = req.get("where") or ""
    refines = [(r.split(":", 1), False) for r in req.getall("refine") if r]
    refines += [(r.split(":", 1), True) for r in req.getall("exclude") if r]
    if any(len(r) != 2 for r, _ in refines):
        raise ApiError(400, "Invalid refine/exclude parameter: expected field:value")
    key = ("ods", state.spec.short, id(state), state.version, where, str(refines), tz, tuple(sort))
    cached = cat.cache.get(key)
    if cached is not None:
        return cached
    try:
        node = parse_where(where) if where.strip() else None
        if node is not None:
            _check_year(state, _where_refs(node), f"where={where}")
        for (name, _), _ in refines:
            if state.base_name(name) is None:
                raise OdsqlError(f"Unknown field in refine: {name}")
    except OdsqlError as exc:
        raise ApiError(400, str(exc), "ODSQLError") from exc

    def mask(part: Partition) -> np.ndarray | None:
        if node is None and not refines:
            return None
        resolve = _resolver(state, part)
        out = np.ones(part.num_rows, dtype=bool)
        if node is not None:
            out &= evaluate(node, resolve, tz)
        for (name, value), negate in refines:
            values, kind = resolve(name)
            hit = refine_mask(values, kind, value, tz)
            out &= ~hit if negate else hit
        return out

    try:
        sel = select_rows(state, mask, sort)
    except OdsqlError as exc:
        raise ApiError(400, str(exc), "ODSQLError") from exc
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise ApiError(400, f"Invalid query: {exc}", "ODSQLError") from exc
    cat.cache.put(key, sel)
    return sel


def _items(req: Request, name: str, order: bool = False) -> list[Item]:
    text = req.get(name)
    if not text or not text.strip():
        return []
    try:
        return parse_items(text, order=order)
    except OdsqlError as exc:
        raise ApiError(400, f"Invalid {name}: {exc}", "ODSQLError") from exc


def _projection(state: DatasetState, sel: Selection, items: list[Item]) -> list[tuple[Item, Field]]:
    """Plain select items (fields, `*`, year(f)) resolved to base fields."""
    fields = {f.name: f for f in sel.fields}
    if not items:
        items = [Item(Ref("*"), "*")]
    out: list[tuple[Item, Field]] = []
    for item in items:
        if item.ref.name == "*" and item.ref.func is None:
            out.extend((Item(Ref(f.name), state.out_name(f.name)), f) for f in sel.fields)
            continue
        base = state.base_name(item.ref.name)
        if base is None:
            raise ApiError(400, f"Unknown field: {item.ref.name}", "ODSQLError")
        if item.ref.is_agg:
            raise ApiError(400, "Aggregations need the records endpoint", "ODSQLError")
        field = fields.get(base) or Field(base, "text")
        out.append((Item(Ref(base, item.ref.func), item.alias), field))
    return out


def _sort_keys(state: DatasetState, items: list[Item]) -> list[tuple[str, bool]]:
    keys = []
    for item in items:
        base = state.base_name(item.ref.name)
        if base is None or item.ref.func:
            raise ApiError(400, f"Cannot order by {item.ref.text}", "ODSQLError")
        keys.append((base, item.descending))
    return keys


def _project_table(
    table: pa.Table, proj: list[tuple[Item, Field]], tz: str, state: DatasetState | None = None
) -> tuple[pa.Table, list[tuple[str, str]]]:
    arrays, columns = [], []
    for item, field in proj:
        values = table[field.name].combine_chunks()
        kind = field.kind if state is None else _render_kind(state, field)
        if item.ref.func == "year":
            values, kind = year_values(values, tz), "int"
        arrays.append(values)
        columns.append((item.alias, kind))
    return pa.table(arrays, names=[f"c{i}" for i in range(len(arrays))]), columns


def records(cat: Catalog, state: DatasetState, req: Request) -> Response:
    """GET .../records: a page of rows, or aggregates with select/group_by."""
    tz = timezone(req)
    limit = req.int_param("limit", 10)
    offset = req.int_param("offset", 0)
    select = _items(req, "select")
    group = _items(req, "group_by")
    order = _items(req, "order_by", order=True)
    _check_year(state, [i.ref for i in (*select, *group, *order)], "select/group_by/order_by")
    aggregated = bool(group) or any(i.ref.is_agg for i in select)
    if limit > MAX_LIMIT or limit < -1 or (limit == -1 and not group):
        raise ApiError(
            400,
            f"Invalid value for limit API parameter: {limit} was found but "
            f"-1 <= limit <= {MAX_LIMIT} is expected.",
        )
    if offset < 0:
        raise ApiError(400, f"Invalid value for offset API parameter: {offset}")
    if limit >= 0 and offset + limit > MAX_WINDOW:
        raise ApiError(
            400,
            f"Invalid value for offset/limit API parameters: offset + limit must be lower than "
            f"or equal to {MAX_WINDOW} (found offset={offset}, limit={limit}). "
            "Use the exports endpoint to download the whole dataset.",
        )
    if aggregated:
        sel = selection(cat, state, req, tz)
        rows = aggregate(state, sel, select, group, order, tz)
        stop = len(rows) if limit == -1 else offset + limit
        payload = {"total_count": len(rows), "results": rows[offset:stop]}
        return Response(200, body=orjson.dumps(payload))
    sel = selection(cat, state, req, tz, _sort_keys(state, order))
    proj = _projection(state, sel, select)
    names = list(dict.fromkeys(f.name for _, f in proj))
    table, _ = sel.slice(offset, offset + limit, _with_geo_key(state, names))
    table, columns = _project_table(_patch_geo(state, table), proj, tz, state)
    objects = json_objects(table, columns, tz=tz)
    rendered = json_rows_buffer(objects)
    body = b"".join((b'{"total_count":%d,"results":[' % len(sel), rendered, b"]}"))
    return Response(200, body=body)


def _py(value: object, kind: str) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer() and kind in ("int", "year", "count"):
        value = int(value)
    if kind == "year" and isinstance(value, int):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def aggregate(
    state: DatasetState,
    sel: Selection,
    select: list[Item],
    group: list[Item],
    order: list[Item],
    tz: str,
) -> list[dict]:
    """Evaluate select aggregates, grouped by `group` expressions."""
    kinds = {f.name: f.kind for f in sel.fields}

    def base(ref: Ref) -> str:
        name = state.base_name(ref.name)
        if name is None:
            raise ApiError(400, f"Unknown field: {ref.name}", "ODSQLError")
        return name

    data: dict[str, object] = {}
    groups: list[tuple[str, Ref, str, str]] = []  # (column, ref, kind, default alias)
    for i, item in enumerate(group):
        if item.ref.is_agg or item.ref.name == "*":
            raise ApiError(400, f"Cannot group by {item.ref.text}", "ODSQLError")
        name = base(item.ref)
        values = sel.column(name)
        kind = kinds.get(name, "text")
        if kind == "year" and state.spec.field(name) is not None:
            kind = _render_kind(state, Field(name, kind))
        if item.ref.func == "year":
            values, kind = year_values(values, tz), "int"
        data[f"g{i}"] = values.to_pandas()
        groups.append((f"g{i}", Ref(name, item.ref.func), kind, item.alias))
    outputs: list[tuple[str, str, str | None]] = []  # (alias, group column or agg func, field)
    used: set[str] = set()
    for item in select:
        ref = item.ref
        if ref.is_agg:
            column = None if ref.name == "*" else base(ref)
            if column is not None and f"m_{column}" not in data:
                data[f"m_{column}"] = pd.to_numeric(sel.column(column).to_pandas(), errors="coerce")
            outputs.append((item.alias, ref.func or "count", column))
            continue
        target = Ref(base(ref), ref.func)
        match = next((g for g in groups if g[1] == target), None)
        if match is None:
            raise ApiError(400, f"{ref.text} must be in group_by", "ODSQLError")
        used.add(match[0])
        outputs.append((item.alias, match[0], None))
    outputs += [(alias, col, None) for col, _, _, alias in groups if col not in used]
    frame = pd.DataFrame(data, index=range(len(sel)))
    group_kinds = {col: kind for col, _, kind, _ in groups}
    rows = []
    if groups:
        iterator = frame.groupby([g[0] for g in groups], dropna=False, sort=True)
    else:
        iterator = [((), frame)]
    for key, sub in iterator:
        values = dict(
            zip([g[0] for g in groups], key if isinstance(key, tuple) else (key,), strict=True)
        )
        row = {}
        for alias, what, column in outputs:
            if what in values:
                row[alias] = _py(values[what], group_kinds[what])
            else:
                row[alias] = _py(_agg_value(sub, what, column), "count")
        rows.append(row)
    return _order_rows(rows, order)


def _agg_value(frame: pd.DataFrame, func: str, column: str | None) -> object:
    if column is None:
        return len(frame)
    series = frame[f"m_{column}"]
    if func == "count":
        return int(series.notna().sum())
    if series.notna().sum() == 0:
        return None
    return getattr(series, {"avg": "mean"}.get(func, func))()


def _order_rows(rows: list[dict], order: list[Item]) -> list[dict]:
    if not rows:
        return rows
    for item in reversed(order):
        names = (item.alias, item.ref.text, item.ref.name)
        name = next((n for n in names if n in rows[0]), None)
        if name is None:
            raise ApiError(400, f"Cannot order by {item.ref.text}", "ODSQLError")
        rows.sort(key=partial(_sort_key, name), reverse=item.descending)
    return rows


def _sort_key(name: str, row: dict) -> tuple[bool, Any]:
    value = row.get(name)
    return (value is None, value if value is not None else 0)


def export(cat: Catalog, state: DatasetState, req: Request, fmt: str) -> Response:
    """GET .../exports/{format}: the whole selection, streamed."""
    if fmt not in EXPORT_FORMATS:
        raise ApiError(400, f"Unknown export format: {fmt}")
    if req.has("offset"):
        raise ApiError(400, "The offset parameter is not supported by the exports endpoint.")
    tz = timezone(req)
    select = _items(req, "select")
    if any(i.ref.is_agg for i in select) or req.get("group_by"):
        raise ApiError(400, "Aggregations are not supported by this emulator's exports.")
    order = _items(req, "order_by", order=True)
    _check_year(state, [i.ref for i in select], "select")
    sel = selection(cat, state, req, tz, _sort_keys(state, order))
    limit = req.int_param("limit", -1)
    total = len(sel) if limit < 0 else min(limit, len(sel))
    proj = _projection(state, sel, select)
    base_cols = _with_geo_key(state, list(dict.fromkeys(f.name for _, f in proj)))
    filename = state.spec.dataset_id

    def batches(size: int) -> Iterator[tuple[pa.Table, list[tuple[str, str]]]]:
        for start in range(0, total, size):
            table, _ = sel.slice(start, min(start + size, total), base_cols)
            yield _project_table(_patch_geo(state, table), proj, tz, state)

    header = [item.alias for item, _ in proj]
    if fmt == "parquet":
        return _parquet(batches, header, filename, total)
    if fmt == "csv":
        delimiter = req.get("delimiter") or ";"
        bom = (req.get("with_bom") or "true").lower() != "false"
        newline = "\n"
        if state.conformance is not None:
            line_end, bom = state.conformance.owner.csv_style()
            newline = line_end.decode()
        geo_as_text = state.conformance is not None and bool(state.conformance.geo)

        def csv_stream(size: int) -> Iterator[tuple[int, bytes]]:
            head = csv_bytes(pa.table({}), [], header=header, delimiter=delimiter, newline=newline)
            yield 0, (BOM if bom else b"") + head
            for table, columns in batches(size):
                if geo_as_text:
                    columns = [
                        (name, "text" if item.ref.name == GEO_FIELD else kind)
                        for (name, kind), (item, _) in zip(columns, proj, strict=True)
                    ]
                data = csv_bytes(
                    table, columns, header=None, delimiter=delimiter, tz=tz, newline=newline
                )
                yield table.num_rows, data

        return Response(
            200,
            "text/csv; charset=utf-8",
            headers=[("Content-Disposition", f'attachment; filename="{filename}.csv"')],
            stream=csv_stream,
            total_rows=total,
            error_tail=lambda sent, msg: msg.encode() + b"\n",
        )
    sep = b"\n" if fmt == "jsonl" else b","

    def json_stream(size: int) -> Iterator[tuple[int, bytes]]:
        first = True
        if fmt == "json":
            yield 0, b"["
        for table, columns in batches(size):
            chunk = json_rows_bytes(json_objects(table, columns, tz=tz), sep)
            if fmt == "jsonl":
                yield table.num_rows, chunk + b"\n"
            else:
                yield table.num_rows, (b"" if first else b",") + chunk
            first = False
        if fmt == "json":
            yield 0, b"]"

    def tail(sent: int, msg: str) -> bytes:
        err = orjson.dumps({"error_code": "StreamingInterrupted", "message": msg})
        if fmt == "jsonl":
            return err + b"\n"
        return (b"," if sent else b"") + err + b"]"

    content = "application/json" if fmt == "json" else "application/jsonl"
    return Response(
        200,
        f"{content}; charset=utf-8",
        headers=[("Content-Disposition", f'attachment; filename="{filename}.{fmt}"')],
        stream=json_stream,
        total_rows=total,
        error_tail=tail,
    )


def _with_geo_key(state: DatasetState, names: list[str]) -> list[str]:
    """Add the region code to the columns read when geo texts are patched by region."""
    conf = state.conformance
    if conf is not None and conf.geo and GEO_FIELD in names and GEO_KEY not in names:
        return [*names, GEO_KEY]
    return names


Batches = Callable[[int], Iterator[tuple[pa.Table, list[tuple[str, str]]]]]


def _parquet(batches: Batches, header: list[str], filename: str, total: int) -> Response:
    tables = []
    for table, _ in batches(50_000):
        tables.append(table.rename_columns(header))
    if tables:
        full = pa.concat_tables(tables)
    else:
        full = pa.table({h: pa.array([], pa.string()) for h in header})
    for i, column in enumerate(full.columns):
        if pa.types.is_timestamp(column.type):
            full = full.set_column(
                i, full.column_names[i], pc.cast(column, pa.timestamp("s", "UTC"))
            )
    buf = io.BytesIO()
    pq.write_table(full, buf)
    return Response(
        200,
        "application/vnd.apache.parquet",
        body=buf.getvalue(),
        headers=[("Content-Disposition", f'attachment; filename="{filename}.parquet"')],
        total_rows=total,
    )
