"""Run the portal emulator in the foreground: `python -m emulator [--port 0] ...`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from .fixtures import DEFAULT_YEARS
from .server import PortalEmulator


def main(argv: list[str] | None = None) -> int:
    """Start the emulator, print its URLs as one JSON line, serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--years", type=int, nargs="+", default=list(DEFAULT_YEARS))
    parser.add_argument(
        "--adresse-rows", type=int, default=None, help="synthetic size of the last year's adresse"
    )
    parser.add_argument("--regional-daily-years", type=int, nargs="+", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--conformance",
        type=int,
        default=None,
        metavar="SEED",
        help="seeded conformance mode: random chunking, gzip, CRLF/BOM, 429 windows, typed codes",
    )
    parser.add_argument("--rate-window", type=float, default=60.0, help="429 window (s)")
    parser.add_argument(
        "--rate-limit-probability",
        type=float,
        default=0.03,
        help="chance that a data request opens a 429 window (conformance mode)",
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="emulate published limits: Data Fair requests/minute and a bandwidth throttle",
    )
    parser.add_argument("--requests-per-minute", type=int, default=600)
    parser.add_argument("--bandwidth", type=float, default=500_000, help="bytes/s per portal")
    args = parser.parse_args(argv)
    emu = PortalEmulator(
        years=args.years,
        adresse_rows=args.adresse_rows,
        seed=args.seed,
        host=args.host,
        port=args.port,
        regional_daily_years=args.regional_daily_years,
        conformance=args.conformance,
        rate_window_s=args.rate_window,
        rate_limit_probability=args.rate_limit_probability,
        limits=args.limits,
        requests_per_minute=args.requests_per_minute or None,
        bandwidth=args.bandwidth or None,
    )
    emu.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sys.stdout.write(json.dumps(emu.urls) + "\n")
    sys.stdout.flush()
    stop.wait()
    emu.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
