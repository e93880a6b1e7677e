"""Every path of the lake's layout (docs/CONTRACT.md section 2), relative to the lake root.

The one owner of the layout: no other module spells `raw/`, `gold/`, `quarantine/`,
`_manifests/` or `_current.json`. Pure Python with no third-party import, so the Spark job
gets it with `--py-files` and reads the same paths the flow writes.
"""

from __future__ import annotations

from datetime import UTC, datetime

RAW = "raw"
GOLD = "gold"
QUARANTINE = "quarantine"
MANIFESTS = "_manifests"
POINTER = "_current.json"  # the committed state of a folder (its files, its load)
STAGING = "_staging"  # hidden from readers: what a run writes before its commit
RETIRED = "_retired"  # local lakes: a swapped-out version, kept for readers in flight
LOADS = f"{MANIFESTS}/loads"
PUBLISHES = f"{MANIFESTS}/publish"
PUBLISH_POINTER = f"{GOLD}/_publish.json"  # the one write that publishes the gold tables
VERSIONS = f"{GOLD}/_versions"  # one folder per Spark run: its tables, where they stay
GOLD_STAGING = f"{GOLD}/{STAGING}"
DASHBOARD = "dashboard"
LOCAL_LEASE = "_lease"  # fcntl.flock target on a local lake
S3_LEASE = "_lease.json"  # conditional-write lease object on S3
YEAR_FOLDER = "annee="


def new_load_id() -> str:
    """A sortable, unique id for a load or a Spark run (UTC, microseconds)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


# --- raw zone -------------------------------------------------------------------------------


def raw_dataset(dataset: str) -> str:
    """Folder of one dataset's committed partitions."""
    return f"{RAW}/{dataset}"


def raw_partition(dataset: str, year: int | str) -> str:
    """Folder of one raw partition (`year` may be `*` for a glob)."""
    return f"{RAW}/{dataset}/{YEAR_FOLDER}{year}"


def raw_pointer(dataset: str, year: int | str) -> str:
    """The `_current.json` of one raw partition (`year` may be `*` for a glob)."""
    return f"{raw_partition(dataset, year)}/{POINTER}"


def raw_staging_root(dataset: str) -> str:
    """Where every load stages this dataset's partitions."""
    return f"{RAW}/{dataset}/{STAGING}"


def raw_staging(dataset: str, year: int, load_id: str) -> str:
    """Staging folder of one partition load (hidden from readers)."""
    return f"{raw_staging_root(dataset)}/{load_id}-{YEAR_FOLDER}{year}"


def year_of(folder_name: str) -> int | None:
    """The year of a partition folder name (`annee=2023`), None for any other name."""
    if not folder_name.startswith(YEAR_FOLDER):
        return None
    value = folder_name[len(YEAR_FOLDER) :]
    return int(value) if value.isdigit() else None


# --- quarantine -----------------------------------------------------------------------------


def quarantine_partition(dataset: str, year: int) -> str:
    """Folder of a partition's quarantined rows, one file per load."""
    return f"{QUARANTINE}/{dataset}/{YEAR_FOLDER}{year}"


def quarantine_file(dataset: str, year: int, load_id: str) -> str:
    """One load's quarantined rows of a partition."""
    return f"{quarantine_partition(dataset, year)}/{load_id}.parquet"


# --- manifests ------------------------------------------------------------------------------


def load_manifest(load_id: str) -> str:
    """The load manifest of one ingestion run."""
    return f"{LOADS}/{load_id}.json"


def load_running_marker(load_id: str) -> str:
    """Marker of a load in progress: written at its start, removed at its end."""
    return f"{LOADS}/{load_id}.running"


def publish_manifest(run_id: str) -> str:
    """The manifest of one publish."""
    return f"{PUBLISHES}/{run_id}.json"


# --- gold zone ------------------------------------------------------------------------------


def version_folder(run_id: str) -> str:
    """Where one run's Spark job writes its tables (their future published version)."""
    return f"{VERSIONS}/{run_id}"


def job_result(folder: str) -> str:
    """What the Spark job writes last in the folder it staged: tables, checks, timings."""
    return f"{folder}/_result.json"


def staged_csv(table_folder: str) -> str:
    """The CSV the flow writes beside a staged table's Parquet folder (flows.gold.csv_export)."""
    return f"{table_folder}.csv"


def gold_table(table: str) -> str:
    """The plain view of a published table: Parquet partitioned by year."""
    return f"{GOLD}/{table}"


def gold_pointer(table: str) -> str:
    """The `_current.json` of a published table's plain view."""
    return f"{gold_table(table)}/{POINTER}"


def gold_csv(table: str) -> str:
    """The plain view of a published table as one CSV file."""
    return f"{GOLD}/{table}.csv"


def gold_hyper(table: str) -> str:
    """The Tableau extract of a published table."""
    return f"{GOLD}/{table}.hyper"


def gold_staging(name: str) -> str:
    """A staging folder of the gold zone (views being refreshed, extracts being written)."""
    return f"{GOLD_STAGING}/{name}"


# --- readers and outputs --------------------------------------------------------------------


def raw_file(dataset: str, year: int, name: str) -> str:
    """One file of a raw partition, as its `_current.json` names it (relative to the folder)."""
    return f"{raw_partition(dataset, year)}/{name}"


def partition_label(dataset: str, year: int) -> str:
    """How manifests, logs and errors name a raw partition: `dataset/annee=YYYY`."""
    return f"{dataset}/{YEAR_FOLDER}{year}"


def dashboard_page() -> str:
    """The dashboard's page, replaced whole by each build."""
    return f"{DASHBOARD}/index.html"


def dashboard_staged_page(build: str) -> str:
    """A build's page while it is written (hidden: dot name), before it replaces the page."""
    return f"{DASHBOARD}/.index-{build}.html"


def dashboard_builds() -> str:
    """The folder of the dashboard builds' lazy data files, one folder per build."""
    return f"{DASHBOARD}/data"


def dashboard_build(build: str) -> str:
    """The lazy data files of one dashboard build."""
    return f"{dashboard_builds()}/{build}"
