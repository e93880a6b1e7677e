"""Property tests of the two body readers against framings the emulator never chose.

For generated tables (quotes, `;`, newlines, accents, empty values, long fields) and generated
framings (chunk sizes from 1 byte, gzip, CRLF or LF, BOM, quoting style, parser block size),
the rows read equal the rows served; for every cut point of a body (connection dropped, or an
error text in a 200 body), the read fails as transient and never returns short data.
Served over real HTTP by tests/support/framing_server.py, which shares no code with the client.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.errors import TransientError
from flows.sources.catalog import get_dataset
from flows.sources.http import PortalHttp, RetryPolicy
from flows.sources.portals.base import PartitionStats
from flows.sources.portals.csvframes import CsvStats, read_records
from flows.sources.portals.datafair import DataFairClient
from flows.sources.portals.opendatasoft import OpendatasoftClient
from tests.support.framing_server import Framing, FramingServer, Route

ODS = get_dataset("regionale_annuelle")
DF = get_dataset("commune")
ODS_PATH = f"/api/explore/v2.1/catalog/datasets/{ODS.source_id}"
DF_PATH = f"/data-fair/api/v1/datasets/{DF.source_id}"
PROPERTY = settings(
    max_examples=int(os.environ.get("READER_EXAMPLES", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- strategies ---------------------------------------------------------------------------

TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(";\"\n\r,' éèàçÉœ€2A01-_/()[]{}:.")),
        st.characters(blacklist_categories=("Cs", "Cc")),
    ),
    min_size=1,
    max_size=40,
)
VALUE = st.one_of(st.none(), TEXT, st.sampled_from(["NA", "null", "NaN", "N/A", "nan", "0", "01"]))
NAMES = st.lists(
    st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True), min_size=2, max_size=6, unique=True
)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str], list[list[str | None]]]:
    columns = draw(NAMES)
    rows = draw(
        st.lists(st.lists(VALUE, min_size=len(columns), max_size=len(columns)), max_size=25)
    )
    return columns, rows


@st.composite
def framings(draw: st.DrawFn) -> Framing:
    small = st.integers(1, 16)
    chunks = draw(
        st.one_of(
            st.lists(small, min_size=1, max_size=8),
            st.lists(st.integers(1, 4096), min_size=1, max_size=8),
        )
    )
    return Framing(chunks=chunks, gzip=draw(st.booleans()))


def render_csv(
    columns: list[str], rows: list[list[str | None]], crlf: bool, bom: bool, quote_all: bool
) -> bytes:
    """RFC 4180 with `;`: a field is quoted when it holds `;`, `"`, CR or LF (or always)."""

    def field(value: str | None) -> str:
        text = "" if value is None else value
        if quote_all or any(c in text for c in ';"\r\n') or (value is not None and not text):
            return '"' + text.replace('"', '""') + '"'
        return text

    end = "\r\n" if crlf else "\n"
    lines = [";".join(field(c) for c in columns)]
    lines += [";".join(field(v) for v in row) for row in rows]
    return (b"\xef\xbb\xbf" if bom else b"") + (end.join(lines) + end).encode("utf-8")


def plain(value: Any) -> Any:
    """A cell as a comparable value: every kind of null is None."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return value


def frame_rows(frames: list[pd.DataFrame], columns: list[str]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for frame in frames:
        assert list(frame.columns) == columns
        out.extend([plain(v) for v in row] for row in frame.itertuples(index=False, name=None))
    return out


# -- the ODS CSV export reader --------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FramingServer]:
    with FramingServer() as running:
        running.routes[ODS_PATH] = Route(
            lambda q: json.dumps(
                {"fields": [{"name": "annee", "type": "date"}], "metas": {"default": {}}}
            ).encode(),
            Framing(content_type="application/json"),
        )
        yield running


def http_for(server: FramingServer, portal: str = "odre") -> PortalHttp:
    return PortalHttp(
        portal,
        server.url,
        policy=RetryPolicy(max_attempts=1),
        connect_timeout=5,
        read_timeout=20,
        concurrency=4,
        user_agent="energy-pipeline tests",
    )


def read_ods(server: FramingServer, body: bytes, framing: Framing, block: int) -> tuple:
    server.routes[f"{ODS_PATH}/exports/csv"] = Route(lambda q: body, framing)
    client = OpendatasoftClient(http_for(server), block=block)
    stats = PartitionStats()
    try:
        frames = list(client.stream(ODS, 2023, stats))
    finally:
        client.close()
    return frames, stats


@PROPERTY
@given(
    table=tables(),
    framing=framings(),
    crlf=st.booleans(),
    bom=st.booleans(),
    quote_all=st.booleans(),
    block=st.sampled_from([1, 7, 64, 1000, 1 << 22]),
)
def test_csv_export_rows_equal_the_rows_served(
    server: FramingServer, table, framing, crlf, bom, quote_all, block
) -> None:
    columns, rows = table
    body = render_csv(columns, rows, crlf, bom, quote_all)
    frames, stats = read_ods(server, body, framing, block)
    assert stats.columns == columns
    assert frame_rows(frames, columns) == rows
    assert stats.rows == len(rows)
    assert stats.bytes == len(body)


@PROPERTY
@given(
    table=tables().filter(lambda t: len(t[1]) > 0),
    framing=framings(),
    crlf=st.booleans(),
    where=st.floats(0, 1, exclude_max=True),
    error_text=st.booleans(),
    newline_first=st.booleans(),
    block=st.sampled_from([7, 64, 1 << 22]),
)
def test_every_cut_of_a_csv_export_fails_as_transient(
    server: FramingServer, table, framing, crlf, where, error_text, newline_first, block
) -> None:
    columns, rows = table
    body = render_csv(columns, rows, crlf, bom=True, quote_all=False)
    header = body.index(b"\n") + 1
    if error_text:  # the export stops and the portal writes its error into the 200 body
        cut = header + int((len(body) - header) * where)
        tail = (b"\n" if newline_first else b"") + b"Streaming interrupted: Query timeout."
        served, framing.cut = body[:cut] + tail, None
    else:  # the connection drops after `cut` bytes
        cut = int(len(body) * where)
        served, framing.cut = body, cut
    with pytest.raises(TransientError) as caught:
        read_ods(server, served, framing, block)
    assert ODS.source_id in (caught.value.url or "")


def test_a_field_of_several_megabytes_larger_than_the_block(server: FramingServer) -> None:
    polygon = json.dumps(
        {"type": "Polygon", "coordinates": [[[i * 0.001, -i * 0.002] for i in range(300_000)]]},
        indent=1,  # newlines inside the quoted field
    ).replace("]", "];")
    rows = [["2023", "84", polygon, "x"], ["2023", "11", None, 'say "hi"\r\nthere']]
    body = render_csv(
        ["annee", "code", "geo_shape", "note"], rows, crlf=True, bom=True, quote_all=False
    )
    assert len(polygon) > 5_000_000
    frames, stats = read_ods(
        server, body, Framing(chunks=[1, 65536, 3, 1 << 20], gzip=True), 1 << 20
    )
    assert frame_rows(frames, ["annee", "code", "geo_shape", "note"]) == rows
    assert stats.rows == 2


def test_records_memory_is_bounded_by_the_block() -> None:
    """Pieces handed to the parser stay near the block size whatever the body's size."""
    line = b"2023;84;" + b"x" * 100 + b"\n"
    body = b"annee;code;v\n" + line * 200_000  # 22 MB
    stats = CsvStats()
    sizes: list[int] = []
    columns, tables_ = read_records(
        (body[i : i + 4096] for i in range(0, len(body), 4096)), stats, block=1 << 20
    )
    for table in tables_:
        sizes.append(table.num_rows)
    assert columns == ["annee", "code", "v"]
    assert sum(sizes) == 200_000
    assert max(sizes) * len(line) <= (1 << 20) + 4096 + len(line)


# -- the Data Fair lines reader -----------------------------------------------------------

JSON_VALUE = st.one_of(
    st.none(),
    TEXT,
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)


@st.composite
def line_pages(draw: st.DrawFn) -> tuple[list[str], list[dict[str, Any]], int]:
    columns = draw(NAMES)
    rows = draw(
        st.lists(st.fixed_dictionaries({c: JSON_VALUE for c in columns}), min_size=0, max_size=30)
    )
    size = draw(st.integers(1, 12))
    return columns, rows, size


def serve_lines(
    server: FramingServer, rows: list[dict[str, Any]], size: int, framing: Framing
) -> None:
    """Pages as Data Fair serves them: `total` on the first page only, JSON `after` cursors,
    empty values left out, `_` technical keys, and an empty page after a full last page."""
    pages: list[list[dict[str, Any]]] = [rows[i : i + size] for i in range(0, len(rows), size)]
    if not pages or len(pages[-1]) == size:
        pages.append([])

    def body(query: dict[str, list[str]]) -> bytes:
        after = query.get("after")
        number = 0 if after is None else json.loads(after[0])[0]
        page = pages[number]
        results = [
            {
                "_id": f"id{number}-{i}",
                "_i": number * size + i,
                "_score": None,
                **{k: v for k, v in row.items() if v is not None},
            }
            for i, row in enumerate(page)
        ]
        doc: dict[str, Any] = {"results": results}
        if number == 0:
            doc["total"] = len(rows)
        if len(page) == size:  # Data Fair links a next page whenever this one is full
            cursor = quote(json.dumps([number + 1, f"id{number}-{len(page) - 1}"]))
            doc["next"] = f"{server.url}{DF_PATH}/lines?size={size}&after={cursor}"
        return json.dumps(doc, ensure_ascii=bool(number % 2)).encode()

    framing.content_type = "application/json; charset=utf-8"
    server.routes[f"{DF_PATH}/lines"] = Route(body, framing)


@PROPERTY
@given(pages=line_pages(), framing=framings())
def test_lines_rows_equal_the_rows_served(server: FramingServer, pages, framing) -> None:
    columns, rows, size = pages
    serve_lines(server, rows, size, framing)
    client = DataFairClient(http_for(server, "ore"), page_size=size)
    stats = PartitionStats()
    try:
        frames = list(client.stream(DF, 2023, stats))
    finally:
        client.close()
    got: list[dict[str, Any]] = []
    for frame in frames:
        assert not [c for c in frame.columns if str(c).startswith("_")]
        got.extend(frame.to_dict("records"))
    assert stats.rows == len(rows) == len(got)
    assert stats.expected == len(rows)
    for served, read in zip(rows, got, strict=True):
        for column in columns:
            expected, value = served[column], plain(read.get(column))
            if isinstance(expected, int | float) and not isinstance(expected, bool):
                assert value is not None and float(value) == float(expected)
            else:
                assert value == expected


@PROPERTY
@given(pages=line_pages().filter(lambda p: len(p[1]) > 0), where=st.floats(0, 1, exclude_max=True))
def test_every_cut_of_a_lines_page_fails_as_transient(server: FramingServer, pages, where) -> None:
    _, rows, size = pages
    serve_lines(server, rows, size, Framing(chunks=[7, 300]))
    route = server.routes[f"{DF_PATH}/lines"]
    full = route.body({})
    route.framing.cut = int(len(full) * where)
    client = DataFairClient(http_for(server, "ore"), page_size=size)
    try:
        with pytest.raises(TransientError):
            list(client.stream(DF, 2023, PartitionStats()))
    finally:
        client.close()
