"""The one writer of a lake: a run takes the lake's lease, then clears what dead runs left.

Every entry point that writes the lake (ingest, aggregate, the whole pipeline, in the CLI or
a deployment) runs inside `writing`. While a run holds the lease no other run writes, so
whatever staging it finds belongs to a dead run and is swept; a dead load gets its manifest
back from its partitions' pointers; a publish killed after its commit gets its plain views
refreshed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flows.crashpoints import crashpoint
from flows.lake.fs import Lake
from flows.lake.layout import new_load_id
from flows.lake.lease import Lease, hold
from flows.lake.publish import recover as recover_publish
from flows.runtime import sweep_dead_runs
from flows.settings import Settings
from flows.sources.ingest import recover_loads

log = logging.getLogger(__name__)


def _run_name() -> str:
    """The Prefect flow run this is (id and name) when there is one, else a fresh id."""
    try:
        from prefect.runtime import flow_run

        if flow_run.id:
            return f"{flow_run.name} ({flow_run.id})"
    except Exception:  # outside a flow run
        pass
    return new_load_id()


def sweep(lake: Lake) -> dict[str, Any]:
    """Remove or finish what dead runs left; call only while holding the lake's lease."""
    found: dict[str, Any] = {}
    processes = sweep_dead_runs()
    found["processes"] = processes if any(processes.values()) else {}
    found["staging"] = lake.sweep_staging()
    found["loads"] = recover_loads(lake)
    found.update(recover_publish(lake))
    left = {k: v for k, v in found.items() if v}
    if left:
        log.warning("lake %s: cleared what an interrupted run left: %s", lake.uri, left)
    return found


@contextmanager
def writing(settings: Settings, *, command: str) -> Iterator[Lease]:
    """Hold the lake's lease for a block (re-entrant); the first hold sweeps dead runs."""
    lake = Lake.from_settings(settings)
    with hold(
        lake,
        run=_run_name(),
        command=command,
        ttl_s=float(getattr(settings, "lease_ttl_s", 60.0)),
        wait_s=float(getattr(settings, "lease_wait_s", 3600.0)),
        on_acquired=lambda _lease: sweep(lake),
    ) as lease:
        crashpoint("run-started")
        yield lease
