"""A bounded soak: a worker process against a fake Gemini that misbehaves a lot.

A fifth of the calls get 429 with a retry delay, a tenth 500 or 503, 2% hang
past the timeout, 2% drop the connection and 1% are blocked for safety. The
worker must never die, every row must end terminal with the right reason,
every call the server saw must be accounted for on its row, and the worker's
memory must stay flat once it is under way.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulkgpt_core.batches import BatchStatus, RowStatus, StoredRow
from bulkgpt_core.models.base import RETRYABLE
from tests.fake_gemini import FakeGemini, fake_gemini_server, prompt_hash
from tests.hostile.processes import (
    MemoryWatch,
    assert_counters_match_rows,
    done_rows,
    expected_answer,
    generate_calls,
    make_batch,
    running_worker,
    watching_store,
)

ROWS = 2000
CONCURRENCY = 16
MAX_ATTEMPTS = 4  # what tests.conftest.new_batch_spec gives a batch
SOAK_LIMIT_S = 120
#: How much the worker's memory may grow from a quarter of the rows to the end.
MAX_GROWTH_KIB = 24 * 1024
FAULTS = {
    "p_429": 0.20,
    "p_500": 0.05,
    "p_503": 0.05,
    "p_hang": 0.02,
    "p_drop": 0.02,
    "p_safety": 0.01,
}
RETRYABLE_KINDS = {kind.value for kind in RETRYABLE}


@pytest.fixture
def hostile_gemini(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGemini]:
    """A server of this test's own: its hung calls must not reach other tests."""
    with fake_gemini_server(
        latency_ms=8,
        jitter_ms=4,
        retry_delay="0.2s",
        hang_s=20,
        seed=2024,
        **FAULTS,
    ) as server:
        monkeypatch.setenv("GEMINI_API_KEY", "soak-key")
        monkeypatch.setenv("GEMINI_BASE_URL", server.url)
        monkeypatch.setenv("BULKGPT_REQUEST_TIMEOUT", "1")
        yield server


def assert_right_reason(row: StoredRow, calls: int) -> None:
    """A row's outcome fits what the server did to it."""
    assert row.attempts == calls, (row.index, row.attempts, calls)
    if row.status is RowStatus.SUCCEEDED:
        assert row.output == expected_answer(row.index)
        assert row.finish_reason == "STOP"
        return
    assert row.status is RowStatus.FAILED, row
    assert row.error_message
    if row.error_kind == "safety":
        assert row.finish_reason == "SAFETY"
    else:
        # Worth retrying, so tried as often as allowed, then failed with its kind.
        assert row.error_kind in RETRYABLE_KINDS, row
        assert row.attempts == MAX_ATTEMPTS, row


def test_soak_every_row_ends_right_and_the_worker_stays_up(
    hostile_gemini: FakeGemini, tmp_path: Path
) -> None:
    with watching_store() as store:
        batch_id = make_batch(store, ROWS, concurrency=CONCURRENCY)

    began = time.monotonic()
    with (
        running_worker(batch_id, tmp_path / "worker.log") as worker,
        watching_store() as store,
        MemoryWatch(worker.pid, lambda: _fraction(done_rows(store, batch_id))) as mem,
    ):
        assert worker.wait(timeout=SOAK_LIMIT_S) == 0, worker.log()
    soak_s = time.monotonic() - began

    with watching_store() as store:
        batch = store.get_batch(batch_id)
        rows = assert_counters_match_rows(store, batch_id)
    stats = hostile_gemini.stats()
    calls = stats["calls_by_prompt"]

    assert batch.status is BatchStatus.COMPLETED
    for row in rows:
        assert_right_reason(row, calls[prompt_hash(f"Say row {row.index}")])
    assert generate_calls(hostile_gemini) == sum(r.attempts for r in rows)
    failed = Counter(r.error_kind for r in rows if r.status is RowStatus.FAILED)
    assert failed["safety"] == stats["faults"]["safety"]  # each block ends its row
    assert set(stats["faults"]) == {"429", "500", "503", "hang", "drop", "safety"}

    log = worker.log()
    assert "Traceback" not in log and "unexpectedly" not in log
    at_quarter, growth = mem.growth_kib(0.25)
    assert growth < MAX_GROWTH_KIB, (at_quarter, growth)
    print(
        f"soak: {ROWS} rows in {soak_s:.1f}s, {sum(calls.values())} calls, "
        f"faults {stats['faults']}, failed {dict(failed)}, rss {at_quarter} KiB "
        f"at 25% then +{growth} KiB"
    )


def _fraction(done: int | None) -> float | None:
    return None if done is None else done / ROWS
