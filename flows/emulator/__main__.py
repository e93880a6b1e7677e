"""Run the portal emulator in the foreground: `python -m flows.emulator [--port 0] ...`."""

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
    parser = argparse.ArgumentParser(prog="python -m flows.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--years", type=int, nargs="+", default=list(DEFAULT_YEARS))
    parser.add_argument(
        "--adresse-rows", type=int, default=None, help="synthetic size of the last year's adresse"
    )
    parser.add_argument("--regional-daily-years", type=int, nargs="+", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    emu = PortalEmulator(
        years=args.years,
        adresse_rows=args.adresse_rows,
        seed=args.seed,
        host=args.host,
        port=args.port,
        regional_daily_years=args.regional_daily_years,
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
