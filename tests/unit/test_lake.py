"""Partition commits on a local lake: readers see a whole version, never a mix or nothing."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from flows.lake.fs import Lake

FILES_PER_VERSION = 3


def stage(lake: Lake, load_id: str) -> list[str]:
    folder = Path(lake.path(lake.staging("demo", 2023, load_id)))
    folder.mkdir(parents=True)
    names = [f"part-{load_id}-{n:05d}.parquet" for n in range(FILES_PER_VERSION)]
    for name in names:
        (folder / name).write_bytes(load_id.encode())
    return names


def test_concurrent_reader_always_sees_exactly_one_whole_version(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    final = Path(lake.path(lake.partition("demo", 2023)))
    lake.commit_partition("demo", 2023, "v0000", {"files": stage(lake, "v0000")})
    seen: list[frozenset[str]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                parts = [n for n in os.listdir(final) if n.endswith(".parquet")]
            except FileNotFoundError:
                parts = []
            seen.append(frozenset(n.split("-")[1] for n in parts) | {f"n={len(parts)}"})

    thread = threading.Thread(target=reader)
    thread.start()
    for version in range(1, 200):
        load_id = f"v{version:04d}"
        lake.commit_partition("demo", 2023, load_id, {"files": stage(lake, load_id)})
    stop.set()
    thread.join()

    assert len(seen) > 200
    assert all(len(s) == 2 and f"n={FILES_PER_VERSION}" in s for s in seen), {
        s for s in seen if len(s) != 2 or f"n={FILES_PER_VERSION}" not in s
    }
    assert sorted(p.name for p in final.glob("*.parquet"))[0].startswith("part-v0199-")
    assert (final / "_current.json").exists()
