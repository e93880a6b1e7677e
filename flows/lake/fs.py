"""The lake: one filesystem abstraction for local paths and S3, and atomic partition commits."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from flows.errors import PermanentError, PipelineError, TransientError
from flows.lake import layout, storage
from flows.lake.layout import POINTER, RETIRED

if TYPE_CHECKING:
    from flows.settings import Settings

log = logging.getLogger(__name__)

RETIRED_GRACE_S = 600.0  # a reader that listed the old version has this long to read it


def storage_options(uri: str, s3_endpoint: str | None) -> dict[str, Any]:
    """fsspec options for a lake URI: its storage scheme's (flows.lake.storage)."""
    return storage.storage_options(uri, s3_endpoint)


# Errors no retry can fix: the lake is full, read-only or not ours to write.
_PERMANENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def lake_error(exc: OSError, *, dataset: str, partition: str) -> PipelineError:
    """An operating-system error of the lake as a pipeline error naming where it happened."""
    path = exc.filename or ""
    text = exc.strerror or str(exc) or type(exc).__name__
    message = f"lake write failed: {text}" + (f" ({path})" if path else "")
    kind = PermanentError if exc.errno in _PERMANENT_ERRNOS else TransientError
    return kind(" ".join(message.split()), dataset=dataset, partition=partition)


@dataclass(frozen=True)
class Copied:
    """Objects and bytes a step copied (server-side on S3): what a publish by pointer avoids."""

    objects: int = 0
    bytes: int = 0

    def __add__(self, other: Copied) -> Copied:
        return Copied(self.objects + other.objects, self.bytes + other.bytes)


class Lake:
    """A lake root (local path, file:// or s3://); its paths come from `layout`."""

    def __init__(self, uri: str, *, s3_endpoint: str | None = None) -> None:
        self.uri = uri.rstrip("/")
        fs, root = fsspec.core.url_to_fs(
            storage.fsspec_uri(self.uri), **storage_options(self.uri, s3_endpoint)
        )
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = root.rstrip("/")
        self.is_local = isinstance(fs, LocalFileSystem)

    @classmethod
    def from_settings(cls, settings: Settings) -> Lake:
        """The lake a run's settings name (its URI and S3 endpoint)."""
        return cls(settings.lake, s3_endpoint=settings.s3_endpoint)

    def path(self, *parts: str) -> str:
        """An absolute path (or bucket key) inside the lake."""
        return "/".join([self.root, *parts])

    def partition(self, dataset: str, year: int) -> str:
        """Lake-relative folder of one raw partition."""
        return layout.raw_partition(dataset, year)

    def staging(self, dataset: str, year: int, load_id: str) -> str:
        """Lake-relative staging folder of one partition load (hidden from readers)."""
        return layout.raw_staging(dataset, year, load_id)

    def read_json(self, relative: str) -> Any | None:
        """A JSON document of the lake, or None when it does not exist."""
        try:
            # One GET: no size/ETag lookup first, which an overwrite in between (a pointer
            # being committed) would turn into s3fs's FileExpired.
            return json.loads(self.fs.cat_file(self.path(relative)))
        except FileNotFoundError:
            return None

    def write_json(self, relative: str, document: Any) -> None:
        """Write a JSON document as one object (a single PUT on S3)."""
        payload = json.dumps(document, indent=2, ensure_ascii=False, default=str).encode()
        if self.is_local:
            self._write_local_atomic(self.path(relative), payload)
            return
        with self.fs.open(self.path(relative), "wb") as handle:
            handle.write(payload)

    def _write_local_atomic(self, target: str, payload: bytes) -> None:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        temporary = f"{target}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            with open(temporary, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def pointer(self, dataset: str, year: int) -> dict[str, Any] | None:
        """The committed state of a partition (what was loaded, from which source version)."""
        return self.read_json(layout.raw_pointer(dataset, year))

    def remove(self, relative: str) -> None:
        """Delete a folder or object; one that is already gone is not an error.

        On S3 a "folder" is only a prefix: it can vanish between two calls when its last
        object is deleted, so nothing here checks for existence first.
        """
        target = self.path(relative)
        if self.is_local:
            if os.path.isdir(target):
                shutil.rmtree(target, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(target, recursive=True)

    def listing(self, relative: str) -> list[str]:
        """Names directly below a folder (empty when it does not exist, on S3 as locally)."""
        base = self.path(relative).rstrip("/")
        try:
            entries = (
                self.fs.ls(base, detail=False, refresh=True)
                if not self.is_local
                else [os.path.join(base, name) for name in os.listdir(base)]
            )
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = [str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries]
        return sorted(name for name in names if name and str(base).rsplit("/", 1)[-1] != name)

    def clear_staging(self, dataset: str, year: int, load_id: str) -> None:
        """Remove what an earlier attempt of this load staged for this partition (retries).

        Only this load's own folder: another run's staging is never touched here; staging of
        dead runs is swept once at the start of a run, under the lake's lease (`sweep_staging`).
        """
        self.remove(self.staging(dataset, year, load_id))

    def sweep_staging(self) -> list[str]:
        """Remove every staging folder of the lake; call only while holding the lake's lease
        and before staging anything, when all staging belongs to dead runs. Returns them."""
        swept = []
        for dataset in self.listing(layout.RAW):
            root = layout.raw_staging_root(dataset)
            swept += [f"{root}/{name}" for name in self.listing(root)]
        swept += [layout.gold_staging(name) for name in self.listing(layout.GOLD_STAGING)]
        for relative in swept:
            self.remove(relative)
        if self.is_local:  # a temporary file of a killed atomic write
            for folder, _dirs, files in os.walk(self.path(layout.MANIFESTS)):
                for name in files:
                    if ".tmp-" in name:
                        swept.append(os.path.join(folder, name))
                        with contextlib.suppress(OSError):
                            os.unlink(os.path.join(folder, name))
        return swept

    def commit_partition(
        self, dataset: str, year: int, load_id: str, pointer: dict[str, Any]
    ) -> None:
        """Make a staged raw partition the current one."""
        self.commit_folder(
            self.staging(dataset, year, load_id), self.partition(dataset, year), pointer
        )

    def commit_folder(
        self, staged: str, final: str, pointer: dict[str, Any], *, keep_staged: bool = False
    ) -> Copied:
        """Make a staged folder the current one, whole, in one step readers cannot split.

        `pointer["files"]` lists the staged files (paths relative to the folder); the
        pointer is written as `_current.json` inside the committed folder. On S3 the files
        are copied server-side, concurrently (there is no rename); `keep_staged` leaves the
        source in place (a published gold version that readers of the publish pointer still
        follow). Returns what was copied (nothing locally).
        """
        self.check_lease()
        if self.is_local:
            folder = self.path(staged)
            missing = [n for n in pointer["files"] if not os.path.isfile(f"{folder}/{n}")]
            if missing:  # never commit a pointer to files that are not there
                raise FileNotFoundError(
                    errno.ENOENT, f"staged file(s) missing, nothing committed: {missing[:3]}",
                    self.path(staged),
                )  # fmt: skip
            self.write_json(f"{staged}/{POINTER}", pointer)
            self._swap_local(self.path(staged), self.path(final))
            return Copied()
        copied = self.copy_files([f"{staged}/{n}" for n in pointer["files"]],
                                 [f"{final}/{n}" for n in pointer["files"]])  # fmt: skip
        self.write_json(f"{final}/{POINTER}", pointer)
        keep = {self.path(f"{final}/{name}") for name in [*pointer["files"], POINTER]}
        stale = [entry for entry in self.fs.find(self.path(final)) if entry not in keep]
        if stale:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(stale)  # one DeleteObjects request per 1,000 keys
        if not keep_staged:
            self.remove(staged)
        return copied

    def copy_files(self, sources: list[str], targets: list[str]) -> Copied:
        """Copy lake files (lake-relative paths) server-side, concurrently on S3; returns the
        objects and bytes copied."""
        if not sources:
            return Copied()
        paths = [self.path(s) for s in sources]
        if self.is_local:
            size = sum(os.path.getsize(p) for p in paths)
        else:  # one listing for the sizes, not a HEAD per object
            below = self.fs.find(os.path.commonpath(paths), detail=True)
            size = sum(int(below[p]["size"]) for p in paths)
        if self.is_local:
            for source, target in zip(paths, targets, strict=True):
                os.makedirs(os.path.dirname(self.path(target)), exist_ok=True)
                shutil.copyfile(source, self.path(target))
        else:
            self.fs.copy(paths, [self.path(t) for t in targets])
        return Copied(objects=len(paths), bytes=size)

    def check_lease(self) -> None:
        """Refuse to commit once this process's lease on the lake was taken over."""
        from flows.lake.lease import held

        lease = held(self)
        if lease is not None:
            lease.check()

    def files_below(self, relative: str, suffix: str) -> list[str]:
        """Files below a folder with a suffix, as paths relative to it (hidden ones left out)."""
        base = self.path(relative)
        found = []
        for entry in self.fs.find(base):
            name = entry[len(base) :].lstrip("/")
            if name.endswith(suffix) and not any(p.startswith(("_", ".")) for p in name.split("/")):
                found.append(name)
        return sorted(found)

    def current_files(self, folder: str) -> list[str]:
        """The Parquet files of a committed folder's current version, relative to it.

        On S3 the `_current.json` pointer is the truth (a listing may briefly see a commit in
        progress); locally the swap is atomic, so the listing is.
        """
        if not self.is_local:
            pointer = self.read_json(f"{folder}/{POINTER}")
            if pointer is not None:
                return sorted(name for name in pointer["files"] if name.endswith(".parquet"))
        if not self.fs.exists(self.path(folder)):
            return []
        return self.files_below(folder, ".parquet")

    def replace_file(self, source: str, target: str) -> None:
        """Replace one file by another as a single step (rename locally, one copy on S3)."""
        if self.is_local:
            os.makedirs(os.path.dirname(self.path(target)), exist_ok=True)
            os.replace(self.path(source), self.path(target))
            return
        self.fs.copy(self.path(source), self.path(target))
        self.fs.rm(self.path(source))

    def _swap_local(self, staged: str, final: str) -> None:
        """Exchange the staged and current folders; the old version is retired, not deleted."""
        os.makedirs(os.path.dirname(final), exist_ok=True)
        if not os.path.exists(final):
            os.rename(staged, final)
            return
        retired = os.path.join(
            os.path.dirname(final), RETIRED, f"{time.time():.6f}-{os.path.basename(final)}"
        )
        os.makedirs(os.path.dirname(retired), exist_ok=True)
        if _exchange(staged, final):
            os.rename(staged, retired)
        else:
            os.rename(final, retired)
            os.rename(staged, final)
        self._purge_retired(os.path.dirname(retired))

    @staticmethod
    def _purge_retired(folder: str) -> None:
        """Delete retired versions once no reader can still be listing them."""
        horizon = time.time() - RETIRED_GRACE_S
        for name in os.listdir(folder):
            stamp = name.split("-", 1)[0]
            if stamp.replace(".", "", 1).isdigit() and float(stamp) < horizon:
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: str, second: str) -> bool:
    """Atomically swap two directories (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), first)
