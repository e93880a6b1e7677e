"""spark-submit as a separate program: local, failing, timed out, standalone cluster, S3A."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import boto3
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.errors import PipelineError
from flows.gold.aggregate import JOB_MODULES
from flows.gold.spark_submit import (
    SparkJobFailed,
    build_command,
    class_archive_dir,
    module_zip,
    run_spark_submit,
    spark_conf,
)
from flows.lake.storage import s3a_jars, to_spark_uri
from tests.support.seaweedfs import SeaweedFS
from tests.support.spark_cluster import standalone_cluster

# A tiny PySpark job: total and count of v per k, written as one Parquet file.
APP = """
import os, sys, time
from pyspark.sql import SparkSession, functions as F

source, target, mode = sys.argv[1], sys.argv[2], sys.argv[3]
spark = SparkSession.builder.getOrCreate()
if mode == "sleep":
    with open(target.removeprefix("file://"), "w") as out:  # whom the timeout must kill
        jvm = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
        out.write(f"{os.getpid()} {jvm} {os.getpgid(0)}")
    print("app: sleeping", flush=True)
    time.sleep(600)
rows = spark.read.parquet(source).groupBy("k").agg(
    F.sum("v").alias("total"), F.count("*").alias("n")
)
result = rows.collect()
print(f"app: {len(result)} groups", flush=True)
if mode == "fail":
    raise RuntimeError("planned failure halfway")
rows.coalesce(1).write.mode("overwrite").parquet(target)
print("app: done", flush=True)
spark.stop()
"""

ROWS = {"k": ["a", "b", "a", "c", "b", "a"], "v": [1, 2, 3, 4, 5, 6]}
EXPECTED = {"a": (10, 3), "b": (7, 2), "c": (4, 1)}  # k -> (sum of v, row count), by hand


def write_app(tmp_path: Path) -> Path:
    """The job's source file."""
    app = tmp_path / "job.py"
    app.write_text(APP)
    return app


def write_input(tmp_path: Path) -> Path:
    """The job's input: one small Parquet file in a folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table(ROWS), folder / "part-0.parquet")
    return folder


def totals(table: pa.Table) -> dict[str, tuple[int, int]]:
    """k -> (total, n) from the job's output table."""
    data = table.to_pydict()
    return {k: (t, n) for k, t, n in zip(data["k"], data["total"], data["n"], strict=True)}


def run_local(
    tmp_path: Path, mode: str, *, timeout_s: float = 180, target: Path | None = None
) -> list[str]:
    """Run the job on local[2] over the tmp_path lake; return the streamed log lines."""
    lines: list[str] = []
    target = target or tmp_path / "out"
    run_spark_submit(
        write_app(tmp_path),
        [to_spark_uri(str(write_input(tmp_path))), to_spark_uri(str(target)), mode],
        master="local[2]",
        conf=spark_conf(str(tmp_path), None, "local[2]"),
        jars=[],
        env={},
        timeout_s=timeout_s,
        on_line=lines.append,
    )
    return lines


def test_to_spark_uri(tmp_path: Path) -> None:
    assert to_spark_uri("s3://bucket/lake") == "s3a://bucket/lake"
    assert to_spark_uri("s3a://bucket/lake/") == "s3a://bucket/lake/"
    assert to_spark_uri(str(tmp_path / "lake")) == f"file://{tmp_path}/lake"
    assert to_spark_uri("file:///data/lake") == "file:///data/lake"
    relative = to_spark_uri("lake")
    assert relative.startswith("file:///") and relative.endswith("/lake")


def test_spark_conf_s3_carries_no_secret() -> None:
    conf = spark_conf("s3://bucket/lake", "http://127.0.0.1:9000", "local[2]")
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert "DefaultCredentialsProvider" in conf["spark.hadoop.fs.s3a.aws.credentials.provider"]
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert not [k for k in conf if "secret" in k or "access.key" in k or "token" in k]
    local = spark_conf("/tmp/lake", None, "local[2]")
    assert not [k for k in local if "s3a" in k]
    with pytest.raises(ValueError, match="environment"):
        build_command(
            Path("job.py"), [], master="local", conf={"spark.hadoop.fs.s3a.secret.key": "x"}
        )


def test_s3a_jars_missing_says_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="make jars"):
        s3a_jars(tmp_path)


JOB_FILES = [
    "flows/__init__.py",
    "flows/gold/__init__.py",
    "flows/gold/tables.py",
    "flows/lake/__init__.py",
    "flows/lake/layout.py",
]


def test_job_modules_travel_in_a_zip_that_needs_nothing_else(tmp_path: Path) -> None:
    archive = module_zip(JOB_MODULES, tmp_path)

    assert sorted(zipfile.ZipFile(archive).namelist()) == JOB_FILES
    # A bare interpreter (no site-packages, no project on its path) imports them from the zip.
    code = (
        f"import sys; sys.path.insert(0, {str(archive)!r}); "
        "import flows.gold.tables as t, flows.lake.layout as l; "
        "print(t.__file__, l.__file__, len(t.TABLES), l.gold_pointer('x'))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    tables, layout, count, pointer = done.stdout.split()
    assert tables.startswith(str(archive)) and layout.startswith(str(archive))
    assert (count, pointer) == ("8", "gold/x/_current.json")


def test_py_files_come_before_the_app(tmp_path: Path) -> None:
    command = build_command(
        Path("job.py"), ["--a"], master="local", conf={}, py_files=[tmp_path / "m.zip"]
    )
    assert command[-4:] == [
        "--py-files",
        str(tmp_path / "m.zip"),
        str(Path("job.py").resolve()),
        "--a",
    ]


IMPORTER = """
from pyspark.sql import SparkSession
import flows.gold.tables
spark = SparkSession.builder.getOrCreate()
print(f"app: tables from {flows.gold.tables.__file__}", flush=True)
spark.stop()
"""


@pytest.mark.spark
def test_job_imports_the_shipped_modules(tmp_path: Path) -> None:
    app = tmp_path / "importer.py"
    app.write_text(IMPORTER)
    lines: list[str] = []
    run_spark_submit(
        app,
        [],
        master="local[1]",
        conf=spark_conf(str(tmp_path), None, "local[1]"),
        jars=[],
        env={},
        timeout_s=180,
        on_line=lines.append,
        py_modules=JOB_MODULES,
    )
    [origin] = [line for line in lines if line.startswith("app: tables from ")]
    shipped = origin.removeprefix("app: tables from ")
    assert "py-files.zip" in shipped, origin  # from the zip, not the project's folder
    assert not Path(shipped.split("py-files.zip")[0]).exists(), "the zip's folder is removed"


@pytest.mark.spark
def test_local_job_result_and_streamed_log(tmp_path: Path) -> None:
    lines = run_local(tmp_path, "ok")
    assert "app: 3 groups" in lines and "app: done" in lines
    assert totals(pq.read_table(tmp_path / "out")) == EXPECTED


@pytest.mark.spark
def test_failing_job_raises_with_exit_code_and_traceback(tmp_path: Path) -> None:
    with pytest.raises(SparkJobFailed) as failed:
        run_local(tmp_path, "fail")
    error = failed.value
    assert error.exit_code == 1 and not error.timed_out
    assert "exit code 1" in str(error)
    assert any(line.startswith("Traceback (most recent call last)") for line in error.log_tail)
    assert "RuntimeError: planned failure halfway" in str(error)
    assert not (tmp_path / "out").exists()


@pytest.mark.spark
def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids.txt"
    started = time.monotonic()
    with pytest.raises(SparkJobFailed, match="timed out after 30 s") as failed:
        run_local(tmp_path, "sleep", timeout_s=30, target=pids)
    assert failed.value.timed_out
    assert time.monotonic() - started < 30 + 20
    assert "app: sleeping" in failed.value.log_tail, "the job should have been running"
    python_pid, jvm_pid, group = (int(x) for x in pids.read_text().split())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        psutil.pid_exists(python_pid) or psutil.pid_exists(jvm_pid)
    ):
        time.sleep(0.2)
    for pid in (python_pid, jvm_pid):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", pid
    survivors = [
        p.pid
        for p in psutil.process_iter()
        if p.pid != os.getpid() and _pgid(p.pid) == group and p.status() != "zombie"
    ]
    assert survivors == []


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@pytest.mark.spark
def test_standalone_cluster_gives_the_same_result(tmp_path: Path) -> None:
    app, source = write_app(tmp_path), write_input(tmp_path)
    lines: list[str] = []
    with standalone_cluster(cores=2, memory="2g") as master:
        assert master.startswith("spark://127.0.0.1:")
        conf = spark_conf(str(tmp_path), None, master)
        conf["spark.executor.memory"] = "1g"
        run_spark_submit(
            app,
            [to_spark_uri(str(source)), to_spark_uri(str(tmp_path / "out")), "ok"],
            master=master,
            conf=conf,
            jars=[],
            env={"SPARK_LOCAL_IP": "127.0.0.1"},
            timeout_s=240,
            on_line=lines.append,
        )
    assert "app: done" in lines
    assert totals(pq.read_table(tmp_path / "out")) == EXPECTED
    port = master.rsplit(":", 1)[1]
    daemons = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "org.apache.spark.deploy." in " ".join(p.info["cmdline"] or [])
        and port in " ".join(p.info["cmdline"] or [])
    ]
    assert daemons == [], "master and worker should be stopped"


@pytest.mark.spark
@pytest.mark.s3
def test_s3a_round_trip_with_credentials_in_env_only(
    tmp_path: Path, s3_endpoint: str, seaweedfs: SeaweedFS
) -> None:
    # The server's spare identity (random for the session, not the tests' default key): the
    # job can only have it from the environment given to spark-submit.
    key_id, secret = seaweedfs.credentials[1]
    assert key_id != os.environ["AWS_ACCESS_KEY_ID"]
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )
    # Not the s3_bucket fixture: its names can end with "-", which Java's URI parser rejects.
    s3_bucket = "spark-" + secrets.token_hex(4)
    s3.create_bucket(Bucket=s3_bucket)
    buffer = io.BytesIO()
    pq.write_table(pa.table(ROWS), buffer)
    s3.put_object(Bucket=s3_bucket, Key="lake/in/part-0.parquet", Body=buffer.getvalue())

    lake = f"s3://{s3_bucket}/lake"
    app = write_app(tmp_path)
    args = [to_spark_uri(f"{lake}/in"), to_spark_uri(f"{lake}/out"), "ok"]
    conf = spark_conf(lake, s3_endpoint, "local[2]")
    jars = s3a_jars()
    command = build_command(app, args, master="local[2]", conf=conf, jars=jars)
    assert args[0] == f"s3a://{s3_bucket}/lake/in"
    assert key_id not in " ".join(command) and secret not in " ".join(command)

    lines: list[str] = []
    run_spark_submit(
        app,
        args,
        master="local[2]",
        conf=conf,
        jars=jars,
        env={"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret},
        timeout_s=240,
        on_line=lines.append,
    )
    assert "app: done" in lines
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix="lake/out/")["Contents"]
    parts = [o["Key"] for o in listed if o["Key"].endswith(".parquet")]
    assert len(parts) == 1 and any(o["Key"].endswith("_SUCCESS") for o in listed)
    body = s3.get_object(Bucket=s3_bucket, Key=parts[0])["Body"].read()
    assert totals(pq.read_table(io.BytesIO(body))) == EXPECTED


def test_driver_class_archive_made_once_then_mapped(tmp_path: Path) -> None:
    """The first job dumps the driver's classes into the cache folder (kept only when the
    job succeeds), the next ones load Spark's classes from it; an unusable archive is
    ignored and the job still runs."""
    archives = tmp_path / "jvm-classes"

    def run(mode: str, name: str, extra: dict[str, str] | None = None) -> list[str]:
        lines: list[str] = []
        conf = {**spark_conf(str(tmp_path), None, "local[1]"), **(extra or {})}
        folder = tmp_path / name
        folder.mkdir()
        source, target = to_spark_uri(str(write_input(folder))), to_spark_uri(str(folder / "out"))
        run_spark_submit(
            write_app(folder), [source, target, mode], master="local[1]", conf=conf, jars=[],
            env={}, timeout_s=180, on_line=lines.append, class_archive=archives,
        )  # fmt: skip
        return lines

    assert class_archive_dir("off") is None
    assert class_archive_dir(None) == Path.home() / ".cache/energy-pipeline/jvm-classes"
    with pytest.raises(SparkJobFailed):
        run("fail", "failed")
    assert list(archives.iterdir()) == []  # a failed job's dump is not kept
    run("ok", "first")
    made = list(archives.iterdir())
    assert len(made) == 1 and made[0].suffix == ".jsa" and made[0].stat().st_size > 10_000_000
    loads = tmp_path / "classes.log"
    lines = run("ok", "second", {"spark.driver.extraJavaOptions":
                                 f"-Xlog:class+load=info:file={loads}"})  # fmt: skip
    assert "app: done" in lines
    shared = [
        line for line in loads.read_text().splitlines() if "org.apache.spark.SparkContext " in line
    ]
    assert shared and "shared objects file (top)" in shared[0], shared
    assert list(archives.iterdir()) == made  # mapped, not made again
    made[0].write_bytes(b"not an archive")  # a damaged archive: the JVM runs without it
    assert "app: done" in run("ok", "third")
    assert totals(pq.read_table(tmp_path / "third" / "out")) == EXPECTED
