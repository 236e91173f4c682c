"""A worker killed outright loses nothing and re-bills only its calls in flight.

On SQLite and on PostgreSQL: the worker process reads the store from the
environment, as the app's detached worker does.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulkgpt_core.batches import BatchStatus, RowStatus
from bulkgpt_core.config import Settings
from bulkgpt_core.stores import open_store
from bulkgpt_core.stores.base import Store
from tests.conftest import new_batch_spec
from tests.fake_gemini import FakeGemini

ROOT = Path(__file__).resolve().parents[1]
ROWS = 5000
CONCURRENCY = 8
CRASHES = 3


def start_worker(batch_id: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bulkgpt_core", "worker", batch_id],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for_progress(store: Store, batch_id: str, beyond: int) -> None:
    deadline = time.monotonic() + 60
    while store.get_batch(batch_id).done <= beyond:
        assert time.monotonic() < deadline, "the worker made no progress"
        time.sleep(0.02)


def test_three_kills_cost_at_most_the_calls_in_flight(
    gemini: FakeGemini, store_for_crashes: Store
) -> None:
    store = store_for_crashes
    gemini.configure(latency_ms=5, jitter_ms=5)
    batch = store.create_batch(new_batch_spec(concurrency=CONCURRENCY))
    store.add_rows(batch.id, ({"text": f"row {i}"} for i in range(ROWS)))
    rng = random.Random(7)

    for _crash in range(CRASHES):
        before = store.get_batch(batch.id).done
        worker = start_worker(batch.id)
        wait_for_progress(store, batch.id, before)
        time.sleep(rng.uniform(0.2, 1.0))
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()

    final = start_worker(batch.id)
    assert final.wait(timeout=120) == 0

    batch = store.get_batch(batch.id)
    rows = list(store.iter_rows(batch.id))
    assert batch.status is BatchStatus.COMPLETED
    assert [r.status for r in rows] == [RowStatus.SUCCEEDED] * ROWS
    assert [r.output for r in rows] == [f"ANSWER: Say row {i}" for i in range(ROWS)]
    assert (batch.succeeded, batch.failed) == (ROWS, 0)
    assert batch.tokens_in == sum(r.tokens_in for r in rows)
    assert batch.tokens_out == sum(r.tokens_out for r in rows)
    calls = gemini.stats()["total"]
    assert ROWS <= calls <= ROWS + CONCURRENCY * CRASHES
    print(f"{store.label}: {calls - ROWS} calls re-billed by {CRASHES} kills")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_for_crashes(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    """The store under test, named in the environment the workers inherit."""
    if request.param == "postgres":
        server = request.getfixturevalue("clean_database")
        monkeypatch.setenv("BULKGPT_STORE", "postgres")
        monkeypatch.setenv("DATABASE_URL", server.url)
    with open_store(Settings.from_env()) as store:
        yield store
