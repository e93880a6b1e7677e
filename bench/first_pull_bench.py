"""Projected time of a first full pull under the portals' anonymous limits.

The emulator applies Data Fair's published anonymous limits (DATASETS.md 1.4): about 600
requests a minute and a bandwidth throttle of about 500 kB/s on API answers; ODS has a daily
call quota (an export is one call) and no published throttle, so it is throttled too here to
be safe. One partition of each dataset is pulled through the pipeline's own partition load;
from its rows/s, bytes per row and requests, the time of a first pull of every dataset at its
real size (DATASETS.md 1.4 and 2) is projected, uncompressed and with gzip (the compression
ratio is measured on the same pages). Usage:

    uv run python bench/first_pull_bench.py [--bandwidth 500000] [--adresse-rows 50000]
"""

from __future__ import annotations

import argparse
import gzip
import time

import httpx

# Real sizes: rows of a first full pull (DATASETS.md 1.4 and 2; adresse is an estimate:
# about 2.3M addresses a year over 2018-2024).
REAL_ROWS = {
    "commune": 3_400_000,
    "departement": 300_000,
    "adresse": 16_000_000,
    "regionale_quotidienne": 2_800_000,
    "nationale_quotidienne": 17_520 * 14,
    "regionale_annuelle": 169,
    "nationale_annuelle": 14,
}
PAGE = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bandwidth", type=float, default=500_000, help="bytes/s per portal")
    parser.add_argument("--requests-per-minute", type=int, default=600)
    parser.add_argument("--adresse-rows", type=int, default=50_000)
    args = parser.parse_args()

    import tempfile

    from emulator import PortalEmulator
    from flows.lake.fs import Lake
    from flows.lake.layout import new_load_id
    from flows.settings import Settings
    from flows.sources.catalog import DATASETS, get_dataset
    from flows.sources.ingest import load_partition, plan_dataset
    from flows.sources.portals import client_for

    year = 2023
    with PortalEmulator(adresse_rows={year: args.adresse_rows}) as emulator:
        emulator.limits(requests_per_minute=args.requests_per_minute, bandwidth=args.bandwidth)
        lake_path = tempfile.mkdtemp(prefix="first-pull-")
        settings = Settings(lake=lake_path, **{f"{p}_url": u for p, u in emulator.urls.items()})
        lake = Lake(lake_path)
        rows_out = []
        for name in DATASETS:
            dataset = get_dataset(name)
            client = client_for(dataset, settings)
            (plan,) = plan_dataset(dataset, [year], True, client, lake)
            client.close()
            emulator.clear_stats()
            started = time.perf_counter()
            result = load_partition(plan, settings, lake, new_load_id())
            seconds = time.perf_counter() - started
            stats = emulator.stats()[dataset.portal]
            ratio = _gzip_ratio(emulator.urls[dataset.portal], dataset)
            per_row = stats["bytes_sent"] / max(1, result.rows_received)
            real = REAL_ROWS.get(name, result.rows_received)  # unknown size: the sample's
            by_bandwidth = real * per_row / args.bandwidth
            requests = real / PAGE if dataset.protocol == "datafair" else 14
            by_requests = requests / args.requests_per_minute * 60
            projected = max(by_bandwidth, by_requests)
            rows_out.append(
                (name, result.rows_received, seconds, per_row, ratio, real, projected,
                 max(by_bandwidth / ratio, by_requests))
            )  # fmt: skip
    print(
        f"\nlimits: {args.requests_per_minute} requests/min (Data Fair), "
        f"{args.bandwidth / 1000:.0f} kB/s per portal\n"
    )
    print("| dataset | rows pulled | seconds | bytes/row | gzip ratio | real rows | "
          "projected, plain | projected, gzip |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    total_plain = total_gzip = 0.0
    per_portal: dict[str, list[float]] = {}
    for name, rows, seconds, per_row, ratio, real, plain, zipped in rows_out:
        portal = get_dataset(name).portal
        per_portal.setdefault(portal, [0.0, 0.0])
        per_portal[portal][0] += plain
        per_portal[portal][1] += zipped
        total_plain += plain
        total_gzip += zipped
        print(
            f"| {name} | {rows:,} | {seconds:.1f} | {per_row:.0f} | {ratio:.1f} | {real:,} | "
            f"{_hours(plain)} | {_hours(zipped)} |"
        )
    print(f"\nsequential total: {_hours(total_plain)} plain, {_hours(total_gzip)} with gzip")
    longest = max(per_portal.items(), key=lambda kv: kv[1][0])
    print(
        f"portals in parallel (each its own throttle): {_hours(longest[1][0])} plain, "
        f"{_hours(max(v[1] for v in per_portal.values()))} with gzip (longest: {longest[0]})"
    )


def _gzip_ratio(base: str, dataset) -> float:
    """Plain bytes over gzip bytes of one page/export of the dataset, as served."""
    if dataset.protocol == "datafair":
        url = f"{base}/data-fair/api/v1/datasets/{dataset.source_id}/lines"
        params = {"size": 2000, f"{dataset.partition_field}_eq": 2023}
    else:
        url = f"{base}/api/explore/v2.1/catalog/datasets/{dataset.source_id}/exports/csv"
        params = {"limit": 5000}
    body = httpx.get(url, params=params, timeout=600).content
    return len(body) / max(1, len(gzip.compress(body, 6)))


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


if __name__ == "__main__":
    main()
