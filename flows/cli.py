"""The `energy-pipeline` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from flows.catalog import DATASETS


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
        if name == "aggregate":
            continue
        sub.add_argument("--datasets", type=_names, help="comma list, default: all seven")
        sub.add_argument("--force", action="store_true", help="re-pull unchanged partitions")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 0 on success, 1 on failure with a one-line reason on stderr."""
    args = _parser().parse_args(argv)
    from flows.settings import Settings

    overrides: dict[str, Any] = {"lake": args.lake} if args.lake else {}
    try:
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
            print(
                f"load {report.load_id}: {report.count('loaded')} partitions loaded, "
                f"{report.count('skipped')} skipped; lake {report.lake}"
            )
            return 0
        from flows.flow import pipeline

        _print_publish(pipeline(args.datasets, args.years, args.force, settings).manifest)
    except Exception as exc:
        print(f"energy-pipeline {args.command} failed: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0


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
        settings = Settings(**overrides)
        report = pipeline(args.datasets, args.years, args.force, settings)
    _print_publish(report.manifest)
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
