"""Nothing outlives its run: markers, scratch roots, the sweep of dead runs, Spark's watchdog.

Real processes throughout: owners are SIGKILLed and the tests look at what is left in /proc
and in the temp folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows import runtime
from flows.sources.spool import KeySpool

ROOT = Path(__file__).resolve().parents[2]
SPARK_DIR = ROOT / "spark"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll until predicate() holds; whether it did before the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def running(pid: int) -> bool:
    """Whether a process exists and is not a zombie (psutil, independent of flows.runtime)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def carrying(owner: str) -> list[int]:
    """Running processes whose environment names this run owner."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get(runtime.OWNER_ENV) == owner:
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def fresh_env(**extra: str) -> dict[str, str]:
    """Our environment without a run owner or parent: the child starts a run of its own."""
    env = {k: v for k, v in os.environ.items() if k not in (runtime.OWNER_ENV, runtime.PARENT_ENV)}
    env.update(extra)
    return env


def python(script: str, *args: str, **popen: object) -> subprocess.Popen[str]:
    """A Python child of this test running a script, from the project root."""
    popen.setdefault("env", fresh_env())
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", script, *args], cwd=ROOT, text=True, **popen
    )


def read_json(path: Path, timeout: float = 60) -> dict:
    """A JSON document a child writes (atomically) once it is ready."""
    assert wait_until(path.exists, timeout), f"{path} never written"
    return json.loads(path.read_text())


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """Pids to SIGKILL at the end of a test, whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# --- markers ---------------------------------------------------------------------------------


def test_marker_names_one_incarnation_of_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    marker = runtime.owner_marker()
    pid, ticks = (int(x) for x in marker.split(":"))
    assert pid == os.getpid()
    started = psutil.boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    assert abs(started - psutil.Process().create_time()) < 1
    assert runtime.is_alive(marker)
    assert not runtime.is_alive(f"{pid}:{ticks + 1}"), "same pid, another start: pid reuse"
    for junk in ("", "12", "x:1", "0:5", "-1:3"):
        assert not runtime.is_alive(junk)

    sleeper = subprocess.Popen(["sleep", "30"])
    other = runtime.process_marker(sleeper.pid)
    assert other is not None and other != marker and runtime.is_alive(other)
    sleeper.kill()
    assert wait_until(lambda: not runtime.is_alive(other), 5), "a zombie is not alive"
    sleeper.wait()
    assert not runtime.is_alive(other)

    monkeypatch.delenv(runtime.OWNER_ENV, raising=False)
    assert runtime.run_owner() == marker == os.environ[runtime.OWNER_ENV]
    monkeypatch.setenv(runtime.OWNER_ENV, "123:456")
    assert runtime.run_owner() == "123:456", "a run started by someone else stays theirs"


# --- scratch space ---------------------------------------------------------------------------

SCRATCH_CHILD = """
import json, sys
from pathlib import Path
from flows import runtime
folders = [runtime.scratch_dir("spool-"), runtime.scratch_dir("hyper-")]
for folder in folders:
    Path(folder, "data").write_text("x")
root = runtime.scratch_root()
info = {"marker": runtime.owner_marker(), "root": str(root), "folders": folders,
        "mode": oct(root.stat().st_mode & 0o777)}
runtime.cleanup_scratch()
info["after_cleanup"] = root.exists()
info["again"] = runtime.scratch_dir("again-")  # removed at exit (atexit)
print(json.dumps(info))
"""


def test_scratch_folders_live_under_one_root_per_process_removed_at_exit() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRATCH_CHILD],
        cwd=ROOT,
        env=fresh_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(done.stdout)
    root = Path(info["root"])
    assert root == runtime.scratch_base() / info["marker"].replace(":", "-")
    assert runtime.scratch_base() == Path(os.environ.get("TMPDIR", "/tmp")) / "energy-pipeline"
    assert all(Path(folder).parent == root for folder in info["folders"])
    assert Path(info["folders"][0]).name.startswith("spool-")
    assert info["mode"] == "0o700"
    assert info["after_cleanup"] is False
    assert Path(info["again"]).parent == root
    assert not root.exists(), "the root is removed when the process exits"


# --- sweeping dead runs ----------------------------------------------------------------------

RUN_CHILD = """
import json, os, subprocess, sys, time
from pathlib import Path
from flows import runtime
owner = runtime.run_owner()
folders = [runtime.scratch_dir("spool-"), runtime.scratch_dir("hyper-")]
for folder in folders:
    Path(folder, "data").write_text("x")
sleeper = subprocess.Popen(["sleep", "300"])
stubborn = subprocess.Popen(
    [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
     "print('ready', flush=True); time.sleep(300)"], stdout=subprocess.PIPE, text=True)
stubborn.stdout.readline()  # SIGTERM is ignored from here on
info = {"owner": owner, "root": str(runtime.scratch_root()), "folders": folders,
        "children": [sleeper.pid, stubborn.pid]}
Path(sys.argv[1] + ".tmp").write_text(json.dumps(info))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""


def test_sweep_stops_dead_runs_and_spares_live_ones(tmp_path: Path, reaper: list[int]) -> None:
    dead = python(RUN_CHILD, str(tmp_path / "dead.json"))
    live = python(RUN_CHILD, str(tmp_path / "live.json"))
    reaper += [dead.pid, live.pid]
    dead_info, live_info = read_json(tmp_path / "dead.json"), read_json(tmp_path / "live.json")
    reaper += dead_info["children"] + live_info["children"]
    assert dead_info["owner"] == runtime.process_marker(dead.pid)
    assert sorted(carrying(dead_info["owner"])) == sorted(dead_info["children"])
    children = {pid: runtime.process_marker(pid) for pid in dead_info["children"]}

    dead.send_signal(signal.SIGKILL)
    dead.wait()
    assert all(running(pid) for pid in children), "the children outlive a SIGKILLed owner"

    started = time.monotonic()
    swept = runtime.sweep_dead_runs(grace_s=0.5)
    assert time.monotonic() - started < 10
    assert {k["pid"] for k in swept["killed"]} >= set(children)
    assert dead_info["root"] in swept["removed"]
    assert all(k["owner"] == dead_info["owner"] for k in swept["killed"] if k["pid"] in children)
    assert not Path(dead_info["root"]).exists()
    assert wait_until(lambda: not any(running(pid) for pid in children), 5)
    assert carrying(dead_info["owner"]) == []
    assert all(not runtime.is_alive(marker) for marker in children.values())

    # The live run: owner, children and scratch untouched.
    assert live.poll() is None
    assert all(running(pid) for pid in live_info["children"])
    assert all(Path(folder, "data").exists() for folder in live_info["folders"])
    assert not {k["pid"] for k in swept["killed"]} & {live.pid, *live_info["children"]}
    assert live_info["root"] not in swept["removed"]

    # Once its owner is killed too, the next sweep takes it.
    live.send_signal(signal.SIGKILL)
    live.wait()
    swept = runtime.sweep_dead_runs(grace_s=0.5)
    assert {k["pid"] for k in swept["killed"]} >= set(live_info["children"])
    assert not Path(live_info["root"]).exists()


SPARED_CHILD = """
import json, os, subprocess, sys
from flows import runtime
sleeper = subprocess.Popen(["sleep", "300"])  # carries the dead run owner this process has
own = runtime.sweep_dead_runs(grace_s=0.2)  # its own run: spared
env = dict(os.environ, **{runtime.OWNER_ENV: runtime.owner_marker()})
grandchild = subprocess.run(
    [sys.executable, "-c", "import json; from flows import runtime; "
     "print(json.dumps(runtime.sweep_dead_runs(grace_s=0.2)))"],
    env=env, capture_output=True, text=True, check=True)
print(json.dumps({"sleeper": sleeper.pid, "own": own, "grandchild": json.loads(grandchild.stdout),
                  "sleeper_left": sleeper.poll() is None}))
"""


def test_sweep_spares_its_own_run_and_its_ancestors() -> None:
    pid, ticks = runtime.owner_marker().split(":")
    gone = f"{pid}:{int(ticks) + 1}"  # a run owner that no longer runs
    done = subprocess.run(
        [sys.executable, "-c", SPARED_CHILD],
        cwd=ROOT,
        env=fresh_env(**{runtime.OWNER_ENV: gone}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    own_killed = {k["pid"] for k in info["own"]["killed"]}
    assert info["sleeper"] not in own_killed, "a process of the sweeper's own run"
    grandchild_killed = {k["pid"] for k in info["grandchild"]["killed"]}
    assert info["sleeper"] in grandchild_killed, "a process of a dead run, not an ancestor"
    assert os.getpid() not in grandchild_killed
    assert info["sleeper_left"] is False
    # The child itself (the grandchild's parent, same dead owner) lived to print this.


# --- temporary folders of the pipeline -------------------------------------------------------


def test_spool_folder_under_the_scratch_root_removed_on_close() -> None:
    schema = pa.schema([("k", pa.string()), ("v", pa.int64())])
    spool = KeySpool(schema, ("k",), expected_rows=10, bucket_rows=5)
    try:
        assert spool.folder.parent == runtime.scratch_root()
        spool.add(pd.DataFrame({"k": ["a", "b", "a", "c"], "v": [1, 2, 1, 3]}))
        assert list(spool.folder.iterdir())
        rows = sum(bucket.rows.num_rows for bucket in spool.resolve())
        assert rows == 3
    finally:
        spool.close()
    assert not spool.folder.exists()


def test_hyper_scratch_under_the_scratch_root_removed_after_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tableauhyperapi")
    from flows.lake.fs import Lake
    from flows.outputs import tableau

    folder = tmp_path / "lake" / "gold" / "t" / "annee=2023"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"v": [1.5, 2.5, 3.0]}), folder / "part-0.parquet")
    seen: list[tuple[str, list[str]]] = []
    real_scratch_dir, real_write = tableau.scratch_dir, tableau._write_extract

    def write(lake, hyper, table, scratch, staging):  # type: ignore[no-untyped-def]
        seen.append((str(scratch), os.listdir(scratch)))
        return real_write(lake, hyper, table, scratch, staging)

    monkeypatch.setattr(tableau, "scratch_dir", lambda prefix: real_scratch_dir(prefix))
    monkeypatch.setattr(tableau, "_write_extract", write)
    written = tableau.write_hyper_extracts(Lake(str(tmp_path / "lake")), ["t"])
    assert written["t"]["rows"] == 3
    assert (tmp_path / "lake" / "gold" / "t.hyper").exists()
    scratch, content = seen[0]
    assert Path(scratch).parent == runtime.scratch_root()
    assert Path(scratch).name.startswith("hyper-")
    assert content, "Hyper's logs go to the scratch folder"
    assert not Path(scratch).exists()


# --- the Spark job's watchdog (no JVM: the watchdog alone) -----------------------------------

WATCHED = f"""
import sys, time
sys.path.insert(0, {str(SPARK_DIR)!r})
import aggregate
assert aggregate.start_watchdog(sys.argv[1], "gold/_staging/run-1") is not None
open(sys.argv[2], "w").close()
time.sleep(300)
"""


def make_lake(tmp_path: Path) -> tuple[Path, Path]:
    """A local lake with a raw file and a staging folder: (lake, staging)."""
    lake = tmp_path / "lake"
    (lake / "raw").mkdir(parents=True)
    (lake / "raw" / "keep.txt").write_text("raw")
    staging = lake / "gold" / "_staging" / "run-1"
    (staging / "t").mkdir(parents=True)
    (staging / "t" / "part-0.parquet").write_text("staged")
    return lake, staging


def test_watchdog_ends_the_job_when_the_parent_process_is_gone(
    tmp_path: Path, reaper: list[int]
) -> None:
    lake, staging = make_lake(tmp_path)
    parent = subprocess.Popen(["sleep", "300"])
    reaper.append(parent.pid)
    marker = runtime.process_marker(parent.pid)
    assert marker is not None
    ready = tmp_path / "ready"
    job = python(
        WATCHED,
        lake.as_uri(),
        str(ready),
        env=fresh_env(**{runtime.PARENT_ENV: marker}),
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own group: not the group of its launcher (this test)
    )
    reaper.append(job.pid)
    assert wait_until(ready.exists, 60)
    time.sleep(1.5)
    assert job.poll() is None and staging.exists(), "nothing happens while the parent runs"

    parent.kill()
    parent.wait()
    assert job.wait(timeout=10) == 3
    assert not staging.exists()
    assert (lake / "raw" / "keep.txt").exists() and (lake / "gold" / "_staging").is_dir()
    assert job.stderr is not None and "is gone" in job.stderr.read()


LAUNCHER = f"""
import json, os, subprocess, sys, time
job = subprocess.Popen([sys.executable, "-c", {WATCHED!r}, sys.argv[1], sys.argv[2]])
sibling = subprocess.Popen(["sleep", "300"])
with open(sys.argv[3], "w") as out:
    json.dump({{"job": job.pid, "sibling": sibling.pid}}, out)
time.sleep(300)
"""


def test_watchdog_ends_the_job_and_its_group_when_the_launcher_dies(
    tmp_path: Path, reaper: list[int]
) -> None:
    lake, staging = make_lake(tmp_path)
    ready, pids = tmp_path / "ready", tmp_path / "pids.json"
    # The launcher stands for the spark-submit JVM: leader of its own group, the job's parent.
    launcher = python(LAUNCHER, lake.as_uri(), str(ready), str(pids), start_new_session=True)
    reaper.append(launcher.pid)
    assert wait_until(ready.exists, 60)
    info = read_json(pids)
    reaper += [info["job"], info["sibling"]]
    assert running(info["job"]) and running(info["sibling"])

    launcher.kill()
    launcher.wait()
    assert wait_until(lambda: not staging.exists(), 10)
    assert wait_until(lambda: not running(info["job"]) and not running(info["sibling"]), 10)
    assert (lake / "raw" / "keep.txt").exists()


def test_watchdog_refuses_a_staging_folder_that_is_not_below_the_lake() -> None:
    sys.path.insert(0, str(SPARK_DIR))
    try:
        import aggregate  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(SPARK_DIR))
    for staging in ("", "/", ".", "gold/..", "../other"):
        assert aggregate.start_watchdog("file:///tmp/lake", staging) is None
    assert aggregate._safe_staging("gold/_staging/20250101T000000-abc")


# --- a real spark-submit whose parent is SIGKILLed -------------------------------------------

JOB = f"""
import sys, time
sys.path.insert(0, {str(SPARK_DIR)!r})
import aggregate

def staged_then_busy(spark, lake, staging, years, tables):
    spark.range(100).write.parquet(f"{{lake}}/{{staging}}/numbers")
    print("app: staged", flush=True)
    jvm = spark.sparkContext._jvm
    while True:  # calls into the JVM: they fail at once when it dies
        jvm.java.lang.System.currentTimeMillis()
        time.sleep(0.05)

aggregate.run = staged_then_busy  # the real main(): watchdog, session, failure handling
sys.exit(aggregate.main(sys.argv[1:]))
"""

PARENT = """
import json, sys
from pathlib import Path
from flows import runtime
from flows.gold.spark_submit import run_spark_submit, spark_conf
app, lake, lake_uri = sys.argv[1:4]
print(json.dumps({"owner": runtime.run_owner()}), flush=True)
run_spark_submit(
    Path(app),
    ["--lake", lake_uri, "--staging", "gold/_staging/run-1", "--tables", "conso_nationale"],
    master="local[1]",
    conf=spark_conf(lake, None, "local[1]"),
    jars=[],
    env={},
    timeout_s=300,
    on_line=lambda line: print(line, flush=True),
)
"""


@pytest.mark.spark
def test_killed_parent_takes_its_spark_job_and_staging_with_it(
    tmp_path: Path, reaper: list[int]
) -> None:
    lake = tmp_path / "lake"
    (lake / "raw").mkdir(parents=True)
    app = tmp_path / "job.py"
    app.write_text(JOB)
    parent = python(
        PARENT, str(app), str(lake), lake.as_uri(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    reaper.append(parent.pid)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def pump() -> None:
        assert parent.stdout is not None
        for line in parent.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    owner = json.loads(lines.get(timeout=60))["owner"]
    deadline = time.monotonic() + 180
    while "app: staged" not in log:
        assert time.monotonic() < deadline, "\n".join(log[-40:])
        try:
            log.append(lines.get(timeout=1))
        except queue.Empty:
            assert parent.poll() is None, "\n".join(log[-40:])
    staging = lake / "gold" / "_staging" / "run-1"
    assert (staging / "numbers").is_dir()
    job = carrying(owner)
    reaper += job
    assert len(job) >= 2, "the JVM and the Python driver carry the run owner"

    parent.send_signal(signal.SIGKILL)
    parent.wait()
    started = time.monotonic()
    assert wait_until(lambda: carrying(owner) == [] and not staging.exists(), 15), (
        carrying(owner),
        staging.exists(),
    )
    assert time.monotonic() - started < 15
    assert (lake / "raw").is_dir()
