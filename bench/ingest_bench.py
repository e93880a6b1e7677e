"""Ingestion benchmark: one large `adresse` partition served by the emulator over HTTP.

Prints rows/s, MB/s and peak RSS of the pipeline's partition load (fetch, Pandera
validation, key-hashed dedup, Parquet staging and commit) next to a bare baseline that
only downloads the same pages and parses them into Arrow. Each measurement runs in a
fresh process, so peak RSS is that step's own. Usage:

    uv run python bench/ingest_bench.py [--rows 200000,2000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

YEAR = 2023


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pipeline(enedis_url: str, lake: str, leased: str = "") -> dict[str, float]:
    """The real partition load, as the ingest task runs it (without Prefect's bookkeeping);
    `leased`: inside the run's lease, as every run is (lake lease taken, dead runs swept,
    released), that cost included in the time."""
    import contextlib

    from flows.lake.fs import Lake
    from flows.lake.layout import new_load_id
    from flows.lake.writer import writing
    from flows.settings import Settings
    from flows.sources.catalog import get_dataset
    from flows.sources.ingest import load_partition, plan_dataset
    from flows.sources.portals import client_for

    settings = Settings(lake=lake, enedis_url=enedis_url)
    dataset = get_dataset("adresse")
    lake_ = Lake(lake)
    client = client_for(dataset, settings)
    (plan,) = plan_dataset(dataset, [YEAR], True, client, lake_)
    client.close()
    started = time.perf_counter()
    with writing(settings, command="bench") if leased else contextlib.nullcontext():
        result = load_partition(plan, settings, lake_, new_load_id())
    seconds = time.perf_counter() - started
    return {
        "rows": result.rows_received,
        "bytes": result.bytes_received,
        "seconds": seconds,
        "written": result.rows_written,
        "peak_rss_mb": _peak_rss_mb(),
    }


def baseline(enedis_url: str) -> dict[str, float]:
    """Download the same lines pages and parse each into an Arrow table, nothing else."""
    import httpx
    import orjson
    import pyarrow as pa

    path = "data-fair/api/v1/datasets/consommation-annuelle-residentielle-par-adresse/lines"
    url: str | None = f"{enedis_url.rstrip('/')}/{path}"
    params: dict[str, object] | None = {"annee_eq": YEAR, "size": 10_000}
    rows = size = 0
    started = time.perf_counter()
    with httpx.Client(timeout=120) as client:
        while url:
            response = client.get(url, params=params)
            response.raise_for_status()
            size += len(response.content)
            doc = orjson.loads(response.content)
            table = pa.Table.from_pylist(doc["results"])
            rows += table.num_rows
            url, params = doc.get("next"), None
    seconds = time.perf_counter() - started
    return {"rows": rows, "bytes": size, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}


def _child(mode: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, f"_{mode}", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _emulator(rows: int) -> tuple[subprocess.Popen[str], dict[str, str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--years", str(YEAR), "--adresse-rows", str(rows)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


def measure(rows: int) -> list[dict[str, object]]:
    """Baseline then pipeline on a partition of `rows` rows."""
    process, urls = _emulator(rows)
    try:
        base = _child("baseline", urls["enedis"])
        with tempfile.TemporaryDirectory() as lake:
            run = _child("pipeline", urls["enedis"], lake)
            # again on the same lake (a committed partition to sweep past), inside the lease
            leased = _child("pipeline", urls["enedis"], lake, "leased")
    finally:
        process.terminate()
        process.wait()
    return [
        {"what": "baseline", "partition_rows": rows, **base},
        {"what": "pipeline", "partition_rows": rows, **run},
        {"what": "leased", "partition_rows": rows, **leased},
    ]


def main() -> None:
    """Measure each size and print a table and a JSON record."""
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        mode, args = sys.argv[1][1:], sys.argv[2:]
        result = pipeline(*args) if mode == "pipeline" else baseline(*args)
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="200000,2000000")
    parser.add_argument("--out", default="bench/out/ingest.json")
    sizes = [int(n) for n in parser.parse_args().rows.split(",")]
    results = [entry for rows in sizes for entry in measure(rows)]
    print(f"{'step':<9} {'rows':>9} {'seconds':>8} {'rows/s':>10} {'MB/s':>7} {'peak RSS MB':>11}")
    for r in results:
        seconds = float(r["seconds"])  # type: ignore[arg-type]
        print(
            f"{r['what']:<9} {r['rows']:>9} {seconds:>8.2f} {float(r['rows']) / seconds:>10,.0f} "  # type: ignore[arg-type]
            f"{float(r['bytes']) / seconds / 1e6:>7.1f} {float(r['peak_rss_mb']):>11.0f}"  # type: ignore[arg-type]
        )
    for rows in sizes:
        base, run, leased = (r for r in results if r["partition_rows"] == rows)
        overhead = float(leased["seconds"]) - float(run["seconds"])  # type: ignore[arg-type]
        print(f"{rows} rows: lease + sweep + staging cost {overhead:+.2f} s on this load")
        ratio = (float(run["rows"]) / float(run["seconds"])) / (
            float(base["rows"]) / float(base["seconds"])
        )  # type: ignore[arg-type]
        print(f"{rows} rows: pipeline at {ratio:.0%} of the baseline's speed")
    Path(parser.parse_args().out).parent.mkdir(parents=True, exist_ok=True)
    Path(parser.parse_args().out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
