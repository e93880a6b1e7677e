"""Writing responses on the socket, with transport faults (reset, truncate, error in body)."""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from .conformance import BodyWriter, Framing
from .faults import TransportFault
from .protocol import Response

STREAM_BATCH = 10_000
BREAKING = ("reset", "truncate", "error_in_body")


class Aborted(Exception):
    """The connection was deliberately broken mid-response."""


def send(
    handler: BaseHTTPRequestHandler,
    resp: Response,
    fault: TransportFault | None,
    framing: Framing | None = None,
    count: Callable[[int], None] | None = None,
) -> None:
    """Write `resp` (status, headers, body or chunked stream), applying `fault` if any.

    `framing` (conformance mode, limits) sends the body chunked with random chunk sizes,
    gzip and/or a bandwidth throttle; `count` is told the bytes of each chunk sent.
    """
    try:
        handler.send_response(resp.status)
        handler.send_header("Content-Type", resp.content_type)
        for key, value in resp.headers:
            handler.send_header(key, value)
        if framing is not None and not framing.active:
            framing = None
        if framing is not None and framing.regime is not None:
            with contextlib.suppress(OSError):
                handler.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if resp.stream is not None:
            _send_stream(handler, resp, fault, framing, count)
        elif framing is not None and (fault is None or fault.kind not in ("reset", "truncate")):
            _send_framed_body(handler, resp, framing, count)
        else:
            _send_body(handler, resp, fault)
    except (Aborted, ConnectionError, TimeoutError):
        handler.close_connection = True
    except Exception:  # an emulator bug while streaming: the body is broken, drop the socket
        traceback.print_exc(file=sys.stderr)
        handler.close_connection = True


def _send_body(
    handler: BaseHTTPRequestHandler, resp: Response, fault: TransportFault | None
) -> None:
    body = resp.body
    if fault is not None and fault.kind in ("reset", "truncate"):
        cut = max(0, min(len(body) - 1, int(len(body) * fault.fraction)))
        handler.send_header("Content-Length", str(len(body) or 100))
        handler.end_headers()
        handler.wfile.write(body[:cut])
        handler.wfile.flush()
        _break(handler, fault.kind)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _send_framed_body(
    handler: BaseHTTPRequestHandler,
    resp: Response,
    framing: Framing,
    count: Callable[[int], None] | None,
) -> None:
    if framing.gzip:
        handler.send_header("Content-Encoding", "gzip")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    writer = BodyWriter(handler.wfile, framing, count)
    writer.write(resp.body)
    writer.finish()


def _send_stream(
    handler: BaseHTTPRequestHandler,
    resp: Response,
    fault: TransportFault | None,
    framing: Framing | None = None,
    count: Callable[[int], None] | None = None,
) -> None:
    assert resp.stream is not None
    if framing is not None and framing.gzip:
        handler.send_header("Content-Encoding", "gzip")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    writer = BodyWriter(handler.wfile, framing, count)
    total = resp.total_rows
    breaking = fault if fault is not None and fault.kind in BREAKING else None
    limit, batch = None, STREAM_BATCH
    if breaking is not None:
        limit = max(1, int(total * breaking.fraction)) if total else 0
        batch = max(1, min(STREAM_BATCH, total // 4 or 1))
    chunk_delay = fault.chunk_delay if fault is not None and fault.kind == "slow" else 0.0
    sent = 0
    for rows, data in resp.stream(batch):
        if data:
            writer.write(data)
        sent += rows
        if chunk_delay:
            time.sleep(chunk_delay)
        if breaking is not None and limit is not None and sent >= limit and (rows or not total):
            if breaking.kind == "error_in_body" and resp.error_tail is not None:
                writer.write(resp.error_tail(sent, breaking.message))
                writer.finish()
                return
            writer.flush_partial()
            _break(handler, breaking.kind)
    writer.finish()


def _break(handler: BaseHTTPRequestHandler, how: str) -> None:
    """Reset (RST, SO_LINGER 0) or close (FIN) the connection now, then abort the response."""
    sock = handler.connection
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
    sock.close()
    handler.close_connection = True
    raise Aborted(how)
