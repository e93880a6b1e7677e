"""The counting S3 proxy (tests/support/s3_counter.py) in front of the tests' S3 server
(SeaweedFS): exact tallies of known boto3 operations, s3fs, and Spark's S3A; raw chunked and
100-continue uploads in front of moto's server (see that test for why)."""

from __future__ import annotations

import http.client
import io
import secrets
import textwrap
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
import s3fs

from tests.support.s3_counter import S3Counter, Tally, tally_of

pytestmark = pytest.mark.s3

MIB = 1024 * 1024


@pytest.fixture
def counter(s3_endpoint: str) -> Iterator[S3Counter]:
    with S3Counter(s3_endpoint) as proxy:
        yield proxy


def test_boto3_operations_are_tallied_exactly(counter: S3Counter, s3_bucket: str) -> None:
    s3 = boto3.client("s3", endpoint_url=counter.url, region_name="us-east-1")
    sizes = {"a": 10, "b": 1000, "c": 123_456}
    for key, size in sizes.items():
        s3.put_object(Bucket=s3_bucket, Key=f"in/{key}", Body=b"x" * size)
    s3.copy_object(Bucket=s3_bucket, Key="in/b-copy", CopySource=f"{s3_bucket}/in/b")
    upload = s3.create_multipart_upload(Bucket=s3_bucket, Key="in/multi")["UploadId"]
    etags = [
        s3.upload_part(
            Bucket=s3_bucket, Key="in/multi", UploadId=upload, PartNumber=n, Body=b"y" * size
        )["ETag"]
        for n, size in ((1, 5 * MIB), (2, 100))
    ]
    s3.complete_multipart_upload(
        Bucket=s3_bucket,
        Key="in/multi",
        UploadId=upload,
        MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, 1)]},
    )
    s3.delete_objects(Bucket=s3_bucket, Delete={"Objects": [{"Key": "in/a"}, {"Key": "in/b-copy"}]})
    s3.delete_object(Bucket=s3_bucket, Key="in/c")
    got = s3.get_object(Bucket=s3_bucket, Key="in/multi")["Body"].read()
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix="in/")["Contents"]

    tally = counter.tally()
    assert len(got) == 5 * MIB + 100
    assert sorted(o["Key"] for o in listed) == ["in/b", "in/multi"]
    assert tally.figures() == {
        "objects_written": 3 + 1,  # three PUTs, one completed multipart upload
        "empty_objects_written": 0,
        "bytes_written": 10 + 1000 + 123_456 + 5 * MIB + 100,
        "objects_copied": 1,
        "bytes_copied": 1000,
        "objects_deleted": 2 + 1,
        "bytes_read": 5 * MIB + 100,
        "copy_sizes_unknown": 0,
    }
    assert tally.requests == {
        "PutObject": 3,
        "CopyObject": 1,
        "CreateMultipartUpload": 1,
        "UploadPart": 2,
        "CompleteMultipartUpload": 1,
        "DeleteObjects": 1,
        "DeleteObject": 1,
        "GetObject": 1,
        "ListObjects": 1,
    }
    assert not tally.failed
    assert counter.clients() == ["python"]
    assert counter.tally("python") == tally
    assert tally_of(counter.requests()) == tally
    assert [r.op for r in counter.requests()][:4] == ["PutObject"] * 3 + ["CopyObject"]


def test_multipart_copy_counts_one_object_copied(counter: S3Counter, s3_bucket: str) -> None:
    s3 = boto3.client("s3", endpoint_url=counter.url, region_name="us-east-1")
    s3.put_object(Bucket=s3_bucket, Key="big", Body=b"z" * (6 * MIB))
    before = counter.tally()
    upload = s3.create_multipart_upload(Bucket=s3_bucket, Key="big-copy")["UploadId"]
    ranges = ((1, 0, 5 * MIB - 1), (2, 5 * MIB, 6 * MIB - 1))
    etags = [
        s3.upload_part_copy(
            Bucket=s3_bucket,
            Key="big-copy",
            UploadId=upload,
            PartNumber=n,
            CopySource={"Bucket": s3_bucket, "Key": "big"},
            CopySourceRange=f"bytes={first}-{last}",
        )["CopyPartResult"]["ETag"]
        for n, first, last in ranges
    ]
    s3.complete_multipart_upload(
        Bucket=s3_bucket,
        Key="big-copy",
        UploadId=upload,
        MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, 1)]},
    )

    step = counter.tally() - before
    assert (step.objects_copied, step.bytes_copied) == (1, 6 * MIB)
    assert (step.objects_written, step.bytes_written) == (0, 0)
    assert step.requests == {
        "CreateMultipartUpload": 1,
        "UploadPartCopy": 2,
        "CompleteMultipartUpload": 1,
    }


def _raw_put(url: str, path: str, headers: dict[str, str], pieces: list[bytes]) -> int:
    """A PUT by hand: headers first, then (after a 100 Continue if asked) the body pieces."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("PUT", path)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        chunked = headers.get("Transfer-Encoding") == "chunked"
        if headers.get("Expect") == "100-continue":
            interim = conn.sock.recv(64)  # the proxy's own answer, before any body byte
            assert interim.startswith(b"HTTP/1.1 100"), interim
        for piece in pieces:
            conn.send(b"%X\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            conn.send(b"0\r\n\r\n")
        reply = conn.getresponse()
        reply.read()
        return reply.status
    finally:
        conn.close()


def test_chunked_and_expect_continue_bodies_are_forwarded(moto_endpoint: str) -> None:
    """moto, not SeaweedFS, behind the proxy: these PUTs are written by hand, unsigned, to
    control their framing byte by byte, and SeaweedFS (rightly) refuses unsigned requests
    with 403; moto does not check signatures."""
    s3_bucket = f"raw-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(
        Bucket=s3_bucket
    )
    with S3Counter(moto_endpoint) as counter:
        _forwarded_raw_puts(counter, s3_bucket)


def _forwarded_raw_puts(counter: S3Counter, s3_bucket: str) -> None:
    pieces = [b"a" * 70_000, b"b" * 3, b"c" * 100_000]
    body = b"".join(pieces)
    agent = {"User-Agent": "Botocore/1.0"}
    chunked = {"Transfer-Encoding": "chunked", "Expect": "100-continue", **agent}
    sized = {"Content-Length": str(len(body)), "Expect": "100-continue", **agent}

    assert _raw_put(counter.url, f"/{s3_bucket}/chunked", chunked, pieces) == 200
    assert _raw_put(counter.url, f"/{s3_bucket}/sized", sized, pieces) == 200

    s3 = boto3.client("s3", endpoint_url=counter.url, region_name="us-east-1")
    for key in ("chunked", "sized"):
        assert s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == body
    tally = counter.tally()
    assert (tally.objects_written, tally.bytes_written) == (2, 2 * len(body))
    assert tally.bytes_read == 2 * len(body)


def test_s3fs_writes_copies_and_deletes(counter: S3Counter, s3_bucket: str) -> None:
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": counter.url}, skip_instance_cache=True)
    fs.pipe(f"{s3_bucket}/f/one", b"1" * 300)
    fs.pipe(f"{s3_bucket}/f/two", b"2" * 700)
    fs.copy(f"{s3_bucket}/f/two", f"{s3_bucket}/g/two")
    fs.rm([f"{s3_bucket}/f/one", f"{s3_bucket}/f/two"])

    tally = counter.tally()
    assert (tally.objects_written, tally.bytes_written) == (2, 1000)
    assert (tally.objects_copied, tally.bytes_copied) == (1, 700)
    assert tally.objects_deleted == 2
    assert fs.find(s3_bucket, refresh=True) == [f"{s3_bucket}/g/two"]


SPARK_APP = textwrap.dedent(
    """
    import sys
    from pyspark.sql import SparkSession
    spark = SparkSession.builder.getOrCreate()
    frame = spark.range(0, 200_000).selectExpr("id", "id * 2 as v")
    frame.repartition(2).write.mode("overwrite").parquet(sys.argv[1])
    print("app: rows", spark.read.parquet(sys.argv[1]).count(), flush=True)
    """
)


@pytest.mark.spark
def test_spark_s3a_goes_through_the_counter(
    counter: S3Counter, s3_endpoint: str, tmp_path: Path
) -> None:
    from flows.gold.spark_submit import run_spark_submit, spark_conf
    from flows.lake.storage import s3a_jars

    bucket = "counter-" + secrets.token_hex(4)  # no trailing "-": Java's URI parser
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    app = tmp_path / "app.py"
    app.write_text(SPARK_APP)
    lines: list[str] = []
    run_spark_submit(
        app,
        [f"s3a://{bucket}/out"],
        master="local[2]",
        conf=spark_conf(f"s3://{bucket}/lake", counter.url, "local[2]"),
        jars=s3a_jars(),
        env={},
        timeout_s=240,
        on_line=lines.append,
    )

    assert "app: rows 200000" in lines
    java: Tally = counter.tally("java")
    assert counter.clients() == ["java"]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    stored = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    parts = {k: v for k, v in stored.items() if k.endswith(".parquet")}
    assert len(parts) == 2
    assert java.objects_written >= len(stored)  # the parts and _SUCCESS, maybe markers
    assert java.bytes_written >= sum(stored.values())
    assert java.bytes_read > 0
    body = s3.get_object(Bucket=bucket, Key=next(iter(parts)))["Body"].read()
    assert pq.read_table(io.BytesIO(body)).num_rows > 0
    assert not {op for op in java.failed if op not in ("HeadObject", "ListObjects")}


def test_tally_difference_and_sum() -> None:
    earlier = Tally()
    earlier.requests["PutObject"] = 2
    earlier.bytes_written = 10
    later = earlier + Tally()
    later.requests["PutObject"] += 1
    later.requests["GetObject"] = 4
    later.bytes_written = 25

    step = later - earlier
    assert step.requests == {"PutObject": 1, "GetObject": 4}
    assert step.bytes_written == 15
    assert (step + earlier).requests == later.requests
