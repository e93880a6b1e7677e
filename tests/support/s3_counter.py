"""A counting reverse proxy in front of an S3 server: what a client wrote, copied, deleted.

Point a client's endpoint at `S3Counter.url` instead of the server's: every request is
forwarded unchanged (method, path, query, headers, Host and signature included, body) on
a new upstream connection, and its response relayed back, both streamed. Only the per-hop
framing is redone: `Transfer-Encoding: chunked` request bodies are re-chunked upstream
(aws-chunked bodies are plain bytes to the proxy), and `Expect: 100-continue` is answered
by the proxy (http.server does it) and not forwarded. Path-style addressing only
(/bucket/key), as the pipeline's clients use with an endpoint.

Each request is classified (PutObject, UploadPart, CopyObject, UploadPartCopy,
CreateMultipartUpload, CompleteMultipartUpload, DeleteObject, DeleteObjects, GetObject,
HeadObject, ListObjects, ...) and tallied per client kind (`java`: Spark's S3A on the AWS SDK
for Java; `python`: botocore, boto3, s3fs; `other`). Successful (2xx) requests only count
towards objects and bytes:

- written: PutObject (bytes: x-amz-decoded-content-length when the body is aws-chunked,
  else Content-Length, else the bytes streamed), UploadPart bytes, and one object per
  CompleteMultipartUpload whose parts were uploaded;
- copied: CopyObject (bytes: the source's size, asked of the server with a HEAD before the
  copy), UploadPartCopy bytes (x-amz-copy-source-range, else the source's size), and one
  object per CompleteMultipartUpload whose parts were all copies;
- deleted: DeleteObject, and the <Key> entries of a DeleteObjects request;
- read: GetObject response bytes.

The copy sizes come from a HEAD signed with the environment's credentials (`testing`
when there are none, the tests' default identity). `requests()` is the log: each request's time,
client, operation, path, status and what it added, for splits by time (`tally_of`).

    with S3Counter(s3_endpoint) as counter:
        client = boto3.client("s3", endpoint_url=counter.url)
        ...
        print(counter.tally().summary())
"""

from __future__ import annotations

import contextlib
import http.client
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PIECE = 1 << 16
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",  # answered by the proxy itself
    }
)
WRITE_OPS = ("PutObject", "UploadPart")
COPY_OPS = ("CopyObject", "UploadPartCopy")
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")
_KEY = re.compile(rb"<Key>")


def client_of(user_agent: str) -> str:
    """`java` (S3A / AWS SDK for Java), `python` (botocore, boto3, s3fs) or `other`."""
    agent = user_agent.lower()
    if "aws-sdk-java" in agent or "hadoop" in agent or "s3a" in agent:
        return "java"
    if "botocore" in agent or "boto3" in agent or "aiobotocore" in agent:
        return "python"
    return "other"


def operation(method: str, path: str, query: dict[str, list[str]], headers: Any) -> str:
    """The S3 operation of a path-style request."""
    key = unquote(path).lstrip("/").partition("/")[2]
    copy = headers.get("x-amz-copy-source") is not None
    if method == "PUT":
        if not key:
            return "PutBucket" + ("" if not query else "Config")
        if copy:
            return "UploadPartCopy" if "partNumber" in query else "CopyObject"
        if "partNumber" in query and "uploadId" in query:
            return "UploadPart"
        if query.keys() & {"tagging", "acl", "retention", "legal-hold"}:
            return "PutObjectConfig"
        return "PutObject"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
        if "delete" in query:
            return "DeleteObjects"
        return "Post"
    if method == "DELETE":
        if "uploadId" in query:
            return "AbortMultipartUpload"
        return "DeleteObject" if key else "DeleteBucket"
    if method == "HEAD":
        return "HeadObject" if key else "HeadBucket"
    if method == "GET":
        if not key:
            if "uploads" in query:
                return "ListMultipartUploads"
            if query.keys() & {"location", "versioning", "policy", "acl", "cors", "lifecycle"}:
                return "GetBucketConfig"
            return "ListObjects"
        return "ListParts" if "uploadId" in query else "GetObject"
    return method


@dataclass
class Tally:
    """Requests by operation, and the objects and bytes written, copied, deleted and read."""

    requests: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)  # non-2xx responses, by operation
    objects_written: int = 0
    empty_objects_written: int = 0  # of which zero-byte PutObjects (S3A directory markers)
    bytes_written: int = 0
    objects_copied: int = 0
    bytes_copied: int = 0
    objects_deleted: int = 0
    bytes_read: int = 0
    copy_sizes_unknown: int = 0  # copies whose source the server would not HEAD

    FIGURES = (
        "objects_written",
        "empty_objects_written",
        "bytes_written",
        "objects_copied",
        "bytes_copied",
        "objects_deleted",
        "bytes_read",
        "copy_sizes_unknown",
    )

    def __add__(self, other: Tally) -> Tally:
        total = Tally(self.requests + other.requests, self.failed + other.failed)
        for name in self.FIGURES:
            setattr(total, name, getattr(self, name) + getattr(other, name))
        return total

    def __sub__(self, other: Tally) -> Tally:
        """What happened between two snapshots (`later - earlier`)."""
        requests, failed = Counter(self.requests), Counter(self.failed)
        requests.subtract(other.requests)
        failed.subtract(other.failed)
        diff = Tally(+requests, +failed)
        for name in self.FIGURES:
            setattr(diff, name, getattr(self, name) - getattr(other, name))
        return diff

    def copy(self) -> Tally:
        return self + Tally()

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def figures(self) -> dict[str, int]:
        """The object and byte figures, by name."""
        return {name: getattr(self, name) for name in self.FIGURES}

    def summary(self) -> str:
        """A few lines: objects and bytes, then requests by operation."""
        mb = 1024 * 1024
        lines = [
            f"written {self.objects_written} objects ({self.empty_objects_written} empty), "
            f"{self.bytes_written / mb:.2f} MiB; "
            f"copied {self.objects_copied} objects, {self.bytes_copied / mb:.2f} MiB; "
            f"deleted {self.objects_deleted} objects; read {self.bytes_read / mb:.2f} MiB",
            f"{self.total_requests} requests: "
            + ", ".join(f"{op} {n}" for op, n in sorted(self.requests.items())),
        ]
        if self.failed:
            lines.append(
                "non-2xx: " + ", ".join(f"{op} {n}" for op, n in sorted(self.failed.items()))
            )
        if self.copy_sizes_unknown:
            lines.append(f"{self.copy_sizes_unknown} copies of unknown size (HEAD refused)")
        return "\n".join(lines)


@dataclass(frozen=True)
class Request:
    """One request through the proxy, as logged."""

    at: float  # time.monotonic() when its response came
    client: str
    op: str
    path: str
    status: int
    tally: Tally  # what it adds to its client's tally


def tally_of(requests: Iterable[Request]) -> Tally:
    """The tally of some logged requests (e.g. one client's within a time window)."""
    total = Tally()
    for request in requests:
        total = total + request.tally
    return total


class S3Counter:
    """The counting proxy: start/stop, or a context manager; `url` is its endpoint."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self._lock = threading.Lock()
        self._tallies: dict[str, Tally] = {}
        self._uploads: dict[str, set[str]] = {}  # uploadId -> {"write", "copy"}
        self.log: list[Request] = []
        self._client: Any = None  # boto3, for the HEAD of a copy's source
        self._server = _Server((host, port), _Handler, self)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> S3Counter:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="s3-counter", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> S3Counter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the figures ---

    def tally(self, client: str | None = None) -> Tally:
        """A snapshot of the figures: one client kind's, or all of them summed."""
        with self._lock:
            if client is not None:
                return self._tallies.get(client, Tally()).copy()
            total = Tally()
            for tally in self._tallies.values():
                total = total + tally
            return total

    def clients(self) -> list[str]:
        """The client kinds seen so far."""
        with self._lock:
            return sorted(self._tallies)

    def reset(self) -> None:
        """Forget every figure and the log (multipart uploads in flight are still tracked)."""
        with self._lock:
            self._tallies.clear()
            self.log.clear()

    def record(
        self,
        client: str,
        op: str,
        path: str,
        query: dict[str, list[str]],
        status: int,
        size: int,
        keys: int = 0,
        size_unknown: bool = False,
    ) -> None:
        """Tally one forwarded request (called by the handler before its response goes)."""
        delta = Tally()
        delta.requests[op] += 1
        with self._lock:
            if not 200 <= status < 300:
                delta.failed[op] += 1
            else:
                upload = (query.get("uploadId") or [""])[0]
                if op == "PutObject":
                    delta.objects_written += 1
                    delta.empty_objects_written += size == 0
                    delta.bytes_written += size
                elif op == "UploadPart":
                    delta.bytes_written += size
                    self._uploads.setdefault(upload, set()).add("write")
                elif op == "CopyObject":
                    delta.objects_copied += 1
                    delta.bytes_copied += size
                    delta.copy_sizes_unknown += size_unknown
                elif op == "UploadPartCopy":
                    delta.bytes_copied += size
                    delta.copy_sizes_unknown += size_unknown
                    self._uploads.setdefault(upload, set()).add("copy")
                elif op == "CompleteMultipartUpload":
                    if self._uploads.pop(upload, set()) == {"copy"}:
                        delta.objects_copied += 1
                    else:
                        delta.objects_written += 1
                elif op == "AbortMultipartUpload":
                    self._uploads.pop(upload, None)
                elif op == "DeleteObject":
                    delta.objects_deleted += 1
                elif op == "DeleteObjects":
                    delta.objects_deleted += keys
                elif op == "GetObject":
                    delta.bytes_read += size
            self._tallies[client] = self._tallies.get(client, Tally()) + delta
            self.log.append(Request(time.monotonic(), client, op, path, status, delta))

    def requests(self) -> list[Request]:
        """A copy of the request log, oldest first."""
        with self._lock:
            return list(self.log)

    # --- upstream ---

    def connection(self, timeout: float = 600.0) -> http.client.HTTPConnection:
        """A new connection to the server (one per request: nothing to go stale)."""
        return http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=timeout)

    def source_size(self, copy_source: str) -> int | None:
        """The size of a copy's source object (x-amz-copy-source), by a signed HEAD to the
        server (credentials from the environment, else `testing`)."""
        source, _, version = copy_source.partition("?versionId=")
        bucket, _, key = unquote(source).lstrip("/").partition("/")
        try:
            extra = {"VersionId": unquote(version)} if version else {}
            return int(self._head_client().head_object(Bucket=bucket, Key=key, **extra)
                       ["ContentLength"])  # fmt: skip
        except Exception:  # any refusal: the copy is counted, its size marked unknown
            return None

    def _head_client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                import botocore.config

                session = boto3.session.Session()
                if session.get_credentials() is None:
                    session = boto3.session.Session(
                        aws_access_key_id="testing", aws_secret_access_key="testing"
                    )
                self._client = session.client(
                    "s3",
                    endpoint_url=f"http://{self.upstream_host}:{self.upstream_port}",
                    region_name=session.region_name or "us-east-1",
                    config=botocore.config.Config(
                        s3={"addressing_style": "path"}, retries={"max_attempts": 3}
                    ),
                )
            return self._client


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: type, counter: S3Counter) -> None:
        self.counter = counter
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, chunked bodies, Expect: 100-continue
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tallies are the log."""

    def do_GET(self) -> None:
        self._proxy()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = do_GET

    def _body(self) -> Iterator[bytes]:
        """The request body as it arrives (de-chunked when the transfer is chunked)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers: none of the S3 clients sends HTTP trailers
                    return
                left = size
                while left:
                    piece = self.rfile.read(min(PIECE, left))
                    if not piece:
                        raise ConnectionError("client closed mid-chunk")
                    left -= len(piece)
                    yield piece
                self.rfile.readline()  # CRLF after the chunk
        left = int(self.headers.get("Content-Length") or 0)
        while left:
            piece = self.rfile.read(min(PIECE, left))
            if not piece:
                raise ConnectionError("client closed mid-body")
            left -= len(piece)
            yield piece

    def _proxy(self) -> None:
        counter = self.server.counter
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        op = operation(self.command, parts.path, query, self.headers)
        client = client_of(self.headers.get("User-Agent", ""))
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        size, size_unknown, keys = 0, False, 0
        copy_source = self.headers.get("x-amz-copy-source")
        if op in COPY_OPS and copy_source:
            ranged = _RANGE.fullmatch(self.headers.get("x-amz-copy-source-range", "").strip())
            if ranged:
                size = int(ranged.group(2)) - int(ranged.group(1)) + 1
            else:
                source = counter.source_size(copy_source)
                size, size_unknown = source or 0, source is None
        body: Iterator[bytes] | list[bytes] = self._body()
        streamed = 0
        conn = counter.connection()
        sent_headers = recorded = False
        try:
            if op == "DeleteObjects":  # small XML: read whole to count its keys
                body = list(body)
                keys = len(_KEY.findall(b"".join(body)))
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    conn.putheader(name, value)
            if chunked:
                conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for piece in body:
                streamed += len(piece)
                conn.send(b"%X\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            if chunked:
                conn.send(b"0\r\n\r\n")
            reply = conn.getresponse()
            if op in WRITE_OPS:
                declared = self.headers.get("x-amz-decoded-content-length")
                if declared is None and not chunked:
                    declared = self.headers.get("Content-Length")
                size = int(declared) if declared is not None else streamed
            self.send_response_only(reply.status, reply.reason)
            length = reply.getheader("Content-Length")
            bodiless = self.command == "HEAD" or reply.status in (204, 304) or reply.status < 200
            for name, value in reply.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            rechunk = not bodiless and length is None
            if rechunk:
                self.send_header("Transfer-Encoding", "chunked")
            if op == "GetObject":
                size = int(length) if length is not None and not bodiless else 0
            # Tallied before the client sees a byte of the response, so that a snapshot it
            # takes after its call returns includes that call (unless the size is unknown).
            recorded = not (op == "GetObject" and rechunk)
            if recorded:
                counter.record(client, op, parts.path, query, reply.status, size, keys,
                               size_unknown)  # fmt: skip
            self.end_headers()
            sent_headers = True
            read = 0
            if not bodiless:
                while piece := reply.read(PIECE):
                    read += len(piece)
                    self.wfile.write(b"%X\r\n%s\r\n" % (len(piece), piece) if rechunk else piece)
                if rechunk:
                    self.wfile.write(b"0\r\n\r\n")
            if not recorded:
                counter.record(client, op, parts.path, query, reply.status, read)
                recorded = True
            self.wfile.flush()
        except (OSError, http.client.HTTPException) as exc:
            if not recorded:
                counter.record(client, op, parts.path, query, 599, 0)
            self.close_connection = True
            if not sent_headers:
                with contextlib.suppress(OSError):
                    message = f"s3 counter: upstream failed: {exc!r}".encode()
                    self.send_response_only(502)
                    self.send_header("Content-Length", str(len(message)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(message)
        finally:
            conn.close()
