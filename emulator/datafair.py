"""Data Fair API v1: dataset metadata, cursor-paginated lines and aggregations."""

from __future__ import annotations

import math
import re
from urllib.parse import urlencode

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import ods
from .odsql import Lit, OdsqlError, compare
from .protocol import ApiError, Catalog, Request, Response, Route, iso_millis
from .render import csv_bytes, json_objects, json_rows_buffer
from .sources import ARROW_TYPES
from .specs import DATAFAIR_TYPES, Field
from .store import DatasetState, Partition, Selection, select_rows
from .synthetic import mix64

PREFIX = "data-fair/api/v1/"
MAX_SIZE = 10_000
MAX_AGG_SIZE = 1000  # values_agg buckets: hard cap (larger agg_size values are clamped)
TEXT = "text/plain; charset=utf-8"
FILTER_SUFFIXES = (
    "_eq",
    "_neq",
    "_in",
    "_nin",
    "_gte",
    "_gt",
    "_lte",
    "_lt",
    "_exists",
    "_nexists",
)
RESERVED = frozenset(
    {
        "size", "page", "select", "sort", "qs", "q", "q_mode", "after", "format", "html",
        "truncate", "field", "metric", "metric_field", "agg_size", "sampling", "thumbnail",
        "arrays", "wildcard", "interval", "missing", "finalizedAt", "draft", "collapse",
    }
)  # fmt: skip
METRICS = ("sum", "avg", "min", "max", "count", "value_count")


def error(status: int, message: str, code: str = "") -> Response:
    """A Data Fair error: French text/plain body."""
    return Response(status, TEXT, message.encode())


def rate_limited(retry_after: float) -> Response:
    """429 rate limit (text/plain)."""
    headers = [("Retry-After", str(math.ceil(retry_after)))]
    text = "Trop de requêtes dans un interval restreint. Veuillez réessayer plus tard."
    return Response(429, TEXT, text.encode(), headers=headers)


def route(cat: Catalog, portal: str, rest: str) -> Route | None:
    """Map a path below `{portal}/` to a Data Fair handler (or the ODS compat layer)."""
    if rest.startswith(ods.PREFIX):
        return ods.route(cat, portal, rest, native=False)
    if not rest.startswith(PREFIX):
        return None
    parts = [p for p in rest[len(PREFIX) :].split("/") if p]
    if not parts or parts[0] != "datasets":
        return None
    if len(parts) == 1:
        return Route("metadata", None, lambda req: _listing(cat, portal, req))
    state = cat.find(portal, parts[1])
    if state is None:
        kind = "metadata" if len(parts) == 2 else {"lines": "lines"}.get(parts[2], "agg")
        text = f"Le jeu de données {parts[1]} n'existe pas."
        return Route(kind, None, lambda req: error(404, text))
    short = state.spec.short
    if len(parts) == 2:
        return Route("metadata", short, lambda req: _metadata_response(state, portal, req))
    if len(parts) == 3 and parts[2] == "lines":
        return Route("lines", short, lambda req: lines(cat, state, portal, req))
    if len(parts) == 3 and parts[2] == "values_agg":
        return Route("agg", short, lambda req: values_agg(cat, state, req))
    if len(parts) == 3 and parts[2] == "metric_agg":
        return Route("agg", short, lambda req: metric_agg(cat, state, req))
    if len(parts) == 3 and parts[2] == "schema":
        return Route("metadata", short, lambda req: Response(200, body=orjson.dumps(schema(state))))
    return None


def int_codes(state: DatasetState) -> tuple[str, ...]:
    """Code columns served as integers (conformance mode: Data Fair guessed the type)."""
    conf = state.conformance
    return tuple(conf.int_codes) if conf is not None else ()


def _as_integers(values: pa.Array) -> pa.Array:
    """`"01"` -> 1: what Data Fair stores when it typed a code column as integer."""
    if pa.types.is_integer(values.type):
        return values
    return pc.cast(values, pa.int64())


def schema(state: DatasetState) -> list[dict]:
    """Data Fair schema entries, calculated `_` fields included."""
    out = []
    typed = int_codes(state)
    for f in state.fields():
        typ, fmt = DATAFAIR_TYPES["int" if f.name in typed else f.kind]
        entry: dict = {"key": state.out_name(f.name), "type": typ}
        if fmt:
            entry["format"] = fmt
        entry["title"] = f.title
        entry["x-originalName"] = f.original or state.out_name(f.name)
        out.append(entry)
    out += [
        {"key": "_id", "type": "string", "format": "uri-reference", "title": "Identifiant",
         "x-calculated": True},
        {"key": "_i", "type": "integer", "title": "Numéro de ligne", "x-calculated": True},
        {"key": "_rand", "type": "integer", "title": "Nombre aléatoire", "x-calculated": True},
    ]  # fmt: skip
    return out


def metadata(state: DatasetState, portal: str, host: str) -> dict:
    """The dataset's Data Fair description."""
    spec = state.spec
    href = f"http://{host}/{portal}/{PREFIX}datasets/{spec.internal_id}"
    return {
        "id": spec.internal_id,
        "slug": spec.dataset_id,
        "href": href,
        "title": spec.title,
        "status": "finalized",
        "isRest": False,
        "count": state.count,
        "createdAt": iso_millis(state.initial_signal),
        "dataUpdatedAt": iso_millis(state.data_processed),
        "finalizedAt": iso_millis(max(state.data_processed, state.modified)),
        "updatedAt": iso_millis(state.modified),
        "license": {"title": "Licence Ouverte / Open Licence", "href": "https://www.etalab.gouv.fr/licence-ouverte-open-licence"},
        "schema": schema(state),
    }  # fmt: skip


def _metadata_response(state: DatasetState, portal: str, req: Request) -> Response:
    return Response(200, body=orjson.dumps(metadata(state, portal, req.host)))


def _listing(cat: Catalog, portal: str, req: Request) -> Response:
    results = [metadata(s, portal, req.host) for s in cat.states(portal)]
    return Response(200, body=orjson.dumps({"count": len(results), "results": results}))


def _resolve(state: DatasetState, name: str) -> str:
    base = state.base_name(name)
    if base is None:
        raise ApiError(400, f'Le champ "{name}" n\'existe pas dans le schéma du jeu de données.')
    return base


def _filters(state: DatasetState, req: Request) -> list[tuple[str, str, str]]:
    """Per-field filters [(base name, operator suffix, raw value)]."""
    out = []
    for key, value in req.params:
        if key in RESERVED:
            continue
        for suffix in FILTER_SUFFIXES:
            if key.endswith(suffix) and len(key) > len(suffix):
                out.append((_resolve(state, key[: -len(suffix)]), suffix, value))
                break
    return out


_QS_TERM = re.compile(r'(-?)([A-Za-z_][\w.]*):("(?:[^"\\]|\\.)*"|\[[^\]]*\]|[^\s()]+)')


_QS_TOKEN = re.compile(r'-?[A-Za-z_][\w.]*:(?:"(?:[^"\\]|\\.)*"|\[[^\]]*\]|[^\s()]+)|\S+')


def _qs_terms(state: DatasetState, qs: str) -> list[list[tuple[bool, str, str]]]:
    """Minimal Lucene: `f:v`, `f:"v"`, `f:[a TO b]`, joined by AND / OR (AND binds tighter)."""
    groups: list[list[tuple[bool, str, str]]] = [[]]
    for token in _QS_TOKEN.findall(qs):
        if token == "OR":
            groups.append([])
            continue
        if token == "AND":
            continue
        m = _QS_TERM.fullmatch(token)
        if not m:
            raise ApiError(
                400, f"Requête qs non supportée : {token!r} (forme attendue champ:valeur)"
            )
        groups[-1].append((m.group(1) == "-", _resolve(state, m.group(2)), m.group(3)))
    return [g for g in groups if g]


def _value_mask(values: pa.Array, kind: str, op: str, raw: str) -> np.ndarray:
    if op in ("_exists", "_nexists"):
        present = np.asarray(pc.is_valid(values).to_numpy(zero_copy_only=False), dtype=bool)
        return present if op == "_exists" else ~present
    if op in ("_in", "_nin"):
        mask = np.zeros(len(values), dtype=bool)
        for item in raw.split(","):
            mask |= compare(values, kind, "=", Lit("str", item), "UTC")
        return mask if op == "_in" else ~mask
    cmp = {"_eq": "=", "_neq": "!=", "_gte": ">=", "_gt": ">", "_lte": "<=", "_lt": "<"}[op]
    return compare(values, kind, cmp, Lit("str", raw), "UTC")


def _qs_mask(values: pa.Array, kind: str, raw: str) -> np.ndarray:
    if raw.startswith("[") and raw.endswith("]"):
        low, _, high = raw[1:-1].partition(" TO ")
        mask = np.ones(len(values), dtype=bool)
        if low.strip() not in ("*", ""):
            mask &= _value_mask(values, kind, "_gte", low.strip())
        if high.strip() not in ("*", ""):
            mask &= _value_mask(values, kind, "_lte", high.strip())
        return mask
    if raw.startswith('"'):
        raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
    return _value_mask(values, kind, "_eq", raw)


def _sort(state: DatasetState, req: Request) -> list[tuple[str, bool]]:
    keys = []
    for item in (req.get("sort") or "").split(","):
        item = item.strip()
        if not item:
            continue
        desc = item.startswith("-")
        name = item.lstrip("-+")
        if name == "_i":
            if desc:
                raise ApiError(400, "Le tri descendant sur _i n'est pas supporté par l'émulateur.")
            continue
        keys.append((_resolve(state, name), desc))
    return keys


def selection(cat: Catalog, state: DatasetState, req: Request) -> Selection:
    """Rows matching the filters and qs, in `sort` order (cached per query)."""
    filters = _filters(state, req)
    qs = req.get("qs") or ""
    groups = _qs_terms(state, qs) if qs.strip() else []
    sort = _sort(state, req)
    key = ("df", state.spec.short, id(state), state.version, str(filters), qs, tuple(sort))
    cached = cat.cache.get(key)
    if cached is not None:
        return cached
    kinds = {f.name: f.kind for f in state.fields()}

    def mask(part: Partition) -> np.ndarray | bool | None:
        if not filters and not groups:
            return None
        if part.num_rows and not groups and {f[0] for f in filters} <= part.constant_columns():
            probe = part.take(
                np.zeros(1, dtype=np.int64), list(dict.fromkeys(f[0] for f in filters))
            )
            return all(
                bool(_value_mask(probe[name].combine_chunks(), kinds[name], op, raw)[0])
                for name, op, raw in filters
            )
        have = set(part.column_names())
        cols: dict[str, pa.Array] = {}

        def values(name: str) -> pa.Array:
            if name not in cols:
                cols[name] = (
                    part.column(name)
                    if name in have
                    else pa.nulls(part.num_rows, ARROW_TYPES[kinds[name]])
                )
            return cols[name]

        out = np.ones(part.num_rows, dtype=bool)
        for name, op, raw in filters:
            out &= _value_mask(values(name), kinds[name], op, raw)
        if groups:
            any_group = np.zeros(part.num_rows, dtype=bool)
            for terms in groups:
                g = np.ones(part.num_rows, dtype=bool)
                for negate, name, raw in terms:
                    m = _qs_mask(values(name), kinds[name], raw)
                    g &= ~m if negate else m
                any_group |= g
            out &= any_group
        return out

    try:
        sel = select_rows(state, mask, sort)
    except OdsqlError as exc:
        raise ApiError(400, f"Valeur de filtre invalide : {exc}") from exc
    cat.cache.put(key, sel)
    return sel


def _size(req: Request, default: int = 12) -> int:
    raw = req.get("size")
    try:
        size = default if raw in (None, "") else int(raw)
    except ValueError as exc:
        raise ApiError(400, f'Le paramètre "size" doit être un entier (reçu "{raw}").') from exc
    if size < 0 or size > MAX_SIZE:
        raise ApiError(400, f'Le paramètre "size" doit être compris entre 0 et {MAX_SIZE}.')
    return size


def _start(req: Request, size: int) -> int:
    after = req.get("after")
    if after is not None:
        # A JSON sort tuple as built by `_next_url`: [_i of the last row, "position"].
        try:
            cursor = orjson.loads(after)
        except orjson.JSONDecodeError:
            cursor = None
        if (
            not isinstance(cursor, list)
            or not cursor
            or not isinstance(cursor[-1], str)
            or not cursor[-1].isdigit()
        ):
            raise ApiError(400, f'Le paramètre "after" est invalide : "{after}".')
        return int(cursor[-1])
    page = req.int_param("page", 1)
    if page < 1:
        raise ApiError(400, 'Le paramètre "page" doit être supérieur ou égal à 1.')
    if page * size > MAX_SIZE:
        raise ApiError(
            400,
            f"Impossible de paginer au-delà de {MAX_SIZE} résultats, utilisez le paramètre "
            '"after" (lien "next").',
        )
    return (page - 1) * size


def _columns(state: DatasetState, sel: Selection, req: Request) -> list[Field]:
    raw = req.get("select")
    if not raw or raw.strip() == "*":
        return list(sel.fields)
    by_name = {f.name: f for f in sel.fields}
    out = []
    for name in raw.split(","):
        name = name.strip()
        if not name or name.startswith("_"):
            continue
        base = _resolve(state, name)
        out.append(by_name.get(base) or Field(base, "text"))
    return out


def _next_url(state: DatasetState, portal: str, req: Request, stop: int, last: int) -> str:
    """Absolute `next` link with the internal id and a JSON sort-tuple `after` cursor."""
    params = [(k, v) for k, v in req.params if k not in ("after", "page")]
    params.append(("after", orjson.dumps([last, str(stop)]).decode()))
    path = f"/{portal}/{PREFIX}datasets/{state.spec.internal_id}/lines"
    return f"http://{req.host}{path}?{urlencode(params)}"


def lines(cat: Catalog, state: DatasetState, portal: str, req: Request) -> Response:
    """GET .../lines: one page of rows, `next` cursor link while rows remain."""
    size = _size(req)
    fmt = req.get("format") or "json"
    if fmt not in ("json", "csv"):
        raise ApiError(400, f'Format "{fmt}" non supporté (json ou csv).')
    start = _start(req, size)
    sel = selection(cat, state, req)
    fields = _columns(state, sel, req)
    stop = min(start + size, len(sel))
    stop = max(start, stop)
    table, rownum = sel.slice(start, stop, [f.name for f in fields])
    typed = int_codes(state)
    columns = [(state.out_name(f.name), "int" if f.name in typed else f.kind) for f in fields]
    for i, f in enumerate(fields):
        if f.name in typed:
            table = table.set_column(i, f.name, _as_integers(table.column(i).combine_chunks()))
    # A full page always gets a `next`, even the last one (then an empty page, no `next`).
    more = size > 0 and stop - start == size
    last = int(rownum[-1]) if len(rownum) else start
    next_url = _next_url(state, portal, req, stop, last) if more else None
    if fmt == "csv":
        header = [f.title for f in fields]
        body = csv_bytes(table, columns, header=header, delimiter=",")
        headers = [("Link", f'<{next_url}>; rel="next"')] if next_url else []
        return Response(200, "text/csv; charset=utf-8", body, headers=headers)
    raw = _technical(state, rownum)
    objects = json_objects(table, columns, keep_nulls=False, raw=raw)
    head = b"{"
    if not req.has("after"):
        head += b'"total":%d,' % len(sel)
    if next_url:
        head += b'"next":' + orjson.dumps(next_url) + b","
    body = b"".join((head, b'"results":[', json_rows_buffer(objects), b"]}"))
    return Response(200, body=body)


def _technical(state: DatasetState, rownum: np.ndarray) -> list[tuple[str, pa.Array]]:
    """JSON values of `_id`, `_i`, `_score`, `_rand` for rows with global numbers `rownum`."""
    num = pc.cast(pa.array(rownum), pa.string())
    prefix = f'"{state.spec.internal_id[:8]}-'
    ids = pc.binary_join_element_wise(prefix, num, '"', "")
    rand = mix64(rownum.astype(np.uint64)) % np.uint64(10_000_000)
    score = pa.array(np.full(len(rownum), "1"), pa.string())
    rand_text = pc.cast(pa.array(rand.astype(np.int64)), pa.string())
    return [("_id", ids), ("_i", num), ("_score", score), ("_rand", rand_text)]


_ARROW_METRICS = {"sum": "sum", "avg": "mean", "min": "min", "max": "max"}


def _numeric(values: pa.Array) -> pa.Array:
    """Values as float64; text that does not parse as a number becomes null."""
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return pc.cast(values, pa.float64())
    parsed = pd.to_numeric(values.to_pandas(), errors="coerce").to_numpy(dtype="float64")
    return pa.array(parsed, pa.float64(), from_pandas=True)


def _metric(values: pa.Array, metric: str) -> object:
    numbers = _numeric(values)
    if metric in ("count", "value_count"):
        return pc.count(numbers).as_py()
    func = getattr(pc, _ARROW_METRICS[metric])
    return _plain(func(numbers).as_py())


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _metric_params(state: DatasetState, req: Request, field_param: str) -> tuple[str, str]:
    metric = req.get("metric") or ""
    if metric not in METRICS:
        raise ApiError(400, f'Le paramètre "metric" doit être parmi {", ".join(METRICS)}.')
    name = req.get(field_param)
    if not name:
        raise ApiError(400, f'Le paramètre "{field_param}" est requis.')
    return metric, _resolve(state, name)


def metric_agg(cat: Catalog, state: DatasetState, req: Request) -> Response:
    """GET .../metric_agg?field=f&metric=sum: one metric over the filtered rows."""
    metric, name = _metric_params(state, req, "field")
    sel = selection(cat, state, req)
    payload = {"total": len(sel), "metric": _metric(sel.column(name), metric)}
    return Response(200, body=orjson.dumps(payload))


def values_agg(cat: Catalog, state: DatasetState, req: Request) -> Response:
    """GET .../values_agg?field=f[&metric=..&metric_field=..]: per-value counts (and metric)."""
    raw_field = req.get("field")
    if not raw_field:
        raise ApiError(400, 'Le paramètre "field" est requis.')
    name = _resolve(state, raw_field)
    metric = metric_field = None
    if req.get("metric"):
        metric, metric_field = _metric_params(state, req, "metric_field")
    agg_size = req.int_param("agg_size", 20)
    if agg_size < 0:
        raise ApiError(400, 'Le paramètre "agg_size" doit être positif.')
    agg_size = min(agg_size, getattr(cat, "agg_cap", MAX_AGG_SIZE))
    sel = selection(cat, state, req)
    keys = sel.column(name)
    if name in int_codes(state):
        keys = _as_integers(keys)
    columns = {"k": keys}
    if metric_field is not None:
        columns["m"] = _numeric(sel.column(metric_field))
    table = pa.table(columns)
    table = table.filter(pc.is_valid(table["k"]))
    specs: list = [([], "count_all")]
    if metric is not None:
        how = "count" if metric in ("count", "value_count") else _ARROW_METRICS[metric]
        specs.append(("m", how))
    grouped = table.group_by("k").aggregate(specs)
    grouped = grouped.sort_by([("count_all", "descending"), ("k", "ascending")])
    aggs = []
    for entry in grouped.slice(0, agg_size).to_pylist():
        agg: dict = {"total": entry["count_all"], "value": entry["k"], "results": []}
        if metric is not None:
            agg["metric"] = _plain(next(v for k, v in entry.items() if k.startswith("m_")))
        aggs.append(agg)
    counts = grouped
    shown = sum(a["total"] for a in aggs)
    payload = {
        "total": len(sel),
        "took": 1,
        "timed_out": False,
        "total_values": counts.num_rows,
        "total_other": int(table.num_rows - shown),
        "aggs": aggs,
    }
    return Response(200, body=orjson.dumps(payload))
