"""The `energy-pipeline` command line.

Inputs are checked at the edge: a bad argument or setting exits 2 with one line naming it,
before anything is written or started. SIGTERM and SIGINT unwind the run (every `finally`
runs: temp folders, leases, child processes) and exit 143 and 130 with one line on stderr.
The temporary Prefect API server, when the CLI needs one, is started by the main thread
with a parent-death signal and stopped on every exit, so it never outlives the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import ValidationError
from pydantic_settings import SettingsError

from flows import runtime
from flows.lake import layout
from flows.settings import YEAR_MAX, YEAR_MIN, Settings, env_name
from flows.sources.catalog import DATASETS, PORTALS

if TYPE_CHECKING:  # imported where used: nothing heavy before the inputs are checked
    from flows.lake.publish import PublishManifest
    from flows.outputs.report import RunSummary
    from flows.sources.ingest import PartitionResult

# Prefect waits 20 s by default for its ephemeral API; a fresh PREFECT_HOME (database
# migrations) on a busy 2-core machine took about 28 s here. A user's own setting wins.
EPHEMERAL_STARTUP_TIMEOUT = "300"
CHAOS_WINDOW_S = 2.0  # the demo's rate-limit windows (the real portals' are a minute)
EPHEMERAL_HINT = (
    "the temporary Prefect API did not start in time (busy machine?): set "
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS higher (now {timeout} s), or start a "
    "server once with `prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api"
)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORCE_EXIT_AFTER_S = 10.0  # cleanup after a stop signal may take this long, then os._exit
PREFECT_DRAIN_S = 5.0  # flushing the run's logs and events to the temporary API before it stops


class UsageError(Exception):
    """A bad argument or setting: exit 2 with one line naming it."""


class Stopped(BaseException):
    """A stop signal received by the CLI; a BaseException so that `except Exception` lets it by."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} received")
        self.signum = signum


_received: int | None = None  # the first stop signal of this run, whatever caught its exception
_announced = False  # the one "stopped" line is written
_command = "?"  # for the "stopped" line
_server_process: subprocess.Popen[Any] | None = None  # the temporary Prefect API we started
_prefect_echo: int | None = None  # the signal Prefect's handler caught, which it sends us again


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def parse_datasets(text: str) -> list[str]:
    """A comma list of dataset short names, without repeats, in the order given."""
    names = [n.strip() for n in text.split(",")]
    if "" in names:
        raise argparse.ArgumentTypeError(
            f"empty dataset name in {text!r}; e.g. commune,departement"
        )
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}"
        )
    return list(dict.fromkeys(names))


_YEAR_PART = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")
_YEARS_HELP = "e.g. 2022,2023 or 2018-2023"


def _year(digits: str) -> int:
    year = int(digits) if len(digits) <= 6 else YEAR_MAX + 1
    if not YEAR_MIN <= year <= YEAR_MAX:
        raise argparse.ArgumentTypeError(f"year {digits[:12]} is outside {YEAR_MIN}-{YEAR_MAX}")
    return year


def parse_years(text: str) -> list[int]:
    """`2022,2023`, `2018-2023` or a mix: years in YEAR_MIN..YEAR_MAX, no repeats, in order."""
    years: dict[int, None] = {}
    for part in text.split(","):
        match = _YEAR_PART.fullmatch(part)
        if match is None:
            where = f" in {text!r}" if part != text else ""
            raise argparse.ArgumentTypeError(
                f"malformed year or range {part.strip()!r}{where}; {_YEARS_HELP}"
            )
        first = _year(match.group(1))
        last = _year(match.group(2)) if match.group(2) else first
        if last < first:
            raise argparse.ArgumentTypeError(
                f"range {first}-{last} goes backwards; write {last}-{first}"
            )
        years.update(dict.fromkeys(range(first, last + 1)))
    return list(years)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="energy-pipeline",
        description="France's open electricity and gas consumption data, into a Parquet lake.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "the whole pipeline: ingest, then aggregate and publish the gold tables"),
        ("ingest", "pull raw partitions from the portals into the lake"),
        ("aggregate", "build and publish the gold tables from the raw lake (Spark)"),
        ("demo", "the whole pipeline against the bundled portal emulator (no network)"),
        ("outputs", "rebuild the dashboard and the Tableau extracts from the published tables"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--lake", help="lake URI (overrides ENERGY_PIPELINE_LAKE)")
        sub.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
        if name == "outputs":
            continue
        sub.add_argument(
            "--years", type=parse_years, help=f"{_YEARS_HELP} ({YEAR_MIN}-{YEAR_MAX}); default: all"
        )
        if name == "aggregate":
            continue
        sub.add_argument(
            "--datasets",
            type=parse_datasets,
            help="comma list, default: every dataset of the catalog",
        )
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
    """Entry point. Exit status: 0 success, 1 failure (one-line reason on stderr), 2 usage or
    bad setting (one line naming it), 130 / 143 stopped by SIGINT / SIGTERM (one line)."""
    global _command
    # every process this run starts names the CLI as its owner (swept if the CLI is killed)
    os.environ[runtime.OWNER_ENV] = runtime.owner_marker()
    _command = "?"
    with _stop_signals():
        try:
            args = _parser().parse_args(argv)
            _command = args.command
            os.environ.setdefault(
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT
            )
            try:
                settings, overrides = _checked_settings(args)
            except UsageError as exc:
                print(f"energy-pipeline {args.command}: error: {exc}", file=sys.stderr)
                return 2
            # Prefect is imported only now: nothing is started or written for a rejected input.
            with _prefect_sigterm_noted(), _prefect_api(), _progress(not args.no_progress):
                _run(args, settings, overrides)
        except BaseException as exc:
            signum = _stop_signal(exc)
            if signum is not None:
                return _stopped(signum)
            if not isinstance(exc, Exception):
                raise  # SystemExit from argparse (usage errors, --help)
            reason = _reason(exc)
            if "ephemeral Prefect API" in reason:
                timeout = os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]
                reason = f"{EPHEMERAL_HINT.format(timeout=timeout)} ({reason[:300]})"
            print(f"energy-pipeline {_command} failed: {reason}", file=sys.stderr)
            return 1
        if _received is not None:  # a stop signal whose exception something swallowed
            return _stopped(_received)
    return 0


def _checked_settings(args: argparse.Namespace) -> tuple[Settings, dict[str, Any]]:
    """The settings of this run, every value checked; UsageError naming each bad one."""
    overrides: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if args.lake is not None:
        overrides["lake"], sources["lake"] = args.lake, "argument --lake"
    demo_lake = args.command == "demo" and args.lake is None
    checked = dict(overrides)
    if args.command == "demo":  # the demo's portals are the emulator's: placeholders here
        checked |= {f"{portal}_url": "http://127.0.0.1" for portal in PORTALS}
    if demo_lake:  # the demo never touches ENERGY_PIPELINE_LAKE: its own demo_lake instead
        checked["lake"] = "."
    try:
        settings = Settings(**checked)
        if demo_lake:
            overrides["lake"] = settings.demo_lake
            settings = settings.model_copy(update={"lake": settings.demo_lake})
        return settings, overrides
    except ValidationError as exc:
        raise UsageError(_problems(exc, sources)) from None
    except SettingsError as exc:  # e.g. an unreadable .env file
        raise UsageError(_one_line(exc)) from None


def _problems(exc: ValidationError, sources: dict[str, str]) -> str:
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "settings"
        name = sources.get(field, env_name(field))
        rule = error["msg"].removeprefix("Value error, ")
        shown = repr(error.get("input"))
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        problems.append(f"{name}: {rule} (got {shown})")
    return _one_line("; ".join(problems))


def _run(args: argparse.Namespace, settings: Settings, overrides: dict[str, Any]) -> None:
    if args.command == "demo":
        _demo(args, overrides)
    elif args.command == "outputs":
        from flows.flow import outputs

        built = outputs(settings)
        if built.hyper_message:
            print(built.hyper_message)
        else:
            print(f"Tableau extracts: {', '.join(f'{t}.hyper' for t in built.hyper)}")
        print(f"dashboard: {built.dashboard}")
    elif args.command == "aggregate":
        from flows.flow import aggregate

        _print_publish(aggregate(args.years, settings).manifest)
    elif args.command == "ingest":
        from flows.flow import ingest
        from flows.sources.ingest import PartitionStatus

        report = ingest(args.datasets, args.years, args.force, settings)
        _print_ingest(report.results)
        print(
            f"load {report.load_id}: {report.count(PartitionStatus.LOADED)} partitions loaded, "
            f"{report.count(PartitionStatus.SKIPPED)} skipped; lake {report.lake}"
        )
    else:
        from flows.flow import pipeline

        _print_summary(pipeline(args.datasets, args.years, args.force, settings))


# -- stop signals -----------------------------------------------------------------------------


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise Stopped in the main thread while the CLI runs."""
    global _received, _announced, _prefect_echo
    _received, _announced, _prefect_echo = None, False, None
    previous: dict[int, Any] = {}
    with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:  # e.g. nohup, `cmd &`: stay so
                previous[signum] = signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        if _received is None:  # after a stop, a second signal must still cut the exit short
            for number, handler in previous.items():
                signal.signal(number, handler)


def _on_signal(signum: int, frame: types.FrameType | None) -> None:
    global _prefect_echo
    if _received is not None:
        if _prefect_echo == signum:  # Prefect passing on the signal its own handler caught
            _prefect_echo = None
            raise Stopped(signum)
        _force_exit(_received, f"second signal {signal.Signals(signum).name}: cleanup cut short")
    _note(signum)
    raise Stopped(signum)


@contextlib.contextmanager
def _prefect_sigterm_noted() -> Iterator[None]:
    """While a flow runs, Prefect's engine puts its own SIGTERM handler in place of ours: it
    raises TerminationSignal, whose unwinding first joins the flow's task threads (one may be
    stuck in a portal read for minutes), and only then sends the signal again to our handler.
    Wrapped here so that the first SIGTERM is noted at once: the forced-exit watchdog starts,
    and a second signal cuts the cleanup short, as with our own handler."""
    try:
        from prefect.utilities import engine
    except ImportError:
        yield
        return
    prefect_handler = getattr(engine, "_prefect_sigterm_handler", None)
    if prefect_handler is None:
        yield
        return

    def noted(signum: int, *args: object) -> None:
        global _prefect_echo
        if _received is not None:
            name = signal.Signals(signum).name
            _force_exit(_received, f"second signal {name}: cleanup cut short")
        _note(signum)
        _prefect_echo = signum
        prefect_handler(signum, *args)  # raises TerminationSignal

    # looked up by capture_sigterm each time a flow run starts
    engine._prefect_sigterm_handler = noted  # type: ignore[assignment]
    try:
        yield
    finally:
        if engine._prefect_sigterm_handler is noted:
            engine._prefect_sigterm_handler = prefect_handler


def _note(signum: int) -> None:
    """Remember the first stop signal; force the exit if cleaning up takes too long."""
    global _received
    if _received is not None:
        return
    _received = signum
    watchdog = threading.Timer(
        FORCE_EXIT_AFTER_S,
        _force_exit,
        (signum, f"cleanup took over {FORCE_EXIT_AFTER_S:.0f} s: cut short"),
    )
    watchdog.daemon = True
    watchdog.start()


def _stop_signal(exc: BaseException) -> int | None:
    """The stop signal behind an exception, if any (ours, Ctrl-C's, Prefect's own SIGTERM)."""
    if _received is not None:
        return _received
    signum: int | None = None
    if isinstance(exc, Stopped):
        signum = exc.signum
    elif isinstance(exc, KeyboardInterrupt):
        signum = signal.SIGINT
    else:
        prefect_exceptions = sys.modules.get("prefect.exceptions")
        termination = getattr(prefect_exceptions, "TerminationSignal", None)
        if termination is not None and isinstance(exc, termination):
            signum = int(exc.signal)
    if signum is not None:
        _note(signum)
    return signum


def _announce(signum: int, note: str = "") -> None:
    global _announced
    if _announced:
        return
    _announced = True
    suffix = f" ({note})" if note else ""
    line = f"energy-pipeline {_command} stopped: {signal.Signals(signum).name} received{suffix}\n"
    with contextlib.suppress(OSError):
        os.write(2, line.encode())


def _stopped(signum: int) -> int:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    _announce(signum)
    return 128 + signum


def _force_exit(signum: int, note: str) -> NoReturn:
    """Exit now: a second signal, or a cleanup that hangs. The temporary API goes too."""
    _announce(signum, note)
    process = _server_process
    if process is not None:
        with contextlib.suppress(OSError):
            os.kill(process.pid, signal.SIGTERM)
    os._exit(128 + signum)


# -- the temporary Prefect API ----------------------------------------------------------------


@contextlib.contextmanager
def _prefect_api() -> Iterator[None]:
    """Prefect's temporary API server when the run needs one: started here, in the main thread,
    with a parent-death signal, and stopped on every exit.

    Prefect starts it lazily (`get_client`, the events and logs workers) as the singleton
    `SubprocessASGIServer()` (the instance kept under port None); ours takes that place, so
    every part of Prefect reuses it instead of starting another one.
    """
    from prefect.settings import get_current_settings

    current = get_current_settings()
    if current.api.url or not current.server.ephemeral.enabled:
        yield  # a real server (PREFECT_API_URL), or no API at all: nothing to start
        return
    from prefect.server.api import server as prefect_server

    instances: dict[int | None, Any] = prefect_server.SubprocessASGIServer._instances
    existing = instances.get(None)
    if existing is not None and existing.running and not getattr(existing, "closed", False):
        yield  # already running in this process (a caller's own): not ours to stop
        return
    instances.pop(None, None)
    server = _owned_server_class(prefect_server)()
    try:
        server.start()
        yield
    finally:
        _stop_server(server, instances)


def _stop_server(server: Any, instances: dict[int | None, Any]) -> None:
    global _server_process
    if server.running:
        _drain_prefect_services()
    server.stop()
    _server_process = None
    # Anything that would now ask for the API gets an error, not a new, unowned server.
    server.closed = True
    instances[None] = server


def _drain_prefect_services() -> None:
    """Send the run's last logs and events while the API still listens."""
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=PREFECT_DRAIN_S, at_exit=False)
        EventsWorker.drain_all(timeout=PREFECT_DRAIN_S, at_exit=False)
    except Exception:  # best effort: the server stops anyway
        pass


def _owned_server_class(prefect_server: Any) -> Any:
    class OwnedServer(prefect_server.SubprocessASGIServer):  # type: ignore[misc]
        """Prefect's temporary API server, in a child that dies with the CLI."""

        closed = False

        def start(self, timeout: int | None = None) -> None:
            if self.closed:
                raise RuntimeError("energy-pipeline has stopped its temporary Prefect API")
            super().start(timeout)

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            global _server_process
            real = prefect_server.subprocess
            prefect_server.subprocess = _PopenDyingWithParent(real)
            try:
                process: subprocess.Popen[Any] = super()._run_uvicorn_command()
            finally:
                prefect_server.subprocess = real
            _server_process = process
            return process

    return OwnedServer


class _PopenDyingWithParent:
    """The subprocess module, as Prefect's server module sees it while starting the server."""

    def __init__(self, real: types.ModuleType) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def Popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        # SIGTERM (graceful) to the server when the CLI's main thread ends, a SIGKILL included
        kwargs.setdefault("preexec_fn", runtime.die_with_parent_hook(signal.SIGTERM))
        return self._real.Popen(*args, **kwargs)  # type: ignore[no-any-return]


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

    from flows.outputs.report import listening

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


def _print_ingest(partitions: list[PartitionResult]) -> None:
    from flows.outputs.report import by_dataset

    _table(
        "Ingestion",
        ["dataset", "years", "loaded", "unchanged", "failed", "rows", "quarantined"],
        [[d.dataset, _years_text(d.years), d.loaded, d.skipped, d.failed,
          f"{d.rows_written:,}", f"{d.rows_quarantined:,}"]
         for d in by_dataset(partitions)],
    )  # fmt: skip


def _print_summary(summary: RunSummary) -> None:
    """The final tables: ingestion, gold tables and checks, then where the outputs are."""
    from flows.lake.publish import CheckStatus

    _print_ingest(summary.partitions)
    if summary.publish:
        _table("Gold tables", ["table", "rows", "Tableau extract"],
               [[t, f"{f.rows:,}", "yes" if t in summary.hyper else "no"]
                for t, f in summary.publish.tables.items()])  # fmt: skip
        quiet = (CheckStatus.OK, CheckStatus.SKIPPED)
        findings = [c for c in summary.check_rows() if c.status not in quiet]
        if findings:
            _table("Checks with findings", ["check", "scope", "status", "findings", "detail"],
                   [[c.check, c.scope, c.status, c.findings, c.detail]
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


def _print_publish(manifest: PublishManifest) -> None:
    tables = ", ".join(f"{t} ({f.rows} rows)" for t, f in manifest.tables.items())
    print(f"published to {manifest.lake}/{layout.GOLD}/: {tables}")
    for check in manifest.warnings:
        print(f"check {check.name}: {check.problems} finding(s) ({check.summary})")


def _demo(args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    from emulator import PortalEmulator
    from flows.flow import pipeline

    with PortalEmulator() as emulator:
        overrides = overrides | {f"{portal}_url": url for portal, url in emulator.urls.items()}
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


REASON_CHARS = 1500  # of a failure's one-line reason; the whole error is in the run's logs


def _reason(exc: BaseException) -> str:
    """A failure as one bounded line: its summary when it has one (a Spark job's headline and
    root cause, not its log tail), cut at REASON_CHARS."""
    summary = getattr(exc, "summary", None)
    reason = _one_line(summary if isinstance(summary, str) and summary else exc)
    if len(reason) > REASON_CHARS:
        reason = reason[: REASON_CHARS - 40] + " ... (cut: the whole error is in the logs)"
    return reason


def _one_line(exc: BaseException | str) -> str:
    text = " ".join(str(exc).split())
    return text or (exc if isinstance(exc, str) else type(exc).__name__)


if __name__ == "__main__":
    sys.exit(main())
