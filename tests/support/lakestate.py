"""A local lake's state as comparable values, independent of run ids and timestamps.

Two lakes are equal when every committed raw partition holds the same rows, with the same
quarantined rows and the same load record; when the publish pointer names tables with the
same rows, and the plain views (`gold/<table>/`, `gold/<table>.csv`) match it. `problems`
lists what must never be there: staging or temporary files, unreferenced versions,
quarantine files no record names, loads without a manifest, running markers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

# Load-record fields that a clean run and a killed-then-rerun run must agree on.
STABLE = (
    "dataset", "partition", "year", "status", "rows_expected", "rows_received", "rows_written",
    "rows_quarantined", "exact_duplicates_dropped", "extra_columns", "codes_restored",
)  # fmt: skip


def _digest(frame: pd.DataFrame) -> str:
    frame = frame.reindex(sorted(frame.columns), axis=1).astype("str")
    frame = frame.sort_values(list(frame.columns)).reset_index(drop=True)
    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()


def _parquet(paths: list[Path]) -> pd.DataFrame:
    frames = [pq.read_table(p).to_pandas() for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _plain_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*.parquet")
        if not any(part.startswith(("_", ".")) for part in p.relative_to(folder).parts)
    )


def lake_state(lake: Path) -> dict[str, Any]:
    """The comparable state of a local lake, and the problems found in it."""
    problems: list[str] = []
    raw: dict[str, Any] = {}
    manifests = {
        p.stem: json.loads(p.read_text()) for p in (lake / "_manifests" / "loads").glob("*.json")
    }
    named_quarantine: set[str] = set()
    for manifest in manifests.values():
        if manifest.get("status") not in ("completed", "failed", "interrupted"):
            problems.append(f"load manifest {manifest['load_id']}: status {manifest.get('status')}")
        for entry in manifest.get("partitions", []):
            if entry.get("quarantine_file"):
                named_quarantine.add(entry["quarantine_file"])
    for pointer_file in sorted(lake.glob("raw/*/annee=*/_current.json")):
        pointer = json.loads(pointer_file.read_text())
        folder = pointer_file.parent
        key = f"{pointer['dataset']}/{pointer['year']}"
        files = [folder / name for name in pointer["files"]]
        if sorted(files) != _plain_files(folder):
            problems.append(f"raw {key}: files on disk differ from the pointer")
        quarantine = None
        if pointer.get("quarantine"):
            named_quarantine.add(pointer["quarantine"])
            rows = pq.read_table(lake / pointer["quarantine"]).to_pandas()
            quarantine = _digest(rows.drop(columns=["_load_id"]))
        load = pointer.get("load", {})
        raw[key] = {
            "rows": pointer["rows"],
            "data": _digest(_parquet(files)),
            "quarantine": quarantine,
            "load": {k: load.get(k) for k in STABLE},
        }
        manifest = manifests.get(pointer["load_id"])
        if manifest is None:
            problems.append(f"raw {key}: load {pointer['load_id']} has no manifest")
        elif not any(
            e.get("partition") == f"{pointer['dataset']}/annee={pointer['year']}"
            and e.get("status") == "loaded"
            for e in manifest["partitions"]
        ):
            problems.append(f"raw {key}: the manifest of load {pointer['load_id']} omits it")
    for path in sorted((lake / "quarantine").rglob("*.parquet")):
        relative = path.relative_to(lake).as_posix()
        load_id = path.stem
        if relative not in named_quarantine and manifests.get(load_id, {}).get("status") not in (
            "completed",
            "failed",
        ):
            problems.append(f"orphan quarantine file {relative}")
    gold: dict[str, Any] = {}
    publish_file = lake / "gold" / "_publish.json"
    pointer = json.loads(publish_file.read_text()) if publish_file.exists() else {"tables": {}}
    for table, entry in sorted(pointer["tables"].items()):
        version = [lake / entry["folder"] / name for name in entry["files"]]
        data = _digest(_parquet(version))
        csv = (lake / entry["csv"]).read_bytes()
        gold[table] = {"rows": entry["rows"], "data": data,
                       "csv": hashlib.sha256(csv).hexdigest()}  # fmt: skip
        plain = _plain_files(lake / "gold" / table)
        if _digest(_parquet(plain)) != data:
            problems.append(f"gold {table}: the plain view differs from the published version")
        if (lake / "gold" / f"{table}.csv").read_bytes() != csv:
            problems.append(f"gold {table}: {table}.csv differs from the published version")
    referenced = {str(e["folder"]).rsplit("/", 1)[0] for e in pointer["tables"].values()}
    for version in sorted((lake / "gold" / "_versions").glob("*")):
        name = f"gold/_versions/{version.name}"
        if name not in referenced and name not in pointer.get("retired", {}):
            problems.append(f"unpublished version left: {name}")
    for path in lake.rglob("*"):
        relative = path.relative_to(lake).as_posix()
        if path.is_file() and ("/_staging/" in f"/{relative}" or ".tmp-" in path.name):
            problems.append(f"staging or temporary file left: {relative}")
        if path.name.endswith(".running"):
            problems.append(f"running marker left: {relative}")
    return {"raw": raw, "gold": gold, "problems": sorted(set(problems))}


def owner_processes(pid: int) -> list[int]:
    """Processes alive whose environment names the run of process `pid` as their owner."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        if any(v.startswith(f"ENERGY_PIPELINE_RUN_OWNER={pid}:".encode()) for v in environ):
            found.append(int(entry.name))
    return found
