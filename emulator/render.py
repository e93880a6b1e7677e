"""Vectorised JSON and CSV rendering of Arrow tables, the way the portals print values."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

# (output name, field kind) for each column of the rendered table, in order.
Columns = Sequence[tuple[str, str]]
GEO_KINDS = ("geo_point_2d", "geo_shape")


def format_datetime(values: pa.Array, tz: str) -> pa.Array:
    """ISO 8601 local time in `tz` with a `+HH:MM` offset, e.g. 2023-01-01T06:00:00+01:00."""
    local = pc.cast(values, pa.timestamp("s", tz=tz))
    text = pc.strftime(local, format="%Y-%m-%dT%H:%M:%S%z")
    return pc.replace_substring_regex(text, r"([+-]\d\d)(\d\d)$", r"\1:\2")


def _needs_escape(values: pa.Array) -> bool:
    """True if any string holds a quote, a backslash or a control character."""
    buffers = values.buffers()
    if len(buffers) < 3 or buffers[2] is None or len(values) == 0:
        return False
    width = np.int64 if pa.types.is_large_string(values.type) else np.int32
    offsets = np.frombuffer(buffers[1], dtype=width)[
        values.offset : values.offset + len(values) + 1
    ]
    data = np.frombuffer(buffers[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return bool(((data < 0x20) | (data == 0x22) | (data == 0x5C)).any())


def _escape(values: pa.Array) -> pa.Array:
    """JSON string bodies (without quotes) for a string array."""
    if not _needs_escape(values):
        return values
    return pa.array(
        [None if v is None else orjson.dumps(v).decode()[1:-1] for v in values.to_pylist()],
        pa.string(),
    )


def _quoted(values: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise('"', values, '"', "")


def json_values(values: pa.Array, kind: str, tz: str) -> tuple[str, pa.Array, str]:
    """JSON text of each value as (prefix, text, suffix); null stays null."""
    typ = values.type
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        if kind in GEO_KINDS:
            return "", values, ""
        return '"', _escape(values), '"'
    if pa.types.is_timestamp(typ):
        return '"', format_datetime(values, tz), '"'
    if pa.types.is_date(typ):
        return '"', pc.cast(values, pa.string()), '"'
    if pa.types.is_boolean(typ):
        return "", pc.cast(values, pa.string()), ""
    if pa.types.is_floating(typ):
        text = pc.cast(values, pa.string())
        if pc.all(pc.is_finite(values)).as_py() is False:
            text = pc.if_else(pc.is_finite(values), text, pa.scalar(None, pa.string()))
        return "", text, ""
    text = pc.cast(values, pa.string())
    return ('"', text, '"') if kind == "year" else ("", text, "")


def json_objects(
    table: pa.Table,
    columns: Columns,
    *,
    tz: str = "UTC",
    keep_nulls: bool = True,
    raw: Sequence[tuple[str, pa.Array]] = (),
) -> pa.Array:
    """One JSON object text per row (nulls printed or left out); `raw` values are JSON-ready."""
    # A single element-wise join of literal key texts and value arrays: a few Arrow kernels
    # per column, no Python work per row.
    parts = [
        (name, *json_values(_plain(table.column(i)), kind, tz))
        for i, (name, kind) in enumerate(columns)
    ]
    parts += [(name, "", values, "") for name, values in raw]
    if not parts:
        return pa.array(["{}"] * table.num_rows, pa.string())
    args: list[str | pa.Array] = ["{"]
    for i, (name, prefix, values, suffix) in enumerate(parts):
        key = ("," if i else "") + orjson.dumps(name).decode() + ":"
        if values.null_count == 0:
            args += [key + prefix, values, suffix]
            continue
        frag = pc.binary_join_element_wise(key + prefix, values, suffix, "")
        filler = key + "null" if keep_nulls else ("" if i else "\x00")
        args.append(pc.fill_null(frag, filler))
    args.append("}")
    merged: list[str | pa.Array] = []
    for arg in args:
        if isinstance(arg, str) and merged and isinstance(merged[-1], str):
            merged[-1] += arg
        elif not (isinstance(arg, str) and arg == ""):
            merged.append(arg)
    out = pc.binary_join_element_wise(*merged, "")
    if not keep_nulls and parts[0][2].null_count:
        out = pc.replace_substring_regex(out, r"^\{\x00,?", "{")
    return out


def _plain(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks()
    return column


def json_rows_buffer(objects: pa.Array, sep: bytes = b",") -> pa.Buffer | bytes:
    """JSON object texts joined with `sep`, as one Arrow buffer (no Python copy)."""
    if len(objects) == 0:
        return b""
    lists = pa.ListArray.from_arrays(pa.array([0, len(objects)], pa.int32()), objects)
    return pc.binary_join(lists, sep.decode())[0].as_buffer()


def json_rows_bytes(objects: pa.Array, sep: bytes = b",") -> bytes:
    """JSON object texts joined with `sep`."""
    return bytes(json_rows_buffer(objects, sep))


def _geo_csv(values: pa.Array, kind: str) -> pa.Array:
    out: list[str | None] = []
    for text in values.to_pylist():
        if text is None:
            out.append(None)
            continue
        obj = orjson.loads(text)
        if kind == "geo_point_2d":
            out.append(f"{obj.get('lat')}, {obj.get('lon')}")
        else:
            geometry = obj.get("geometry", obj) if isinstance(obj, dict) else obj
            out.append(orjson.dumps(geometry).decode())
    return pa.array(out, pa.string())


def csv_values(values: pa.Array, kind: str, tz: str) -> pa.Array:
    """Text of each value as printed in a CSV export (null stays null, i.e. empty)."""
    typ = values.type
    if pa.types.is_timestamp(typ):
        return format_datetime(values, tz)
    if kind in GEO_KINDS and pa.types.is_string(typ):
        return _geo_csv(values, kind)
    if pa.types.is_floating(typ):
        null = pa.scalar(None, pa.string())
        return pc.if_else(pc.is_finite(values), pc.cast(values, pa.string()), null)
    return pc.cast(values, pa.string())


def _csv_cell(text: str, delimiter: str) -> str:
    if any(ch in text for ch in (delimiter, '"', "\n", "\r")):
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_quote(values: pa.Array, delimiter: str) -> pa.Array:
    """Quote the cells that contain the delimiter, a quote or a line break."""
    pattern = "[" + "".join("\\" + c if c in "]\\^-" else c for c in delimiter) + '"\r\n]'
    needs = pc.fill_null(pc.match_substring_regex(values, pattern), False)
    if not pc.any(needs).as_py():
        return values
    quoted = _quoted(pc.replace_substring(values, '"', '""'))
    return pc.if_else(needs, quoted, values)


def csv_bytes(
    table: pa.Table,
    columns: Columns,
    *,
    header: Sequence[str] | None,
    delimiter: str = ";",
    tz: str = "UTC",
    newline: str = "\n",
) -> bytes:
    """CSV text of a table (header row only when `header` is given), minimal quoting."""
    out = b""
    if header is not None:
        out = (delimiter.join(_csv_cell(h, delimiter) for h in header) + newline).encode()
    if not columns or table.num_rows == 0:
        return out
    cells = [
        pc.fill_null(_csv_quote(csv_values(_plain(table.column(i)), kind, tz), delimiter), "")
        for i, (_, kind) in enumerate(columns)
    ]
    lines = pc.binary_join_element_wise(*cells, delimiter) if len(cells) > 1 else cells[0]
    return out + newline.join(lines.to_pylist()).encode() + newline.encode()
