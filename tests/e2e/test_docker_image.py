"""The container side: docker/Dockerfile (hadolint, Podman build and run) and docker/compose.yaml.

Needs root on a Debian bookworm host: the session fixture runs scripts/podman-setup.sh
(Podman from Debian, runc, the local base image localhost/debian-base:bookworm, the
Docker-compatible socket). Podman failing there is a test failure, not a skip. The compose
checks run the real Docker Compose binary (scripts/compose-setup.sh builds it once, cached).
tests/e2e/test_compose.py runs the stack itself.

    uv run pytest -m docker -s   # -s shows the measured build times, image size and run times
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
ENV_EXAMPLE = ROOT / "docker" / ".env.example"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_IMAGE = "localhost/debian-base:bookworm"
IMAGE = os.environ.get("ENERGY_PIPELINE_TEST_IMAGE", "localhost/energy-pipeline:test")
BUILD_TIMEOUT_S = 2400

# The stack of docker/compose.yaml: long-running services, and the one-shot setup.
LONG_RUNNING = {"postgres", "seaweedfs", "prefect-server", "spark-master", "spark-worker", "worker"}
SERVICES = LONG_RUNNING | {"setup"}
PROJECT_SERVICES = {"prefect-server", "spark-master", "spark-worker", "setup", "worker"}
OFFICIAL_IMAGES = {"postgres": "postgres:", "seaweedfs": "chrislusf/seaweedfs:"}

# The image's budget (podman's Size, bytes): was 1.76 GB with Debian's JRE and every pyspark jar.
MAX_IMAGE_BYTES = 1_200_000_000
# A file over HTTPS that the build fetches too (Maven Central): a TLS check through whatever
# proxy the build goes through (its CA is the optional bundle's).
HTTPS_URL = "https://repo1.maven.org/maven2/org/apache/hadoop/hadoop-aws/3.5.0/hadoop-aws-3.5.0.pom"
SECRET_KEYS = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|WEBHOOK)", re.IGNORECASE)


def _run(cmd: list[str], timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def _tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


# --- hadolint ----------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    res = _run(["bash", str(ROOT / "scripts" / "hadolint.sh"), str(DOCKERFILE)], timeout=300)
    assert res.returncode == 0, f"hadolint:\n{res.stdout}\n{res.stderr}"


# --- compose.yaml ---------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _joined(command: Any) -> str:
    return command if isinstance(command, str) else " ".join(str(c) for c in command)


def test_compose_structure() -> None:
    data = _compose()
    services = data["services"]
    assert set(services) == SERVICES, set(services) ^ SERVICES
    assert "minio" not in COMPOSE.read_text().lower(), "minio is gone: SeaweedFS is the S3 lake"

    # The project image: built once (by prefect-server) from docker/Dockerfile, then used by name.
    built = [n for n, s in services.items() if "build" in s]
    assert built == ["prefect-server"], built
    build = services["prefect-server"]["build"]
    assert build["dockerfile"] == "docker/Dockerfile" and build["context"] == ".."
    assert set(build["args"]) >= {"BASE_IMAGE", "CA_BUNDLE"}
    project_image = services["prefect-server"]["image"]
    for name in PROJECT_SERVICES:
        assert services[name]["image"] == project_image, name
        assert services[name].get("pull_policy") == "never", f"{name}: in no registry"

    # Official images, pinned by version (no latest, no bare name).
    for name, prefix in OFFICIAL_IMAGES.items():
        ref = services[name]["image"]
        assert ref.startswith(prefix), f"{name}: {ref}"
        tag = ref.removeprefix(prefix)
        assert re.match(r"\d+(\.\d+)+", tag) and "latest" not in tag, f"{name}: {ref}"

    # Every long-running service says when it is ready; the one-shot setup runs once.
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck", {})
        assert check.get("test"), f"{name}: no healthcheck"
    assert "healthcheck" not in services["setup"]
    assert services["setup"].get("restart", "no") == "no", "setup is a one-shot"

    server = services["prefect-server"]
    assert "prefect server start" in _joined(server["command"])
    assert "--host" in server["command"] and "0.0.0.0" in server["command"]
    assert "@postgres:" in server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"

    master, spark_worker = services["spark-master"], services["spark-worker"]
    assert "org.apache.spark.deploy.master.Master" in master["command"]
    assert "org.apache.spark.deploy.worker.Worker" in spark_worker["command"]
    assert "spark://spark-master:7077" in spark_worker["command"]
    assert spark_worker["depends_on"]["spark-master"]["condition"] == "service_healthy"

    # setup: the bucket (boto3, in the project image), the workspace, the deployment.
    setup = services["setup"]
    script = _joined(setup["command"])
    assert "import boto3" in script or "import os, boto3" in script, script
    assert "create_bucket" in script
    assert "python -m deployments.bootstrap" in script
    assert re.search(r"prefect .*deploy --name energy-pipeline-local", script), script
    for dep in ("prefect-server", "seaweedfs"):
        assert setup["depends_on"][dep]["condition"] == "service_healthy", dep
    for key in ("ENERGY_PIPELINE_S3_BUCKET", "ENERGY_PIPELINE_S3_ENDPOINT", "PREFECT_API_URL"):
        assert key in setup["environment"], key
    assert "seaweedfs:8333" in setup["environment"]["ENERGY_PIPELINE_S3_ENDPOINT"]

    # The worker starts once setup has completed (pools and deployment exist) and Spark is up.
    worker = services["worker"]
    assert worker["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["spark-worker"]["condition"] == "service_healthy"
    assert "energy-pipeline-process" in worker["command"]
    assert "spark://spark-master:7077" in worker["environment"]["ENERGY_PIPELINE_SPARK_MASTER"]


def _walk_env(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(k, str) and not isinstance(v, dict | list):
                yield path, k, v
            yield from _walk_env(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk_env(v, f"{path}[{i}]")


def test_compose_has_no_literal_secrets() -> None:
    for path, key, value in _walk_env(_compose()):
        if SECRET_KEYS.search(key) and value not in (None, ""):
            assert str(value).startswith("${"), f"{path}.{key} is a literal: {value!r}"
    # Credentials inside URLs come from variables too (`${VAR:?message}` may hold spaces).
    text = COMPOSE.read_text()
    urls_with_user = 0
    for line in text.splitlines():
        plain = re.sub(r"\$\{[^}]*\}", "VAR", line)
        for m in re.finditer(r"://([^/@\s:]+):([^/@\s]+)@", plain):
            urls_with_user += 1
            assert m.group(2) == "VAR", f"literal password in URL: {line.strip()}"
    assert urls_with_user >= 1, "the database URL with its password variable is not found"
    # The example .env has every variable compose uses, with placeholders only.
    env = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    assert used <= set(env), f"missing from docker/.env.example: {sorted(used - set(env))}"
    for key, value in env.items():
        if SECRET_KEYS.search(key) and value:
            assert value.startswith("change-me"), f"{key}={value!r} in .env.example"


@pytest.fixture(scope="session")
def compose_binary() -> Path:
    """The real Docker Compose (v5), built once from the Go module proxy and cached."""
    res = _run(["bash", str(ROOT / "scripts" / "compose-setup.sh")], timeout=2400)
    assert res.returncode == 0, f"scripts/compose-setup.sh failed:\n{_tail(res.stderr)}"
    binary = Path(res.stdout.strip().splitlines()[-1])
    assert binary.is_file() and os.access(binary, os.X_OK), binary
    return binary


def test_compose_config_validates(compose_binary: Path, tmp_path: Path) -> None:
    """`docker compose config` (the compose-spec schema and interpolation) with .env.example."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(Path.home())}
    base = [str(compose_binary), "-f", str(COMPOSE)]
    res = _run([*base, "--env-file", str(ENV_EXAMPLE), "config", "--format", "json"], env=env)
    assert res.returncode == 0, f"docker compose config:\n{res.stdout}\n{res.stderr}"
    config = json.loads(res.stdout)
    assert set(config["services"]) == SERVICES
    assert config["services"]["worker"]["depends_on"]["setup"]["condition"] == (
        "service_completed_successfully"
    )
    # Without a .env file (an empty one: a docker/.env next to compose.yaml is not read), every
    # secret is a required variable: config must refuse.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    res = _run([*base, "--env-file", str(empty), "config", "-q"], env=env, cwd=tmp_path)
    assert res.returncode != 0 and "required variable" in res.stderr, res.stderr
    for var in ("POSTGRES_PASSWORD", "SEAWEEDFS_ACCESS_KEY", "SEAWEEDFS_SECRET_KEY"):
        assert f"required variable {var} is missing" in res.stderr, var


# --- Podman build and run ------------------------------------------------------------------


@pytest.fixture(scope="session")
def podman() -> str:
    if os.geteuid() != 0:
        pytest.fail("the docker tests need root (apt-get, rootful Podman): run them as root")
    res = _run(["bash", str(ROOT / "scripts" / "podman-setup.sh")], timeout=1200)
    assert res.returncode == 0, f"scripts/podman-setup.sh failed:\n{_tail(res.stderr)}"
    exe = shutil.which("podman")
    assert exe, "podman not on PATH after scripts/podman-setup.sh"
    assert _run([exe, "image", "exists", BASE_IMAGE]).returncode == 0, BASE_IMAGE
    return exe


def ca_bundle() -> str:
    """The host's CA bundle (it holds a TLS-inspecting proxy's CA, which Maven, pip and uv
    need) copied into docker/ca/: its file name for the CA_BUNDLE build argument, or "" when
    the host has none."""
    if not HOST_CA.exists():
        return ""
    target = ROOT / "docker" / "ca" / "host-ca-bundle.crt"
    target.parent.mkdir(exist_ok=True)
    if not target.exists() or target.read_bytes() != HOST_CA.read_bytes():
        shutil.copyfile(HOST_CA, target)
    return target.name


def _build(podman: str) -> float:
    args = [
        podman,
        "build",
        "--layers",
        "-f",
        str(DOCKERFILE),
        "-t",
        IMAGE,
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
    ]
    bundle = ca_bundle()
    if bundle:
        args += ["--build-arg", f"CA_BUNDLE={bundle}"]
    start = time.monotonic()
    res = _run([*args, str(ROOT)], timeout=BUILD_TIMEOUT_S)
    elapsed = time.monotonic() - start
    assert res.returncode == 0, (
        f"podman build failed after {elapsed:.0f} s:\n{_tail(res.stdout + res.stderr, 60)}"
    )
    return elapsed


def _image_size(podman: str, image: str) -> int:
    res = _run([podman, "image", "inspect", image, "--format", "{{.Size}}"])
    assert res.returncode == 0, res.stderr
    return int(res.stdout.strip())


@pytest.fixture(scope="session")
def image(podman: str) -> str:
    first = _build(podman)
    second = _build(podman)  # everything cached: the --layers rebuild
    size = _image_size(podman, IMAGE)
    print(
        f"\n[docker] {IMAGE}: build {first:.0f} s, rebuild {second:.1f} s, "
        f"size {size} bytes ({size / 1e9:.2f} GB)"
    )
    assert second < 120, f"a cached rebuild took {second:.0f} s: layers are not reused"
    return IMAGE


def _in_image(
    podman: str, image: str, *cmd: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return _run([podman, "run", "--rm", image, *cmd], timeout=timeout)


@pytest.mark.timeout(BUILD_TIMEOUT_S * 2 + 600)
def test_image_default_command_is_cli_help(podman: str, image: str) -> None:
    res = _run([podman, "run", "--rm", image], timeout=120)
    assert res.returncode == 0, res.stderr
    assert "usage: energy-pipeline" in res.stdout
    for command in ("run", "ingest", "aggregate", "demo"):
        assert command in res.stdout


def test_image_runs_as_non_root(podman: str, image: str) -> None:
    res = _in_image(podman, image, "id", "-u")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "10001"


def test_image_size_is_within_budget(podman: str, image: str) -> None:
    """A jlinked JRE and pyspark without the jars no run loads: 1.76 GB -> about 1.05 GB."""
    size = _image_size(podman, image)
    res = _in_image(
        podman,
        image,
        "sh",
        "-c",
        'for d in /opt/java /opt/venv "$SPARK_HOME/jars" /opt/spark-jars; do du -sm "$d"; done',
    )
    print(f"\n[docker] {image}: {size / 1e9:.3f} GB; MB per folder:\n{res.stdout.strip()}")
    assert size <= MAX_IMAGE_BYTES, f"{size / 1e9:.3f} GB > {MAX_IMAGE_BYTES / 1e9:.1f} GB"


def test_image_has_a_jlinked_jre(podman: str, image: str) -> None:
    """Java 17 is /opt/java (jlink, from the jre build stage), not a Debian package; its
    module list has what Spark's launcher asks for (--add-modules=jdk.incubator.vector)."""
    res = _in_image(podman, image, "java", "-version")
    assert res.returncode == 0, res.stderr
    assert 'version "17' in res.stderr, res.stderr
    assert "sharing" in res.stderr, "no default CDS archive: " + res.stderr  # AppCDS needs it
    res = _in_image(
        podman,
        image,
        "sh",
        "-c",
        'echo "$JAVA_HOME"; readlink -f "$(command -v java)"; cat /opt/java/release; '
        "dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n' 'openjdk*' 2>/dev/null; true",
    )
    lines = res.stdout.splitlines()
    assert lines[:2] == ["/opt/java", "/opt/java/bin/java"], lines[:2]
    modules = re.search(r'^MODULES="([^"]*)"', res.stdout, re.MULTILINE)
    assert modules, res.stdout
    for module in ("java.base", "java.desktop", "java.security.jgss", "jdk.crypto.ec",
                   "jdk.incubator.vector", "jdk.security.auth", "jdk.unsupported"):  # fmt: skip
        assert module in modules.group(1).split(), module
    for module in ("jdk.compiler", "jdk.jlink", "jdk.jdeps"):
        assert module not in modules.group(1).split(), module
    installed = [line for line in lines if line.startswith("openjdk") and " ii" in line]
    assert not installed, f"a Debian openjdk package is installed: {installed}"


def test_image_has_no_build_tools(podman: str, image: str) -> None:
    """No JDK tools, Maven, uv, compilers, package caches nor apt lists (checked as root)."""
    res = _run(
        [
            podman,
            "run",
            "--rm",
            "--user",
            "0",
            image,
            "sh",
            "-c",
            "command -v javac jlink jdeps jar mvn uv uvx gcc cc; ls /opt/java/bin; "
            "ls -d /opt/uv /root/.m2 /root/.cache /usr/lib/jvm 2>/dev/null; "
            "ls /var/lib/apt/lists/ /var/cache/apt/archives/ | grep -E '_|[.]deb$'; "
            "ls /var/cache/apt/*.bin 2>/dev/null; true",
        ],
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    found = res.stdout.split()
    assert set(found) <= {"java", "jfr", "jrunscript", "keytool", "rmiregistry"}, found


def _fingerprints(pem: str) -> set[str]:
    """The SHA-256 fingerprints of a PEM bundle's certificates, as keytool prints them."""
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S)
    digests = (hashlib.sha256(ssl.PEM_cert_to_DER_cert(b)).hexdigest().upper() for b in blocks)
    return {":".join(d[i : i + 2] for i in range(0, len(d), 2)) for d in digests}


def test_image_java_trusts_the_ca_bundle(podman: str, image: str) -> None:
    """Java's truststore is a real file holding Debian's CAs and the optional CA bundle's, and
    TLS works from Java (the JRE's crypto modules) and Python, through the build's proxy."""
    res = _in_image(
        podman, image, "sh", "-c", "keytool -list -cacerts -storepass changeit -rfc; true"
    )
    assert res.returncode == 0, res.stderr
    in_java = _fingerprints(res.stdout)
    res = _in_image(podman, image, "cat", "/etc/ssl/certs/ca-certificates.crt")
    in_debian = _fingerprints(res.stdout)
    assert len(in_java) >= 100 and in_debian <= in_java, sorted(in_debian - in_java)[:5]
    bundle = ROOT / "docker" / "ca" / "host-ca-bundle.crt"
    if HOST_CA.exists():  # _build added it to the image
        missing = _fingerprints(bundle.read_text()) - in_java
        assert not missing, f"{len(missing)} certificates of {bundle.name} not in Java's cacerts"
    probe = (
        "import urllib.request\n"
        "from pyspark.java_gateway import launch_gateway\n"
        f"url = {HTTPS_URL!r}\n"
        "print('python', urllib.request.urlopen(url, timeout=60).status)\n"
        "conn = launch_gateway().jvm.java.net.URL(url).openConnection()\n"
        "conn.setConnectTimeout(60000)\n"
        "print('java', conn.getResponseCode(), conn.getCipherSuite())\n"
    )
    res = _run(
        [podman, "run", "--rm", "--network", "host", image, "python", "-c", probe], timeout=180
    )
    assert res.returncode == 0, _tail(res.stdout + res.stderr)
    assert "python 200" in res.stdout and "java 200 TLS_" in res.stdout, res.stdout


def test_image_has_the_s3a_jars(podman: str, image: str) -> None:
    res = _in_image(podman, image, "sh", "-c", 'ls "$ENERGY_PIPELINE_JARS_DIR"')
    assert res.returncode == 0, res.stderr
    jars = res.stdout.split()
    assert "hadoop-aws-3.5.0.jar" in jars, jars
    assert any(j.startswith("s3-2.") for j in jars), jars
    assert any(j.startswith("analyticsaccelerator-s3-") for j in jars), jars


# pyspark jars (name prefixes) that runs load, and some that the Dockerfile removes.
KEPT_JARS = (
    "spark-core_", "spark-sql_", "spark-catalyst_", "hadoop-client-runtime-", "hadoop-client-api-",
    "icu4j-", "janino-", "parquet-hadoop-", "arrow-vector-", "hive-storage-api-",
    "commons-math3-", "ivy-", "py4j-",
)  # fmt: skip
REMOVED_JARS = (
    "rocksdbjni-", "spark-connect_", "hive-exec-", "spark-hive_", "spark-mllib_", "breeze_",
    "kubernetes-client-", "spark-yarn_", "scala-compiler-", "derby-",
)  # fmt: skip


def test_image_pyspark_jars_are_trimmed(podman: str, image: str) -> None:
    """The jars a run loads are there; those of Hive, Connect, MLlib, k8s, RocksDB are not."""
    res = _in_image(podman, image, "sh", "-c", 'ls "$SPARK_HOME/jars"')
    assert res.returncode == 0, res.stderr
    jars = res.stdout.split()
    for prefix in KEPT_JARS:
        assert any(j.startswith(prefix) for j in jars), prefix
    for prefix in REMOVED_JARS:
        assert not any(j.startswith(prefix) for j in jars), prefix
    assert "connect-repl" not in jars


def test_image_imports_the_project(podman: str, image: str) -> None:
    res = _in_image(
        podman,
        image,
        "python",
        "-c",
        "import flows, pyspark, prefect; print(pyspark.__version__, prefect.__version__)",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["4.3.0", "3.9.1"]


def test_image_runs_the_demo(podman: str, image: str) -> None:
    """The whole pipeline inside the image: bundled emulator, ingest, Spark local, publish."""
    start = time.monotonic()
    res = _run(
        [
            podman,
            "run",
            "--rm",
            "--network",
            "host",
            image,
            "energy-pipeline",
            "demo",
            "--datasets",
            "nationale_annuelle",
            "--years",
            "2023",
        ],
        timeout=600,
    )
    elapsed = time.monotonic() - start
    print(f"\n[docker] demo in the image: {elapsed:.0f} s")
    assert res.returncode == 0, _tail(res.stdout + res.stderr)
    assert "published to /data/lake-demo/gold/" in res.stdout + res.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SPARK_JOB = """
import sys
from pyspark.sql import SparkSession, functions as F

out = sys.argv[1]
spark = SparkSession.builder.appName("image-standalone-check").getOrCreate()
df = spark.range(200_000).select((F.col("id") % 7).alias("k"), F.col("id").alias("v"))
df.write.mode("overwrite").parquet(out)
rows = (
    spark.read.parquet(out).groupBy("k").agg(F.count("*").alias("n"), F.sum("v").alias("s"))
    .orderBy("k").collect()
)
assert [r.k for r in rows] == list(range(7)) and sum(r.n for r in rows) == 200_000, rows
assert sum(r.s for r in rows) == sum(range(200_000)), rows
print("executors", spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1)
spark.stop()
"""


@pytest.mark.timeout(420)
def test_image_runs_a_spark_standalone_cluster(
    podman: str, image: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """compose.yaml's Spark: a master and a worker (spark-class, each its own container, as in
    compose) and a PySpark job submitted to them from a third one: Parquet written by the
    executor and committed by the driver (a shared folder), read back, grouped."""
    shared = tmp_path_factory.mktemp("spark-shared")
    shared.chmod(0o777)  # the image's user 10001 writes there
    (shared / "job.py").write_text(SPARK_JOB)
    port, ui = _free_port(), _free_port()
    master_url = f"spark://127.0.0.1:{port}"
    tag = f"{os.getpid()}-{port}"
    master, worker = f"slim-spark-master-{tag}", f"slim-spark-worker-{tag}"
    common = [
        podman, "run", "-d", "--rm", "--network", "host",
        "-e", "SPARK_LOCAL_IP=127.0.0.1",
        "-e", "SPARK_MASTER_OPTS=-Dspark.master.rest.enabled=false",
    ]  # fmt: skip
    start = time.monotonic()
    try:
        res = _run([*common, "--name", master, image,
                    "spark-class", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                    "--port", str(port), "--webui-port", str(ui)])  # fmt: skip
        assert res.returncode == 0, res.stderr
        res = _run([*common, "--name", worker, "-v", f"{shared}:/shared", image,
                    "spark-class", "org.apache.spark.deploy.worker.Worker", master_url,
                    "--host", "127.0.0.1", "--cores", "2", "--memory", "1g",
                    "--webui-port", "0", "--work-dir", "/tmp/spark-work"])  # fmt: skip
        assert res.returncode == 0, res.stderr
        status: dict[str, Any] = {}
        while time.monotonic() - start < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=3) as resp:
                    status = json.load(resp)
                if status.get("status") == "ALIVE" and status.get("aliveworkers", 0) >= 1:
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            logs = _run([podman, "logs", worker]).stderr
            pytest.fail(f"no live worker after 120 s: {status}\n{_tail(logs)}")
        ready = time.monotonic() - start
        res = _run(
            [podman, "run", "--rm", "--network", "host", "--name", f"slim-spark-driver-{tag}",
             "-e", "SPARK_LOCAL_IP=127.0.0.1", "-v", f"{shared}:/shared", image,
             "spark-submit", "--master", master_url, "--conf", "spark.ui.enabled=false",
             "--conf", "spark.executor.memory=512m", "/shared/job.py", "/shared/out"],
            timeout=240,
        )  # fmt: skip
        elapsed = time.monotonic() - start
        print(f"\n[docker] standalone cluster ready in {ready:.0f} s, job done at {elapsed:.0f} s")
        assert res.returncode == 0, _tail(res.stdout + res.stderr, 60)
        assert "executors 1" in res.stdout, res.stdout
        assert (shared / "out" / "_SUCCESS").exists()
        assert list((shared / "out").glob("part-*.parquet"))
    finally:
        for name in (worker, master):
            _run([podman, "rm", "--force", "--time", "5", name], timeout=60)
