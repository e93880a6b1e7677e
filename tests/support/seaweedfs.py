"""A real S3 server for the tests: SeaweedFS (`weed server -s3`) on loopback, auth enabled.

The binary comes from $SEAWEEDFS_BIN, else from scripts/seaweedfs-setup.sh (which builds it
once from the Go module proxy and caches it; a cached binary makes that call take a second).
One process runs a master, a volume server, a filer and the S3 gateway, in a data folder of
its own, with S3 signature checks on: only the identities given (access key and secret) may
use it. Every port is chosen free on 127.0.0.1, below the kernel's ephemeral range so that no
client socket can take one between the choice and the server's bind, together with its gRPC
companion at port + 10000 (SeaweedFS's default convention, also passed explicitly).

    with SeaweedFS(credentials=[("testing", "testing")]) as server:
        boto3.client("s3", endpoint_url=server.endpoint, ...)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.support.spark_cluster import log_tail, stop_process

ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = ROOT / "scripts" / "seaweedfs-setup.sh"
BINARY_ENV = "SEAWEEDFS_BIN"  # a `weed` binary to use instead of the setup script's

START_TIMEOUT_S = 120.0
# With a client connection open it waits 15 s for it after SIGTERM (0.6 s without): its data
# is thrown away anyway, so a short grace, then SIGKILL.
STOP_GRACE_S = 3.0
SETUP_TIMEOUT_S = 1800.0  # a cold build is about 5 minutes on 2 cores
GRPC_OFFSET = 10000
# HTTP ports from here, gRPC ports 10000 above: both below Linux's default ephemeral range
# (32768-60999), where the kernel picks client ports.
PORT_LOW, PORT_HIGH = 20000, 22700
SERVICES = ("master", "volume", "filer", "s3")
ACTIONS = ["Admin", "Read", "List", "Tagging", "Write"]


def weed_binary() -> str:
    """The `weed` binary: $SEAWEEDFS_BIN, else the setup script's (built once, then cached)."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        return configured
    done = subprocess.run(
        ["bash", str(SETUP_SCRIPT)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT_S,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not os.access(lines[-1], os.X_OK):
        raise RuntimeError(
            f"{SETUP_SCRIPT.name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return lines[-1]


def _bindable(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def free_port_pairs(count: int, rng: random.Random | None = None) -> list[int]:
    """`count` distinct ports P, each with P and P + 10000 free on 127.0.0.1 right now."""
    rng = rng or random.SystemRandom()
    held: list[socket.socket] = []
    chosen: list[int] = []
    try:
        for _ in range(2000):
            if len(chosen) == count:
                return chosen
            port = rng.randrange(PORT_LOW, PORT_HIGH)
            if port in chosen:
                continue
            first = _bindable(port)
            if first is None:
                continue
            second = _bindable(port + GRPC_OFFSET)
            if second is None:
                first.close()
                continue
            held += [first, second]
            chosen.append(port)
        raise RuntimeError(f"no {count} free port pairs in {PORT_LOW}-{PORT_HIGH}")
    finally:
        for sock in held:
            sock.close()


class SeaweedFS:
    """One `weed server -s3` process; `endpoint` is its S3 URL once started."""

    def __init__(
        self,
        credentials: Iterable[tuple[str, str]],
        *,
        binary: str | None = None,
        volume_size_mb: int = 64,
        max_volumes: int = 200,
    ) -> None:
        self.credentials = list(credentials)
        if not self.credentials:
            raise ValueError("SeaweedFS needs at least one (access key, secret) identity")
        self.binary = binary
        self.volume_size_mb = volume_size_mb
        self.max_volumes = max_volumes
        self.folder: Path | None = None
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_in_s: float | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log(self) -> Path:
        assert self.folder is not None
        return self.folder / "weed.log"

    def client(self, index: int = 0) -> Any:
        """A boto3 S3 client signed with one of the server's identities (path-style)."""
        import boto3
        import botocore.config

        key, secret = self.credentials[index]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 1}
            ),
        )

    # --- start and stop ---

    def _config(self) -> Path:
        assert self.folder is not None
        identities = [
            {
                "name": f"tests-{number}",
                "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": ACTIONS,
            }
            for number, (key, secret) in enumerate(self.credentials)
        ]
        path = self.folder / "s3.json"
        path.write_text(json.dumps({"identities": identities}))
        path.chmod(0o600)
        return path

    def _command(self, binary: str, config: Path) -> list[str]:
        assert self.folder is not None
        ports = self.ports
        data = self.folder / "data"
        data.mkdir()
        return [
            binary,
            "-logtostderr",  # glog: to our log file, not into files under /tmp
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master'] + GRPC_OFFSET}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume'] + GRPC_OFFSET}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer'] + GRPC_OFFSET}",
            f"-filer.localSocket={self.folder}/filer.sock",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3'] + GRPC_OFFSET}",
            f"-s3.localSocket={self.folder}/s3.sock",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",  # no Iceberg catalog, no Lance namespace: no fixed ports
            "-s3.port.lance=0",
            "-master.telemetry=false",  # no report to the project's telemetry host
            f"-master.volumeSizeLimitMB={self.volume_size_mb}",
            "-master.volumePreallocate=false",
            f"-volume.max={self.max_volumes}",
            "-volume.preStopSeconds=0",
        ]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> SeaweedFS:
        """Start the server and wait until S3 stores and returns an object."""
        binary = self.binary or weed_binary()
        started = time.monotonic()
        self.folder = Path(tempfile.mkdtemp(prefix="seaweedfs-"))
        self.ports = dict(zip(SERVICES, free_port_pairs(len(SERVICES)), strict=True))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        # One volume per new collection (each bucket is one), not 7: slots go further.
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self._command(binary, self._config()),
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            self._wait_ready(started + timeout_s)
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - started
        return self

    def _wait_ready(self, deadline: float) -> None:
        """Ready once a bucket can be made and an object written, read and deleted."""
        assert self.proc is not None
        probe = f"ready-probe-{os.getpid()}"
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"SeaweedFS exited with code {self.proc.returncode} while starting:\n"
                    f"{log_tail(self.log)}"
                )
            try:
                s3 = self.client()
                s3.list_buckets()
                with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                    s3.create_bucket(Bucket=probe)
                s3.put_object(Bucket=probe, Key="probe", Body=b"ok")
                if s3.get_object(Bucket=probe, Key="probe")["Body"].read() == b"ok":
                    s3.delete_object(Bucket=probe, Key="probe")
                    s3.delete_bucket(Bucket=probe)
                    return
            except Exception as exc:  # not up yet: connection refused, 503, no volume yet
                last = exc
            time.sleep(0.25)
        raise RuntimeError(
            f"SeaweedFS S3 at {self.endpoint} not ready: {last!r}\n{log_tail(self.log)}"
        )

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop by PID (its process group): SIGTERM, then SIGKILL after the grace period;
        then remove its data folder and the gRPC sockets it made in /tmp."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, grace_s)
        for name, port in self.ports.items():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/tmp/seaweedfs-{name}-grpc-{port + GRPC_OFFSET}.sock")
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
