"""One writer at a time: a lease on the lake that holds across processes, hosts and workers.

Every run that writes the lake (ingest, aggregate and publish, outputs) holds the lake's lease
for its whole duration. Locally the lease is an `fcntl.flock` on `<lake>/_lease`: the kernel
drops it when the holder dies, however it dies. On S3 it is the object `<lake>/_lease.json`,
created with a conditional PUT (`If-None-Match: *`), renewed by a heartbeat with `If-Match` on
its own ETag, and presumed dead once its expiry has passed: another run then takes it over with
`If-Match` on the dead holder's ETag, so two runs can never both believe they hold it. A holder
whose heartbeat finds its lease taken over stops before its next commit (`check`).

Holding the lease is what lets a run sweep every staging folder it finds: whatever is staged
and not its own belongs to a dead run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from flows.errors import PermanentError
from flows.lake.fs import Lake

log = logging.getLogger(__name__)

LOCAL_LEASE = "_lease"
S3_LEASE = "_lease.json"
POLL_S = 1.0  # how often a waiting run looks at the lease again
_UNWRITABLE = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM)
CLOCK_SKEW_S = 5.0  # hosts' clocks may differ this much: an expiry is honoured this long more


class LakeBusy(PermanentError):
    """Another live run holds the lake's lease (and kept it longer than we may wait)."""

    holder: dict[str, Any] | None = None


class LakeUnwritable(PermanentError):
    """The lake refuses writes (read-only, full, no permission): no run can start on it."""


class LeaseLost(PermanentError):
    """This run's lease expired and another run took the lake over: nothing more is committed."""


def _now() -> datetime:
    return datetime.now(UTC)


def describe(holder: dict[str, Any] | None) -> str:
    """A holder as an operator reads it: run, process, host, since when."""
    if not holder:
        return "an unknown run"
    text = f"run {holder.get('run', '?')} ({holder.get('command', '?')}, pid {holder.get('pid')}"
    text += f" on {holder.get('host', '?')}, since {holder.get('acquired_at', '?')}"
    if holder.get("expires_at"):
        text += f", lease valid until {holder['expires_at']}"
    return text + ")"


class Lease:
    """The lake's lease, held by one run; a context manager. Use `hold` for re-entrancy."""

    def __init__(
        self,
        lake: Lake,
        *,
        run: str,
        command: str = "",
        ttl_s: float = 60.0,
        wait_s: float = 3600.0,
        on_wait: Callable[[str], None] = log.warning,
    ) -> None:
        self.lake = lake
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.on_wait = on_wait
        self.holder: dict[str, Any] = {
            "run": run,
            "command": command,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        self._handle: Any = None  # the locked file (local lake)
        self._etag: str | None = None  # our lease object's version (S3 lake)
        self._lost: str | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # -- public ------------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the lease, waiting up to wait_s for a live holder; LakeBusy after that."""
        started = time.monotonic()
        announced = False
        while True:
            self.holder["acquired_at"] = _now().isoformat()
            try:
                holder = self._try_local() if self.lake.is_local else self._try_s3()
            except OSError as exc:  # a read-only or full lake, no permission, S3 refused
                if not isinstance(exc, PermissionError) and exc.errno not in _UNWRITABLE:
                    raise
                raise LakeUnwritable(
                    f"lake {self.lake.uri} cannot be written, so its lease cannot be taken: "
                    f"{exc.strerror or exc}",
                    url=self.lake.path(LOCAL_LEASE if self.lake.is_local else S3_LEASE),
                ) from exc
            if holder is None:
                log.info("lake %s: lease taken by run %s", self.lake.uri, self.holder["run"])
                return
            waited = time.monotonic() - started
            if waited >= self.wait_s:
                error = LakeBusy(
                    f"lake {self.lake.uri} is busy: {describe(holder)} holds its lease; "
                    f"waited {waited:.0f} s (ENERGY_PIPELINE_LEASE_WAIT_S={self.wait_s:g}); "
                    "one run writes a lake at a time"
                )
                error.holder = holder
                raise error
            if not announced:
                self.on_wait(
                    f"lake {self.lake.uri} is busy: {describe(holder)} holds its lease; "
                    f"waiting up to {self.wait_s:g} s"
                )
                announced = True
            time.sleep(min(POLL_S, max(0.05, self.wait_s - waited)))

    def check(self) -> None:
        """Raise LeaseLost if another run took the lake over (call before every commit)."""
        if self._lost:
            raise LeaseLost(self._lost, url=self.lake.uri)

    def release(self) -> None:
        """Give the lease back (idempotent)."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=10)
            self._heartbeat = None
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.truncate(0)  # an empty lease file: nobody holds the lake
            with contextlib.suppress(OSError):
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
        if self._etag is not None and not self._lost:
            with contextlib.suppress(OSError):
                self._s3("delete_object", IfMatch=self._etag)
            self._etag = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- local: flock ------------------------------------------------------------------------

    def _try_local(self) -> dict[str, Any] | None:
        os.makedirs(self.lake.root, exist_ok=True)
        path = self.lake.path(LOCAL_LEASE)
        handle = open(path, "a+")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                handle.close()
                raise
            handle.seek(0)
            text = handle.read()
            handle.close()
            try:
                return dict(json.loads(text)) if text.strip() else {}
            except ValueError:
                return {}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(self.holder))
        handle.flush()
        self._handle = handle
        return None

    # -- S3: conditional writes --------------------------------------------------------------

    def _s3(self, method: str, **kwargs: Any) -> dict[str, Any]:
        bucket, _, prefix = self.lake.root.partition("/")
        key = f"{prefix}/{S3_LEASE}" if prefix else S3_LEASE
        return dict(self.lake.fs.call_s3(method, Bucket=bucket, Key=key, **kwargs))

    def _document(self) -> bytes:
        now = _now()
        self.holder["heartbeat_at"] = now.isoformat()
        self.holder["expires_at"] = (now + timedelta(seconds=self.ttl_s)).isoformat()
        return json.dumps(self.holder).encode()

    def _try_s3(self) -> dict[str, Any] | None:
        try:
            answer = self._s3("put_object", Body=self._document(), IfNoneMatch="*")
        except OSError as exc:
            if not _conflict(exc):
                raise
        else:
            self._held(answer["ETag"])
            return None
        try:
            current = self._s3("get_object")
        except FileNotFoundError:
            return {}  # released between our two calls: try again at once
        body = _read_body(self.lake, current["Body"])
        try:
            holder = json.loads(body or b"{}")
        except ValueError:
            holder = {}  # unreadable: treated as expired, and taken over with its ETag
        expires = _parse_time(holder.get("expires_at"))
        if expires is not None and _now() < expires + timedelta(seconds=CLOCK_SKEW_S):
            return dict(holder)
        # The holder stopped renewing: it is dead (or cut off). Take over its exact version.
        try:
            answer = self._s3("put_object", Body=self._document(), IfMatch=current["ETag"])
        except OSError as exc:
            if _conflict(exc) or isinstance(exc, FileNotFoundError):
                return {}  # someone else took it over, or it was released: look again
            raise
        log.warning("lake %s: took over the expired lease of %s", self.lake.uri, describe(holder))
        self._held(answer["ETag"])
        return None

    def _held(self, etag: str) -> None:
        self._etag = etag
        self._stop.clear()
        self._heartbeat = threading.Thread(
            target=self._beat, name="lake-lease-heartbeat", daemon=True
        )
        self._heartbeat.start()

    def _beat(self) -> None:
        """Renew the lease every third of its TTL; give up (lost) once it may have expired."""
        renewed = time.monotonic()
        while not self._stop.wait(self.ttl_s / 3):
            try:
                answer = self._s3("put_object", Body=self._document(), IfMatch=self._etag)
            except OSError as exc:
                if _conflict(exc) or isinstance(exc, FileNotFoundError):
                    self._lost = (
                        f"the lake's lease of run {self.holder['run']} was taken over by "
                        "another run (this run stopped renewing it in time); nothing more "
                        "is committed by this run"
                    )
                    return
                if time.monotonic() - renewed > self.ttl_s:
                    self._lost = f"the lake's lease could not be renewed for {self.ttl_s:g} s"
                    return
                log.warning("lake %s: lease renewal failed, will retry: %s", self.lake.uri, exc)
                continue
            self._etag = answer["ETag"]
            renewed = time.monotonic()


def _read_body(lake: Lake, body: Any) -> bytes:
    """The bytes of a get_object body (an aiobotocore stream read on s3fs's loop)."""
    from fsspec.asyn import sync

    async def read() -> bytes:
        async with body as stream:
            return bytes(await stream.read())

    return bytes(sync(lake.fs.loop, read))


def _conflict(exc: BaseException) -> bool:
    """Whether an S3 error is a failed precondition (412) or a concurrent conditional write."""
    if isinstance(exc, FileExistsError):
        return True
    cause = exc.__cause__
    response = getattr(cause, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


def _parse_time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


_HELD: dict[str, tuple[Lease, int]] = {}
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def hold(
    lake: Lake,
    *,
    run: str,
    command: str = "",
    ttl_s: float = 60.0,
    wait_s: float = 3600.0,
    on_acquired: Callable[[Lease], object] | None = None,
) -> Iterator[Lease]:
    """Hold the lake's lease for a block; nested holds in one process share one lease.

    `on_acquired` runs once, right after the lease is taken (the sweep of dead runs' work).
    """
    with _HELD_LOCK:
        entry = _HELD.get(lake.uri)
        if entry is not None:
            _HELD[lake.uri] = (entry[0], entry[1] + 1)
    if entry is not None:
        try:
            yield entry[0]
        finally:
            with _HELD_LOCK:
                lease, count = _HELD[lake.uri]
                _HELD[lake.uri] = (lease, count - 1)
        return
    lease = Lease(lake, run=run, command=command, ttl_s=ttl_s, wait_s=wait_s)
    lease.acquire()
    with _HELD_LOCK:
        _HELD[lake.uri] = (lease, 1)
    try:
        if on_acquired is not None:
            on_acquired(lease)
        yield lease
    finally:
        with _HELD_LOCK:
            _HELD.pop(lake.uri, None)
        lease.release()


def held(lake: Lake) -> Lease | None:
    """The lease this process holds on a lake, if any."""
    with _HELD_LOCK:
        entry = _HELD.get(lake.uri)
    return entry[0] if entry else None
