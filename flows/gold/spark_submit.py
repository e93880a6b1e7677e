"""Run a PySpark application as a separate program: spark-submit, streamed log, timeout.

The runner only: the command line (settings, jars, the Python modules the job imports,
shipped with --py-files), the child's environment, its streamed log, its timeout and kill,
and the generic Spark settings (time zone, log level, driver memory; shuffle partitions are
the job's, from the cluster it gets). What a lake's storage
needs (URI, S3A settings, jars) comes from `flows.lake.storage`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

from flows import USER_SPARK_ENV, runtime
from flows.errors import PipelineError
from flows.lake import storage

LOG_TAIL_LINES = 40
KILL_GRACE_S = 5.0
PY_FILES_ZIP = "py-files.zip"

# Settings that would carry a secret: they must travel in the environment instead.
_SECRET_KEYS = re.compile(r"secret|password|token|access\.key|passphrase", re.IGNORECASE)


class SparkJobFailed(PipelineError):
    """spark-submit exited non-zero or ran past its timeout; the message ends with the log tail."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None = None,
        timed_out: bool = False,
        log_tail: Sequence[str] = (),
        errors: Sequence[str] = (),
    ) -> None:
        self.exit_code = exit_code
        self.timed_out = timed_out
        self.log_tail = list(log_tail)
        self.errors = list(errors)
        parts = [message]
        missing = [line for line in self.errors if line not in self.log_tail]
        if missing:  # the first error lines, when a long stack trace pushed them out of the tail
            parts += ["--- first error lines ---", *missing]
        parts += [f"--- last {len(self.log_tail)} log lines ---", *self.log_tail]
        super().__init__("\n".join(_clip(part) for part in parts))
        cause = root_cause([*self.errors, *self.log_tail])
        # What a one-line error shows: the headline and the deepest cause, not the log tail.
        self.summary = f"{message}: {_clip(cause)}" if cause else message


def root_cause(lines: Sequence[str]) -> str:
    """The deepest `Caused by:` of a JVM stack trace (else the first error line), as said."""
    causes = [line.split("Caused by:", 1)[1].strip() for line in lines if "Caused by:" in line]
    if causes:
        return causes[-1]
    errors = [line.strip() for line in lines if _ERROR_LINE.match(line.strip())]
    return errors[0] if errors else ""


# Lines that name an error: a Python traceback start or a (Java or Python) exception headline.
_ERROR_LINE = re.compile(
    r"^(Traceback \(most recent call last\)|(: )?[\w.$]*(Error|Exception)\b(: .*)?$"
    r"|Caused by: |\S.*\bERROR\b)"
)
MAX_ERROR_LINES = 10
MAX_LINE_CHARS = 2_000


def _clip(line: str) -> str:
    """A log line cut to a readable length (AWS SDK errors run to several kilobytes)."""
    return line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + " [...]"


def spark_home() -> Path:
    """The Spark installation of the pyspark package in this environment (not imported)."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise RuntimeError("pyspark is not installed in this environment: run `make setup`")
    return Path(spec.origin).resolve().parent


def bundled_hadoop_version() -> str | None:
    """The Hadoop client version pyspark ships (hadoop-client-api-X.jar), if found."""
    for jar in (spark_home() / "jars").glob("hadoop-client-api-*.jar"):
        return jar.name.removeprefix("hadoop-client-api-").removesuffix(".jar")
    return None


def spark_conf(
    lake_uri: str,
    s3_endpoint: str | None,
    master: str,
    *,
    region: str | None = None,
    driver_memory: str = "1g",
) -> dict[str, str]:
    """Spark and Hadoop settings for a job on this lake: the generic ones, then what the
    lake's storage needs (`region`: the S3 region setting); no secret ever goes in here.
    `master` is kept for callers; nothing here depends on it any more."""
    conf = {
        "spark.app.name": "energy-pipeline",
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # Spark's INFO chatter would drown the job's own output in the flow's log.
        "spark.log.level": "WARN",
        "spark.driver.memory": driver_memory,
        # No shuffle partitions nor default parallelism here: they follow the cluster's cores,
        # which only the job knows once its session is up (spark/aggregate.py `tune`); a
        # value set here would take the driver's cores for the cluster's.
    }
    conf.update(storage.spark_conf(lake_uri, s3_endpoint, region))
    return conf


def spark_submit_executable() -> Path:
    """The spark-submit launcher of the installed pyspark."""
    return spark_home() / "bin" / "spark-submit"


def build_command(
    app: Path,
    app_args: Sequence[str],
    *,
    master: str,
    conf: Mapping[str, str],
    jars: Sequence[Path] = (),
    py_files: Sequence[Path] = (),
) -> list[str]:
    """The spark-submit argument list (no shell); settings only, never credentials."""
    leaked = [key for key in conf if _SECRET_KEYS.search(key)]
    if leaked:
        raise ValueError(f"secrets must travel in the environment, not as --conf: {leaked}")
    command = [str(spark_submit_executable()), "--master", master]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    if jars:
        command += ["--jars", ",".join(str(Path(jar).resolve()) for jar in jars)]
    if py_files:
        command += ["--py-files", ",".join(str(Path(path).resolve()) for path in py_files)]
    command.append(str(Path(app).resolve()))
    command += list(app_args)
    return command


def module_zip(modules: Sequence[str], folder: str | Path) -> Path:
    """A zip of Python modules, with the `__init__.py` of every package above them, that
    --py-files puts on the job's path (driver and executors). Single-file modules only:
    a package's own submodules are not included unless named."""
    members: dict[str, Path] = {}
    for module in modules:
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            spec = importlib.util.find_spec(name)
            if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
                raise ValueError(f"{name} is not a Python source module: cannot ship it")
            package = spec.submodule_search_locations is not None
            if depth < len(parts) and not package:
                raise ValueError(f"{name} is not a package: cannot ship {module}")
            arcname = "/".join(parts[:depth]) + ("/__init__.py" if package else ".py")
            members[arcname] = Path(spec.origin)
    target = Path(folder) / PY_FILES_ZIP
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for arcname, source in sorted(members.items()):
            archive.write(source, arcname)
    return target


def submit_env(env: Mapping[str, str] | None = None, *, master: str = "") -> dict[str, str]:
    """The child's environment: ours, this interpreter and pyspark's Spark, then the given env."""
    merged = dict(os.environ)
    for name, value in USER_SPARK_ENV.items():  # undo what importing pandera set
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    merged["PYSPARK_PYTHON"] = sys.executable
    merged["PYSPARK_DRIVER_PYTHON"] = sys.executable
    merged["SPARK_HOME"] = str(spark_home())
    if master.startswith("local") or urlparse(master).hostname in ("127.0.0.1", "localhost"):
        # A job that stays on this machine: bind loopback, whatever the hostname resolves to.
        merged.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    merged.update(env or {})
    return merged


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Stop the launcher and every JVM / Python worker it started (its process group)."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The launcher is gone; children that ignored SIGTERM may still hold the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def run_spark_submit(
    app: Path,
    app_args: list[str],
    *,
    master: str,
    conf: dict[str, str],
    jars: list[Path],
    env: dict[str, str],
    timeout_s: float,
    on_line: Callable[[str], None],
    py_modules: Sequence[str] = (),
    class_archive: Path | None = None,
) -> None:
    """Run spark-submit, stream each log line to on_line, raise SparkJobFailed on failure.

    `class_archive`: the folder of the driver's class archive (`ClassArchive`), if any.

    `py_modules` (dotted names) are the project modules the job imports: they travel in a
    zip (--py-files) made in this run's scratch space and removed when the job ends.
    The job does not outlive this process: it is killed with it (Linux parent-death
    signal), and its environment names this process (ENERGY_PIPELINE_PARENT_PID) and the
    run (ENERGY_PIPELINE_RUN_OWNER) for the job's own watchdog and `runtime.sweep_dead_runs`.
    """
    scratch = runtime.scratch_dir("spark-py-files-") if py_modules else None
    archive = ClassArchive.for_driver(class_archive, conf) if class_archive else None
    try:
        py_files = [module_zip(py_modules, scratch)] if scratch else []
        conf = archive.driver_conf(conf) if archive else conf
        command = build_command(
            app, app_args, master=master, conf=conf, jars=jars, py_files=py_files
        )
        _run(command, app, master=master, env=env, timeout_s=timeout_s, on_line=on_line)
        if archive:
            archive.keep()
    finally:
        if archive:
            archive.discard()
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


# --- the driver JVM's class archive (AppCDS) ------------------------------------------------

_QUIET_CDS = "-Xlog:cds=off -Xlog:cds+dynamic=off"
STALE_DUMP_S = 3600.0


def class_archive_dir(setting: str | None) -> Path | None:
    """Where driver class archives are kept (Settings.spark_class_archive_dir): the folder
    given, else ~/.cache/energy-pipeline/jvm-classes; None when 'off'."""
    if setting and setting.strip().lower() == "off":
        return None
    return Path(setting or "~/.cache/energy-pipeline/jvm-classes").expanduser()


class ClassArchive:
    """A dynamic class-data-sharing archive of the driver JVM (JDK 13+: Spark 4 needs 17).

    The driver loads some 12,000 classes at start-up; mapping them from an archive instead
    of parsing them from the jars takes about 3 s off every spark-submit here (8.2 -> 5.2 s
    for an empty application). The first job on a machine dumps the classes it loaded into
    a file of its own (`-XX:ArchiveClassesAtExit`), renamed into place when it succeeds;
    the next ones map it (`-XX:SharedArchiveFile`). One archive per JVM and class path
    (its name hashes them): a JVM that finds an archive it cannot use ignores it. Nothing
    else changes: the log lines of class sharing are off, and a job that cannot write the
    cache folder simply runs without.
    """

    def __init__(self, final: Path) -> None:
        self.final = final
        own = f"{final.name}.{os.getpid()}-{threading.get_ident()}.tmp"
        self.dumping = None if final.exists() else final.with_name(own)

    @classmethod
    def for_driver(cls, folder: Path | None, conf: Mapping[str, str]) -> ClassArchive | None:
        java = _java_executable()
        if folder is None or java is None:
            return None
        jars = sorted((spark_home() / "jars").glob("*.jar"))
        identity = [str(java), str(java.stat().st_size), str(java.stat().st_mtime_ns)]
        identity += [f"{jar.name}:{jar.stat().st_size}" for jar in jars]
        identity.append(conf.get("spark.driver.extraClassPath", ""))
        digest = hashlib.sha256("\n".join(identity).encode()).hexdigest()[:16]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        if not os.access(folder, os.W_OK | os.X_OK):
            return None
        for stale in folder.glob("*.tmp"):  # dumps of killed jobs
            with contextlib.suppress(OSError):
                if time.time() - stale.stat().st_mtime > STALE_DUMP_S:
                    stale.unlink()
        return cls(folder / f"driver-{digest}.jsa")

    def driver_conf(self, conf: Mapping[str, str]) -> dict[str, str]:
        """The settings with the archive's JVM options added to the driver's own."""
        option = (
            f"-XX:ArchiveClassesAtExit={self.dumping}"
            if self.dumping
            else f"-XX:SharedArchiveFile={self.final}"
        )
        merged = dict(conf)
        own = merged.get("spark.driver.extraJavaOptions", "")
        merged["spark.driver.extraJavaOptions"] = f"{own} {option} {_QUIET_CDS}".strip()
        return merged

    def keep(self) -> None:
        """After a successful job: its dump becomes the archive (atomically)."""
        if self.dumping and self.dumping.exists():
            with contextlib.suppress(OSError):
                os.replace(self.dumping, self.final)

    def discard(self) -> None:
        """A dump not kept (failed or killed job) is removed."""
        if self.dumping:
            with contextlib.suppress(OSError):
                self.dumping.unlink()


def _java_executable() -> Path | None:
    """The java spark-submit runs: $JAVA_HOME/bin/java, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not found or not Path(found).exists():
        return None
    return Path(found).resolve()


def _run(
    command: list[str],
    app: Path,
    *,
    master: str,
    env: dict[str, str],
    timeout_s: float,
    on_line: Callable[[str], None],
) -> None:
    """Run one spark-submit command line: stream, time out, kill, raise on failure."""
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    errors: list[str] = []
    started = time.monotonic()
    child_env = submit_env(env, master=master)
    # Whose job this is: the run (swept when its owner is gone) and this very process (the
    # job's watchdog ends it, staging removed, when this process is gone).
    child_env[runtime.OWNER_ENV] = runtime.run_owner()
    child_env[runtime.PARENT_ENV] = runtime.owner_marker()
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        env=child_env,
        # Its own group, so the timeout can stop the launcher and everything it started ...
        start_new_session=True,
        # ... and SIGKILL to the JVM (spark-submit execs into it) when this thread ends,
        # a SIGKILL of this process included: this thread waits for it its whole life.
        preexec_fn=runtime.die_with_parent_hook(),
    )
    timed_out = threading.Event()

    def watchdog() -> None:
        if proc.poll() is None:
            timed_out.set()
            _kill_group(proc)

    timer = threading.Timer(timeout_s, watchdog)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            if len(errors) < MAX_ERROR_LINES and _ERROR_LINE.match(line):
                errors.append(line)
            on_line(line)
        code = proc.wait()
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        timer.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
    if timed_out.is_set():
        raise SparkJobFailed(
            f"spark-submit {app.name} timed out after {timeout_s:g} s",
            timed_out=True,
            exit_code=code,
            log_tail=tail,
            errors=errors,
        )
    # The driver exited; make sure nothing it forked outlives it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if code != 0:
        elapsed = time.monotonic() - started
        raise SparkJobFailed(
            f"spark-submit {app.name} failed with exit code {code} after {elapsed:.0f} s",
            exit_code=code,
            log_tail=tail,
            errors=errors,
        )
