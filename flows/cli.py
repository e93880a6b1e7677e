"""The `energy-pipeline` command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from flows.catalog import DATASETS

# Prefect waits 20 s by default for its ephemeral API; a fresh PREFECT_HOME (database
# migrations) on a busy 2-core machine took about 28 s here. A user's own setting wins.
EPHEMERAL_STARTUP_TIMEOUT = "300"
CHAOS_WINDOW_S = 2.0  # the demo's rate-limit windows (the real portals' are a minute)
EPHEMERAL_HINT = (
    "the temporary Prefect API did not start in time (busy machine?): set "
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS higher (now {timeout} s), or start a "
    "server once with `prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api"
)


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}"
        )
    return names


def _years(text: str) -> list[int]:
    years: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            first, last = (int(y) for y in part.split("-", 1))
            years.extend(range(first, last + 1))
        elif part:
            years.append(int(part))
    return years


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="energy-pipeline",
        description="France's open electricity and gas consumption data, into a Parquet lake.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "the whole pipeline: ingest, then aggregate and publish the gold tables"),
        ("ingest", "pull raw partitions from the portals into the lake"),
        ("aggregate", "build and publish the gold tables from the raw lake (Spark)"),
        ("demo", "the whole pipeline against the bundled portal emulator (no network)"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--years", type=_years, help="e.g. 2022,2023 or 2018-2023; default: all")
        sub.add_argument("--lake", help="lake URI (overrides ENERGY_PIPELINE_LAKE)")
        sub.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
        if name == "aggregate":
            continue
        sub.add_argument("--datasets", type=_names, help="comma list, default: all seven")
        sub.add_argument("--force", action="store_true", help="re-pull unchanged partitions")
        if name == "demo":
            sub.add_argument(
                "--chaos",
                type=int,
                nargs="?",
                const=1,
                metavar="SEED",
                help="serve the demo in conformance mode: random chunking down to 1 byte, gzip, "
                "CRLF/LF, BOM, real-shaped 429s, integer-typed codes, multi-MB geo fields",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Exit status: 0 success, 1 failure (one-line reason on stderr), 2 usage."""
    args = _parser().parse_args(argv)
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT
    )
    from flows.settings import Settings

    overrides: dict[str, Any] = {"lake": args.lake} if args.lake else {}
    try:
        with _progress(enabled=not args.no_progress):
            if args.command == "demo":
                return _demo(args, overrides)
            settings = Settings(**overrides)
            if args.command == "aggregate":
                from flows.flow import aggregate

                _print_publish(aggregate(args.years, settings).manifest)
                return 0
            if args.command == "ingest":
                from flows.flow import ingest

                report = ingest(args.datasets, args.years, args.force, settings)
                _print_ingest([r.to_dict() for r in report.results])
                print(
                    f"load {report.load_id}: {report.count('loaded')} partitions loaded, "
                    f"{report.count('skipped')} skipped; lake {report.lake}"
                )
                return 0
            from flows.flow import pipeline

            _print_summary(pipeline(args.datasets, args.years, args.force, settings))
    except Exception as exc:
        reason = _one_line(exc)
        if "ephemeral Prefect API" in reason:
            timeout = os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]
            reason = f"{EPHEMERAL_HINT.format(timeout=timeout)} ({reason[:300]})"
        print(f"energy-pipeline {args.command} failed: {reason}", file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[None]:
    """Progress bars on stderr for the long steps (partitions, then Spark, then outputs)."""
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from flows.report import listening

    bars = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=Console(stderr=True), transient=False,
    )  # fmt: skip
    current: dict[str, Any] = {}
    steps = {"aggregate": "Spark: gold tables", "dashboard": "dashboard",
             "tableau": "Tableau extracts"}  # fmt: skip

    def finish_step() -> None:
        if "step" in current:
            bars.update(current.pop("step"), total=1, completed=1)

    def on_event(event: str, data: dict[str, Any]) -> None:
        if event == "ingest_started":
            current["ingest"] = bars.add_task(
                f"partitions ({data['skipped']} unchanged)", total=data["total"]
            )
        elif event == "partition_done" and "ingest" in current:
            result = data["result"]
            bars.update(current["ingest"], advance=1,
                        description=f"partitions: {result.partition} {result.status}")  # fmt: skip
        elif event == "step_started":
            finish_step()
            current["step"] = bars.add_task(steps.get(data["step"], data["step"]), total=None)
        elif event == "run_done":
            finish_step()

    with bars, listening(on_event):
        yield


def _print_ingest(partitions: list[dict[str, Any]]) -> None:
    from flows.report import RunSummary

    _table(
        "Ingestion",
        ["dataset", "years", "loaded", "unchanged", "failed", "rows", "quarantined"],
        [[d["dataset"], _years_text(d["years"]), d["loaded"], d["skipped"], d["failed"],
          f"{d['rows_written']:,}", f"{d['rows_quarantined']:,}"]
         for d in RunSummary("", "", partitions).by_dataset()],
    )  # fmt: skip


def _print_summary(summary: Any) -> None:
    """The final tables: ingestion, gold tables and checks, then where the outputs are."""
    _print_ingest(summary.partitions)
    if summary.publish:
        _table("Gold tables", ["table", "rows", "Tableau extract"],
               [[t, f"{f['rows']:,}", "yes" if t in summary.hyper else "no"]
                for t, f in summary.publish["tables"].items()])  # fmt: skip
        findings = [c for c in summary.check_rows() if c["status"] not in ("ok", "skipped")]
        if findings:
            _table("Checks with findings", ["check", "scope", "status", "findings", "detail"],
                   [[c["check"], c["scope"], c["status"], c["findings"], c["detail"]]
                    for c in findings])  # fmt: skip
        _print_publish(summary.publish)
    if summary.hyper_message:
        print(summary.hyper_message)
    if summary.dashboard:
        print(f"dashboard: {summary.dashboard}")


def _years_text(years: list[int]) -> str:
    if len(years) > 3 and years == list(range(years[0], years[-1] + 1)):
        return f"{years[0]}-{years[-1]}"
    return ",".join(str(y) for y in years)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    Console(width=max(100, shutil.get_terminal_size().columns)).print(table)


def _print_publish(manifest: dict[str, Any]) -> None:
    tables = ", ".join(f"{t} ({f['rows']} rows)" for t, f in manifest["tables"].items())
    print(f"published to {manifest['lake']}/gold/: {tables}")
    for check in manifest["checks"]:
        if check["status"] == "warning":
            print(f"check {check['name']}: {check['problems']} finding(s) ({check['summary']})")


def _demo(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from flows.emulator import PortalEmulator
    from flows.flow import pipeline
    from flows.settings import Settings

    overrides.setdefault("lake", os.environ.get("ENERGY_PIPELINE_DEMO_LAKE", "./lake-demo"))
    with PortalEmulator() as emulator:
        overrides |= {f"{portal}_url": url for portal, url in emulator.urls.items()}
        if args.chaos is not None:
            emulator.conformance(args.chaos, rate_window_s=CHAOS_WINDOW_S)
            overrides.setdefault("rate_limit_window_s", CHAOS_WINDOW_S)
        settings = Settings(**overrides)
        summary = pipeline(args.datasets, args.years, args.force, settings)
        stats = emulator.stats()
    _print_summary(summary)
    if args.chaos is not None:
        print(f"conformance mode, seed {args.chaos}:")
        for portal, figures in stats.items():
            print(
                f"  {portal}: {figures['requests']} requests, {figures['status_429']} answered "
                f"429, {figures['gzip']} gzipped, {figures['chunks']:,} chunks, "
                f"{figures['bytes_sent']:,} bytes"
            )
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
