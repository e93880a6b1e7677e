"""One publish, one commit: a reader that follows `gold/_publish.json` never sees tables of
two publishes, while publishes run in a loop (local lake and S3 on SeaweedFS)."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.lake.fs import Lake
from flows.lake.layout import PUBLISH_POINTER, new_load_id, version_folder
from flows.lake.lease import hold
from flows.lake.publish import publish_tables, table_files

TABLES = ("conso_commune", "conso_departement", "conso_region", "conso_nationale")
PUBLISHES = 12


def _put(lake: Lake, relative: str, data: bytes) -> None:
    path = lake.path(relative)
    lake.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # locally; nothing on S3
    lake.fs.pipe(path, data)


def _stage(lake: Lake, number: int) -> tuple[str, str]:
    """What the Spark job leaves: each table's Parquet and one CSV, all holding `number`."""
    run_id = new_load_id()
    folder = version_folder(run_id)
    for table in TABLES:
        buffer = io.BytesIO()
        pq.write_table(pa.table({"publish": [number] * 3, "row": [1, 2, 3]}), buffer)
        _put(lake, f"{folder}/{table}/annee=2023/part-0.parquet", buffer.getvalue())
        csv = "publish,row\n" + "".join(f"{number},{r}\n" for r in (1, 2, 3))
        _put(lake, f"{folder}/{table}.csv", csv.encode())
    return run_id, folder


def _read_publish(lake: Lake) -> set[int]:
    """Every table of the current publish, read by following the pointer once."""
    pointer = lake.read_json(PUBLISH_POINTER)
    if pointer is None:
        return set()
    seen = set()
    for table in TABLES:
        entry = pointer["tables"][table]
        for name in entry["files"]:
            with lake.fs.open(lake.path(f"{entry['folder']}/{name}"), "rb") as handle:
                seen.update(pq.read_table(handle).column("publish").to_pylist())
    return seen


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_pointer_reader_never_sees_two_publishes(
    where: str, tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    uri = str(tmp_path / "lake") if where == "local" else f"s3://{s3_bucket}/lake"
    lake = Lake(uri, s3_endpoint=s3_endpoint if where == "s3" else None)
    stop = threading.Event()
    reads: list[set[int]] = []
    errors: list[BaseException] = []

    def reader() -> None:
        reading = Lake(uri, s3_endpoint=s3_endpoint if where == "s3" else None)
        while not stop.is_set():
            try:
                reads.append(_read_publish(reading))
            except BaseException as exc:  # any error is a failure of the guarantee
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    with hold(lake, run="publisher"):
        for number in range(PUBLISHES):
            run_id, folder = _stage(lake, number)
            publish_tables(lake, run_id, folder, {"tables": dict.fromkeys(TABLES, 3)})
            time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(reads) > PUBLISHES
    mixed = [seen for seen in reads if len(seen) > 1]
    assert mixed == []
    assert {n for seen in reads for n in seen} >= {PUBLISHES - 1}
    # the plain views ended on the last publish, and table_files follows the pointer
    for table in TABLES:
        folder, files = table_files(lake, table)
        assert folder.startswith("gold/_versions/") and files == ["annee=2023/part-0.parquet"]
        csv = lake.fs.cat(lake.path(f"gold/{table}.csv")).decode()
        assert csv.splitlines()[1].startswith(f"{PUBLISHES - 1},")
        view = lake.read_json(f"gold/{table}/_current.json")
        assert view["publish"] == lake.read_json(PUBLISH_POINTER)["run_id"]


def test_tables_a_publish_did_not_rebuild_keep_their_version(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    with hold(lake, run="publisher"):
        first, folder = _stage(lake, 1)
        publish_tables(lake, first, folder, {"tables": dict.fromkeys(TABLES, 3)})
        second, folder = _stage(lake, 2)
        publish_tables(lake, second, folder, {"tables": {"conso_commune": 3}})
    pointer = lake.read_json(PUBLISH_POINTER)
    assert pointer["tables"]["conso_commune"]["run_id"] == second
    assert pointer["tables"]["conso_region"]["run_id"] == first
    assert (tmp_path / "lake" / version_folder(first)).is_dir()  # still named: kept
    assert pointer["retired"] == {}
