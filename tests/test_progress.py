"""Progress is computed from one batch row, the same way everywhere."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from bulkgpt_core.batches import BatchStatus, utcnow
from bulkgpt_core.progress import format_duration, progress
from bulkgpt_core.stores.sqlite import SQLiteStore
from tests.conftest import new_batch_spec


def test_running_finished_and_pending(sqlite_store: SQLiteStore) -> None:
    stored = sqlite_store.create_batch(new_batch_spec())
    start = utcnow() - timedelta(seconds=100)
    running = dataclasses.replace(
        stored,
        status=BatchStatus.RUNNING,
        total_rows=1000,
        succeeded=390,
        failed=10,
        rows_per_second=5.0,
        started_at=start,
    )
    p = progress(running, now=start + timedelta(seconds=100))
    assert (p.done, p.remaining, p.fraction) == (400, 600, 0.4)
    assert p.rows_per_second == 5.0
    assert p.eta_seconds == 120.0

    finished = dataclasses.replace(
        running,
        status=BatchStatus.COMPLETED,
        succeeded=990,
        finished_at=start + timedelta(seconds=200),
    )
    p = progress(finished)
    # A finished batch reports its average speed, and no time left.
    assert p.rows_per_second == 5.0
    assert p.eta_seconds is None
    assert p.elapsed_seconds == 200.0

    pending = dataclasses.replace(stored, total_rows=10)
    p = progress(pending)
    assert (p.rows_per_second, p.eta_seconds, p.fraction) == (0.0, None, 0.0)


def test_durations_read_naturally() -> None:
    assert format_duration(None) == "—"
    assert format_duration(12.4) == "12s"
    assert format_duration(185) == "3m 05s"
    assert format_duration(3720) == "1h 02m"
