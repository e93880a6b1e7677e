"""Named points of a run where the kill-anywhere tests SIGKILL the process.

`ENERGY_PIPELINE_CRASH_AT=<point>[:<n>]` kills this process with SIGKILL the n-th time (first
by default) it reaches `<point>`. Unset, as in every real run, a crash point costs one
dictionary lookup. The points are the run's commit boundaries: just before and just after
each step that makes something visible.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

ENV = "ENERGY_PIPELINE_CRASH_AT"
POINTS = (
    "run-started",  # lease held, dead runs swept
    "partition-staged",  # Parquet files staged, nothing visible yet
    "quarantine-written",  # quarantine file at its place, pointer not yet committed
    "partition-committed",  # the partition's pointer committed
    "ingest-manifest-written",  # load manifest written, running marker still there
    "gold-staged",  # Spark job done, nothing published
    "publish-committed",  # publish pointer written, plain views not refreshed
    "view-refreshed",  # one table's plain view refreshed, others not yet
    "published",  # publish done, dashboard not yet built
    "dashboard-written",  # dashboard written, Tableau extracts not yet
)

_reached: Counter[str] = Counter()
_lock = threading.Lock()


def crashpoint(name: str) -> None:
    """SIGKILL this process here if the environment asks for it."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    with _lock:
        _reached[name] += 1
        if _reached[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
