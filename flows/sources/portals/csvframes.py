"""CSV bodies cut into whole records, whatever the network's chunking, then parsed by Arrow.

Bytes arrive in pieces of any size (one byte to megabytes, DATASETS.md 1.4). The reader never
hands the parser a piece that ends inside a record: it cuts the buffer at the last line end
that is outside quotes (an even number of `"` before it, RFC 4180), so Arrow always parses a
run of whole records, and a field of several megabytes (a `geo_shape`) just makes one piece
longer. Memory is bounded by the block size plus the longest record, not by the body.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv

BOM = b"\xef\xbb\xbf"
BLOCK = 4 << 20
MAX_RECORD = 512 << 20  # a "record" longer than this is a body that never closes its quotes
# What Opendatasoft writes into a 200 body when an export fails after it started; it may land
# inside the last record without a line end, where the row count alone would not see it.
ERROR_MARKERS = (b"Streaming interrupted",)
TAIL = 4096


class CsvBodyError(ValueError):
    """The body is not the CSV it should be (cut, error text, wrong shape)."""


@dataclass
class CsvStats:
    """Counters the reader keeps as it goes."""

    bytes: int = 0
    rows: int = 0


def _cut_point(buffer: bytearray | bytes, quotes: int) -> int:
    """Index just past the last line end outside quotes, or -1; `quotes` counts `"` in buffer."""
    end = len(buffer)
    after = 0  # quotes at or after `end`
    while True:
        newline = buffer.rfind(b"\n", 0, end)
        if newline < 0:
            return -1
        after += buffer.count(b'"', newline, end)
        if (quotes - after) % 2 == 0:  # an even number of quotes before it: outside quotes
            return newline + 1
        end = newline


def whole_records(chunks: Iterable[bytes], stats: CsvStats, block: int = BLOCK) -> Iterator[bytes]:
    """Runs of whole CSV records of about `block` bytes, BOM removed, from any chunking."""
    buffer = bytearray()
    quotes = 0
    first = True
    last = b""
    attempt_at = block  # try to cut once the buffer is this long (doubles while a record runs on)
    for chunk in chunks:
        if not chunk:
            continue
        stats.bytes += len(chunk)
        buffer += chunk
        quotes += chunk.count(b'"')
        if first:
            if len(buffer) < len(BOM) and BOM.startswith(bytes(buffer)):
                continue
            if buffer.startswith(BOM):
                del buffer[: len(BOM)]
            first = False
        if len(buffer) < attempt_at:
            continue
        cut = _cut_point(buffer, quotes)
        if cut < 0:
            if len(buffer) > MAX_RECORD:
                raise CsvBodyError(f"no record end in {len(buffer):,} bytes (unclosed quote?)")
            attempt_at = 2 * len(buffer)  # a long record: look again when it has doubled
            continue
        attempt_at = block
        piece = bytes(buffer[:cut])
        del buffer[:cut]
        quotes = buffer.count(b'"')
        last = piece
        yield piece
    if first and buffer.startswith(BOM):
        del buffer[: len(BOM)]
    tail = (last[-TAIL:] + bytes(buffer[-TAIL:]))[-TAIL:]
    for marker in ERROR_MARKERS:
        if marker in tail:
            text = tail[tail.index(marker) :][:300].decode("utf-8", "replace")
            raise CsvBodyError(f"the portal wrote an error into the body: {text!r}")
    if quotes % 2:
        raise CsvBodyError("body ends inside a quoted field (cut short?)")
    if buffer:
        yield bytes(buffer)


def header_of(piece: bytes, delimiter: str) -> tuple[list[str], bytes]:
    """The column names in the first record of `piece`, and the rest of the piece."""
    first_end = piece.find(b"\n")
    if first_end < 0:
        head, rest = piece, b""
    else:
        # the header is the shortest prefix ending at a line end outside quotes
        end = first_end
        while piece.count(b'"', 0, end) % 2:
            end = piece.find(b"\n", end + 1)
            if end < 0:
                end = len(piece)
                break
        head, rest = piece[:end], piece[end + 1 :]
    text = head.decode("utf-8", "replace").rstrip("\r")
    if not text.strip():
        raise CsvBodyError("export body has no header line (empty body?)")
    if text.lstrip().startswith("{"):
        raise CsvBodyError(f"error text instead of a CSV header: {text[:300]!r}")
    columns = next(csv.reader([text], delimiter=delimiter))
    if len(set(columns)) != len(columns) or any(not c for c in columns):
        raise CsvBodyError(f"malformed CSV header: {text[:300]!r}")
    return columns, rest


def read_records(
    chunks: Iterable[bytes], stats: CsvStats, delimiter: str = ";", block: int = BLOCK
) -> tuple[list[str], Iterator[pa.Table]]:
    """The header, then tables of whole records, every value as text ('' is null)."""
    pieces = whole_records(chunks, stats, block)
    columns: list[str] = []
    rest = b""
    for piece in pieces:
        columns, rest = header_of(piece, delimiter)
        break
    else:
        raise CsvBodyError("export body is empty (no header)")

    def tables() -> Iterator[pa.Table]:
        if rest:
            yield _parse(rest, columns, delimiter, stats)
        for piece in pieces:
            yield _parse(piece, columns, delimiter, stats)

    return columns, tables()


def _parse(piece: bytes, columns: list[str], delimiter: str, stats: CsvStats) -> pa.Table:
    try:
        table = pacsv.read_csv(
            pa.py_buffer(piece),
            read_options=pacsv.ReadOptions(
                column_names=columns, block_size=len(piece) + 1, use_threads=False
            ),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns},
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise CsvBodyError(f"{exc} (after record {stats.rows:,})") from exc
    stats.rows += table.num_rows
    return table
