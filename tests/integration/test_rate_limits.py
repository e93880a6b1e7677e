"""429s in each portal's real shape (no Retry-After), through the whole ingest.

Data Fair answers a French text/plain 429 and limits per minute; Opendatasoft answers
`{"errorcode", "error", "reset_time", "limit_time_unit", "call_limit"}` (DATASETS.md 1.4).
The client waits out the window and completes with identical data; a quota that resets
beyond the patience fails at once with a clear message, and commits nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from flows.flow import IngestFailed, ingest
from tests.support.lakeview import counts_by_year

pytestmark = pytest.mark.usefixtures("prefect_server")


def rate_limited(emulator, dataset: str) -> list[dict]:
    return [r for r in emulator.requests if r["dataset"] == dataset and r["status"] == 429]


@pytest.mark.parametrize(
    ("dataset", "request_kind"),
    [
        ("nationale_annuelle", "export"),
        ("regionale_quotidienne", "records"),
        ("departement", "lines"),
        ("adresse", "agg"),
    ],
)
def test_a_real_429_is_waited_out_and_the_data_is_identical(
    emulator, settings, caplog, dataset, request_kind
):
    window = 0.6
    settings.rate_limit_window_s = window
    emulator.inject("quota", dataset=dataset, request=request_kind, times=2, retry_after=window)
    caplog.set_level(logging.WARNING, logger="flows.sources.http")

    started = time.monotonic()
    report = ingest([dataset], [2023], settings=settings)
    elapsed = time.monotonic() - started

    assert not report.failed
    assert counts_by_year(Path(settings.lake), dataset) == {
        2023: len(emulator.table(dataset, 2023))
    }
    answers = rate_limited(emulator, dataset)
    assert len(answers) == 2
    waits = [r.message for r in caplog.records if "HTTP 429" in r.message]
    assert len(waits) == 2, waits
    assert all("waiting" in w for w in waits)
    assert elapsed >= window  # it did wait (an ODS reset_time is rounded up to the second)


def test_a_quota_beyond_the_patience_fails_clearly_and_commits_nothing(emulator, settings):
    settings.rate_limit_patience_s = 900
    emulator.inject("quota", dataset="nationale_quotidienne", request="export", times=None,
                    retry_after=6 * 3600)  # fmt: skip

    started = time.monotonic()
    with pytest.raises(IngestFailed) as failure:
        ingest(["nationale_quotidienne", "regionale_annuelle"], [2023], settings=settings)
    elapsed = time.monotonic() - started

    message = str(failure.value)
    assert "daily quota of odre spent until" in message
    assert "nationale_quotidienne/annee=2023" in message and "/exports/csv" in message
    lake = Path(settings.lake)
    assert not (lake / "raw" / "nationale_quotidienne" / "annee=2023").exists()
    assert counts_by_year(lake, "regionale_annuelle") == {
        2023: len(emulator.table("regionale_annuelle", 2023))
    }
    # not retried: one request per partition attempt at most, and no waiting hours
    assert len(rate_limited(emulator, "nationale_quotidienne")) == 1
    assert elapsed < 120
