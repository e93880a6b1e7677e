"""A real Spark standalone cluster (one master, one worker) on loopback, for tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from flows.gold.spark_submit import spark_home

START_TIMEOUT_S = 90.0
STOP_GRACE_S = 10.0


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (bound to port 0, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, or a note that there is none."""
    if not path.exists():
        return f"({path} missing)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a Spark daemon class in its own process group, output to a log file."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(spark_home() / "bin" / "spark-class"), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """Terminate a daemon's process group by PID, then kill it after the grace period."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # executors the worker left behind
        os.killpg(proc.pid, signal.SIGKILL)


def alive_workers(ui_port: int) -> int:
    """How many workers the master's JSON status reports alive (0 while it is not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as reply:
            return int(json.load(reply).get("aliveworkers", 0))
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def standalone_cluster(
    cores: int = 2, memory: str = "2g", timeout_s: float = START_TIMEOUT_S
) -> Iterator[str]:
    """Start a master and one worker, yield the master URL, and stop both afterwards."""
    port, ui_port = free_ports(2)
    with tempfile.TemporaryDirectory(prefix="spark-cluster-") as tmp:
        folder = Path(tmp)
        env = dict(os.environ)
        env.update(
            SPARK_HOME=str(spark_home()),
            SPARK_LOCAL_IP="127.0.0.1",
            SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false",
            SPARK_LOG_DIR=str(folder),
        )
        master_url = f"spark://127.0.0.1:{port}"
        master_log, worker_log = folder / "master.log", folder / "worker.log"
        procs: list[subprocess.Popen[bytes]] = []
        try:
            master = ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1"]
            master += ["--port", str(port), "--webui-port", str(ui_port)]
            procs.append(_start(master, master_log, env))
            worker = ["org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1"]
            worker += ["--cores", str(cores), "--memory", memory, "--webui-port", "0"]
            worker += ["--work-dir", str(folder / "work")]
            procs.append(_start(worker, worker_log, env))
            deadline = time.monotonic() + timeout_s
            while alive_workers(ui_port) < 1:
                exited = [p for p in procs if p.poll() is not None]
                if exited or time.monotonic() > deadline:
                    why = (
                        f"exited with code {exited[0].returncode}"
                        if exited
                        else f"no alive worker after {timeout_s:g} s"
                    )
                    raise RuntimeError(
                        f"Spark standalone cluster at {master_url} did not start: {why}\n"
                        f"--- master log ---\n{log_tail(master_log)}\n"
                        f"--- worker log ---\n{log_tail(worker_log)}"
                    )
                time.sleep(0.5)
            yield master_url
        finally:
            for proc in reversed(procs):
                stop_process(proc)
