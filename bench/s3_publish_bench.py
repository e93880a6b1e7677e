"""S3 publish benchmark: the objects and bytes one aggregate writes, copies and deletes on S3.

Starts the S3 server the tests use (SeaweedFS, on loopback), builds a raw lake on it (the
emulator's datasets ingested by the flow; or, with --adresse-rows/--commune-rows, the scaled
lake of bench/aggregate_bench.py built locally and uploaded), then runs the aggregate step
(`run_aggregate` under the lake's lease, as the aggregate task does) `--runs` times with
the endpoint pointed at a counting proxy (tests/support/s3_counter.py). For each run it
prints what went through the proxy: the Spark job's requests (S3A, by User-Agent) and the
flow's (botocore/s3fs) before, during and after spark-submit; what the flow does after the
job is the publish. The first run publishes into an empty gold zone; the second one also
replaces the first one's views and (with the grace period set to 0, the default here: a
publish more than RETIRED_GRACE_S after the previous one) deletes its version.

    uv run python bench/s3_publish_bench.py [--runs 2] [--master local[2]]
        [--adresse-rows 0 --commune-rows 0] [--keep-grace]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
for _name, _value in (
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
):
    os.environ.setdefault(_name, _value)

import boto3  # noqa: E402

import flows.gold.aggregate as aggregate_module  # noqa: E402
from emulator import PortalEmulator  # noqa: E402
from flows.flow import ingest  # noqa: E402
from flows.lake import layout  # noqa: E402
from flows.lake.lease import S3_LEASE  # noqa: E402
from flows.lake.writer import writing  # noqa: E402
from flows.settings import Settings  # noqa: E402
from tests.support.s3_counter import Request, S3Counter, Tally, tally_of  # noqa: E402

BUCKET = "bench-lake"  # no trailing "-" or "_": Java's URI parser (S3A) rejects them
MIB = 1024 * 1024


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """SeaweedFS on free loopback ports, as the tests' `s3_endpoint` fixture; its one identity
    is the environment's AWS key (`testing` when none is set)."""
    from tests.support.seaweedfs import SeaweedFS

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    identity = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    with SeaweedFS([identity]) as server:
        yield server.endpoint


def emulator_settings(emulator: PortalEmulator, **values: Any) -> Settings:
    """Settings reading the emulator's portals."""
    urls: dict[str, Any] = {f"{portal}_url": url for portal, url in emulator.urls.items()}
    return Settings(**urls, **values)


def upload_tree(endpoint: str, local: Path, bucket: str, prefix: str) -> int:
    """Every file below `local` (raw zone and manifests) put at `prefix/`; returns bytes."""
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    total = 0
    for zone in (layout.RAW, layout.MANIFESTS):
        for path in sorted((local / zone).rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(local).as_posix()}"
                s3.upload_file(str(path), bucket, key)
                total += path.stat().st_size
    return total


def build_raw_lake(endpoint: str, lake: str, adresse_rows: int, commune_rows: int) -> str:
    """The raw lake on S3 (straight to the server, not through the proxy); a description."""
    started = time.perf_counter()
    if adresse_rows or commune_rows:
        sys.path.insert(0, str(ROOT / "bench"))
        from aggregate_bench import build_lake  # bench/ is no package

        with tempfile.TemporaryDirectory(prefix="s3-publish-bench-") as folder:
            local = Path(folder) / "lake"
            rows = build_lake(local, adresse_rows, commune_rows)
            size = upload_tree(endpoint, local, BUCKET, lake.removeprefix(f"s3://{BUCKET}/"))
        what = f"{rows:,} rows, {size / MIB:.1f} MiB uploaded"
    else:
        with PortalEmulator() as emulator:
            report = ingest(settings=emulator_settings(emulator, lake=lake, s3_endpoint=endpoint))
        what = f"the emulator's datasets, load {report.load_id}"
    return f"raw lake {lake}: {what}, built in {time.perf_counter() - started:.0f} s"


class Phases:
    """When spark-submit ran, and when publish_tables ran, by wrapping the aggregate
    module's functions (those it still has: the step is being reworked)."""

    WATCHED = ("run_spark_submit", "publish_tables")

    def __init__(self) -> None:
        self.times: dict[str, tuple[float, float]] = {}

    def watching(self) -> contextlib.AbstractContextManager[None]:
        sys.path.insert(0, str(ROOT / "bench"))
        from aggregate_bench import watching_calls  # bench/ is no package

        def record(name: str, started: float, ended: float) -> None:
            self.times[name] = (started, ended)

        return watching_calls(self.WATCHED, record)

    def job(self, requests: list[Request]) -> tuple[float, float]:
        """The job's start and end; without the wrapper, its first and last S3A request."""
        if "run_spark_submit" in self.times:
            return self.times["run_spark_submit"]
        java = [r.at for r in requests if r.client == "java"]
        return (min(java), max(java)) if java else (float("inf"), float("inf"))

    def publish_start(self) -> float:
        """When publish_tables was called (infinity if it was not)."""
        return self.times.get("publish_tables", (float("inf"), 0.0))[0]


LEASE = "flow: the lake's lease (take, renew, free)"
BEFORE = "flow before the job (sweep, recover)"
SPARK = "Spark job (S3A)"
DURING = "flow during the job (other)"
BETWEEN = "flow after the job, before publish_tables"
PUBLISH = "flow in publish_tables and after"
OTHER = "other clients"


def rows_of(requests: list[Request], phases: Phases) -> dict[str, Tally]:
    """The tallies of one run: the Spark job, the flow's lease, and the flow's other
    requests before, during and after the job (after it: what run_aggregate does before
    calling publish_tables, e.g. the CSV files, then the publish itself)."""
    started, ended = phases.job(requests)
    publish = phases.publish_start()
    rows: dict[str, list[Request]] = {name: [] for name in (LEASE, BEFORE, SPARK, DURING,
                                                            BETWEEN, PUBLISH, OTHER)}  # fmt: skip
    for request in requests:
        if request.client == "java":
            rows[SPARK].append(request)
        elif request.client != "python":
            rows[OTHER].append(request)
        elif unquote(request.path).endswith(f"/{S3_LEASE}"):
            rows[LEASE].append(request)
        elif request.at < started:
            rows[BEFORE].append(request)
        elif request.at <= ended:
            rows[DURING].append(request)
        elif request.at < publish:
            rows[BETWEEN].append(request)
        else:
            rows[PUBLISH].append(request)
    return {name: tally_of(found) for name, found in rows.items() if found}


def unproxied(endpoint: str, lake: str, requests: list[Request]) -> list[str]:
    """Keys below the lake's gold zone that no request through the proxy wrote or copied:
    what a client would have written by another way than the endpoint it was given."""
    written = {
        unquote(r.path)
        for r in requests
        if r.op in ("PutObject", "CopyObject", "CompleteMultipartUpload") and r.status < 300
    }
    prefix = f"{lake.removeprefix(f's3://{BUCKET}/')}/{layout.GOLD}/"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    stored = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return [key for key in stored if f"/{BUCKET}/{key}" not in written]


def print_run(title: str, rows: dict[str, Tally]) -> None:
    """One run's table, then the requests by operation of each row."""
    print(f"\n{title}")
    header = (
        f"  {'':44s} {'objects':>8s} {'MiB':>9s} {'objects':>8s} {'MiB':>9s} "
        f"{'objects':>8s} {'MiB':>9s} {'requests':>9s} {'non-2xx':>8s}"
    )
    print(header)
    print(
        f"  {'':44s} {'written':>8s} {'written':>9s} {'copied':>8s} {'copied':>9s} "
        f"{'deleted':>8s} {'read':>9s}"
    )
    total = Tally()
    for name, tally in [*rows.items(), ("total", sum(rows.values(), Tally()))]:
        if name == "total":
            total = tally
        print(
            f"  {name:44s} {tally.objects_written:8d} {tally.bytes_written / MIB:9.2f} "
            f"{tally.objects_copied:8d} {tally.bytes_copied / MIB:9.2f} "
            f"{tally.objects_deleted:8d} {tally.bytes_read / MIB:9.2f} "
            f"{tally.total_requests:9d} {sum(tally.failed.values()):8d}"
        )
    for name, tally in rows.items():
        ops = ", ".join(f"{op} {n}" for op, n in sorted(tally.requests.items()))
        print(f"  {name}: {ops}")
        if tally.failed:
            failed = ", ".join(f"{op} {n}" for op, n in sorted(tally.failed.items()))
            print(f"    non-2xx: {failed}")
        if tally.empty_objects_written:
            print(f"    of the objects written, {tally.empty_objects_written} empty (markers)")
        if tally.copy_sizes_unknown:
            print(f"    {tally.copy_sizes_unknown} copies of unknown size (source HEAD refused)")
    if total.copy_sizes_unknown:
        print("  (bytes copied are a lower bound)")


def set_grace(seconds: float) -> None:
    """RETIRED_GRACE_S wherever the lake modules read it from."""
    import flows.lake.fs
    import flows.lake.publish

    for module in (flows.lake.fs, flows.lake.publish):
        if hasattr(module, "RETIRED_GRACE_S"):
            module.RETIRED_GRACE_S = seconds  # type: ignore[attr-defined]


def main() -> None:
    """Server, raw lake, proxy; then the aggregate runs and their tallies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="aggregate runs (publishes)")
    parser.add_argument("--master", default="local[2]", help="Spark master of the job")
    parser.add_argument("--adresse-rows", type=int, default=0, help="scaled lake (0: emulator)")
    parser.add_argument("--commune-rows", type=int, default=0)
    parser.add_argument(
        "--keep-grace",
        action="store_true",
        help="keep RETIRED_GRACE_S (superseded versions then outlive the bench's runs)",
    )
    parser.add_argument("--no-lease", action="store_true", help="run_aggregate alone")
    parser.add_argument(
        "--no-plain-views",
        action="store_true",
        help="publish by pointer alone (ENERGY_PIPELINE_PLAIN_VIEWS=false)",
    )
    parser.add_argument("--verbose", action="store_true", help="print every Spark log line")
    args = parser.parse_args()

    from flows.lake.fs import RETIRED_GRACE_S

    if not args.keep_grace:
        set_grace(0.0)
    lake = f"s3://{BUCKET}/lake"
    with s3_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=BUCKET
        )
        print(build_raw_lake(endpoint, lake, args.adresse_rows, args.commune_rows))
        grace = "kept" if args.keep_grace else f"set to 0 (code: {RETIRED_GRACE_S:g} s)"
        lease = "off" if args.no_lease else "held, as the aggregate task does"
        views = "off (by pointer alone)" if args.no_plain_views else "on"
        print(f"Spark master {args.master}; RETIRED_GRACE_S {grace}; lease {lease}; "
              f"plain views {views}")  # fmt: skip
        with S3Counter(endpoint) as counter:
            settings = Settings(
                lake=lake,
                s3_endpoint=counter.url,
                spark_master=args.master,
                plain_views=not args.no_plain_views,
            )
            all_requests: list[Request] = []
            for run in range(1, args.runs + 1):
                counter.reset()
                phases = Phases()
                lines: list[str] = []

                def on_line(line: str, lines: list[str] = lines) -> None:
                    lines.append(line)
                    if args.verbose or "energy-pipeline:" in line:
                        print(f"  [job] {line}", flush=True)

                started = time.perf_counter()
                error = None
                try:
                    with phases.watching():
                        held: contextlib.AbstractContextManager[Any] = (
                            contextlib.nullcontext()
                            if args.no_lease
                            else writing(settings, command="aggregate")
                        )
                        with held:
                            report = aggregate_module.run_aggregate(settings, on_line=on_line)
                    title = f"run {run}: {report.run_id}"
                except Exception as exc:  # the figures up to the failure are still worth it
                    error = exc
                    title = f"run {run}: FAILED ({type(exc).__name__})"
                total_s = time.perf_counter() - started
                requests = counter.requests()
                times = ", ".join(
                    f"{name} {end - start:.1f} s" for name, (start, end) in phases.times.items()
                )
                print_run(f"{title}; total {total_s:.1f} s ({times})", rows_of(requests, phases))
                all_requests += requests
                missed = unproxied(endpoint, lake, all_requests)
                print(f"  gold objects on the server not written through the proxy: {len(missed)}"
                      + (f", e.g. {missed[:3]}" if missed else ""))  # fmt: skip
                if error is not None:
                    summary = getattr(error, "summary", None) or "".join(
                        traceback.format_exception_only(error)
                    )
                    print(f"\n  error: {type(error).__name__}: {summary.strip()}")
                    if not args.verbose:
                        print("  last job lines:", *lines[-15:], sep="\n    ")
                    break


if __name__ == "__main__":
    main()
