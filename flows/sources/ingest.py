"""Ingestion of one partition (dataset x year): plan, stream, validate, dedup, stage, commit."""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flows.crashpoints import crashpoint
from flows.errors import PermanentError, PipelineError, TransientError
from flows.lake import layout
from flows.lake.fs import Lake, lake_error
from flows.lake.readers import all_raw_pointers
from flows.settings import Settings
from flows.sources.catalog import Dataset, get_dataset
from flows.sources.portals import client_for
from flows.sources.portals.base import PartitionInfo, PartitionStats, PortalClient
from flows.sources.spool import KeySpool, lake_schema
from flows.sources.validate import (
    REASON,
    CodeNotRestorable,
    normalise,
    restore_codes,
    validate_chunk,
)

log = logging.getLogger(__name__)


class PlanAction(StrEnum):
    """What a plan does with a partition."""

    LOAD = "load"
    SKIP = "skip"


class PartitionStatus(StrEnum):
    """How a partition ended in a load (its `status` in the load manifest)."""

    LOADED = "loaded"
    SKIPPED = "skipped"
    FAILED = "failed"


class LoadStatus(StrEnum):
    """How a whole load ended (the load manifest's `status`)."""

    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # killed; its manifest rebuilt by the next run (recover_loads)


@dataclass(frozen=True)
class PartitionPlan:
    """What to do with one partition, and why."""

    dataset: str
    year: int
    action: PlanAction
    reason: str
    signal: str
    count: int | None
    checksum: float | None
    source_fields: tuple[str, ...]
    metadata_url: str
    source_types: tuple[tuple[str, str], ...] = ()  # (field, type) as the portal declares

    @property
    def declared_types(self) -> dict[str, str]:
        """The portal's declared type per source field (ODS text/int/double/date...,
        Data Fair string/integer/number...)."""
        return dict(self.source_types)

    @property
    def label(self) -> str:
        """`dataset/annee=YYYY`, as logs and errors name a partition."""
        return layout.partition_label(self.dataset, self.year)


@dataclass
class PartitionResult:
    """What a partition load did; one entry of the load manifest."""

    dataset: str
    partition: str
    year: int
    status: PartitionStatus
    reason: str = ""
    source_signal: str = ""
    url: str = ""
    rows_expected: int | None = None
    rows_received: int = 0
    rows_written: int = 0
    rows_quarantined: int = 0
    exact_duplicates_dropped: int = 0
    bytes_received: int = 0
    bytes_written: int = 0
    duration_s: float = 0.0
    extra_columns: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    codes_restored: dict[str, int] = field(default_factory=dict)  # column -> rows from numbers
    quarantine_file: str = ""  # lake-relative Parquet file of this load's quarantined rows

    def __post_init__(self) -> None:
        self.status = PartitionStatus(self.status)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy: the entry of the load manifest."""
        return {**asdict(self), "status": self.status.value}


@dataclass
class IngestReport:
    """What an ingestion run did, partition by partition; its `to_dict` is the load manifest."""

    load_id: str
    lake: str
    results: list[PartitionResult] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def failed(self) -> list[PartitionResult]:
        """Partitions that could not be loaded."""
        return [r for r in self.results if r.status == PartitionStatus.FAILED]

    @property
    def status(self) -> LoadStatus:
        """Failed when any partition failed (the others are committed), else completed."""
        return LoadStatus.FAILED if self.failed else LoadStatus.COMPLETED

    def count(self, status: PartitionStatus) -> int:
        """How many partitions ended with a status."""
        return sum(r.status == status for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        """The load manifest."""
        return {
            "load_id": self.load_id,
            "lake": self.lake,
            "status": self.status.value,
            "started_at": self.started_at,
            "finished_at": datetime.now(UTC).isoformat(),
            "partitions": [r.to_dict() for r in self.results],
        }


def plan_dataset(
    dataset: Dataset,
    years: Iterable[int] | None,
    force: bool,
    client: PortalClient,
    lake: Lake,
) -> list[PartitionPlan]:
    """Partitions of one dataset to load or skip, from its metadata and per-year counts."""
    metadata = client.metadata(dataset)
    available = client.partitions(dataset, metadata)
    wanted = sorted(set(years) if years else set(available))
    plans = []
    for year in wanted:
        info = available.get(year)
        action, reason = _decide(info, lake.pointer(dataset.name, year), metadata.signal, force)
        plans.append(
            PartitionPlan(
                dataset=dataset.name,
                year=year,
                action=action,
                reason=reason,
                signal=metadata.signal,
                count=info.count if info else None,
                checksum=info.checksum if info else None,
                source_fields=metadata.fields,
                metadata_url=metadata.url,
                source_types=tuple(sorted(metadata.types.items())),
            )
        )
    return plans


def _decide(
    info: PartitionInfo | None, committed: dict[str, Any] | None, signal: str, force: bool
) -> tuple[PlanAction, str]:
    load, skip = PlanAction.LOAD, PlanAction.SKIP
    if info is None:
        return skip, "absent at the source"
    if force:
        return load, "forced"
    if committed is None:
        return load, "never loaded"
    if committed.get("source_count") != info.count:
        return load, f"count changed {committed.get('source_count')} -> {info.count}"
    if committed.get("source_signal") == signal:
        return skip, "unchanged (same change signal and count)"
    if info.checksum is not None and committed.get("source_checksum") == info.checksum:
        return skip, "unchanged (source updated, but this year's count and sum are the same)"
    return load, f"source changed ({committed.get('source_signal')} -> {signal})"


def load_partition(
    plan: PartitionPlan, settings: Settings, lake: Lake, load_id: str
) -> PartitionResult:
    """Download, validate and commit one partition; raises and commits nothing on failure."""
    dataset = get_dataset(plan.dataset)
    client = client_for(dataset, settings)
    client.declare(dataset, plan.declared_types)
    started = time.monotonic()
    stats = PartitionStats()
    try:
        try:
            return _load(plan, dataset, client, lake, load_id, settings, stats, started)
        except BaseException:
            _drop_own_staging(lake, plan, load_id)
            raise
    except PipelineError as exc:
        raise exc.with_context(dataset=plan.dataset, partition=plan.label) from exc.__cause__
    except OSError as exc:  # the lake (or the spool) failed: name where, and what
        raise lake_error(exc, dataset=plan.dataset, partition=plan.label) from exc
    finally:
        client.close()


def _drop_own_staging(lake: Lake, plan: PartitionPlan, load_id: str) -> None:
    """A failed partition removes what it staged (a kill leaves it to the next run's sweep)."""
    try:
        lake.clear_staging(plan.dataset, plan.year, load_id)
    except Exception as exc:  # the failure being raised matters more
        log.warning("%s: could not remove its staging folder: %s", plan.label, exc)


def _load(
    plan: PartitionPlan,
    dataset: Dataset,
    client: PortalClient,
    lake: Lake,
    load_id: str,
    settings: Settings,
    stats: PartitionStats,
    started: float,
) -> PartitionResult:
    _require_columns(dataset, plan.source_fields, plan.metadata_url)
    extras = _extras(dataset, plan.source_fields)
    expected = client.count(dataset, plan.year)
    lake.clear_staging(dataset.name, plan.year, load_id)
    schema = lake_schema(dataset, extras)
    spool = KeySpool(schema, dataset.natural_key, expected, settings.spool_bucket_rows)
    quarantine: list[pd.DataFrame] = []
    rules: Counter[str] = Counter()  # quarantined rows per failed rule
    restored: Counter[str] = Counter()
    declared = plan.declared_types
    limit = _quarantine_limit(settings, expected)
    seen = rejected = 0
    try:
        for frame in _rebatch(
            client.stream(dataset, plan.year, stats), settings.validation_chunk_rows
        ):
            _check_columns(dataset, frame, extras, stats.url)
            try:
                frame, fixed = restore_codes(dataset, frame, declared)
            except CodeNotRestorable as exc:
                raise PermanentError(str(exc), url=stats.url) from exc
            restored.update(fixed)
            result = validate_chunk(dataset, plan.year, normalise(dataset, frame))
            spool.add(result.good)
            seen += len(frame)
            if len(result.bad):
                quarantine.append(result.bad)
                rules.update(result.rules)
                rejected += len(result.bad)
            del frame, result
            gc.collect()  # pandas frames hold reference cycles: keep memory flat per chunk
            if rejected > limit:  # it can only grow: stop pulling a partition bound to fail
                _reject(lake, plan, load_id, quarantine, rules, seen, expected, limit, stats.url)
        _check_complete(stats, expected)
        files, written, duplicates, written_bytes = _stage(
            lake, dataset, plan.year, load_id, spool, quarantine, rules
        )
    finally:
        spool.close()
    crashpoint("partition-staged")
    quarantined = sum(len(q) for q in quarantine)
    limit = _quarantine_limit(settings, stats.rows)
    if quarantined > limit:
        _reject(lake, plan, load_id, quarantine, rules, stats.rows, expected, limit, stats.url)
    if restored:
        log.warning(
            "%s: code column(s) typed as numbers by the portal (declared %s); zeros restored "
            "at their known width in %s",
            plan.label,
            {c: declared.get(c, "?") for c in restored},
            dict(restored),
        )
    if extras:
        log.warning("%s: schema drift, extra columns kept as text: %s", plan.label, extras)
    outcome = PartitionResult(
        dataset=dataset.name,
        partition=plan.label,
        year=plan.year,
        status=PartitionStatus.LOADED,
        reason=plan.reason,
        source_signal=plan.signal,
        url=stats.url,
        rows_expected=expected,
        rows_received=stats.rows,
        rows_written=written,
        rows_quarantined=quarantined,
        exact_duplicates_dropped=duplicates,
        bytes_received=stats.bytes,
        bytes_written=written_bytes,
        duration_s=round(time.monotonic() - started, 3),
        extra_columns=extras,
        files=files,
        codes_restored=dict(restored),
    )
    # The quarantined rows and the load's record become visible with the partition, in the
    # same commit: the pointer names them. A quarantine file whose load never committed is
    # not named by any pointer; the next run sweeps it (`sweep_orphan_quarantine`).
    if quarantine:
        outcome.quarantine_file = _write_quarantine(
            lake, dataset.name, plan.year, load_id, quarantine
        )
    crashpoint("quarantine-written")
    pointer = {
        "load_id": load_id,
        "dataset": dataset.name,
        "year": plan.year,
        "source_signal": plan.signal,
        "source_count": expected,
        "source_checksum": plan.checksum,
        "url": stats.url,
        "rows": written,
        "files": files,
        "quarantine": outcome.quarantine_file or None,
        "load": outcome.to_dict(),
        "committed_at": datetime.now(UTC).isoformat(),
    }
    lake.commit_partition(dataset.name, plan.year, load_id, pointer)
    crashpoint("partition-committed")
    return outcome


def _quarantine_limit(settings: Settings, rows: int) -> int:
    """Quarantined rows a partition of `rows` rows may have before it counts as systematic."""
    return max(settings.quarantine_max_rows, int(settings.quarantine_max_share * rows))


def _reject(
    lake: Lake,
    plan: PartitionPlan,
    load_id: str,
    quarantine: list[pd.DataFrame],
    rules: Counter[str],
    seen: int,
    expected: int,
    limit: int,
    url: str,
) -> None:
    """Fail a partition whose rejections are systematic: nothing is committed.

    The rejected rows are still written to quarantine/ under this load id, so the operator
    can see what the portal served; quarantine files are never read as data.
    """
    quarantined = sum(len(q) for q in quarantine)
    if quarantine:
        _write_quarantine(lake, plan.dataset, plan.year, load_id, quarantine)
    lake.clear_staging(plan.dataset, plan.year, load_id)
    rule, count = rules.most_common(1)[0] if rules else ("unknown", quarantined)
    if seen >= expected:
        scope = f"{quarantined:,} of {seen:,} rows quarantined (limit {limit:,})"
    else:
        scope = (
            f"{quarantined:,} of the first {seen:,} rows quarantined, transfer stopped "
            f"(the portal counts {expected:,}; limit {limit:,})"
        )
    others = len(rules) - 1
    raise PermanentError(
        f"systematic rejection: {scope}; most common reason: {rule} ({count:,} rows)"
        + (f" and {others} other reason(s)" if others > 0 else "")
        + "; nothing committed, rejected rows in "
        + layout.quarantine_file(plan.dataset, plan.year, load_id),
        url=url,
    )


def _require_columns(dataset: Dataset, source_fields: tuple[str, ...], url: str) -> None:
    present = {dataset.canonical(f) for f in source_fields}
    missing = [c for c in dataset.required if c not in present]
    if missing:
        raise PermanentError(
            f"required column(s) missing at the source: {', '.join(missing)}; "
            "the portal changed its schema: update the catalog entry",
            url=url,
        )


def _extras(dataset: Dataset, source_fields: tuple[str, ...]) -> list[str]:
    known = dataset.column_map
    return [c for c in dict.fromkeys(dataset.canonical(f) for f in source_fields) if c not in known]


def _check_columns(dataset: Dataset, frame: pd.DataFrame, extras: list[str], url: str) -> None:
    names = {dataset.canonical(c) for c in frame.columns}
    unexpected = names - set(dataset.column_map) - set(extras)
    if unexpected:
        raise TransientError(
            f"columns not declared by the portal's metadata: {sorted(unexpected)} "
            "(schema changed during the transfer)",
            url=url,
        )
    if dataset.protocol == "opendatasoft":
        missing = [c for c in dataset.required if c not in names]
        if missing:
            raise PermanentError(f"required column(s) missing in the export: {missing}", url=url)


def _rebatch(frames: Iterator[pd.DataFrame], rows: int) -> Iterator[pd.DataFrame]:
    pending: list[pd.DataFrame] = []
    size = 0
    for frame in frames:
        pending.append(frame)
        size += len(frame)
        if size >= rows:
            yield _concat(pending)
            pending, size = [], 0
    if pending:
        yield _concat(pending)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    return pd.concat(frames, ignore_index=True, sort=False)


def _check_complete(stats: PartitionStats, expected: int) -> None:
    if stats.expected is not None and stats.expected != expected:
        raise TransientError(
            f"the portal's count moved during the load ({expected} then {stats.expected})",
            url=stats.url,
        )
    if stats.rows != expected:
        raise TransientError(
            f"incomplete transfer: received {stats.rows} rows, the portal counts {expected}",
            url=stats.url,
        )


def _stage(
    lake: Lake,
    dataset: Dataset,
    year: int,
    load_id: str,
    spool: KeySpool,
    quarantine: list[pd.DataFrame],
    rules: Counter[str],
) -> tuple[list[str], int, int, int]:
    staged = lake.staging(dataset.name, year, load_id)
    lake.fs.makedirs(lake.path(staged), exist_ok=True)
    files: list[str] = []
    written = duplicates = written_bytes = 0
    key = ", ".join(dataset.natural_key)
    for number, bucket in enumerate(spool.resolve()):
        duplicates += bucket.exact_duplicates
        if len(bucket.conflicts):
            reason = f"natural key ({key}) shared by rows with different values"
            quarantine.append(bucket.conflicts.astype("str").assign(**{REASON: reason}))
            rules[reason] += len(bucket.conflicts)
        if bucket.rows.num_rows == 0:
            continue
        name = f"part-{load_id}-{number:05d}.parquet"
        table = (
            bucket.rows.drop_columns(["annee"])
            if "annee" in bucket.rows.column_names
            else bucket.rows
        )
        path = lake.path(f"{staged}/{name}")
        with lake.fs.open(path, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")
        written_bytes += lake.fs.size(path)
        files.append(name)
        written += table.num_rows
    return files, written, duplicates, written_bytes


def _write_quarantine(
    lake: Lake, dataset: str, year: int, load_id: str, frames: list[pd.DataFrame]
) -> str:
    rows = pd.concat(frames, ignore_index=True, sort=False).astype("str")
    rows["_load_id"] = load_id
    table = pa.Table.from_pandas(rows, preserve_index=False)
    relative = layout.quarantine_file(dataset, year, load_id)
    target = lake.path(relative)
    lake.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    with lake.fs.open(target, "wb") as handle:
        pq.write_table(table, handle)
    return relative


def recover_loads(lake: Lake) -> dict[str, Any]:
    """At a run's start, under the lease: give every killed load its manifest back.

    A load that was killed left its `.running` marker. Its committed partitions carry their
    load record in their pointers: the manifest is rebuilt from them (status `interrupted`).
    Quarantine files of its partitions that never committed are removed; the rerun writes
    them again.
    """
    dead = [
        name.removesuffix(".running")
        for name in lake.listing(layout.LOADS)
        if name.endswith(".running")
    ]
    if not dead:
        return {}
    pointers = all_raw_pointers(lake)
    recovered: dict[str, Any] = {}
    for load_id in dead:
        entries = [p["load"] for p in pointers if p.get("load_id") == load_id and "load" in p]
        if lake.read_json(layout.load_manifest(load_id)) is None:
            lake.write_json(
                layout.load_manifest(load_id),
                {
                    "load_id": load_id,
                    "lake": lake.uri,
                    "status": LoadStatus.INTERRUPTED.value,
                    "finished_at": None,
                    "recovered_at": datetime.now(UTC).isoformat(),
                    "partitions": entries,
                },
            )
        named = {e.get("quarantine_file") for e in entries}
        removed = []
        for path in lake.files_below(layout.QUARANTINE, f"/{load_id}.parquet"):
            relative = f"{layout.QUARANTINE}/{path}"
            if relative not in named:
                lake.remove(relative)
                removed.append(relative)
        lake.remove(layout.load_running_marker(load_id))
        recovered[load_id] = {"partitions": len(entries), "quarantine_removed": removed}
    return recovered
