"""A tiny HTTP/1.1 server whose framing the test chooses: chunk sizes, gzip, cut points.

The project's portal emulator and client were written together; this server is deliberately
dumb and independent of both, so the readers are tested against bytes framed in ways the
emulator never chose. Each route serves fixed bytes; the framing applies on the wire.
"""

from __future__ import annotations

import gzip
import socket
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Framing:
    """How a body goes on the wire."""

    chunks: Sequence[int] = (1 << 16,)  # chunk sizes, cycled
    gzip: bool = False
    cut: int | None = None  # close the connection after this many body bytes (before gzip)
    content_type: str = "text/csv; charset=utf-8"


@dataclass
class Route:
    """What a path answers: a body for the query (None: 404) and its framing."""

    body: Callable[[dict[str, list[str]]], bytes | None]
    framing: Framing = field(default_factory=Framing)


class FramingServer:
    """Serves `routes[path]` on 127.0.0.1 with the route's framing."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.hits += 1
                parts = urlsplit(self.path)
                route = server.routes.get(parts.path)
                body = route.body(parse_qs(parts.query)) if route else None
                if route is None or body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                _write(self, body, route.framing)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FramingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _pieces(data: bytes, sizes: Sequence[int]) -> Iterator[bytes]:
    position, turn = 0, 0
    while position < len(data):
        size = max(1, sizes[turn % len(sizes)])
        yield data[position : position + size]
        position += size
        turn += 1


def _write(handler: BaseHTTPRequestHandler, body: bytes, framing: Framing) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", framing.content_type)
    handler.send_header("Transfer-Encoding", "chunked")
    if framing.gzip:
        handler.send_header("Content-Encoding", "gzip")
    handler.end_headers()
    cut = framing.cut
    data = body if cut is None else body[:cut]
    if framing.gzip:
        if cut is None:
            data = gzip.compress(data)
        else:  # a cut gzip stream: compressed bytes of the part sent, without the trailer
            compressor = zlib.compressobj(6, 8, 31)
            data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    for piece in _pieces(data, framing.chunks):
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        handler.wfile.flush()
    if cut is not None:
        handler.close_connection = True
        handler.wfile.flush()
        handler.connection.shutdown(socket.SHUT_RDWR)
        return
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()
