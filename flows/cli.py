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
        ("run", "the whole pipeline (ingest, then the later steps as they land)"),
        ("ingest", "pull raw partitions from the portals into the lake"),
        ("demo", "the whole pipeline against the bundled portal emulator (no network)"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--datasets", type=_names, help="comma list, default: all seven")
        sub.add_argument("--years", type=_years, help="e.g. 2022,2023 or 2018-2023; default: all")
        sub.add_argument("--force", action="store_true", help="re-pull unchanged partitions")
        sub.add_argument("--lake", help="lake URI (overrides ENERGY_PIPELINE_LAKE)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 0 on success, 1 on failure with a one-line reason on stderr."""
    args = _parser().parse_args(argv)
    from flows.flow import ingest
    from flows.settings import Settings

    overrides: dict[str, Any] = {"lake": args.lake} if args.lake else {}
    try:
        if args.command == "demo":
            return _demo(args, overrides)
        report = ingest(args.datasets, args.years, args.force, Settings(**overrides))
    except Exception as exc:
        print(f"energy-pipeline {args.command} failed: {_one_line(exc)}", file=sys.stderr)
        return 1
    print(
        f"load {report.load_id}: {report.count('loaded')} partitions loaded, "
        f"{report.count('skipped')} skipped; lake {report.lake}"
    )
    return 0


def _demo(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from flows.emulator import PortalEmulator
    from flows.flow import ingest
    from flows.settings import Settings

    overrides.setdefault("lake", os.environ.get("ENERGY_PIPELINE_DEMO_LAKE", "./lake-demo"))
    with PortalEmulator() as emulator:
        urls = emulator.urls
        overrides |= {f"{portal}_url": url for portal, url in urls.items()}
        settings = Settings(**overrides)
        report = ingest(args.datasets, args.years, args.force, settings)
    print(
        f"demo load {report.load_id}: {report.count('loaded')} partitions loaded, "
        f"{report.count('skipped')} skipped; raw tables under {settings.lake}/raw/"
    )
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
